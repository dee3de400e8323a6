//! What attempts' outcomes do, decided once for both stores: a delivery's next state, the
//! hourly statistics, a stream's run of failures (and when it is disabled), and which of
//! Herald's notices follow. A store only stores and loads around these rules, so the
//! embedded and the shared store cannot decide differently.
//!
//! A store records a batch of attempts in three steps:
//! 1. it stores every attempt, and changes a delivery's state (to [`AttemptRecord::due_at`])
//!    only under the lease the attempt was made with: those attempts are *owned*;
//! 2. [`Outcomes::of`] sums the owned attempts into rollup rows and, per stream, into a
//!    [`Health`];
//! 3. for each stream that failed in the batch or has a run of failures stored, it reads the
//!    stream's [`StoredRun`] (locked, in one order for every writer), writes back what
//!    [`Health::apply`] gives, and publishes [`Outcomes::notices`].

use std::collections::BTreeMap;

use super::{
    AttemptRecord, DeliveryStatus, LATENCY_BOUNDS_MS, Published, RecordEffects, latency_bucket,
};
use crate::clock::Millis;
use crate::event::Event;
use crate::notices;

/// The width of a statistics rollup row.
pub const HOUR_MS: Millis = 3_600_000;

impl AttemptRecord {
    pub fn disable_policy(&self) -> DisablePolicy {
        DisablePolicy {
            max_consecutive_failures: self.max_consecutive_failures,
            disable_after_failing_seconds: self.disable_after_failing_seconds,
        }
    }

    /// When the delivery is next due: its retry's time while pending, none once finished.
    pub fn due_at(&self) -> Option<Millis> {
        match self.status {
            DeliveryStatus::Pending => self.next_attempt_at,
            _ => None,
        }
    }

    /// Herald's `herald.delivery.failed` notice for this attempt, when it gave its delivery
    /// up and the event's type raises one.
    pub fn failure_notice(&self, now: Millis) -> Option<Event> {
        if self.status != DeliveryStatus::Failed || !notices::notifies_failure_of(&self.event_type)
        {
            return None;
        }
        let reason = match (&self.disable_stream, self.refused) {
            (Some(_), _) => "the destination asked to stop receiving events",
            (None, true) => "the destination refused it",
            (None, false) => "retries exhausted",
        };
        let failed = notices::FailedDelivery {
            tenant_id: &self.tenant_id,
            delivery_id: &self.delivery_id,
            stream_id: &self.stream_id,
            event_id: &self.event_id,
            event_type: &self.event_type,
            attempts: self.attempt_number,
            last_response_status: self.response_status,
            last_error: self.error_message.as_deref(),
            reason,
        };
        Some(notices::delivery_failed(&failed, now))
    }
}

/// When a failing stream is disabled: a stream's two settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct DisablePolicy {
    pub max_consecutive_failures: u32,
    pub disable_after_failing_seconds: u64,
}

/// A stream's run of failed attempts, as counted for the decision to disable it.
#[derive(Debug, Clone, Copy)]
pub struct FailingRun {
    /// Failed attempts in a row.
    pub failures: i64,
    /// When the run's first failure was attempted; `None` when the run that counted is not
    /// the stream's current one.
    pub since: Option<Millis>,
}

/// Why a stream is to be disabled: the endpoint asked to stop (`gone`), or its run of
/// failures reached both the stream's count (`max_consecutive_failures`, 0: never) and its
/// period (`disable_after_failing_seconds`, 0: the count alone decides).
pub fn disable_reason(
    gone: Option<&String>,
    run: FailingRun,
    policy: DisablePolicy,
    now: Millis,
) -> Option<String> {
    if let Some(reason) = gone {
        return Some(reason.clone());
    }
    let limit = policy.max_consecutive_failures;
    if limit == 0 || run.failures < i64::from(limit) {
        return None;
    }
    let failures = run.failures;
    let period_ms = (policy.disable_after_failing_seconds as Millis).saturating_mul(1_000);
    if period_ms == 0 {
        return Some(format!(
            "disabled after {failures} failed attempts in a row; re-enable the stream to resume"
        ));
    }
    let failing_for = now - run.since?;
    (failing_for >= period_ms).then(|| {
        format!(
            "disabled after {failures} failed attempts in a row over {} without a success; \
             re-enable the stream to resume",
            spoken_duration(failing_for)
        )
    })
}

/// A duration as a person reads it in a reason: whole days, hours or minutes.
fn spoken_duration(ms: Millis) -> String {
    let minutes = ms / 60_000;
    match minutes {
        m if m >= 2 * 24 * 60 => format!("{} days", m / (24 * 60)),
        m if m >= 2 * 60 => format!("{} hours", m / 60),
        m => format!("{m} minutes"),
    }
}

/// A rollup row's key: tenant, stream, hour, event type.
pub type RollupKey<'a> = (&'a str, &'a str, Millis, &'a str);

/// What a batch adds to one rollup row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rollup {
    pub succeeded: i64,
    pub failed: i64,
    pub attempts: i64,
    pub failed_attempts: i64,
    /// Attempts by round-trip time: `latency[N]` counts those up to `LATENCY_BOUNDS_MS[N]`.
    pub latency: [i64; LATENCY_BOUNDS_MS.len() + 1],
}

/// A stream's run of failures as its row keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRun {
    pub failures: i64,
    pub since: Option<Millis>,
    pub disabled: bool,
}

/// What a stream's row keeps after a batch: its run of failures, or, when the batch disables
/// it, a cleared run and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub failures: i64,
    pub since: Option<Millis>,
    pub disable: Option<String>,
}

impl NewRun {
    /// Whether the stream's row has to be written.
    pub fn changes(&self, stored: &StoredRun) -> bool {
        self.disable.is_some() || self.failures != stored.failures || self.since != stored.since
    }
}

/// A stream's outcomes within a batch, taken in order, as runs of failures.
#[derive(Debug, Default)]
pub struct Health {
    failures: i64,
    succeeded: bool,
    /// Failures before the first success: they extend the run the stream already had.
    leading_failures: i64,
    /// The current run: failures after the last success.
    trailing_failures: i64,
    /// When the current run's first failure in this batch was attempted.
    trailing_since: Option<Millis>,
    /// The longest run that started after a success within the batch.
    longest_later_run: i64,
    disable: Option<String>,
    policy: DisablePolicy,
}

impl Health {
    fn add(&mut self, r: &AttemptRecord) {
        self.policy = r.disable_policy();
        if r.status == DeliveryStatus::Succeeded {
            self.succeeded = true;
            self.trailing_failures = 0;
            self.trailing_since = None;
            return;
        }
        self.failures += 1;
        self.trailing_failures += 1;
        self.trailing_since.get_or_insert(r.attempted_at);
        if self.succeeded {
            self.longest_later_run = self.longest_later_run.max(self.trailing_failures);
        } else {
            self.leading_failures += 1;
        }
        if let Some(reason) = &r.disable_stream {
            self.disable.get_or_insert_with(|| reason.clone());
        }
    }

    /// Whether any attempt of the batch failed. A stream that only succeeded needs its row
    /// read only when it has a run to clear.
    pub fn failed(&self) -> bool {
        self.failures > 0
    }

    /// The stream's row after the batch, given the row before it: the same as if the batch's
    /// attempts had been stored one at a time, except that a stream is disabled at most once.
    pub fn apply(&self, stored: &StoredRun, now: Millis) -> NewRun {
        // The run still going on after the batch.
        let (failures, since) = if self.succeeded {
            (self.trailing_failures, self.trailing_since)
        } else {
            (
                stored.failures + self.trailing_failures,
                stored.since.or(self.trailing_since),
            )
        };
        let kept = NewRun {
            failures,
            since,
            disable: None,
        };
        if !self.failed() || stored.disabled {
            return kept;
        }
        // The longest run the batch made; its period counts only if it is the current one.
        let longest = (stored.failures + self.leading_failures).max(self.longest_later_run);
        let run = FailingRun {
            failures: longest,
            since: since.filter(|_| longest == failures),
        };
        match disable_reason(self.disable.as_ref(), run, self.policy, now) {
            Some(reason) => NewRun {
                failures: 0,
                since: None,
                disable: Some(reason),
            },
            None => kept,
        }
    }
}

/// A stream a batch disabled, for its notice.
pub struct Disabled {
    pub tenant_id: String,
    pub stream_id: String,
    pub name: String,
    pub reason: String,
}

impl RecordEffects {
    /// What a batch changed beyond its deliveries, from the streams it disabled; the
    /// notices' deliveries are added as each is published ([`RecordEffects::notified`]).
    pub fn disabling(disabled: &[Disabled]) -> Self {
        RecordEffects {
            disabled_streams: disabled.iter().map(|d| d.stream_id.clone()).collect(),
            ..RecordEffects::default()
        }
    }

    /// Takes in what publishing one of Herald's notices created.
    pub fn notified(&mut self, published: Vec<Published>) {
        for p in published {
            self.fan_out_pending |= p.deferred;
            self.woken_streams.extend(p.streams);
        }
    }
}

/// A batch's owned attempts, summed up.
pub struct Outcomes<'a> {
    pub rollups: BTreeMap<RollupKey<'a>, Rollup>,
    /// By stream, in (tenant, id) order: the order the notices of disabled streams follow.
    pub health: BTreeMap<(&'a str, &'a str), Health>,
    owned: Vec<&'a AttemptRecord>,
}

impl<'a> Outcomes<'a> {
    /// Sums up the owned attempts, in the batch's order.
    pub fn of(owned: impl IntoIterator<Item = &'a AttemptRecord>) -> Self {
        let mut outcomes = Outcomes {
            rollups: BTreeMap::new(),
            health: BTreeMap::new(),
            owned: Vec::new(),
        };
        for r in owned {
            let hour = r.attempted_at.div_euclid(HOUR_MS) * HOUR_MS;
            let rollup = outcomes
                .rollups
                .entry((&r.tenant_id, &r.stream_id, hour, &r.event_type))
                .or_default();
            rollup.succeeded += (r.status == DeliveryStatus::Succeeded) as i64;
            rollup.failed += (r.status == DeliveryStatus::Failed) as i64;
            rollup.attempts += 1;
            rollup.failed_attempts += (r.status != DeliveryStatus::Succeeded) as i64;
            rollup.latency[latency_bucket(r.duration_ms)] += 1;
            outcomes
                .health
                .entry((&r.tenant_id, &r.stream_id))
                .or_default()
                .add(r);
            outcomes.owned.push(r);
        }
        outcomes
    }

    /// Herald's notices that follow, each with its tenant: every disabled stream's, then
    /// every given-up delivery's, in the batch's order.
    pub fn notices(&self, disabled: &[Disabled], now: Millis) -> Vec<(String, Event)> {
        let streams = disabled.iter().map(|d| {
            let notice =
                notices::stream_disabled(&d.tenant_id, &d.stream_id, &d.name, &d.reason, now);
            (d.tenant_id.clone(), notice)
        });
        let deliveries = self
            .owned
            .iter()
            .filter_map(|r| Some((r.tenant_id.clone(), r.failure_notice(now)?)));
        streams.chain(deliveries).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(status: DeliveryStatus, at: Millis) -> AttemptRecord {
        AttemptRecord {
            key: 1,
            lease: 1,
            tenant_id: "ten_a".into(),
            stream_id: "est_a".into(),
            delivery_id: "dlv_1".into(),
            event_id: "evt_1".into(),
            event_type: "user.created".into(),
            attempt_number: 1,
            attempted_at: at,
            duration_ms: 3,
            response_status: None,
            response_body: None,
            error_kind: None,
            error_message: None,
            detail: None,
            status,
            next_attempt_at: None,
            refused: false,
            disable_stream: None,
            max_consecutive_failures: 3,
            disable_after_failing_seconds: 0,
        }
    }

    fn health(records: &[AttemptRecord]) -> Health {
        let mut outcomes = Outcomes::of(records);
        outcomes.health.remove(&("ten_a", "est_a")).unwrap()
    }

    const CLEAN: StoredRun = StoredRun {
        failures: 0,
        since: None,
        disabled: false,
    };

    #[test]
    fn a_batch_applies_as_its_attempts_would_one_at_a_time() {
        use DeliveryStatus::{Failed, Pending, Succeeded};
        // Two failures extend a stored run of one to three: the limit.
        let h = health(&[attempt(Pending, 10), attempt(Failed, 11)]);
        let stored = StoredRun {
            failures: 1,
            since: Some(5),
            disabled: false,
        };
        let after = h.apply(&stored, 20);
        assert_eq!((after.failures, after.since), (0, None));
        assert!(after.disable.unwrap().contains("3 failed attempts"));

        // A success in between: the run before it reached the limit, and counts.
        let h = health(&[
            attempt(Pending, 10),
            attempt(Pending, 11),
            attempt(Succeeded, 12),
            attempt(Pending, 13),
        ]);
        let after = h.apply(&stored, 20);
        assert!(after.disable.is_some(), "{after:?}");

        // Below the limit: the current run is kept, from its first failure.
        let h = health(&[attempt(Succeeded, 10), attempt(Pending, 11)]);
        let after = h.apply(&stored, 20);
        assert_eq!(
            after,
            NewRun {
                failures: 1,
                since: Some(11),
                disable: None
            }
        );
        assert!(after.changes(&stored));
    }

    #[test]
    fn a_run_after_a_success_in_the_batch_reaches_the_limit_on_its_own() {
        use DeliveryStatus::{Pending, Succeeded};
        let records = [
            attempt(Pending, 1),
            attempt(Succeeded, 2),
            attempt(Pending, 3),
            attempt(Pending, 4),
            attempt(Pending, 5),
        ];
        let stored = StoredRun {
            failures: 1,
            since: Some(0),
            disabled: false,
        };
        // The run before the success made 2 of 3; the one after it, 3.
        assert!(health(&records).apply(&stored, 6).disable.is_some());
        let below = health(&records[..4]).apply(&stored, 6);
        assert_eq!(
            (below.failures, below.since, below.disable),
            (2, Some(3), None)
        );
    }

    #[test]
    fn a_period_counts_only_for_the_run_still_going_on() {
        use DeliveryStatus::{Pending, Succeeded};
        let mut records = vec![
            attempt(Pending, 0),
            attempt(Pending, 1),
            attempt(Pending, 2),
            attempt(Succeeded, 3),
            attempt(Pending, 4),
        ];
        for r in &mut records {
            r.disable_after_failing_seconds = 60;
        }
        // The long run ended with a success: its period no longer counts.
        let after = health(&records).apply(&CLEAN, 120_000);
        assert_eq!(after.disable, None);
        assert_eq!((after.failures, after.since), (1, Some(4)));
        // The same three failures still going on, over two minutes: disabled.
        records.truncate(3);
        let after = health(&records).apply(&CLEAN, 120_000);
        assert!(after.disable.unwrap().contains("over 2 minutes"));
    }

    #[test]
    fn only_a_failure_can_disable_and_only_once() {
        use DeliveryStatus::{Failed, Succeeded};
        // A stored run at the limit (the limit was lowered) is cleared by a success, not
        // turned into a disabling.
        let at_limit = StoredRun {
            failures: 5,
            since: Some(1),
            disabled: false,
        };
        let after = health(&[attempt(Succeeded, 10)]).apply(&at_limit, 20);
        assert_eq!(
            after,
            NewRun {
                failures: 0,
                since: None,
                disable: None
            }
        );
        assert!(after.changes(&at_limit));
        assert!(!after.changes(&CLEAN));
        // A stream already disabled is not disabled again.
        let mut gone = attempt(Failed, 10);
        gone.disable_stream = Some("the endpoint answered 410 Gone".into());
        let disabled = StoredRun {
            disabled: true,
            ..CLEAN
        };
        let still_failing = health(&[gone.clone()]).apply(&disabled, 20);
        assert_eq!(
            still_failing,
            NewRun {
                failures: 1,
                since: Some(10),
                disable: None
            }
        );
        assert_eq!(
            health(&[gone]).apply(&CLEAN, 20).disable.as_deref(),
            Some("the endpoint answered 410 Gone")
        );
    }

    #[test]
    fn notices_follow_disabled_streams_then_given_up_deliveries() {
        let mut given_up = attempt(DeliveryStatus::Failed, 10);
        given_up.refused = true;
        let herald_own = AttemptRecord {
            event_type: notices::DELIVERY_FAILED.into(),
            ..given_up.clone()
        };
        let records = [
            given_up,
            herald_own,
            attempt(DeliveryStatus::Pending, 11),
            attempt(DeliveryStatus::Succeeded, 12),
        ];
        let outcomes = Outcomes::of(&records);
        let disabled = [Disabled {
            tenant_id: "ten_a".into(),
            stream_id: "est_a".into(),
            name: "Orders".into(),
            reason: "because".into(),
        }];
        let types: Vec<String> = outcomes
            .notices(&disabled, 20)
            .into_iter()
            .map(|(_, e)| e.event_type)
            .collect();
        assert_eq!(types, [notices::STREAM_DISABLED, notices::DELIVERY_FAILED]);
        let rollup = &outcomes.rollups[&("ten_a", "est_a", 0, "user.created")];
        let sums = (
            rollup.succeeded,
            rollup.failed,
            rollup.attempts,
            rollup.failed_attempts,
        );
        assert_eq!(sums, (1, 1, 3, 2));
        // Every attempt took 3 ms: all in the bucket up to 5 ms.
        assert_eq!(rollup.latency[latency_bucket(3)], 3);
        assert_eq!(rollup.latency.iter().sum::<i64>(), 3);
    }
}
