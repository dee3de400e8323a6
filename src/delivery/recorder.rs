//! The recorder: stores attempt outcomes in batches. Attempts hand their records over and
//! move on; the recorder takes everything waiting (while busy, what arrives within a couple
//! of milliseconds too) and writes it with one store call, so a busy dispatcher costs one
//! commit job per batch rather than one per attempt. What the records changed (a stream
//! disabled, notices published) is passed on through the dispatcher's [`Signal`].
//!
//! A record not yet stored when the process dies is lost with its attempt's outcome, but not
//! the delivery: it is still pending and is attempted again after the restart. A batch the
//! store refuses is given back the same way (at-least-once). Waits between tries run on the
//! injected clock; once shutdown begins they run in real time (nothing moves a test's clock
//! then), and the dispatcher stops the recorder after the grace period: what is still
//! unstored then is attempted again after the restart.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Signal;
use crate::clock::{Clock, Millis};
use crate::crashpoint;
use crate::metrics::{Metrics, StoreCaller};
use crate::store::{AttemptRecord, DeliveryStatus, RecordEffects, Store, StoreError};

const MAX_BATCH: usize = 512;
/// A busy recorder waits up to [`GATHER`] for a batch of this many. A batch costs the
/// shared store a transaction and a handful of statements whatever its size, and on a
/// cluster each node records only its share: two nodes' batches were half as large as one
/// node's. Gathering made S9 on two nodes faster (see `BENCHMARKS.md`); an outcome stored a
/// little later delays no delivery.
const SMALL_BATCH: usize = 64;
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// While the store is unreachable, a batch is offered again this often, this many times:
/// an outcome kept is an attempt not repeated.
const RETRY_EVERY_MS: Millis = 1_000;
const RETRIES: usize = 30;

#[derive(Clone)]
pub struct Handle(mpsc::UnboundedSender<AttemptRecord>);

impl Handle {
    pub fn record(&self, record: AttemptRecord) {
        if self.0.send(record).is_err() {
            tracing::error!(
                "the recorder has stopped; an attempt's outcome is lost (its lease will expire)"
            );
        }
    }
}

/// The store and the clock the recorder writes with, and the shutdown that moves its waits
/// to real time.
struct Recording {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Starts the recorder. It stops once every `Handle` is dropped and what they sent is stored.
pub fn start(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signal: Arc<Signal>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (Handle, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let recording = Recording {
        store,
        clock,
        metrics,
        shutdown,
    };
    (Handle(tx), tokio::spawn(run(recording, signal, rx)))
}

async fn run(
    recording: Recording,
    signal: Arc<Signal>,
    mut records: mpsc::UnboundedReceiver<AttemptRecord>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut busy = false;
    while records.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if busy {
            gather(&mut records, &mut batch).await;
        }
        busy = batch.len() > 1;
        let batch = std::mem::take(&mut batch);
        match record(&recording, &batch).await {
            Ok(effects) => stored(&signal, &batch, effects),
            // One record the store refuses must not hold back the others: each is tried
            // alone, and only those refused again are given back.
            Err(e) if batch.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
                tracing::error!(error = %e, count = batch.len(), "recording a batch failed; recording its attempts one by one");
                for one in batch {
                    let single = vec![one];
                    match record(&recording, &single).await {
                        Ok(effects) => stored(&signal, &single, effects),
                        Err(e) => give_back(&recording, &signal, &single, &e).await,
                    }
                }
            }
            Err(e) => give_back(&recording, &signal, &batch, &e).await,
        }
    }
}

/// Adds what arrives within [`GATHER`] to a batch smaller than [`SMALL_BATCH`]. Only while
/// outcomes come in a stream (the last batch had several): a lone outcome is stored at once.
async fn gather(
    records: &mut mpsc::UnboundedReceiver<AttemptRecord>,
    batch: &mut Vec<AttemptRecord>,
) {
    let until = tokio::time::Instant::now() + GATHER;
    while batch.len() < SMALL_BATCH {
        match tokio::time::timeout_at(until, records.recv()).await {
            Ok(Some(record)) => batch.push(record),
            _ => return,
        }
    }
}

/// Passes on what a stored batch changed.
fn stored(signal: &Signal, batch: &[AttemptRecord], effects: RecordEffects) {
    for id in &effects.disabled_streams {
        tracing::warn!(stream = %id, "stream disabled");
    }
    if !effects.disabled_streams.is_empty() {
        signal.streams_changed();
    }
    // Streams with retries scheduled: now stored, the dispatcher learns their due times.
    let retrying = batch
        .iter()
        .filter(|r| r.status == DeliveryStatus::Pending)
        .map(|r| &r.stream_id);
    signal.wake(effects.woken_streams.iter().chain(retrying));
    if effects.fan_out_pending {
        signal.fan_out_pending();
    }
}

/// Gives back the leases of attempts that could not be stored, so they are made again.
async fn give_back(
    recording: &Recording,
    signal: &Signal,
    batch: &[AttemptRecord],
    error: &StoreError,
) {
    tracing::error!(error = %error, count = batch.len(), "recording attempts failed; they will be attempted again");
    let leases = batch.iter().map(|r| (r.key, r.lease)).collect();
    let now = recording.clock.now_ms();
    if let Err(e) = recording.store.release(leases, now).await {
        recording.metrics.store_error(StoreCaller::Recorder, &e);
        tracing::error!(error = %e, "releasing unrecorded deliveries failed; their leases lapse");
    }
    signal.wake(batch.iter().map(|r| &r.stream_id));
}

/// Stores a batch, waiting out a short outage of the store.
async fn record(
    recording: &Recording,
    batch: &[AttemptRecord],
) -> Result<RecordEffects, StoreError> {
    let clock = &*recording.clock;
    let mut retries = 0;
    loop {
        crashpoint::hit(crashpoint::RECORDER_BEFORE_RECORD);
        let result = recording.store.record(batch.to_vec(), clock.now_ms()).await;
        if result.is_ok() {
            crashpoint::hit(crashpoint::RECORDER_AFTER_RECORD);
        }
        if let Err(e) = &result {
            recording.metrics.store_error(StoreCaller::Recorder, e);
        }
        match result {
            Err(StoreError::Unavailable(_)) if retries < RETRIES => {
                retries += 1;
                let wait = std::time::Duration::from_millis(RETRY_EVERY_MS as u64);
                if recording.shutdown.is_cancelled() {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                tokio::select! {
                    _ = clock.sleep_until(clock.now_ms() + RETRY_EVERY_MS) => {}
                    // Shutdown: the rest of the wait runs in real time.
                    _ = recording.shutdown.cancelled() => tokio::time::sleep(wait).await,
                }
            }
            result => return result,
        }
    }
}
