//! Several Herald nodes on one PostgreSQL database: they share the work, survive a node's
//! `kill -9`, can be split into API and worker roles, and an embedded store moves into
//! PostgreSQL with `herald migrate-store`. These need `HERALD_TEST_DATABASE_URL` (CI sets it);
//! without it they are reported as ignored.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::helpers::*;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const PER_STREAM: usize = 8;

/// A node on the shared database, with short leases so a dead node's work moves on soon.
fn start_node(database: &Scratch, dir: &std::path::Path, role: &str) -> Server {
    let per_stream = PER_STREAM.to_string();
    start_server(
        dir,
        &[
            ("HERALD_DATABASE_URL", &database.url),
            ("HERALD_SECRET_KEY", KEY),
            ("HERALD_ROLE", role),
            ("HERALD_DELIVERY_TIMEOUT_SECONDS", "2"),
            ("HERALD_DELIVERY_LEASE_SECONDS", "4"),
            ("HERALD_MAX_IN_FLIGHT_PER_STREAM", &per_stream),
        ],
    )
}

/// Deliveries received per event id.
fn receipts(receiver: &Receiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for received in receiver.received() {
        let id = received.json()["id"].as_str().unwrap().to_string();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

// Multi-threaded: the test blocks on child processes while its receiver must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn three_nodes_share_the_work_and_survive_a_kill_9() {
    let database = postgres_database().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| start_node(&database, dir.path(), "all"))
        .collect();
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    nodes[0].create_stream(&http, &receiver).await;

    // 10,000 events in batches of 50, spread over the nodes. A batch whose node died is
    // published again on the next node, as a client would: publishing is idempotent.
    const EVENTS: usize = 10_000;
    const BATCH: usize = 50;
    let next_batch = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let dead = Arc::new(Mutex::new(HashSet::<usize>::new()));
    let mut publishers = Vec::new();
    for _ in 0..6 {
        let (http, bases, next_batch, acknowledged, dead) = (
            http.clone(),
            bases.clone(),
            next_batch.clone(),
            acknowledged.clone(),
            dead.clone(),
        );
        publishers.push(tokio::spawn(async move {
            loop {
                let b = next_batch.fetch_add(1, Ordering::SeqCst);
                if b * BATCH >= EVENTS {
                    return;
                }
                let ids: Vec<String> = (b * BATCH..(b + 1) * BATCH)
                    .map(|i| format!("evt-{i}"))
                    .collect();
                let batch: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"id": id, "source": "/cluster", "type": "user.created"}))
                    .collect();
                let deadline = tokio::time::Instant::now() + PATIENCE;
                for attempt in 0.. {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "batch {b} was never acknowledged"
                    );
                    let node = (b + attempt) % bases.len();
                    if dead.lock().unwrap().contains(&node) {
                        continue;
                    }
                    if attempt >= bases.len() {
                        // Every node was tried: wait a little before the next round.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    let sent = http
                        .post(format!("{}/v1/events", bases[node]))
                        .bearer_auth(ADMIN_TOKEN)
                        .header("content-type", "application/cloudevents-batch+json")
                        .json(&batch)
                        .send()
                        .await;
                    if matches!(&sent, Ok(r) if r.status() == 202) {
                        acknowledged.lock().unwrap().extend(ids.iter().cloned());
                        break;
                    }
                }
            }
        }));
    }

    // Half-way through, node 2 dies with whatever it had claimed.
    while acknowledged.lock().unwrap().len() < EVENTS / 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    dead.lock().unwrap().insert(2);
    nodes[2].child.kill().unwrap(); // SIGKILL
    nodes[2].child.wait().unwrap();
    // A request the node finished sending just before it died may still be in the
    // receiver's hands: give those a moment to be counted as arrived at the kill.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let received_at_kill = receiver.received().len();
    for p in publishers {
        p.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(
        acknowledged.len(),
        EVENTS,
        "every batch was acknowledged by some node"
    );

    receiver
        .wait_until(
            "every acknowledged event, from the surviving nodes",
            |received| {
                let delivered: HashSet<String> = received
                    .iter()
                    .map(|r| r.json()["id"].as_str().unwrap().to_string())
                    .collect();
                acknowledged.is_subset(&delivered)
            },
        )
        .await;
    let counts = receipts(&receiver);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "3 nodes, one killed: {} deliveries of {} events, {duplicates} duplicates \
         ({received_at_kill} deliveries had arrived at the kill)",
        counts.values().sum::<usize>(),
        counts.len()
    );
    // Only attempts whose outcomes the killed node had not stored yet (running, or
    // finished and waiting for its recorder) are made again: every event delivered twice
    // was first delivered by the time of the kill, none in the steady state after it.
    let order: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    for (id, _) in counts.iter().filter(|(_, n)| **n > 1) {
        let first = order.iter().position(|x| x == id).unwrap();
        assert!(
            first < received_at_kill,
            "{id} was delivered twice, the first time after the kill (receipt {first} of {received_at_kill} before it)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn api_and_worker_roles_split_the_work() {
    let database = postgres_database().await;
    let (api_dir, worker_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let api = start_node(&database, api_dir.path(), "api");
    let worker = start_node(&database, worker_dir.path(), "worker");
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    api.create_stream(&http, &receiver).await;

    // The worker serves health only.
    let status = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(format!("{}/readyz", worker.base)).await, 200);
    assert_eq!(
        status(format!("{}/v1/event-streams", worker.base)).await,
        404
    );

    // Published through the API node, delivered by the worker: the API node has no
    // dispatcher at all.
    let response = http
        .post(format!("{}/v1/events", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "split-1", "source": "/split", "type": "user.created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].json()["id"], "split-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn migrate_store_moves_an_embedded_installation_into_postgres() {
    let database = postgres_database().await;
    // A single-node installation with history and a backlog: the receiver refuses at
    // first, so one event is delivered and two are still pending when it stops.
    let embedded = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    let mut node = start_server(embedded.path(), &[]);
    let stream_id = node.create_stream(&http, &receiver).await;
    let publish = |base: String, id: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{base}/v1/events"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"id": id, "source": "/move", "type": "user.created"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    publish(node.base.clone(), "moved-1").await;
    receiver.wait_for(1).await;
    let patch = http
        .patch(format!("{}/v1/event-streams/{stream_id}", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"status": "paused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    publish(node.base.clone(), "moved-2").await;
    publish(node.base.clone(), "moved-3").await;

    // While it runs, the copy is refused: the data directory is in use.
    let busy = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate-store", "--from"])
        .arg(embedded.path())
        .args(["--to", &database.url])
        .output()
        .unwrap();
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("another herald process"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    node.child.kill().unwrap();
    node.child.wait().unwrap();

    let copied = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate-store", "--from"])
        .arg(embedded.path())
        .args(["--to", &database.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert!(
        copied.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(stdout.contains("events"), "{stdout}");

    // A second copy into the now populated database is refused, and changes nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate-store", "--from"])
        .arg(embedded.path())
        .args(["--to", &database.url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty database"));

    // A PostgreSQL node with the embedded store's key sees the same installation: the same
    // admin token, stream, history and statistics, and it delivers the backlog once the
    // stream is enabled again.
    let key = std::fs::read_to_string(embedded.path().join("secret.key")).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let node = start_server(
        fresh.path(),
        &[
            ("HERALD_DATABASE_URL", &database.url),
            ("HERALD_SECRET_KEY", key.trim()),
        ],
    );
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(path)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let event = get(format!("{}/v1/events/moved-1", node.base)).await;
    assert_eq!(event["event"]["id"], "moved-1", "{event}");
    let first = get(format!(
        "{}/v1/event-streams/{stream_id}/deliveries/moved-1",
        node.base
    ))
    .await;
    assert_eq!(first[0]["status"], "succeeded", "{first}");
    assert_eq!(first[0]["attempts"].as_array().unwrap().len(), 1);
    let backlog = get(format!(
        "{}/v1/event-streams/{stream_id}/backlog",
        node.base
    ))
    .await;
    assert_eq!(backlog["pending"], 2, "{backlog}");

    let enable = http
        .patch(format!("{}/v1/event-streams/{stream_id}", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"status": "enabled", "backlog": "deliver"}))
        .send()
        .await
        .unwrap();
    assert_eq!(enable.status(), 200);
    receiver
        .wait_until("the moved backlog", |received| received.len() >= 3)
        .await;
    let ids: HashSet<String> = receipts(&receiver).into_keys().collect();
    assert_eq!(
        ids,
        ["moved-1", "moved-2", "moved-3"].map(String::from).into()
    );

    // The signature still verifies with the stream's secret, read back through PostgreSQL.
    let secret = get(format!("{}/v1/event-streams/{stream_id}/secret", node.base)).await;
    let last = receiver.received().pop().unwrap();
    let verifier = standardwebhooks::Webhook::new(secret["secret"].as_str().unwrap()).unwrap();
    verifier.verify(&last.body, &last.headers).unwrap();
}

#[test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
fn a_node_with_another_secret_key_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(postgres_database());
    let migrate = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate", "--database-url", &database.url])
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("applied 14 migration"));

    let dir = tempfile::tempdir().unwrap();
    let first = start_node(&database, dir.path(), "all");
    drop(first);
    let other = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_DATABASE_URL", &database.url)
        .env(
            "HERALD_SECRET_KEY",
            "HyAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=",
        )
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("same `secret_key`"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}

/// The sum of a metric's samples named exactly `name` in a Prometheus text scrape.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum()
}

/// Two nodes take single-event publishes at once, each event published to both of them at
/// about the same moment, so that concurrent publishes share group commits on each node and
/// race each other across the nodes. Every event is stored once, with one delivery, and
/// exactly one of its two publishes is answered as new: nothing acknowledged is lost, and
/// no publish is taken twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn two_nodes_publishing_at_once_lose_nothing_and_store_nothing_twice() {
    let database = postgres_database().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| start_node(&database, dir.path(), "all"))
        .collect();
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let receiver = Receiver::start().await;
    let http = reqwest::Client::new();
    nodes[0].create_stream(&http, &receiver).await;

    // Request 2k publishes event k to node 0, request 2k + 1 the same event to node 1.
    const EVENTS: usize = 1_000;
    const PUBLISHERS: usize = 32;
    let next = Arc::new(AtomicUsize::new(0));
    let fresh = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (http, bases, next, fresh) = (http.clone(), bases.clone(), next.clone(), fresh.clone());
        publishers.push(tokio::spawn(async move {
            loop {
                let request = next.fetch_add(1, Ordering::SeqCst);
                if request >= 2 * EVENTS {
                    return;
                }
                let id = format!("evt-{}", request / 2);
                let response = http
                    .post(format!("{}/v1/events", bases[request % 2]))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"id": id, "source": "/two-nodes", "type": "user.created"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202, "publishing {id}");
                let body: Value = response.json().await.unwrap();
                let new = body["duplicate"] == json!(false);
                *fresh.lock().unwrap().entry(id).or_default() += usize::from(new);
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let fresh = fresh.lock().unwrap().clone();
    assert_eq!(fresh.len(), EVENTS);
    let twice: Vec<_> = fresh.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "events not answered as new exactly once: {twice:?}"
    );

    let client = crate::helpers::sql_client(&database.url).await;
    let row = client
        .query_one(
            "SELECT (SELECT COUNT(*) FROM events WHERE source = '/two-nodes'), \
             (SELECT COUNT(DISTINCT id) FROM events WHERE source = '/two-nodes'), \
             (SELECT COUNT(*) FROM deliveries d JOIN events e ON e.seq = d.event_seq \
              WHERE e.source = '/two-nodes')",
            &[],
        )
        .await
        .unwrap();
    let (stored, distinct, deliveries): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (stored, distinct, deliveries),
        (EVENTS as i64, EVENTS as i64, EVENTS as i64),
        "events stored, distinct events, deliveries"
    );
    receiver
        .wait_until("every event", |received| {
            received
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_string())
                .collect::<HashSet<_>>()
                .len()
                == EVENTS
        })
        .await;

    // The publishes did share commits: some group held more than one.
    let (mut commits, mut jobs) = (0.0, 0.0);
    for base in &bases {
        let text = http
            .get(format!("{base}/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        commits += metric_sum(&text, "herald_store_group_commit_jobs_count");
        jobs += metric_sum(&text, "herald_store_group_commit_jobs_sum");
    }
    assert!(
        jobs >= 2.0 * EVENTS as f64 && commits < jobs,
        "{jobs} publishes in {commits} commits"
    );
}
