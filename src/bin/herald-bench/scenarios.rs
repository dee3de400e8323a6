//! The scenarios, S1 to S6, S8 and S10 to S12 (S7 and S9, on PostgreSQL, are in `postgres`). Each starts its own Herald process, its own receivers and its own
//! publishers, drives the load, and reports what it measured. Throughput scenarios first
//! measure the bare rate: Herald's own webhook client posting the same bodies straight to the
//! same kind of receiver with the same concurrency, so the ratio holds where absolute numbers
//! drift.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald::catalog::Catalog;
use herald::destinations::webhook::WebhookConfig;
use herald::destinations::{
    Destination, DestinationPolicy, Destinations, Message, PayloadFormat, StreamContext,
};
use herald::net::ssrf::AddressPolicy;
use herald::secret::{Secret, StreamSecret};
use serde_json::{Value, json};

use crate::moto::Moto;
use crate::receiver::{self, Behaviour, Clock, Receipts};
use crate::target::{Herald, wait_until};

/// Herald's default concurrency for one stream, which the bare rate uses too.
pub const PER_STREAM: usize = 32;

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub batch_events: usize,
    pub fanout_events: usize,
    pub seconds: f64,
    pub backlog_small: usize,
    pub backlog_large: usize,
    pub bare_requests: usize,
    /// How long S11's receiver is down.
    pub outage_seconds: u64,
}

impl Size {
    pub const FULL: Size = Size {
        batch_events: 100_000,
        fanout_events: 20_000,
        seconds: 10.0,
        backlog_small: 10_000,
        backlog_large: 1_000_000,
        bare_requests: 100_000,
        outage_seconds: 60,
    };
    pub const QUICK: Size = Size {
        batch_events: 2_000,
        fanout_events: 200,
        seconds: 1.0,
        backlog_small: 500,
        backlog_large: 2_000,
        bare_requests: 2_000,
        outage_seconds: 3,
    };
}

/// What one scenario measured. Rates are per second, latencies in milliseconds.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub description: String,
    pub events: u64,
    pub deliveries: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub deliveries_per_s: f64,
    pub bare_per_s: Option<f64>,
    pub ratio_to_bare: Option<f64>,
    pub latency_ms: Option<Percentiles>,
    pub ack_latency_ms: Option<Percentiles>,
    /// Herald's CPU per delivery, every node's.
    pub cpu_us_per_delivery: f64,
    /// The database server's CPU per delivery (S7, S9), when it could be read.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Herald processes (S7, S9 with `--nodes`).
    pub nodes: usize,
    pub peak_rss_mib: f64,
    pub target: &'static str,
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

pub fn percentiles(samples_us: &mut [u64]) -> Option<Percentiles> {
    if samples_us.is_empty() {
        return None;
    }
    samples_us.sort_unstable();
    let at = |q: f64| {
        let i = ((samples_us.len() as f64 * q).ceil() as usize).clamp(1, samples_us.len()) - 1;
        samples_us[i] as f64 / 1000.0
    };
    Some(Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    })
}

fn event(n: usize, event_type: &str) -> Value {
    json!({
        "id": format!("bench-{n}"),
        "source": "/bench",
        "type": event_type,
        "platformid": "plat-bench",
        "projectid": "proj-bench",
        "data": {"flowRun": {"id": format!("run-{n}"), "status": "SUCCEEDED", "flowId": "flow-7",
                 "startTime": "2025-01-29T18:08:43.440Z", "duration": 1234}}
    })
}

/// A body of the size Herald sends, for the bare rate.
fn sample_body() -> Vec<u8> {
    let mut e = event(0, "flow.run.finished");
    e["specversion"] = json!("1.0");
    e["time"] = json!("2025-01-29T18:08:43.440Z");
    e["datacontenttype"] = json!("application/json");
    serde_json::to_vec(&e).unwrap()
}

/// Posts one publish request and insists it is accepted.
async fn publish(http: &reqwest::Client, base: &str, content_type: &str, body: Vec<u8>) {
    let response = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(crate::target::TOKEN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("herald answers");
    let status = response.status();
    assert_eq!(status, 202, "{}", response.text().await.unwrap_or_default());
}

/// Publishes events `range` in batches of `batch` with `concurrency` requests in flight.
async fn publish_batches(
    herald: &Herald,
    clock: &Arc<Clock>,
    range: std::ops::Range<usize>,
    batch: usize,
    concurrency: usize,
    event_type: &str,
) {
    publish_batches_to(
        std::slice::from_ref(herald),
        clock,
        range,
        batch,
        concurrency,
        event_type,
    )
    .await
}

/// [`publish_batches`] with the publishers spread over `nodes` (round-robin).
pub async fn publish_batches_to(
    nodes: &[Herald],
    clock: &Arc<Clock>,
    range: std::ops::Range<usize>,
    batch: usize,
    concurrency: usize,
    event_type: &str,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let herald = &nodes[i % nodes.len()];
        let (next, clock, http, base) = (
            next.clone(),
            clock.clone(),
            herald.http.clone(),
            herald.base.clone(),
        );
        let event_type = event_type.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= end {
                    break;
                }
                let last = (first + batch).min(end);
                let events: Vec<Value> = (first..last).map(|n| event(n, &event_type)).collect();
                let body = serde_json::to_vec(&events).unwrap();
                for n in first..last {
                    clock.mark_published(n);
                }
                publish(&http, &base, "application/cloudevents-batch+json", body).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Herald's webhook client posting `requests` bodies straight to a receiver, `concurrency` at
/// a time: the ceiling for the delivery scenarios.
pub async fn bare_rate(requests: usize, concurrency: usize) -> f64 {
    let clock = Clock::new(0);
    let receipts = Arc::new(Receipts::default());
    let url = receiver::start(Behaviour::Ok, clock, receipts.clone()).await;
    let destinations = Destinations::new(
        AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]),
        Duration::from_secs(15),
        DestinationPolicy {
            allow_http: true,
            ..DestinationPolicy::default()
        },
    );
    let destination = Destination::Webhook(WebhookConfig::new(url, None));
    let secrets = [StreamSecret {
        secret: Secret::new(herald::ids::signing_secret()),
        created_at: 0,
        expires_at: None,
    }];
    let context = StreamContext {
        tenant_id: "ten_bench",
        stream_id: "est_bench",
        encoding: destination.encoding(PayloadFormat::Cloudevents, None),
        secrets: &secrets,
    };
    let client = Arc::new(destination.build(context, &destinations).unwrap());
    let raw = serde_json::value::RawValue::from_string(String::from_utf8(sample_body()).unwrap())
        .unwrap();
    let event = Arc::new(
        herald::event::parse_event(&raw, &Catalog::builtin(), 0, "/bench")
            .expect("the sample event is valid"),
    );
    let left = Arc::new(AtomicUsize::new(requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, event, left) = (client.clone(), event.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let message = Message {
                    id: "dlv_bench",
                    tenant_id: "ten_bench",
                    event: &event,
                };
                let report = client
                    .health_check(message, herald::clock::system_now_ms())
                    .await;
                assert_eq!(report.response_status, Some(200), "{:?}", report.error);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    requests as f64 / started.elapsed().as_secs_f64()
}

/// The figures every delivery scenario reports.
fn delivery_outcome(
    herald: &Herald,
    receipts: &Receipts,
    cpu_before: f64,
    events: usize,
    seconds: f64,
) -> Outcome {
    let deliveries = receipts.count.load(Ordering::Relaxed);
    let cpu = herald.cpu_seconds() - cpu_before;
    let mut latencies = std::mem::take(&mut *receipts.latencies_us.lock().unwrap());
    Outcome {
        events: events as u64,
        deliveries,
        seconds,
        events_per_s: events as f64 / seconds,
        deliveries_per_s: deliveries as f64 / seconds,
        latency_ms: percentiles(&mut latencies),
        cpu_us_per_delivery: cpu * 1e6 / deliveries.max(1) as f64,
        peak_rss_mib: herald.peak_rss_mib(),
        ..Outcome::default()
    }
}

/// What a throughput scenario must reach, besides delivering every event.
struct Goal {
    target: &'static str,
    reached: fn(&Outcome) -> bool,
}

/// S1's and S4's goal: half the bare rate; the ratio drifts less between runs than the rate.
const HALF_BARE: Goal = Goal {
    target: "deliveries/s >= 0.5 x bare",
    reached: |out| out.ratio_to_bare.is_some_and(|r| r >= 0.5),
};

/// S1: fan-out 1, batches of 100, as fast as possible.
pub async fn s1(size: Size) -> Outcome {
    let mut out = throughput(size, 1, size.batch_events, &[], HALF_BARE).await;
    out.scenario = "S1";
    out.description = "fan-out 1, batch publish (100 per request)".into();
    out
}

/// Publishes `n` events in batches of 100 to `fanout` streams, each with its own receiver,
/// and compares the delivery rate with the bare rate at the same total concurrency. `env`
/// goes to Herald on top of the bench's settings.
async fn throughput(
    size: Size,
    fanout: usize,
    n: usize,
    env: &[(&str, String)],
    goal: Goal,
) -> Outcome {
    let bare = bare_rate(size.bare_requests, PER_STREAM * fanout).await;
    let herald = Herald::start(env);
    let clock = Clock::new(n);
    let receipts = Arc::new(Receipts::default());
    for _ in 0..fanout {
        let url = receiver::start(Behaviour::Ok, clock.clone(), receipts.clone()).await;
        herald.stream(&url, "flow.run.finished").await;
    }
    let cpu = herald.cpu_seconds();
    let started = clock.now_us();
    publish_batches(&herald, &clock, 0..n, 100, 4, "flow.run.finished").await;
    let all = wait_until(Duration::from_secs(600), || {
        receipts.count.load(Ordering::Relaxed) >= (fanout * n) as u64
    })
    .await;
    let seconds = (receipts.last_us.load(Ordering::Relaxed) - started) as f64 / 1e6;
    let mut out = delivery_outcome(&herald, &receipts, cpu, n, seconds);
    out.bare_per_s = Some(bare);
    out.ratio_to_bare = Some(out.deliveries_per_s / bare);
    out.target = goal.target;
    out.met = Some(all && (goal.reached)(&out));
    out
}

/// S2: single-event publishes from 64 concurrent publishers.
pub async fn s2(size: Size) -> Outcome {
    let herald = Herald::start(&[]);
    let mut out = single_publishes(std::slice::from_ref(&herald), SINGLE_PUBLISHERS, size).await;
    out.scenario = "S2";
    out.description = "single-event publish, 64 concurrent publishers".into();
    out.target = ">= 10,000 events/s acknowledged, ack p99 <= 20 ms";
    out.met =
        Some(out.events_per_s >= 10_000.0 && out.ack_latency_ms.is_some_and(|p| p.p99 <= 20.0));
    out.note = "deliveries (fan-out 1) run during the publishing".into();
    out
}

/// The concurrent publishers of S2 and S9, whose targets are set for this many.
pub const SINGLE_PUBLISHERS: usize = 64;

/// Single-event publishes from `publishers` concurrent publishers spread over `nodes` for
/// `size.seconds`, fan-out 1, then waits for every acknowledged event to be delivered.
/// `events_per_s` is the acknowledged rate over the publishing; `deliveries_per_s` the
/// delivered rate, to the last receipt.
pub async fn single_publishes(nodes: &[Herald], publishers: usize, size: Size) -> Outcome {
    let capacity = 2_000_000;
    let clock = Clock::new(capacity);
    let receipts = Arc::new(Receipts::default());
    let url = receiver::start(Behaviour::Ok, clock.clone(), receipts.clone()).await;
    nodes[0].stream(&url, "flow.run.finished").await;
    let cpu_of = |nodes: &[Herald]| nodes.iter().map(Herald::cpu_seconds).sum::<f64>();
    let cpu = cpu_of(nodes);
    let next = Arc::new(AtomicUsize::new(0));
    let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs_f64(size.seconds);
    let started = Instant::now();
    let started_us = clock.now_us();
    let mut tasks = Vec::new();
    for i in 0..publishers {
        let herald = &nodes[i % nodes.len()];
        let (next, clock, acks, http, base) = (
            next.clone(),
            clock.clone(),
            acks.clone(),
            herald.http.clone(),
            herald.base.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::to_vec(&event(n, "flow.run.finished")).unwrap();
                let sent = Instant::now();
                clock.mark_published(n);
                publish(&http, &base, "application/cloudevents+json", body).await;
                mine.push(sent.elapsed().as_micros() as u64);
            }
            acks.lock().unwrap().extend(mine);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let published = next.load(Ordering::Relaxed).min(capacity);
    let mut ack = std::mem::take(&mut *acks.lock().unwrap());
    let acked = ack.len();
    wait_until(Duration::from_secs(120), || {
        receipts.count.load(Ordering::Relaxed) >= acked as u64
    })
    .await;
    let deliveries = receipts.count.load(Ordering::Relaxed);
    let delivering = (receipts
        .last_us
        .load(Ordering::Relaxed)
        .saturating_sub(started_us)) as f64
        / 1e6;
    let mut latencies = std::mem::take(&mut *receipts.latencies_us.lock().unwrap());
    Outcome {
        events: acked as u64,
        deliveries,
        seconds,
        events_per_s: acked as f64 / seconds,
        deliveries_per_s: deliveries as f64 / delivering.max(seconds),
        latency_ms: percentiles(&mut latencies),
        ack_latency_ms: percentiles(&mut ack),
        cpu_us_per_delivery: (cpu_of(nodes) - cpu) * 1e6 / deliveries.max(1) as f64,
        peak_rss_mib: nodes.iter().map(Herald::peak_rss_mib).fold(0.0, f64::max),
        note: format!("{published} published"),
        ..Outcome::default()
    }
}

/// Publishes `rate` events a second for `seconds`, spread over `types` round-robin.
async fn steady(
    herald: &Herald,
    clock: &Arc<Clock>,
    rate: u64,
    seconds: f64,
    make: impl Fn(usize) -> Value,
) -> usize {
    let total = (rate as f64 * seconds) as usize;
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100) as usize;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut n = 0;
    while n < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - n) {
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            let body = serde_json::to_vec(&make(n)).unwrap();
            let (clock, http, base) = (clock.clone(), herald.http.clone(), herald.base.clone());
            tokio::spawn(async move {
                clock.mark_published(n);
                publish(&http, &base, "application/cloudevents+json", body).await;
                drop(permit);
            });
            n += 1;
        }
    }
    let _ = in_flight.acquire_many(256).await;
    total
}

/// S3: a steady 1,000 events/s, fan-out 1; publish-to-receipt latency.
pub async fn s3(size: Size) -> Outcome {
    let herald = Herald::start(&[]);
    let total = (1_000.0 * size.seconds) as usize;
    let clock = Clock::new(total);
    let receipts = Arc::new(Receipts::default());
    let url = receiver::start(Behaviour::Ok, clock.clone(), receipts.clone()).await;
    herald.stream(&url, "flow.run.finished").await;
    let cpu = herald.cpu_seconds();
    let started = Instant::now();
    let sent = steady(&herald, &clock, 1_000, size.seconds, |n| {
        event(n, "flow.run.finished")
    })
    .await;
    wait_until(Duration::from_secs(60), || {
        receipts.count.load(Ordering::Relaxed) >= sent as u64
    })
    .await;
    let mut out = delivery_outcome(
        &herald,
        &receipts,
        cpu,
        sent,
        started.elapsed().as_secs_f64(),
    );
    out.scenario = "S3";
    out.description = "steady 1,000 events/s, fan-out 1".into();
    out.target = "publish->receipt p50 <= 2 ms, p99 <= 10 ms";
    out.met = out.latency_ms.map(|p| p.p50 <= 2.0 && p.p99 <= 10.0);
    out
}

/// S4: every event goes to 10 streams.
pub async fn s4(size: Size) -> Outcome {
    let mut out = throughput(size, 10, size.fanout_events, &[], HALF_BARE).await;
    out.scenario = "S4";
    out.description = "fan-out 10 (every event to 10 streams)".into();
    out
}

/// S5: 100 streams, 10 of them slow (5 s) or failing (500); the healthy ones' latency.
pub async fn s5(size: Size, s3_p99: Option<f64>) -> Outcome {
    let herald = Herald::start(&[]);
    let total = (1_000.0 * size.seconds) as usize;
    let clock = Clock::new(total);
    let healthy = Arc::new(Receipts::default());
    let unhealthy = Arc::new(Receipts::default());
    let mut types = Vec::new();
    for i in 0..100 {
        let name = format!("bench.s{i}");
        herald.post("/v1/event-types", &json!({"name": name})).await;
        let (behaviour, receipts) = match i % 10 {
            0 if i < 50 => (Behaviour::Slow(Duration::from_secs(5)), &unhealthy),
            0 => (Behaviour::Failing, &unhealthy),
            _ => (Behaviour::Ok, &healthy),
        };
        let url = receiver::start(behaviour, clock.clone(), receipts.clone()).await;
        herald.stream(&url, &name).await;
        types.push(name);
    }
    let cpu = herald.cpu_seconds();
    let started = Instant::now();
    let sent = steady(&herald, &clock, 1_000, size.seconds, |n| {
        event(n, &types[n % types.len()])
    })
    .await;
    let expected_healthy = (0..sent).filter(|n| n % 10 != 0).count() as u64;
    let mut out = beside_unhealthy(
        &herald,
        (&healthy, expected_healthy),
        &unhealthy,
        (cpu, started),
        sent,
        s3_p99,
    )
    .await;
    out.scenario = "S5";
    out.description = "100 streams, 10 slow (5 s) or failing (500)".into();
    out
}

/// What S5 and S8 report: once the healthy receivers got `expected` deliveries (or a minute
/// passed), their latency against `s3_p99`, and what the unhealthy ones saw.
async fn beside_unhealthy(
    herald: &Herald,
    (healthy, expected): (&Receipts, u64),
    unhealthy: &Receipts,
    (cpu, started): (f64, Instant),
    sent: usize,
    s3_p99: Option<f64>,
) -> Outcome {
    wait_until(Duration::from_secs(60), || {
        healthy.count.load(Ordering::Relaxed) >= expected
    })
    .await;
    let mut out = delivery_outcome(herald, healthy, cpu, sent, started.elapsed().as_secs_f64());
    out.target = "healthy streams' p99 <= 2 x S3's p99";
    out.met = match (out.latency_ms, s3_p99) {
        (Some(p), Some(base)) => Some(p.p99 <= 2.0 * base),
        _ => None,
    };
    out.note = format!(
        "S3 p99 {}; {} of {expected} healthy deliveries; the unhealthy endpoints got {} requests",
        s3_p99.map_or("not measured".into(), |v| format!("{v:.2} ms")),
        healthy.count.load(Ordering::Relaxed),
        unhealthy.count.load(Ordering::Relaxed)
    );
    out
}

/// S8: a noisy neighbour. One tenant's 50 streams point at endpoints that never answer (their
/// requests time out after Herald's 15 s), while ten other tenants each have a healthy stream.
/// The noisy tenant publishes 100 events (5,000 deliveries to its hung streams: far more than
/// they can take in the run, so they always have work waiting for a slot), then the healthy
/// streams get 1,000 events/s in all. Their latency must stay close to S3's: what is measured
/// is whether the hung streams hold slots others wait for. What writing a tenant's fan-out
/// costs other tenants' publishes is S12's to measure.
pub async fn s8(size: Size, s3_p99: Option<f64>) -> Outcome {
    let herald = Herald::start(&[]);
    let total = (1_000.0 * size.seconds) as usize;
    let clock = Clock::new(total);
    let healthy = Arc::new(Receipts::default());
    let hung = Arc::new(Receipts::default());
    let hung_url = receiver::start(
        Behaviour::Slow(Duration::from_secs(600)),
        clock.clone(),
        hung.clone(),
    )
    .await;
    herald
        .post("/v1/tenants", &json!({"id": "ten_noisy", "name": "noisy"}))
        .await;
    for _ in 0..50 {
        herald
            .stream_in("ten_noisy", &hung_url, "user.created")
            .await;
    }
    const QUIET: usize = 10;
    for i in 0..QUIET {
        let tenant = format!("ten_quiet{i}");
        herald
            .post("/v1/tenants", &json!({"id": tenant, "name": tenant}))
            .await;
        let url = receiver::start(Behaviour::Ok, clock.clone(), healthy.clone()).await;
        herald.stream_in(&tenant, &url, "flow.run.finished").await;
    }
    let burst: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("noisy-{i}"), "type": "user.created", "tenant": "ten_noisy"}))
        .collect();
    publish(
        &herald.http,
        &herald.base,
        "application/cloudevents-batch+json",
        serde_json::to_vec(&burst).unwrap(),
    )
    .await;
    wait_until(Duration::from_secs(30), || {
        hung.count.load(Ordering::Relaxed) >= 50
    })
    .await;
    let cpu = herald.cpu_seconds();
    let started = Instant::now();
    let sent = steady(&herald, &clock, 1_000, size.seconds, |n| {
        let mut e = event(n, "flow.run.finished");
        e["tenant"] = json!(format!("ten_quiet{}", n % QUIET));
        e
    })
    .await;
    let expected = sent as u64;
    let mut out = beside_unhealthy(
        &herald,
        (&healthy, expected),
        &hung,
        (cpu, started),
        sent,
        s3_p99,
    )
    .await;
    out.scenario = "S8";
    out.description = "a noisy tenant: 50 hung streams; 10 healthy streams in other tenants".into();
    out
}

/// Drains a backlog of `n` pending deliveries: published while the stream is paused, then the
/// stream is enabled. Returns (drain rate, peak RSS during the whole run, CPU per delivery).
async fn drain(n: usize) -> (f64, f64, f64) {
    let herald = Herald::start(&[]);
    let clock = Clock::new(n);
    let receipts = Arc::new(Receipts::default());
    let url = receiver::start(Behaviour::Ok, clock.clone(), receipts.clone()).await;
    let stream = herald.stream(&url, "flow.run.finished").await;
    herald
        .patch(
            &format!("/v1/event-streams/{stream}"),
            &json!({"status": "paused"}),
        )
        .await;
    publish_batches(&herald, &clock, 0..n, 1_000, 2, "flow.run.finished").await;
    let cpu = herald.cpu_seconds();
    let started = Instant::now();
    herald
        .patch(
            &format!("/v1/event-streams/{stream}"),
            &json!({"status": "enabled"}),
        )
        .await;
    wait_until(Duration::from_secs(3_600), || {
        receipts.count.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = (herald.cpu_seconds() - cpu) * 1e6 / n as f64;
    (n as f64 / seconds, herald.peak_rss_mib(), cpu_us)
}

/// S6: draining a large backlog as fast as a small one, in bounded memory.
pub async fn s6(size: Size) -> Outcome {
    let (small_rate, _, _) = drain(size.backlog_small).await;
    let (large_rate, rss, cpu_us) = drain(size.backlog_large).await;
    Outcome {
        scenario: "S6",
        description: format!(
            "backlog of {} pending deliveries (vs {})",
            size.backlog_large, size.backlog_small
        ),
        events: size.backlog_large as u64,
        deliveries: size.backlog_large as u64,
        deliveries_per_s: large_rate,
        bare_per_s: None,
        ratio_to_bare: None,
        cpu_us_per_delivery: cpu_us,
        peak_rss_mib: rss,
        target: "drain rate within 20% of a 10k backlog's; RSS <= 256 MiB",
        met: Some(large_rate >= 0.8 * small_rate && rss <= 256.0),
        note: format!("small backlog drained at {small_rate:.0}/s"),
        ..Outcome::default()
    }
}

/// S10: the batching path. Events to an EventBridge stream against moto (no authentication),
/// which takes them ten to a `PutEvents` call. A correctness-with-load check: every event must
/// be delivered once and none fail; the rate is moto's (a Python server), not Herald's.
pub async fn s10(size: Size) -> Outcome {
    const TARGET: &str = "every event delivered, none failed (the rate is moto's)";
    let description = "EventBridge against moto, 10 entries a call".to_string();
    let moto = match Moto::start().await {
        Ok(moto) => moto,
        Err(reason) => {
            return Outcome {
                scenario: "S10",
                description,
                target: TARGET,
                note: format!("skipped: {reason}"),
                ..Outcome::default()
            };
        }
    };
    moto.events("AWSEvents.CreateEventBus", &json!({"Name": "bench"}))
        .await;
    let n = size.fanout_events / 2;
    let herald = Herald::start(&[]);
    let stream = herald
        .post(
            "/v1/event-streams",
            &json!({
                "name": "bus",
                "subscriptions": [{"event_type": "flow.run.finished"}],
                "destination": {"type": "eventbridge", "configuration": {
                    "aws_account_id": "123456789012", "aws_region": "us-east-1",
                    "event_bus_name": "bench", "endpoint_url": moto.endpoint,
                    "aws_access_key_id": "AKIABENCH00000000000", "aws_secret_access_key": "bench"}},
                "retry_policy": {"max_attempts": 100, "initial_interval_seconds": 1, "jitter": 0},
            }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let clock = Clock::new(n);
    let cpu = herald.cpu_seconds();
    let started = std::time::Instant::now();
    publish_batches(&herald, &clock, 0..n, 100, 4, "flow.run.finished").await;
    let stats = |herald: &Herald| {
        let (http, url) = (
            herald.http.clone(),
            format!("{}/v1/event-streams/{stream}/stats", herald.base),
        );
        async move {
            let body: Value = http
                .get(url)
                .bearer_auth(crate::target::TOKEN)
                .send()
                .await
                .expect("herald answers")
                .json()
                .await
                .unwrap_or(Value::Null);
            let count = |k: &str| body["total"][k].as_u64().unwrap_or(0);
            (count("succeeded"), count("failed"))
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let (succeeded, failed) = loop {
        let (succeeded, failed) = stats(&herald).await;
        if succeeded + failed >= n as u64 || std::time::Instant::now() > deadline {
            break (succeeded, failed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu_used = herald.cpu_seconds() - cpu;
    Outcome {
        scenario: "S10",
        description,
        events: n as u64,
        deliveries: succeeded,
        seconds,
        events_per_s: n as f64 / seconds,
        deliveries_per_s: succeeded as f64 / seconds,
        cpu_us_per_delivery: cpu_used * 1e6 / succeeded.max(1) as f64,
        peak_rss_mib: herald.peak_rss_mib(),
        target: TARGET,
        met: Some(succeeded == n as u64 && failed == 0),
        note: format!("{succeeded} delivered, {failed} failed of {n}; Herald's CPU only"),
        ..Outcome::default()
    }
}

/// S11: a receiver down for a minute with a backlog behind it, then back. The stream's circuit
/// opens and probes; once the receiver answers, the backlog drains without an operator.
pub async fn s11(size: Size) -> Outcome {
    let herald = Herald::start(&[]);
    let n = size.backlog_small;
    let clock = Clock::new(n);
    let receipts = Arc::new(Receipts::default());
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let url = receiver::start(
        Behaviour::DownWhile(down.clone()),
        clock.clone(),
        receipts.clone(),
    )
    .await;
    herald.stream(&url, "flow.run.finished").await;
    let outage = Instant::now();
    publish_batches(&herald, &clock, 0..n, 1_000, 2, "flow.run.finished").await;
    tokio::time::sleep(Duration::from_secs(size.outage_seconds).saturating_sub(outage.elapsed()))
        .await;
    down.store(false, Ordering::SeqCst);
    let during_outage = receipts.count.load(Ordering::Relaxed);
    let cpu = herald.cpu_seconds();
    let back = Instant::now();
    wait_until(Duration::from_secs(600), || {
        receipts.ok.load(Ordering::Relaxed) >= 1
    })
    .await;
    let first_success = back.elapsed().as_secs_f64();
    wait_until(Duration::from_secs(3_600), || {
        receipts.ok.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    let seconds = back.elapsed().as_secs_f64();
    let sent_after = receipts.count.load(Ordering::Relaxed) - during_outage;
    const BOUND: u64 = 100;
    Outcome {
        scenario: "S11",
        description: format!(
            "a receiver down {} s with {n} deliveries pending, then back",
            size.outage_seconds
        ),
        events: n as u64,
        deliveries: n as u64,
        seconds,
        deliveries_per_s: n as f64 / seconds,
        cpu_us_per_delivery: (herald.cpu_seconds() - cpu) * 1e6 / n as f64,
        peak_rss_mib: herald.peak_rss_mib(),
        target: "at most 100 requests during the outage; every delivery made once it is back",
        met: Some(during_outage <= BOUND && receipts.ok.load(Ordering::Relaxed) >= n as u64),
        note: format!(
            "{during_outage} requests during the outage; the first success {first_success:.1} s \
             after the receiver came back (the next probe), all {n} delivered {seconds:.1} s after \
             it, in {sent_after} requests"
        ),
        ..Outcome::default()
    }
}

/// Publishes single events at `rate` a second for `seconds`, each made by `make`, and returns
/// when each was sent (since `epoch`) and its acknowledgement latency, in microseconds.
async fn paced_acks(
    herald: &Herald,
    epoch: Instant,
    rate: u64,
    seconds: f64,
    make: impl Fn(usize) -> Value,
) -> Vec<(u64, u64)> {
    let total = (rate as f64 * seconds) as usize;
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        interval.tick().await;
        let body = serde_json::to_vec(&make(n)).unwrap();
        let (http, base) = (herald.http.clone(), herald.base.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            publish(&http, &base, "application/cloudevents+json", body).await;
            (
                sent.duration_since(epoch).as_micros() as u64,
                sent.elapsed().as_micros() as u64,
            )
        }));
    }
    let mut acks = Vec::with_capacity(total);
    for task in tasks {
        acks.push(task.await.unwrap());
    }
    acks
}

/// S12: a large fan-out beside another tenant's single publishes. One tenant has 200 streams
/// subscribed to every event, paused (their deliveries wait, so what is measured is the
/// shared write path rather than delivery), and publishes one batch of 1,000 events: 200,000
/// deliveries. Another tenant publishes single events at 200/s before and throughout; their
/// acknowledgement latency while the fan-out is written is compared with before it.
pub async fn s12(size: Size) -> Outcome {
    const STREAMS: usize = 200;
    const BATCH: usize = 1_000;
    const RATE: u64 = 200;
    let herald = Herald::start(&[("HERALD_MAX_STREAMS_PER_TENANT", STREAMS.to_string())]);
    let clock = Clock::new(0);
    let receipts = Arc::new(Receipts::default());
    let url = receiver::start(Behaviour::Ok, clock.clone(), receipts.clone()).await;
    let mut last = String::new();
    for _ in 0..STREAMS {
        last = herald.stream(&url, "*").await;
        herald
            .patch(
                &format!("/v1/event-streams/{last}"),
                &json!({"status": "paused"}),
            )
            .await;
    }
    herald
        .post("/v1/tenants", &json!({"id": "ten_small", "name": "small"}))
        .await;
    herald
        .stream_in("ten_small", &url, "flow.run.finished")
        .await;
    let small = |offset: usize| {
        move |n: usize| {
            let mut e = event(offset + n, "flow.run.finished");
            e["tenant"] = json!("ten_small");
            e
        }
    };
    let window = size.seconds.max(2.0);
    let epoch = Instant::now();
    let mut before: Vec<u64> = paced_acks(&herald, epoch, RATE, window / 2.0, small(0))
        .await
        .into_iter()
        .map(|(_, ack)| ack)
        .collect();

    let cpu = herald.cpu_seconds();
    let started = Instant::now();
    let big: Vec<Value> = (0..BATCH)
        .map(|n| event(1_000_000 + n, "flow.run.finished"))
        .collect();
    let (http, base) = (herald.http.clone(), herald.base.clone());
    let big = tokio::spawn(async move {
        let sent = Instant::now();
        let body = serde_json::to_vec(&big).unwrap();
        publish(&http, &base, "application/cloudevents-batch+json", body).await;
        sent.elapsed().as_secs_f64() * 1e3
    });
    // The last stream has every event's delivery once the fan-out is written.
    let backlog = format!("{}/v1/event-streams/{last}/backlog", herald.base);
    let http = herald.http.clone();
    let written = tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(600) {
            let pending = http
                .get(&backlog)
                .bearer_auth(crate::target::TOKEN)
                .send()
                .await
                .expect("herald answers")
                .json::<Value>()
                .await
                .ok()
                .and_then(|b| b["pending"].as_u64());
            if pending == Some(BATCH as u64) {
                return Some(started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    let acks = paced_acks(&herald, epoch, RATE, window, small(100_000)).await;
    let big_ack_ms = big.await.unwrap();
    let written_s = written.await.unwrap();
    let written = written_s.is_some();
    let written_s = written_s.unwrap_or(f64::NAN);
    // Those sent while the fan-out was being written.
    let end_us = (started.duration_since(epoch).as_secs_f64() + written_s) * 1e6;
    let mut during: Vec<u64> = acks
        .into_iter()
        .filter(|&(sent, _)| (sent as f64) < end_us)
        .map(|(_, ack)| ack)
        .collect();
    let deliveries = (STREAMS * BATCH) as u64;
    let before = percentiles(&mut before).unwrap_or_default();
    let samples = during.len();
    let during_p = percentiles(&mut during);
    let p99 = during_p.map_or(f64::INFINITY, |p| p.p99);
    Outcome {
        scenario: "S12",
        description: format!(
            "one publish of {BATCH} events to {STREAMS} streams beside another tenant's single publishes ({RATE}/s)"
        ),
        events: BATCH as u64,
        deliveries,
        seconds: written_s,
        deliveries_per_s: deliveries as f64 / written_s,
        ack_latency_ms: during_p,
        cpu_us_per_delivery: (herald.cpu_seconds() - cpu) * 1e6 / deliveries as f64,
        peak_rss_mib: herald.peak_rss_mib(),
        target: "the other tenant's ack p99 within 5 ms of its p99 before the fan-out",
        met: Some(written && p99 <= before.p99 + 5.0),
        note: format!(
            "ack latency of the {} publishes sent while the fan-out was written; before it: p50 {:.1} ms, p99 {:.1} ms; the large publish was acknowledged in {big_ack_ms:.0} ms and its {deliveries} deliveries written in {written_s:.1} s{}",
            samples,
            before.p50,
            before.p99,
            if written { "" } else { " (NOT all written)" }
        ),
        ..Outcome::default()
    }
}
