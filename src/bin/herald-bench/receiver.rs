//! The benchmark's webhook receiver: answers every POST at once with 200 (or, for a scenario's
//! unhealthy streams, late, with 500, or with 503 while it is down) and records when each
//! event arrived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;

/// How the receiver answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    Ok,
    /// Answer 200 only after this long.
    Slow(Duration),
    /// Answer 500 at once.
    Failing,
    /// Answer 503 at once while the flag is set, then as `Ok`.
    DownWhile(Arc<AtomicBool>),
}

/// Publish times and receipts, shared by the publishers and the receivers of one run.
pub struct Clock {
    pub start: Instant,
    /// Microseconds after `start` at which event `n` was published (0: not yet).
    published_us: Vec<AtomicU64>,
}

impl Clock {
    pub fn new(events: usize) -> Arc<Clock> {
        Arc::new(Clock {
            start: Instant::now(),
            published_us: (0..events).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn mark_published(&self, n: usize) {
        if let Some(slot) = self.published_us.get(n) {
            slot.store(self.now_us().max(1), Ordering::Relaxed);
        }
    }

    fn published(&self, n: usize) -> Option<u64> {
        let at = self.published_us.get(n)?.load(Ordering::Relaxed);
        (at > 0).then_some(at)
    }
}

#[derive(Default)]
pub struct Receipts {
    /// Requests that arrived (answered or not).
    pub count: AtomicU64,
    /// Requests answered 200.
    pub ok: AtomicU64,
    /// Publish-to-receipt latencies in microseconds.
    pub latencies_us: Mutex<Vec<u64>>,
    pub last_us: AtomicU64,
}

/// Extracts `n` from a body holding `"id":"bench-<n>"`.
fn event_number(body: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\"id\":\"bench-";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Starts a receiver on a port of its own and returns its URL.
pub async fn start(behaviour: Behaviour, clock: Arc<Clock>, receipts: Arc<Receipts>) -> String {
    let handler = move |body: Bytes| {
        let (clock, receipts, behaviour) = (clock.clone(), receipts.clone(), behaviour.clone());
        async move {
            let now = clock.now_us();
            receipts.count.fetch_add(1, Ordering::Relaxed);
            receipts.last_us.fetch_max(now, Ordering::Relaxed);
            match behaviour {
                Behaviour::Failing => return StatusCode::INTERNAL_SERVER_ERROR,
                Behaviour::Slow(by) => {
                    tokio::time::sleep(by).await;
                    receipts.ok.fetch_add(1, Ordering::Relaxed);
                    return StatusCode::OK;
                }
                Behaviour::DownWhile(down) if down.load(Ordering::SeqCst) => {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                Behaviour::DownWhile(_) | Behaviour::Ok => {}
            }
            receipts.ok.fetch_add(1, Ordering::Relaxed);
            if let Some(published) = event_number(&body).and_then(|n| clock.published(n)) {
                receipts
                    .latencies_us
                    .lock()
                    .unwrap()
                    .push(now.saturating_sub(published));
            }
            StatusCode::OK
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_event_number() {
        assert_eq!(
            super::event_number(br#"{"a":1,"id":"bench-42","b":2}"#),
            Some(42)
        );
        assert_eq!(super::event_number(br#"{"id":"other"}"#), None);
    }
}
