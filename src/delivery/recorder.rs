//! The recorder: stores attempt outcomes in batches. Attempts hand their records over and
//! move on; the recorder takes everything waiting and writes it with one store call, so a
//! busy dispatcher costs one commit job per batch rather than one per attempt. What the
//! records changed (a stream disabled, notices published) is passed on through the
//! dispatcher's [`Signal`].
//!
//! A record not yet stored when the process dies is lost with its attempt's outcome, but not
//! the delivery: it is still pending and is attempted again after the restart. A batch the
//! store refuses is given back the same way (at-least-once).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Signal;
use crate::clock::Clock;
use crate::store::{AttemptRecord, DeliveryStatus, Store};

const MAX_BATCH: usize = 512;
/// While the store is unreachable, a batch is offered again this often, this many times:
/// an outcome kept is an attempt not repeated.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
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

/// Starts the recorder. It stops once every `Handle` is dropped and what they sent is stored.
pub fn start(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signal: Arc<Signal>,
) -> (Handle, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Handle(tx), tokio::spawn(run(store, clock, signal, rx)))
}

async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signal: Arc<Signal>,
    mut records: mpsc::UnboundedReceiver<AttemptRecord>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while records.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let count = batch.len();
        // Given back if the batch cannot be stored, so the deliveries are claimed again.
        let leases: Vec<(i64, i64)> = batch.iter().map(|r| (r.key, r.lease)).collect();
        let streams: Vec<String> = batch.iter().map(|r| r.stream_id.clone()).collect();
        // Streams with retries scheduled: once stored, the dispatcher learns their due times.
        let retrying: Vec<String> = batch
            .iter()
            .filter(|r| r.status == DeliveryStatus::Pending)
            .map(|r| r.stream_id.clone())
            .collect();
        match record(&*store, &*clock, std::mem::take(&mut batch)).await {
            Ok(effects) => {
                for id in &effects.disabled_streams {
                    tracing::warn!(stream = %id, "stream disabled");
                }
                if !effects.disabled_streams.is_empty() {
                    signal.streams_changed();
                }
                signal.wake(effects.woken_streams.iter().chain(&retrying));
            }
            Err(e) => {
                tracing::error!(error = %e, count, "recording attempts failed; they will be attempted again");
                if let Err(e) = store.release(leases, clock.now_ms()).await {
                    tracing::error!(error = %e, "releasing unrecorded deliveries failed; their leases lapse");
                }
                signal.wake(streams.iter());
            }
        }
    }
}

/// Stores a batch, waiting out a short outage of the store.
async fn record(
    store: &dyn Store,
    clock: &dyn Clock,
    batch: Vec<AttemptRecord>,
) -> Result<crate::store::RecordEffects, crate::store::StoreError> {
    for _ in 0..RETRIES {
        match store.record(batch.clone(), clock.now_ms()).await {
            Err(crate::store::StoreError::Unavailable(_)) => {
                tokio::time::sleep(RETRY_EVERY).await;
            }
            result => return result,
        }
    }
    store.record(batch, clock.now_ms()).await
}
