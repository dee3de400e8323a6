//! Durability: `kill -9` in the middle of a publishing load loses nothing acknowledged; a
//! restart delivers every pending delivery. Then SIGTERM shuts down cleanly.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::helpers::*;

// Multi-threaded: the test blocks on the child process while its receiver must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let mut server = start_server(dir.path(), &[]);
    let http = reqwest::Client::new();

    server.create_stream(&http, &receiver).await;

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (http, base, acknowledged) = (http.clone(), server.base.clone(), acknowledged.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("p{p}-{i}");
                let sent = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"id": id, "source": "/load", "type": "user.created"}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    // The server died: whatever was not acknowledged may be lost.
                    _ => break,
                }
            }
        }));
    }

    // Let the load run until a good number of events are acknowledged, then kill -9.
    loop {
        let count = acknowledged.lock().unwrap().len();
        if count >= 400 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for p in publishers {
        p.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let delivered_before = unique_event_ids(&receiver).len();
    assert!(
        delivered_before < acknowledged.len(),
        "the kill should leave a backlog ({delivered_before} of {} delivered)",
        acknowledged.len()
    );

    let mut server = start_server(dir.path(), &[]);
    receiver
        .wait_until("every acknowledged event", |received| {
            let delivered: HashSet<String> = received.iter().map(event_id).collect();
            acknowledged.is_subset(&delivered)
        })
        .await;

    // SIGTERM: a graceful stop with exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "herald exited with {exit} after SIGTERM");
}

fn unique_event_ids(receiver: &Receiver) -> HashSet<String> {
    receiver.received().iter().map(event_id).collect()
}

fn event_id(received: &Received) -> String {
    received.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_data_directory_serves_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = herald::App::build(
        test_config(dir.path()),
        std::sync::Arc::new(herald::clock::ManualClock::default()),
    )
    .await
    .unwrap();
    let second = herald::App::build(
        test_config(dir.path()),
        std::sync::Arc::new(herald::clock::ManualClock::default()),
    )
    .await;
    let err = second
        .err()
        .expect("a second process on the same data directory is refused");
    assert!(err.to_string().contains("another herald process"), "{err}");
    drop(first);
}

// Crash injection: each seeded run arms one crash point of the write path (see
// `herald::crashpoint`) at a random hit, publishes from several publishers at once until the
// process dies there, restarts it on the same store without the point, and checks that
// nothing acknowledged was lost, nothing unstored was delivered, a batch was stored whole or
// not at all, and everything stored was delivered once the backlog drained.
//
// `HERALD_CRASH_RUNS` sets how many seeds each store runs (50 on SQLite, 16 on PostgreSQL
// by default), `HERALD_CRASH_FIRST_SEED` the first (a failure names its seed, to run alone).

use std::os::unix::process::ExitStatusExt;

use herald::crashpoint;
use serde_json::Value;

/// Seeded runs under way at once.
const PARALLEL_RUNS: usize = 4;
const PUBLISHERS: usize = 4;
/// Requests each publisher makes unless the server dies first; each carries 1 to 3 events.
const REQUESTS: usize = 12;
/// A crash point's hit is drawn from 1 to this, by how often the load passes it.
fn hits_up_to(point: &str) -> u64 {
    match point {
        crashpoint::SQLITE_BETWEEN_JOBS => 24,
        crashpoint::SQLITE_BEFORE_COMMIT | crashpoint::SQLITE_AFTER_COMMIT => 60,
        crashpoint::RECORDER_BEFORE_RECORD | crashpoint::RECORDER_AFTER_RECORD => 12,
        // Concurrent publishes share a commit, and pass these once per group.
        crashpoint::POSTGRES_PUBLISH_BEFORE_COMMIT | crashpoint::POSTGRES_PUBLISH_AFTER_COMMIT => {
            24
        }
        _ => 12,
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn points(self) -> Vec<&'static str> {
        let prefix = match self {
            Backend::Sqlite => "sqlite.",
            Backend::Postgres => "postgres.",
        };
        crashpoint::POINTS
            .iter()
            .copied()
            .filter(|p| p.starts_with(prefix) || p.starts_with("recorder."))
            .collect()
    }
}

/// SplitMix64: a seeded source of choices, the same on every machine.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `1..=n`.
    fn upto(&mut self, n: u64) -> u64 {
        self.next() % n + 1
    }
}

/// What one run saw, for the tally.
struct Run {
    point: &'static str,
    /// Where the process died: `starting`, `publishing`, `delivering`, or `killed` when the
    /// point was not reached.
    stage: &'static str,
    acknowledged: usize,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got `{v}`")),
        Err(_) => default,
    }
}

/// Runs the seeds on `backend`, `PARALLEL_RUNS` at a time, and reports every failing seed.
async fn crash_runs(backend: Backend, default_runs: u64) {
    let first = env_number("HERALD_CRASH_FIRST_SEED", 0);
    let runs = env_number("HERALD_CRASH_RUNS", default_runs);
    let started = std::time::Instant::now();
    let mut seeds = first..first + runs;
    let mut running = tokio::task::JoinSet::new();
    let mut outcomes = Vec::new();
    loop {
        while running.len() < PARALLEL_RUNS
            && let Some(seed) = seeds.next()
        {
            running.spawn(async move { (seed, tokio::spawn(crash_run(backend, seed)).await) });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        outcomes.push(done.unwrap());
    }
    let mut failures = Vec::new();
    let mut stages: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    let mut acknowledged = 0;
    for (seed, outcome) in outcomes {
        match outcome {
            Ok(run) => {
                *stages.entry((run.point, run.stage)).or_default() += 1;
                acknowledged += run.acknowledged;
            }
            Err(e) => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("seed {seed}: {message}"));
            }
        }
    }
    eprintln!(
        "{runs} runs on {backend:?} in {:.1} s, {acknowledged} events acknowledged; runs by crash point and where it died: {stages:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed (rerun one with HERALD_CRASH_FIRST_SEED=<seed> HERALD_CRASH_RUNS=1):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The runs must mostly crash where they were told to, under load, or they show little.
    let under_load: usize = stages
        .iter()
        .filter(|((_, stage), _)| matches!(*stage, "publishing" | "delivering"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        under_load * 3 >= runs as usize * 2,
        "only {under_load} of {runs} runs crashed at their point under load: {stages:?}"
    );
}

/// One seeded run; panics, naming the point and hit, when a check fails.
async fn crash_run(backend: Backend, seed: u64) -> Run {
    let mut rng = Seeded(seed ^ ((backend as u64) << 32));
    let points = backend.points();
    let point = points[rng.upto(points.len() as u64) as usize - 1];
    let hit = rng.upto(hits_up_to(point));
    let armed = format!("{point}:{hit}");
    let context = format!("{backend:?}, {}={armed}", crashpoint::ENV);

    let dir = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(postgres_database().await),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(database) = &database {
        env.push(("HERALD_DATABASE_URL".into(), database.url.clone()));
        // A lease the dead process held lapses soon after the restart.
        env.push(("HERALD_DELIVERY_TIMEOUT_SECONDS".into(), "1".into()));
        env.push(("HERALD_DELIVERY_LEASE_SECONDS".into(), "2".into()));
    }
    let receiver = Receiver::start().await;
    let http = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();

    // The stream, set up before the point is armed.
    let setup = spawn_server(dir.path(), env.clone()).await.unwrap();
    let stream = setup.create_stream(&http, &receiver).await;
    drop(setup); // kill -9

    let mut armed_env = env.clone();
    armed_env.push((crashpoint::ENV.into(), armed.clone()));
    let mut acknowledged = HashSet::new();
    let mut requests: Vec<Vec<String>> = Vec::new();
    let stage = match spawn_server(dir.path(), armed_env).await {
        // The point was reached while starting up.
        Err(status) => {
            assert_eq!(status.signal(), Some(6), "{context}: {status}");
            "starting"
        }
        Ok(mut server) => {
            let mut publishers = tokio::task::JoinSet::new();
            for p in 0..PUBLISHERS {
                let (http, base) = (http.clone(), server.base.clone());
                let mut sizes = Seeded(rng.next());
                publishers.spawn(async move {
                    let mut sent = Vec::new();
                    for r in 0..REQUESTS {
                        let ids: Vec<String> = (0..sizes.upto(3))
                            .map(|e| format!("p{p}-{r}-{e}"))
                            .collect();
                        let acked = publish(&http, &base, &ids).await;
                        sent.push((ids, acked));
                        if acked.is_none() {
                            break; // the server is gone
                        }
                    }
                    sent
                });
            }
            let mut cut_short = false;
            while let Some(sent) = publishers.join_next().await {
                for (ids, acked) in sent.unwrap() {
                    if acked == Some(true) {
                        acknowledged.extend(ids.iter().cloned());
                    }
                    cut_short |= acked.is_none();
                    requests.push(ids);
                }
            }
            // Deliveries and their outcomes go on with the point armed; wait for the crash,
            // or for every acknowledged event to arrive and a moment more for its record.
            let deadline = tokio::time::Instant::now() + PATIENCE;
            let mut quiet_since = None;
            let status = loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    break Some(status);
                }
                if acknowledged.is_subset(&delivered_ids(&receiver)) {
                    let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > std::time::Duration::from_millis(300) {
                        break None;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{context}: neither crashed nor delivered what it acknowledged"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            };
            drop(server); // kill -9, if the point was not reached
            match status {
                None => "killed",
                Some(status) => {
                    assert_eq!(status.signal(), Some(6), "{context}: {status}");
                    if cut_short {
                        "publishing"
                    } else {
                        "delivering"
                    }
                }
            }
        }
    };

    // The store reopens, and the backlog drains.
    let server = spawn_server(dir.path(), env)
        .await
        .unwrap_or_else(|status| panic!("{context}: the store did not reopen: {status}"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let backlog = get(
            &http,
            &server.base,
            &format!("/v1/event-streams/{stream}/backlog"),
        )
        .await;
        if backlog["pending"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{context}: the backlog never drained: {backlog}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stored = stored_ids(&http, &server.base).await;
    let delivered = delivered_ids(&receiver);

    let missing: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{context}: acknowledged but not stored: {missing:?}"
    );
    let undelivered: Vec<_> = stored.difference(&delivered).collect();
    assert!(
        undelivered.is_empty(),
        "{context}: stored (and the backlog drained) but never delivered: {undelivered:?}"
    );
    let phantom: Vec<_> = delivered.difference(&stored).collect();
    assert!(
        phantom.is_empty(),
        "{context}: delivered but not stored: {phantom:?}"
    );
    for ids in &requests {
        let kept = ids.iter().filter(|id| stored.contains(*id)).count();
        assert!(
            kept == 0 || kept == ids.len(),
            "{context}: a batch was stored in part: {kept} of {ids:?}"
        );
    }
    if let Backend::Sqlite = backend {
        drop(server); // kill -9 once more: the file must still be sound
        let conn =
            rusqlite::Connection::open(dir.path().join(herald::config::DATABASE_FILE)).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{context}: the database file is damaged");
    }
    Run {
        point,
        stage,
        acknowledged: acknowledged.len(),
    }
}

/// Starts the server off the runtime's threads (it blocks until the process listens).
async fn spawn_server(
    dir: &std::path::Path,
    env: Vec<(String, String)>,
) -> Result<Server, std::process::ExitStatus> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        try_start_server(&dir, &env)
    })
    .await
    .unwrap()
}

/// Publishes `ids` (one event alone, more as a batch): `Some(true)` when acknowledged,
/// `Some(false)` for any other answer, `None` when no answer came.
async fn publish(http: &reqwest::Client, base: &str, ids: &[String]) -> Option<bool> {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "source": "/crash", "type": "user.created"}))
        .collect();
    let request = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(ADMIN_TOKEN);
    let request = match events.as_slice() {
        [one] => request.json(one),
        _ => request
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap()),
    };
    let response = request.send().await.ok()?;
    let status = response.status();
    // The answer's body is part of it: a server that dies while sending it did not answer.
    response.bytes().await.ok()?;
    Some(status == 202)
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// The ids of every event in the audit log, following its pages.
async fn stored_ids(http: &reqwest::Client, base: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut from = String::new();
    loop {
        let page = get(http, base, &format!("/v1/events?take=100&from={from}")).await;
        for event in page["events"].as_array().unwrap() {
            ids.insert(event["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => from = next.to_string(),
            None => return ids,
        }
    }
}

fn delivered_ids(receiver: &Receiver) -> HashSet<String> {
    unique_event_ids(receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(debug_assertions),
    ignore = "crash points exist only in debug builds"
)]
async fn crash_points_on_sqlite_lose_nothing_acknowledged() {
    crash_runs(Backend::Sqlite, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(not(herald_postgres_tests), not(debug_assertions)),
    ignore = "needs HERALD_TEST_DATABASE_URL, and a debug build (crash points)"
)]
async fn crash_points_on_postgres_lose_nothing_acknowledged() {
    crash_runs(Backend::Postgres, 16).await;
}
