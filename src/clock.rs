//! Time as a value passed in. Backoff, leases and schedules read a [`Clock`], so tests can move
//! time forward instead of sleeping through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Milliseconds since the Unix epoch: the one time unit the store and the scheduler speak.
pub type Millis = i64;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;

    /// Resolves once `now_ms() >= at`.
    fn sleep_until(&self, at: Millis) -> Sleep<'_>;
}

/// A boxed sleep future, so `Clock` stays object safe.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        system_now_ms()
    }

    fn sleep_until(&self, at: Millis) -> Sleep<'_> {
        let wait = (at - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

pub fn system_now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A clock that only moves when told to. Starts at the wall-clock time of its creation so
/// that timestamps it produces still look current to receivers that check them.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    moved: Notify,
    // Serialises advances so waiters never observe a torn sequence of moves.
    advance_lock: Mutex<()>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::starting_at(system_now_ms())
    }
}

impl ManualClock {
    pub fn starting_at(now: Millis) -> Self {
        Self {
            now: AtomicI64::new(now),
            moved: Notify::new(),
            advance_lock: Mutex::new(()),
        }
    }

    pub fn advance(&self, by: Duration) {
        let _guard = self.advance_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.now
            .fetch_add(by.as_millis() as Millis, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at: Millis) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                // Register before checking, so an advance between the check and the await
                // is not missed.
                let moved = self.moved.notified();
                if self.now_ms() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_only_when_time_reaches_the_deadline() {
        let clock = std::sync::Arc::new(ManualClock::starting_at(1_000));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(1_500).await })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_millis(400));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_millis(100));
        sleeper.await.unwrap();
        assert_eq!(clock.now_ms(), 1_500);
    }
}
