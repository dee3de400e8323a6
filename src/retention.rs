//! Retention: once an hour (on the injected clock) deletes events older than
//! `event_retention_days` that have nothing pending, with their deliveries and attempts, and
//! drops response bodies older than `response_body_retention_days`. Work goes in bounded
//! chunks so the writer is never held for long.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Millis};
use crate::store::Store;

const SWEEP_INTERVAL_MS: Millis = 3_600_000;
const CHUNK: usize = 2_000;
const DAY_MS: Millis = 86_400_000;

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// 0 keeps events forever.
    pub event_days: u64,
    /// 0 keeps response bodies as long as their events.
    pub response_body_days: u64,
}

impl Retention {
    fn cutoffs(&self, now: Millis) -> (Option<Millis>, Option<Millis>) {
        let cutoff = |days: u64| (days > 0).then(|| now - days as Millis * DAY_MS);
        (cutoff(self.event_days), cutoff(self.response_body_days))
    }
}

pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Retention,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    if retention.event_days == 0 && retention.response_body_days == 0 {
        return;
    }
    while !shutdown.is_cancelled() {
        let now = clock.now_ms();
        let (events_before, bodies_before) = retention.cutoffs(now);
        loop {
            match store.sweep(events_before, bodies_before, CHUNK).await {
                Ok(swept) => {
                    if swept.events > 0 || swept.bodies > 0 {
                        tracing::info!(
                            events = swept.events,
                            bodies = swept.bodies,
                            "retention sweep"
                        );
                    }
                    if (swept.events as usize) < CHUNK && (swept.bodies as usize) < CHUNK {
                        break;
                    }
                }
                Err(e) => {
                    metrics.store_error(crate::metrics::StoreCaller::Retention, &e);
                    tracing::warn!(error = %e, "retention sweep failed; trying again next hour");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = clock.sleep_until(now + SWEEP_INTERVAL_MS) => {}
        }
    }
}
