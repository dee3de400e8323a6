//! When to try again: a pure function of the stream's retry policy, the number of attempts
//! made, the outcome and a jitter draw. What an outcome means is the destination's business
//! (see `destinations`); this module only turns it into the delivery's next state.

use std::time::Duration;

use crate::clock::Millis;
use crate::destinations::Outcome;
use crate::store::DeliveryStatus;
use crate::stream::RetryPolicy;

/// The delay after `attempts_made` failed attempts (1 or more): the initial interval times the
/// multiplier for each further attempt, capped, then spread by ±jitter. `unit` is a uniform
/// draw from [0, 1).
pub fn backoff(policy: &RetryPolicy, attempts_made: u32, unit: f64) -> Duration {
    let exponent = attempts_made.saturating_sub(1).min(1_000) as i32;
    let base = (policy.initial_interval_seconds * policy.multiplier.powi(exponent))
        .min(policy.max_interval_seconds);
    let spread = base * policy.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((base + spread).max(0.0))
}

/// The delivery's state after an attempt, and when to try next if it stays pending.
pub fn next_step(
    policy: &RetryPolicy,
    attempts_made: u32,
    outcome: &Outcome,
    now: Millis,
    unit: f64,
) -> (DeliveryStatus, Option<Millis>) {
    match outcome {
        Outcome::Delivered => (DeliveryStatus::Succeeded, None),
        // Never recorded (the dispatcher gives the delivery back); should it be, nothing changes.
        Outcome::NotSent => (DeliveryStatus::Pending, Some(now)),
        Outcome::GiveUp | Outcome::DisableStream { .. } => (DeliveryStatus::Failed, None),
        Outcome::Retry { .. } if attempts_made >= policy.max_attempts => {
            (DeliveryStatus::Failed, None)
        }
        Outcome::Retry { after } => {
            let delay = after.unwrap_or_else(|| backoff(policy, attempts_made, unit));
            (
                DeliveryStatus::Pending,
                Some(now + delay.as_millis() as Millis),
            )
        }
    }
}

/// A uniform draw from [0, 1) for jitter.
pub fn jitter_unit() -> f64 {
    let bits = u64::from_le_bytes(crate::ids::random_bytes::<8>()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_grows_by_the_multiplier_and_is_capped() {
        let p = no_jitter();
        let secs = |n| backoff(&p, n, 0.5).as_secs();
        assert_eq!([secs(1), secs(2), secs(3), secs(4)], [10, 20, 40, 80]);
        assert_eq!(secs(10), 5_120);
        assert_eq!(secs(11), 7_200);
        assert_eq!(secs(50), 7_200);
    }

    #[test]
    fn default_policy_retries_for_about_a_day() {
        let p = no_jitter();
        let total: u64 = (1..p.max_attempts)
            .map(|n| backoff(&p, n, 0.5).as_secs())
            .sum();
        assert!((20 * 3600..=28 * 3600).contains(&total), "{total} s");
    }

    #[test]
    fn jitter_spreads_within_its_fraction() {
        let p = RetryPolicy::default(); // jitter 0.2
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(&p, 1, 0.5), Duration::from_secs(10));
        assert!(backoff(&p, 1, 0.999_999) <= Duration::from_secs(12));
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn outcomes_map_to_the_next_state() {
        let p = RetryPolicy {
            max_attempts: 4,
            ..no_jitter()
        };
        let retry = Outcome::Retry { after: None };
        assert_eq!(
            next_step(&p, 1, &Outcome::Delivered, 0, 0.5),
            (DeliveryStatus::Succeeded, None)
        );
        assert_eq!(
            next_step(&p, 1, &retry, 1_000, 0.5),
            (DeliveryStatus::Pending, Some(11_000))
        );
        assert_eq!(
            next_step(&p, 3, &retry, 0, 0.5),
            (DeliveryStatus::Pending, Some(40_000))
        );
        assert_eq!(
            next_step(&p, 4, &retry, 0, 0.5),
            (DeliveryStatus::Failed, None)
        );
        assert_eq!(
            next_step(&p, 1, &Outcome::GiveUp, 0, 0.5),
            (DeliveryStatus::Failed, None)
        );
        assert_eq!(
            next_step(
                &p,
                1,
                &Outcome::DisableStream {
                    reason: String::new()
                },
                0,
                0.5
            ),
            (DeliveryStatus::Failed, None)
        );
        let after = Outcome::Retry {
            after: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            next_step(&p, 1, &after, 0, 0.5),
            (DeliveryStatus::Pending, Some(120_000))
        );
    }
}
