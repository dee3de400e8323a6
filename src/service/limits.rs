//! Limits on what the operations do for a caller: per-tenant quotas on what a tenant may
//! create, and token buckets on the operations that reach outside Herald at once (test sends,
//! destination checks), with the count of mismatched destination checks. Rates read the
//! injected clock and never the store, so a check costs a map lookup under a lock.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Error;
use crate::clock::Millis;
use crate::config::Config;

/// The operations' rate limits, built once from the configuration.
pub struct Rates {
    /// Stream tests, per stream id and per token id.
    pub stream_tests: RateLimiter,
    pub token_tests: RateLimiter,
    /// Destination checks (`.../destination/check`), per stream id and per token id: each
    /// answers whether a candidate value is the stored one, so they are few.
    pub destination_checks: RateLimiter,
    pub token_destination_checks: RateLimiter,
    pub destination_mismatches: Mismatches,
}

/// Destination checks a stream may be asked in a minute: enough for `herald apply` at every
/// deploy. It bounds guessing to 14,400 values a day per stream and node: enough to find a
/// short or dictionary password, nothing against a long random one. Hence also
/// [`MAX_CONSECUTIVE_MISMATCHES`] and a log line for every mismatch.
pub const DESTINATION_CHECKS_PER_MINUTE: u32 = 10;
/// ... and a token, across streams.
pub const DESTINATION_CHECKS_PER_MINUTE_PER_TOKEN: u32 = 120;

impl Rates {
    pub fn from_config(config: &Config) -> Rates {
        let per_minute = |n: u32| Rate::new(n, f64::from(n) / 60_000.0);
        Rates {
            stream_tests: RateLimiter::new(per_minute(config.stream_tests_per_minute)),
            token_tests: RateLimiter::new(per_minute(config.stream_tests_per_minute_per_token)),
            destination_checks: RateLimiter::new(per_minute(DESTINATION_CHECKS_PER_MINUTE)),
            token_destination_checks: RateLimiter::new(per_minute(
                DESTINATION_CHECKS_PER_MINUTE_PER_TOKEN,
            )),
            destination_mismatches: Mismatches::default(),
        }
    }
}

/// A token bucket's shape: `burst` requests at once, refilled at `per_ms` a millisecond.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    burst: f64,
    per_ms: f64,
}

impl Rate {
    pub fn new(burst: u32, per_ms: f64) -> Rate {
        Rate {
            burst: f64::from(burst.max(1)),
            per_ms,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Millis,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Millis) {
        let elapsed = (now - self.at).max(0) as f64;
        self.tokens = (self.tokens + elapsed * rate.per_ms).min(rate.burst);
        self.at = self.at.max(now);
    }
}

/// Token buckets by key (a token id, a stream id).
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Bounds the map. Keys are ids of rows that exist (checked after authentication or
    /// lookup), or the fixed-length key of an unsaved destination's origin, which costs its
    /// caller a test from its token's allowance to make; so it is reached only by very many
    /// of them, and full buckets are then forgotten, which loses nothing.
    const MAX_KEYS: usize = 100_000;

    pub fn new(rate: Rate) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says in how many seconds one is available.
    pub fn take(&self, key: &str, now: Millis) -> Result<(), u64> {
        let rate = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= Self::MAX_KEYS {
            buckets.retain(|_, bucket| {
                bucket.refill(rate, now);
                bucket.tokens < rate.burst
            });
            if buckets.len() >= Self::MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets.entry(key.to_string()).or_insert(Bucket {
                tokens: rate.burst,
                at: now,
            }),
        };
        bucket.refill(rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = if rate.per_ms > 0.0 {
            (1.0 - bucket.tokens) / rate.per_ms
        } else {
            f64::from(u32::MAX)
        };
        Err(((wait_ms / 1000.0).ceil() as u64).max(1))
    }

    /// Returns a request taken for something that was then not done.
    pub fn give_back(&self, key: &str) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.rate.burst);
        }
    }
}

/// Mismatched destination checks in a row after which a stream's destination is no longer
/// checked until it changes: `herald apply` mismatches once per change, a guesser every time.
pub const MAX_CONSECUTIVE_MISMATCHES: u32 = 20;

/// Consecutive mismatched destination checks per stream, in this node's memory (a restart
/// clears them). Each count belongs to the destination it was made against, known by a tag
/// under a key of this process, so any update of the destination, on any node, starts over.
pub struct Mismatches {
    key: ring::hmac::Key,
    streams: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

impl Default for Mismatches {
    fn default() -> Self {
        Mismatches {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &crate::ids::random_bytes::<32>()),
            streams: Mutex::default(),
        }
    }
}

impl Mismatches {
    /// The tag of a stream's stored destination (its serialized form).
    pub fn tag(&self, destination: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&self.key, destination).as_ref().to_vec()
    }

    /// Whether `stream`, with the destination tagged `tag`, may be checked again.
    pub fn allowed(&self, stream: &str, tag: &[u8]) -> bool {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .get(stream)
            .is_none_or(|(at, count)| at != tag || *count < MAX_CONSECUTIVE_MISMATCHES)
    }

    /// Records a check's outcome: a match clears the count, a mismatch adds one.
    pub fn record(&self, stream: &str, tag: &[u8], matched: bool) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if matched {
            streams.remove(stream);
            return;
        }
        let entry = streams
            .entry(stream.to_string())
            .or_insert_with(|| (tag.to_vec(), 0));
        if entry.0 != tag {
            *entry = (tag.to_vec(), 0);
        }
        entry.1 += 1;
    }
}

/// What one tenant may create; 0 is no limit.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub streams: usize,
    pub event_types: usize,
    pub tokens: usize,
}

impl Quotas {
    /// Refuses one more of `what` when the tenant holds `count` and `limit` allows no more.
    /// Checked before the write: creations racing each other can pass it together.
    pub fn check(
        limit: usize,
        count: usize,
        what: &'static str,
        setting: &'static str,
    ) -> Result<(), Error> {
        if limit == 0 || count < limit {
            return Ok(());
        }
        Err(Error::QuotaExceeded {
            count,
            limit,
            what,
            setting,
        })
    }
}

impl Quotas {
    pub fn from_config(config: &Config) -> Quotas {
        Quotas {
            streams: config.max_streams_per_tenant,
            event_types: config.max_event_types_per_tenant,
            tokens: config.max_tokens_per_tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limiter = RateLimiter::new(Rate::new(2, 1.0 / 1000.0));
        assert_eq!(limiter.take("a", 0), Ok(()));
        assert_eq!(limiter.take("a", 0), Ok(()));
        assert_eq!(limiter.take("a", 0), Err(1));
        assert_eq!(limiter.take("b", 0), Ok(()), "buckets are per key");
        assert_eq!(limiter.take("a", 1_000), Ok(()));
        assert_eq!(limiter.take("a", 1_000), Err(1));
    }

    #[test]
    fn retry_after_covers_the_time_to_the_next_request() {
        let limiter = RateLimiter::new(Rate::new(1, 1.0 / 60_000.0));
        assert_eq!(limiter.take("s", 0), Ok(()));
        assert_eq!(limiter.take("s", 0), Err(60));
        assert_eq!(limiter.take("s", 30_000), Err(30));
    }
}
