//! `GET /v1/event-streams/{id}/stats`: delivery outcomes and latency of a stream, in total,
//! per event type and per hour, read from the hourly rollups (never from the attempts).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiQuery, AppState, Caller, Scope, parse_time_param};
use crate::clock::Millis;
use crate::event::format_time;
use crate::store::{LATENCY_BOUNDS_MS, StatsRow};

const HOUR_MS: Millis = 3_600_000;
/// The longest range one request may ask for.
const MAX_RANGE_MS: Millis = 93 * 24 * HOUR_MS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    date_from: Option<String>,
    date_to: Option<String>,
}

/// Counts summed over some rollup rows.
#[derive(Default)]
struct Totals {
    succeeded: u64,
    failed: u64,
    attempts: u64,
    failed_attempts: u64,
    latency: Vec<u64>,
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

    fn view(&self) -> Value {
        let finished = self.succeeded + self.failed;
        json!({
            "succeeded": self.succeeded,
            "failed": self.failed,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts,
            "success_rate": (finished > 0).then(|| self.succeeded as f64 / finished as f64),
            "latency_ms": {
                "p50": percentile(&self.latency, 0.50),
                "p95": percentile(&self.latency, 0.95),
                "p99": percentile(&self.latency, 0.99),
            },
        })
    }
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

pub async fn stream_stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream_id): Path<String>,
    ApiQuery(range): ApiQuery<Range>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventDeliveries)?;
    let now = state.clock.now_ms();
    let to = match &range.date_to {
        Some(v) => parse_time_param("date_to", v)?,
        None => now,
    };
    let from = match &range.date_from {
        Some(v) => parse_time_param("date_from", v)?,
        None => to - 24 * HOUR_MS,
    };
    if from > to {
        return Err(ApiError::invalid("`date_from` is after `date_to`"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::invalid("the range may span at most 93 days"));
    }
    state
        .store
        .get_stream(&caller.tenant_id, &stream_id)
        .await?
        .ok_or_else(|| ApiError::not_found("event stream", &stream_id))?;
    // Whole hours: the hour holding `from` through the hour holding `to`.
    let first_hour = from.div_euclid(HOUR_MS) * HOUR_MS;
    let rows = state
        .store
        .stats(&caller.tenant_id, &stream_id, first_hour, to + 1)
        .await?;
    let backlog = state.store.backlog(&caller.tenant_id, &stream_id).await?;

    let mut total = Totals::default();
    let mut by_type: BTreeMap<&str, Totals> = BTreeMap::new();
    let mut by_hour: BTreeMap<Millis, Totals> = BTreeMap::new();
    for row in &rows {
        total.add(row);
        by_type.entry(&row.event_type).or_default().add(row);
        by_hour.entry(row.hour).or_default().add(row);
    }
    let by_hour: Vec<Value> = by_hour
        .iter()
        .map(|(hour, totals)| {
            let mut v = totals.view();
            v["hour"] = json!(format_time(*hour));
            v
        })
        .collect();
    let by_type: serde_json::Map<String, Value> = by_type
        .iter()
        .map(|(t, totals)| (t.to_string(), totals.view()))
        .collect();
    Ok(Json(json!({
        "stream_id": stream_id,
        "date_from": format_time(first_hour),
        "date_to": format_time(to),
        "total": total.view(),
        "by_event_type": by_type,
        "by_hour": by_hour,
        "pending": backlog.pending,
        "oldest_pending_at": backlog.oldest_created_at.map(format_time),
    })))
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
