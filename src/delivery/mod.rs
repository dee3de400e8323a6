//! The dispatcher: turns pending deliveries into attempts.
//!
//! It keeps, per enabled stream, how many attempts are in flight and when the stream next has
//! due work. Each round it leases due deliveries only for streams with free capacity (at most
//! `max_in_flight_per_stream` each, `max_in_flight` in all), so a slow or failing endpoint
//! fills only its own slots and never delays another stream. Leases are committed before any
//! request is sent; each attempt's outcome is recorded afterwards (see `store`). Publishes and
//! stream changes wake it through a [`Signal`]; otherwise it sleeps on the injected clock
//! until the next due time.

pub mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, Millis};
use crate::destinations::webhook::signing::SigningKey;
use crate::destinations::{AttemptReport, Destinations, Outcome};
use crate::event::format_time;
use crate::store::{AttemptRecord, ClaimBatch, ClaimRequest, Claimed, SigningSecret, Store};
use crate::stream::{Stream, StreamStatus};

/// How often the dispatcher looks for due work when nothing woke it.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Wait after a failed store call before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Wakes the dispatcher: new deliveries for some streams, or changed stream definitions.
#[derive(Default)]
pub struct Signal {
    notify: Notify,
    woken: Mutex<HashSet<String>>,
    streams_changed: std::sync::atomic::AtomicBool,
}

impl Signal {
    /// Deliveries became due now for these streams.
    pub fn wake<'a>(&self, stream_ids: impl IntoIterator<Item = &'a String>) {
        let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let before = woken.len();
        woken.extend(stream_ids.into_iter().cloned());
        if woken.len() != before {
            drop(woken);
            self.notify.notify_one();
        }
    }

    /// A stream was created, changed or deleted.
    pub fn streams_changed(&self) {
        self.streams_changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn take_woken(&self) -> HashSet<String> {
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn take_streams_changed(&self) -> bool {
        self.streams_changed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub max_in_flight: usize,
    pub max_in_flight_per_stream: usize,
    /// How long a claim lasts; longer than any attempt can take.
    pub lease: Duration,
    pub shutdown_grace: Duration,
}

/// An enabled stream as the dispatcher holds it: its definition and its signing keys.
struct ActiveStream {
    stream: Stream,
    keys: Vec<(SigningKey, Option<Millis>)>,
}

impl ActiveStream {
    fn keys_at(&self, now: Millis) -> Vec<SigningKey> {
        self.keys
            .iter()
            .filter(|(_, expires)| expires.is_none_or(|at| at > now))
            .map(|(key, _)| key.clone())
            .collect()
    }
}

struct StreamSlot {
    active: Arc<ActiveStream>,
    in_flight: usize,
    /// When this stream next has due work; `None` when nothing is known to be pending.
    next_due: Option<Millis>,
}

/// What a finished attempt tells the dispatcher.
struct Done {
    key: i64,
    stream_id: String,
    retry_at: Option<Millis>,
    /// Streams were disabled (this one, by a `410 Gone` or too many failures).
    disabled: bool,
    /// Streams that got deliveries of Herald's notices about this attempt.
    woken: Vec<String>,
}

/// What every attempt needs; shared by the dispatcher and its attempt tasks.
struct Shared {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    destinations: Destinations,
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    signal: Arc<Signal>,
    config: DispatchConfig,
    streams: HashMap<String, StreamSlot>,
    in_flight: usize,
    /// Leases held by running attempts, given back if shutdown cuts them short.
    leases: HashMap<i64, i64>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        destinations: Destinations,
        signal: Arc<Signal>,
        config: DispatchConfig,
    ) -> Dispatcher {
        Dispatcher {
            shared: Arc::new(Shared {
                store,
                clock,
                destinations,
            }),
            signal,
            config,
            streams: HashMap::new(),
            in_flight: 0,
            leases: HashMap::new(),
        }
    }

    /// Runs until `shutdown`, then lets attempts in flight finish for the grace period and
    /// gives back the leases of those that did not.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let tracker = TaskTracker::new();
        let cut_short = CancellationToken::new();
        self.signal.streams_changed();

        while !shutdown.is_cancelled() {
            while let Ok(done) = done_rx.try_recv() {
                self.finished(done);
            }
            if self.signal.take_streams_changed() && !self.reload().await {
                self.pause(&shutdown).await;
                self.signal.streams_changed();
                continue;
            }
            for id in self.signal.take_woken() {
                if let Some(slot) = self.streams.get_mut(&id) {
                    slot.next_due = Some(Millis::MIN);
                }
            }
            let now = self.shared.clock.now_ms();
            let requests = self.requests(now);
            if !requests.is_empty() {
                let lease_until = now + self.config.lease.as_millis() as Millis;
                match self.shared.store.claim(requests, now, lease_until).await {
                    Ok(batches) => {
                        for batch in batches {
                            self.start(batch, &tracker, &done_tx, &cut_short);
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claiming due deliveries failed");
                        self.pause(&shutdown).await;
                        continue;
                    }
                }
            }
            let wake_at = self.next_wake(now);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.signal.notify.notified() => {}
                Some(done) = done_rx.recv() => self.finished(done),
                _ = self.shared.clock.sleep_until(wake_at) => {}
            }
        }

        tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            cut_short.cancel();
            tracker.wait().await;
        }
        while let Ok(done) = done_rx.try_recv() {
            self.finished(done);
        }
        if !self.leases.is_empty() {
            let leases: Vec<_> = self.leases.drain().collect();
            let count = leases.len();
            let now = self.shared.clock.now_ms();
            match self.shared.store.release(leases, now).await {
                Ok(()) => {
                    tracing::info!(count, "released unfinished deliveries for the next start")
                }
                Err(e) => {
                    tracing::warn!(error = %e, count, "could not release leases; they expire on their own")
                }
            }
        }
    }

    async fn pause(&self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(STORE_RETRY) => {}
        }
    }

    /// Reloads the enabled streams and their keys, keeping in-flight counts. False if the
    /// store could not be read.
    async fn reload(&mut self) -> bool {
        let store = &self.shared.store;
        let streams = match store.streams_with_status(StreamStatus::Enabled).await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::error!(error = %e, "loading streams failed");
                return false;
            }
        };
        let now = self.shared.clock.now_ms();
        let mut next = HashMap::with_capacity(streams.len());
        for stream in streams {
            let secrets: Vec<SigningSecret> = match store
                .signing_secrets(&stream.tenant_id, &stream.id, now)
                .await
            {
                Ok(secrets) => secrets,
                Err(e) => {
                    tracing::error!(error = %e, stream = %stream.id, "loading signing secrets failed");
                    return false;
                }
            };
            let keys = secrets
                .iter()
                .filter_map(|s| SigningKey::parse(&s.secret).ok().map(|k| (k, s.expires_at)))
                .collect();
            let previous = self.streams.remove(&stream.id);
            let id = stream.id.clone();
            next.insert(
                id,
                StreamSlot {
                    active: Arc::new(ActiveStream { stream, keys }),
                    in_flight: previous.as_ref().map_or(0, |p| p.in_flight),
                    // Unknown until asked: a changed stream may have become enabled with a backlog.
                    next_due: Some(Millis::MIN),
                },
            );
        }
        // Streams that went away still have attempts finishing; keep counting them.
        for (id, slot) in self.streams.drain() {
            if slot.in_flight > 0 {
                next.insert(
                    id,
                    StreamSlot {
                        next_due: None,
                        ..slot
                    },
                );
            }
        }
        self.streams = next;
        true
    }

    fn requests(&self, now: Millis) -> Vec<ClaimRequest> {
        let mut room = self.config.max_in_flight.saturating_sub(self.in_flight);
        let mut requests = Vec::new();
        for slot in self.streams.values() {
            if room == 0 {
                break;
            }
            let stream = &slot.active.stream;
            let free = self
                .config
                .max_in_flight_per_stream
                .saturating_sub(slot.in_flight);
            if free == 0
                || stream.status != StreamStatus::Enabled
                || slot.next_due.is_none_or(|due| due > now)
            {
                continue;
            }
            let limit = free.min(room);
            room -= limit;
            requests.push(ClaimRequest {
                tenant_id: stream.tenant_id.clone(),
                stream_id: stream.id.clone(),
                limit,
            });
        }
        requests
    }

    fn next_wake(&self, now: Millis) -> Millis {
        let poll = now + POLL_INTERVAL.as_millis() as Millis;
        self.streams
            .values()
            .filter(|s| s.in_flight < self.config.max_in_flight_per_stream)
            .filter_map(|s| s.next_due)
            .fold(poll, Millis::min)
    }

    fn start(
        &mut self,
        batch: ClaimBatch,
        tracker: &TaskTracker,
        done_tx: &mpsc::UnboundedSender<Done>,
        cut_short: &CancellationToken,
    ) {
        let Some(slot) = self.streams.get_mut(&batch.stream_id) else {
            return;
        };
        slot.next_due = batch.next_due;
        for claimed in batch.deliveries {
            slot.in_flight += 1;
            self.in_flight += 1;
            self.leases.insert(claimed.key, claimed.lease);
            let shared = self.shared.clone();
            let active = slot.active.clone();
            let done_tx = done_tx.clone();
            let cut_short = cut_short.clone();
            tracker.spawn(async move {
                let stream_id = claimed.stream_id.clone();
                let key = claimed.key;
                tokio::select! {
                    done = attempt(&shared, &active, claimed) => { let _ = done_tx.send(done); }
                    _ = cut_short.cancelled() => {
                        // The lease stays in `leases` and is released by the dispatcher.
                        tracing::info!(stream = %stream_id, key, "attempt cut short by shutdown");
                    }
                }
            });
        }
    }

    fn finished(&mut self, done: Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.leases.remove(&done.key);
        if let Some(slot) = self.streams.get_mut(&done.stream_id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if let Some(at) = done.retry_at {
                slot.next_due = Some(slot.next_due.map_or(at, |due| due.min(at)));
            }
        }
        if done.disabled {
            self.signal.streams_changed();
        }
        for id in &done.woken {
            if let Some(slot) = self.streams.get_mut(id) {
                slot.next_due = Some(Millis::MIN);
            }
        }
    }
}

/// One attempt of one delivery: send, classify, decide, record.
async fn attempt(shared: &Shared, active: &ActiveStream, claimed: Claimed) -> Done {
    let stream = &active.stream;
    let started_at = shared.clock.now_ms();
    let keys = active.keys_at(started_at);
    let report = shared
        .destinations
        .send(stream, &keys, &claimed.id, &claimed.event, started_at)
        .await;
    let finished_at = shared.clock.now_ms();
    let attempt_number = claimed.attempts + 1;
    let (status, next_attempt_at) = retry::next_step(
        &stream.retry_policy,
        attempt_number,
        &report.outcome,
        finished_at,
        retry::jitter_unit(),
    );
    log_attempt(&claimed, attempt_number, &report, status);
    let gone = report.outcome == Outcome::DisableStream;
    let record = AttemptRecord {
        key: claimed.key,
        lease: claimed.lease,
        tenant_id: claimed.tenant_id.clone(),
        stream_id: claimed.stream_id.clone(),
        delivery_id: claimed.id.clone(),
        event_id: claimed.event.id.clone(),
        event_type: claimed.event.event_type.clone(),
        attempt_number,
        attempted_at: started_at,
        duration_ms: report.duration.as_millis() as i64,
        response_status: report.response_status,
        response_body: report.response_body,
        error_kind: report.error.as_ref().map(|e| e.kind.as_str()),
        error_message: report.error.map(|e| e.message),
        status,
        next_attempt_at,
        disable_stream: gone.then(|| {
            format!(
                "the endpoint answered 410 Gone at {}; re-enable the stream to resume",
                format_time(finished_at)
            )
        }),
        max_consecutive_failures: stream.max_consecutive_failures,
    };
    let effects = match shared.store.record(vec![record], finished_at).await {
        Ok(effects) => effects,
        Err(e) => {
            // The lease expires and the delivery is attempted again: at-least-once holds.
            tracing::error!(error = %e, delivery = %claimed.id, "recording an attempt failed");
            Default::default()
        }
    };
    for id in &effects.disabled_streams {
        tracing::warn!(stream = %id, "stream disabled");
    }
    Done {
        key: claimed.key,
        stream_id: claimed.stream_id,
        retry_at: next_attempt_at,
        disabled: !effects.disabled_streams.is_empty(),
        woken: effects.woken_streams,
    }
}

fn log_attempt(
    claimed: &Claimed,
    attempt: u32,
    report: &AttemptReport,
    status: crate::store::DeliveryStatus,
) {
    let error = report.error.as_ref().map(|e| e.message.as_str());
    if report.outcome == Outcome::Delivered {
        tracing::debug!(delivery = %claimed.id, stream = %claimed.stream_id, attempt, "delivered");
    } else {
        tracing::info!(
            delivery = %claimed.id,
            stream = %claimed.stream_id,
            attempt,
            response_status = report.response_status,
            error,
            next = status.as_str(),
            "attempt failed"
        );
    }
}
