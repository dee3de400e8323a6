//! The fan-out worker: creates, a chunk at a time, the deliveries of publishes too large to
//! write in their own commit (see `store::fanout`), and wakes the dispatcher for the streams
//! that got them. Each chunk is a short write of its own, so publishes of other tenants take
//! their turn on the write path between chunks; pending fan-outs take turns too.
//!
//! After each chunk the worker waits as long as the chunk took, so a large fan-out uses about
//! half of the write path (and of a core) rather than all of it. Back to back, its chunks
//! kept the writer and a core busy for the whole fan-out, and other tenants' publishes, which
//! need both, waited: on two cores their p50 doubled (S12). Paced, the fan-out takes twice as
//! long.
//!
//! It runs on every node. A publish pokes it; it also looks once at start (a fan-out left by
//! a stop or a crash) and, on a shared store, every few seconds (one left by a node that
//! died; nodes work on different fan-outs, or on one in turn).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Signal;
use crate::clock::{Clock, Millis};
use crate::store::Store;

/// Deliveries created per chunk. A publish on the embedded store waits for at most the chunk
/// under way, so this bounds what a large fan-out adds to other tenants' publish latency. In
/// S12 (200,000 deliveries written beside another tenant's publishes), chunks of 250 gave
/// that tenant an ack p99 of 11-13 ms, 100 gave 6-8 ms and 50 gives 5-6.5 ms (against 1.6
/// ms before the fan-out), for a fan-out written at about 13,000 deliveries a second rather
/// than 17,000 with 100.
const CHUNK: usize = 50;
/// The longest pause after a chunk (which takes a few milliseconds when the store is idle).
const MAX_PAUSE: Duration = Duration::from_millis(20);
/// How often to look for pending fan-outs when no publish said there is one.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Wait after a failed store call before trying again.
const STORE_RETRY_MS: Millis = 1_000;

pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signal: Arc<Signal>,
    shutdown: CancellationToken,
) {
    let mut after = 0;
    while !shutdown.is_cancelled() {
        let mut wait = POLL_INTERVAL.as_millis() as Millis;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let started = Instant::now();
            match store.fan_out(after, CHUNK, clock.now_ms()).await {
                Ok(Some(chunk)) => {
                    after = chunk.fanout;
                    signal.wake(&chunk.streams);
                    // Pacing by the work's own duration, not a schedule: real time. Capped,
                    // since a chunk that waited in the writer's queue or for its checkpoint
                    // hold took long without working long.
                    let pause = started.elapsed().min(MAX_PAUSE);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "creating a fan-out's deliveries failed; trying again");
                    wait = STORE_RETRY_MS;
                    break;
                }
            }
        }
        let until = clock.now_ms() + wait;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = signal.fan_out.notified() => {}
            _ = clock.sleep_until(until) => {}
        }
    }
}
