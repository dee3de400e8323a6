//! The scenarios on PostgreSQL, S7 and S9: one or more `herald serve` nodes on a scratch
//! schema of the server at `HERALD_BENCH_DATABASE_URL`, publishers spread over them, and the
//! CPU the server spent meanwhile. The server's CPU is read from `/proc` of its processes:
//! the sessions of Herald's nodes (found by their `application_name`, the schema's name) and
//! the server's own background processes (WAL writer, checkpointer, background writer,
//! autovacuum), which other users of the server share. Without `/proc` access to them (a
//! server on another machine) it is not reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald::store::postgres::{Scratch, history_day, make_history_day, parse_url, redact_url};

use crate::receiver::{self, Behaviour, Clock, Receipts};
use crate::scenarios::{
    self, Outcome, PER_STREAM, SINGLE_PUBLISHERS, Size, bare_rate, publish_batches_to,
};
use crate::target::{Herald, cpu_seconds, wait_until};

/// The server used when `HERALD_BENCH_DATABASE_URL` is unset.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Every node holds the same secret key, as a cluster must.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Herald's nodes on a scratch schema. Fields drop in order: the nodes before their schema.
struct Cluster {
    nodes: Vec<Herald>,
    server: ServerCpu,
    _scratch: Scratch,
}

impl Cluster {
    async fn start(nodes: usize, history_days: u16) -> Result<Cluster, String> {
        let url = database_url();
        let scratch = Scratch::create(&url, "herald_bench").await?;
        let server = ServerCpu::connect(&url, scratch.schema()).await?;
        let mut env = vec![
            ("HERALD_DATABASE_URL", scratch.url.clone()),
            ("HERALD_SECRET_KEY", KEY.to_string()),
        ];
        // Retention off, or it would drop the oldest of the days made below.
        if history_days > 0 {
            env.push(("HERALD_EVENT_RETENTION_DAYS", "0".to_string()));
            env.push(("HERALD_RESPONSE_BODY_RETENTION_DAYS", "0".to_string()));
        }
        // One after the other: the first creates the schema's tables.
        let nodes = (0..nodes.max(1)).map(|_| Herald::start(&env)).collect();
        add_past_days(&scratch.url, history_days).await?;
        Ok(Cluster {
            nodes,
            server,
            _scratch: scratch,
        })
    }

    fn cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(Herald::cpu_seconds).sum()
    }
}

/// Gives the store's history `days` past days, as a store that keeps that many has.
async fn add_past_days(url: &str, days: u16) -> Result<(), String> {
    if days == 0 {
        return Ok(());
    }
    let target = parse_url(url).map_err(|e| e.to_string())?;
    let mut client = target.open().await.map_err(|e| e.to_string())?;
    let today = history_day(herald::clock::system_now_ms());
    for day in today - i64::from(days)..today {
        make_history_day(&mut client, day)
            .await
            .map_err(|e| format!("making day {day}'s partitions: {e}"))?;
    }
    Ok(())
}

fn database_url() -> String {
    std::env::var("HERALD_BENCH_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

fn skipped(
    scenario: &'static str,
    description: String,
    target: &'static str,
    reason: String,
) -> Outcome {
    Outcome {
        scenario,
        description,
        target,
        note: format!("skipped: {reason}"),
        ..Outcome::default()
    }
}

fn note(nodes: usize, history_days: u16) -> String {
    format!(
        "PostgreSQL at {}, {nodes} node(s), {history_days} past day(s) of history; Herald's CPU is every node's, the server's from /proc of its processes",
        redact_url(&database_url())
    )
}

/// S7: S1 on PostgreSQL (fan-out 1, batches of 100 from 4 publishers), on `nodes` nodes.
pub async fn s7(size: Size, nodes: usize, history_days: u16) -> Outcome {
    let description = format!("S1 on PostgreSQL (fan-out 1, batch publish), {nodes} node(s)");
    const TARGET: &str = ">= 10,000 deliveries/s";
    let bare = bare_rate(size.bare_requests, PER_STREAM).await;
    let mut cluster = match Cluster::start(nodes, history_days).await {
        Ok(cluster) => cluster,
        Err(reason) => return skipped("S7", description, TARGET, reason),
    };
    let n = size.batch_events;
    let clock = Clock::new(n);
    let receipts = Arc::new(Receipts::default());
    let url = receiver::start(Behaviour::Ok, clock.clone(), receipts.clone()).await;
    cluster.nodes[0].stream(&url, "flow.run.finished").await;
    let cpu = cluster.cpu_seconds();
    cluster.server.begin().await;
    let started = clock.now_us();
    publish_batches_to(&cluster.nodes, &clock, 0..n, 100, 4, "flow.run.finished").await;
    let all = wait_until(Duration::from_secs(600), || {
        receipts.count.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    let server_cpu = cluster.server.used().await;
    let seconds = (receipts.last_us.load(Ordering::Relaxed) - started) as f64 / 1e6;
    let deliveries = receipts.count.load(Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *receipts.latencies_us.lock().unwrap());
    let per_delivery = |cpu: f64| cpu * 1e6 / deliveries.max(1) as f64;
    let deliveries_per_s = deliveries as f64 / seconds;
    Outcome {
        scenario: "S7",
        description,
        events: n as u64,
        deliveries,
        seconds,
        events_per_s: n as f64 / seconds,
        deliveries_per_s,
        bare_per_s: Some(bare),
        ratio_to_bare: Some(deliveries_per_s / bare),
        latency_ms: scenarios::percentiles(&mut latencies),
        cpu_us_per_delivery: per_delivery(cluster.cpu_seconds() - cpu),
        server_cpu_us_per_delivery: server_cpu.map(per_delivery),
        nodes: cluster.nodes.len(),
        peak_rss_mib: cluster
            .nodes
            .iter()
            .map(Herald::peak_rss_mib)
            .fold(0.0, f64::max),
        target: TARGET,
        met: Some(all && deliveries_per_s >= 10_000.0),
        note: note(cluster.nodes.len(), history_days),
        ..Outcome::default()
    }
}

/// S9: S2 on PostgreSQL: single-event publishes from `publishers` publishers spread over
/// `nodes` nodes, fan-out 1. Its target is for 64 publishers ([`SINGLE_PUBLISHERS`]), and
/// judged only then: other counts show what a node's share of the publishers does to its
/// group commits.
pub async fn s9(size: Size, nodes: usize, publishers: usize, history_days: u16) -> Outcome {
    let description = format!(
        "single-event publish on PostgreSQL, {publishers} concurrent publishers, fan-out 1, {nodes} node(s)"
    );
    const TARGET: &str =
        ">= 8,000 events/s acknowledged and delivered, ack p99 <= 20 ms, with 64 publishers";
    let mut cluster = match Cluster::start(nodes, history_days).await {
        Ok(cluster) => cluster,
        Err(reason) => return skipped("S9", description, TARGET, reason),
    };
    cluster.server.begin().await;
    let mut out = scenarios::single_publishes(&cluster.nodes, publishers, size).await;
    let server_cpu = cluster.server.used().await;
    out.server_cpu_us_per_delivery = server_cpu.map(|cpu| cpu * 1e6 / out.deliveries.max(1) as f64);
    out.scenario = "S9";
    out.description = description;
    out.nodes = cluster.nodes.len();
    out.target = TARGET;
    out.met = (publishers == SINGLE_PUBLISHERS).then(|| {
        out.events_per_s >= 8_000.0
            && out.deliveries_per_s >= 8_000.0
            && out.deliveries >= out.events
            && out.ack_latency_ms.is_some_and(|p| p.p99 <= 20.0)
    });
    out.note = format!("{}; {}", out.note, note(cluster.nodes.len(), history_days));
    out
}

/// The server's CPU spent for Herald's sessions in one schema, and its background work.
struct ServerCpu {
    client: tokio_postgres::Client,
    application_name: String,
    /// CPU seconds of each process when measuring began.
    start: HashMap<u32, f64>,
}

impl ServerCpu {
    async fn connect(url: &str, application_name: &str) -> Result<ServerCpu, String> {
        let target = parse_url(url).map_err(|e| e.to_string())?;
        let client = target.open().await.map_err(|e| e.to_string())?;
        Ok(ServerCpu {
            client,
            application_name: application_name.to_string(),
            start: HashMap::new(),
        })
    }

    /// The server processes measured, and their CPU seconds so far (`None`: none readable).
    async fn sample(&self) -> Option<HashMap<u32, f64>> {
        let rows = self
            .client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 OR backend_type IN ('walwriter', 'checkpointer', 'background writer', \
                 'autovacuum launcher', 'autovacuum worker')",
                &[&self.application_name],
            )
            .await
            .ok()?;
        let cpu: HashMap<u32, f64> = rows
            .iter()
            .filter_map(|row| {
                let pid = row.get::<_, i32>(0) as u32;
                Some((pid, cpu_seconds(pid)?))
            })
            .collect();
        (!cpu.is_empty()).then_some(cpu)
    }

    async fn begin(&mut self) {
        self.start = self.sample().await.unwrap_or_default();
    }

    /// CPU seconds since `begin` (processes that started since count from zero).
    async fn used(&self) -> Option<f64> {
        let now = self.sample().await?;
        Some(
            now.iter()
                .map(|(pid, cpu)| cpu - self.start.get(pid).copied().unwrap_or(0.0))
                .sum(),
        )
    }
}
