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
    /// Events go a whole UTC day at a time: those of a day are removed once the day is
    /// `event_days` behind the start of today, so an event is kept between `event_days`
    /// and one day more. On PostgreSQL that is a drop of the day's partitions rather than a
    /// delete of every row. Response bodies go when they are `response_body_days` old.
    fn cutoffs(&self, now: Millis) -> (Option<Millis>, Option<Millis>) {
        let today = now - now.rem_euclid(DAY_MS);
        let events = (self.event_days > 0).then(|| today - self.event_days as Millis * DAY_MS);
        let bodies =
            (self.response_body_days > 0).then(|| now - self.response_body_days as Millis * DAY_MS);
        (events, bodies)
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
