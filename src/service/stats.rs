//! A stream's delivery outcomes and latency over a range of hours, in total, per event type
//! and per hour, read from the hourly rollups (never from the attempts), with its backlog;
//! and the same outcomes for all of a tenant's streams at once, for a list of them.

use std::collections::BTreeMap;

use super::deliveries;
use super::streams::load as load_stream;
use super::{Caller, Error, Scope, Service, parse_time};
use crate::clock::Millis;
use crate::store::{Backlog, HourOutcomes, LATENCY_BOUNDS_MS, StatsRow, StreamActivity};

const HOUR_MS: Millis = 3_600_000;
/// The longest range one request may ask for.
const MAX_RANGE_MS: Millis = 93 * 24 * HOUR_MS;

/// Counts summed over some rollup rows.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub succeeded: u64,
    pub failed: u64,
    pub attempts: u64,
    pub failed_attempts: u64,
    /// Attempts per latency bucket (see `LATENCY_BOUNDS_MS`).
    pub latency: Vec<u64>,
}

impl Totals {
    fn add(&mut self, row: &StatsRow) {
        self.succeeded += row.succeeded;
        self.failed += row.failed;
        self.attempts += row.attempts;
        self.failed_attempts += row.failed_attempts;
        if self.latency.len() < row.latency.len() {
            self.latency.resize(row.latency.len(), 0);
        }
        for (sum, n) in self.latency.iter_mut().zip(&row.latency) {
            *sum += n;
        }
    }

    /// Succeeded deliveries among the finished ones; `None` when none finished.
    pub fn success_rate(&self) -> Option<f64> {
        let finished = self.succeeded + self.failed;
        (finished > 0).then(|| self.succeeded as f64 / finished as f64)
    }

    /// The attempts' latency at quantile `q`, in milliseconds (see [`percentile`]).
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        percentile(&self.latency, q)
    }
}

/// A stream's outcomes over whole hours: from the hour holding the range's start through its
/// end.
#[derive(Debug, Clone)]
pub struct StreamStats {
    /// The start of the first hour.
    pub date_from: Millis,
    pub date_to: Millis,
    pub total: Totals,
    pub by_event_type: BTreeMap<String, Totals>,
    /// Per hour with outcomes, keyed by the hour's start.
    pub by_hour: BTreeMap<Millis, Totals>,
    pub backlog: Backlog,
}

/// Estimates a percentile from bucket counts, interpolating linearly inside the bucket the
/// rank falls in. The last bucket (beyond the largest bound) reports that bound.
pub fn percentile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(*LATENCY_BOUNDS_MS.last().expect("bounds exist") as f64);
            };
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_MS[i - 1] };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            let value = lower as f64 + within * (upper - lower) as f64;
            return Some((value * 10.0).round() / 10.0);
        }
        seen += n;
    }
    None
}

/// The stream's outcomes between two RFC 3339 times: by default the 24 hours before `date_to`,
/// which is by default now. A range spans at most 93 days.
pub async fn stream_stats(
    service: &Service,
    caller: &Caller,
    stream_id: &str,
    date_from: Option<&str>,
    date_to: Option<&str>,
) -> Result<StreamStats, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    let now = service.clock.now_ms();
    let to = match date_to {
        Some(v) => parse_time("date_to", v)?,
        None => now,
    };
    let from = match date_from {
        Some(v) => parse_time("date_from", v)?,
        None => to - 24 * HOUR_MS,
    };
    if from > to {
        return Err(Error::Invalid("`date_from` is after `date_to`".into()));
    }
    if to - from > MAX_RANGE_MS {
        return Err(Error::Invalid("the range may span at most 93 days".into()));
    }
    load_stream(service, caller, stream_id).await?;
    // Whole hours: the hour holding `from` through the hour holding `to`.
    let first_hour = from.div_euclid(HOUR_MS) * HOUR_MS;
    let rows = service
        .store
        .stats(&caller.tenant_id, stream_id, first_hour, to + 1)
        .await?;
    let backlog = service.store.backlog(&caller.tenant_id, stream_id).await?;

    let mut total = Totals::default();
    let mut by_event_type: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_hour: BTreeMap<Millis, Totals> = BTreeMap::new();
    for row in &rows {
        total.add(row);
        match by_event_type.get_mut(&row.event_type) {
            Some(totals) => totals.add(row),
            None => {
                let mut totals = Totals::default();
                totals.add(row);
                by_event_type.insert(row.event_type.clone(), totals);
            }
        }
        by_hour.entry(row.hour).or_default().add(row);
    }
    Ok(StreamStats {
        date_from: first_hour,
        date_to: to,
        total,
        by_event_type,
        by_hour,
        backlog,
    })
}

/// Every stream of a tenant's backlog and finished deliveries per hour over the last 24
/// hours (from the hour holding that time through now, as `stream_stats` counts), read in
/// one go however many streams there are.
#[derive(Debug, Clone)]
pub struct RecentActivity {
    /// The start of the first hour.
    pub first_hour: Millis,
    pub now: Millis,
    activity: StreamActivity,
}

impl RecentActivity {
    /// How many hours the range spans.
    pub fn hours(&self) -> usize {
        ((self.now - self.first_hour) / HOUR_MS + 1) as usize
    }

    pub fn backlog(&self, stream_id: &str) -> deliveries::Backlog {
        let backlog = self
            .activity
            .backlogs
            .get(stream_id)
            .copied()
            .unwrap_or_default();
        deliveries::Backlog {
            pending: backlog.pending,
            oldest_pending_at: backlog.oldest_created_at,
            oldest_age_seconds: backlog
                .oldest_created_at
                .map(|at| (self.now - at).max(0) / 1000),
        }
    }

    /// The stream's outcomes in each hour of the range, in order (zero where none).
    pub fn by_hour(&self, stream_id: &str) -> Vec<HourOutcomes> {
        let mut hours: Vec<HourOutcomes> = (0..self.hours())
            .map(|i| HourOutcomes {
                hour: self.first_hour + i as Millis * HOUR_MS,
                succeeded: 0,
                failed: 0,
            })
            .collect();
        for outcome in self.activity.hours.get(stream_id).into_iter().flatten() {
            let i = ((outcome.hour - self.first_hour) / HOUR_MS) as usize;
            if let Some(slot) = hours.get_mut(i) {
                *slot = *outcome;
            }
        }
        hours
    }
}

/// The caller's tenant's streams' recent activity: `read:event_deliveries`.
pub async fn recent_activity(service: &Service, caller: &Caller) -> Result<RecentActivity, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    let now = service.clock.now_ms();
    let first_hour = (now - 24 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let activity = service
        .store
        .stream_activity(&caller.tenant_id, first_hour, now + 1)
        .await?;
    Ok(RecentActivity {
        first_hour,
        now,
        activity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let mut counts = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        assert_eq!(percentile(&counts, 0.5), None);
        counts[6] = 100; // (50, 100] ms
        assert_eq!(percentile(&counts, 0.5), Some(75.0));
        assert_eq!(percentile(&counts, 0.99), Some(99.5));
        counts[9] = 100; // (500, 1000] ms: the upper half
        assert_eq!(percentile(&counts, 0.25), Some(75.0));
        assert_eq!(percentile(&counts, 0.75), Some(750.0));
        counts[LATENCY_BOUNDS_MS.len()] = 1_000; // beyond 30 s
        assert_eq!(percentile(&counts, 0.99), Some(30_000.0));
    }
}
