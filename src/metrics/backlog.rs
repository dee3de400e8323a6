//! The backlog as scraped: undelivered work per tenant, and per stream for the streams with
//! the deepest backlogs only.
//!
//! It is read from the store when `/metrics` is scraped, not kept by the dispatcher: the
//! store is where pending deliveries are, on every node alike (the dispatcher of one node
//! knows only what it has claimed). One query groups the pending deliveries of enabled
//! streams by stream, from the index of due deliveries (PostgreSQL's queue table), so a
//! scrape costs a scan of that index: proportional to the backlog, on a read connection,
//! beside the writer. Scrapes share a read: one in progress serves those that arrive
//! meanwhile, and a read less than [`MAX_AGE_MS`] old (on the injected clock) serves the
//! next ones.
//!
//! Cardinality is bounded: one series per tenant with a backlog, and per stream for the
//! `top_streams` streams with the most pending deliveries (ties: the oldest first). A paused
//! or disabled stream's deliveries are left out: they wait on an operator, not on Herald.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::clock::Millis;
use crate::store::{Store, StoreResult, StreamBacklog};

/// How long one read of the backlog serves scrapes.
pub const MAX_AGE_MS: Millis = 2_000;

#[derive(Debug)]
pub struct BacklogMetrics {
    top_streams: usize,
    /// When the store was last read; held while it is read, so concurrent scrapes wait for
    /// that one read rather than each making their own.
    read_at: tokio::sync::Mutex<Option<Millis>>,
    snapshot: Mutex<Arc<Snapshot>>,
}

/// What one read of the store found.
#[derive(Debug, Default)]
struct Snapshot {
    tenants: Vec<Row>,
    streams: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    tenant: String,
    /// `None` for a tenant's total.
    stream: Option<String>,
    pending: u64,
    oldest_due_age_seconds: f64,
}

impl BacklogMetrics {
    pub fn new(top_streams: usize) -> BacklogMetrics {
        BacklogMetrics {
            top_streams,
            read_at: tokio::sync::Mutex::new(None),
            snapshot: Mutex::default(),
        }
    }

    /// Reads the backlog from `store` unless a read at most `MAX_AGE_MS` old stands. A failed
    /// read leaves no backlog series (rather than stale ones) until the next succeeds.
    pub async fn refresh(&self, store: &dyn Store, now: Millis) -> StoreResult<()> {
        let mut read_at = self.read_at.lock().await;
        if read_at.is_some_and(|at| (0..MAX_AGE_MS).contains(&(now - at))) {
            return Ok(());
        }
        let read = store.backlogs().await;
        let (snapshot, result) = match read {
            Ok(rows) => {
                *read_at = Some(now);
                (summarize(rows, now, self.top_streams), Ok(()))
            }
            Err(e) => {
                *read_at = None;
                (Snapshot::default(), Err(e))
            }
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        result
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Totals per tenant (by id), and the `top` streams with the most pending deliveries.
fn summarize(rows: Vec<StreamBacklog>, now: Millis, top: usize) -> Snapshot {
    let age = |due: Option<Millis>| due.map_or(0.0, |due| (now - due).max(0) as f64 / 1000.0);
    let mut tenants: BTreeMap<&str, (u64, Option<Millis>)> = BTreeMap::new();
    for row in &rows {
        let (pending, due) = tenants.entry(row.tenant_id.as_str()).or_default();
        *pending += row.pending;
        *due = match (*due, row.next_due_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let tenants = tenants
        .into_iter()
        .map(|(tenant, (pending, due))| Row {
            tenant: tenant.to_string(),
            stream: None,
            pending,
            oldest_due_age_seconds: age(due),
        })
        .collect();
    let mut streams = rows;
    streams.sort_by(|a, b| {
        b.pending
            .cmp(&a.pending)
            .then(a.next_due_at.cmp(&b.next_due_at))
            .then_with(|| (&a.tenant_id, &a.stream_id).cmp(&(&b.tenant_id, &b.stream_id)))
    });
    streams.truncate(top);
    let streams = streams
        .into_iter()
        .map(|s| Row {
            oldest_due_age_seconds: age(s.next_due_at),
            tenant: s.tenant_id,
            stream: Some(s.stream_id),
            pending: s.pending,
        })
        .collect();
    Snapshot { tenants, streams }
}

impl Collector for BacklogMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.current();
        for (rows, name, what) in [
            (&snapshot.tenants, "backlog", "by tenant"),
            (
                &snapshot.streams,
                "stream_backlog",
                "for the streams with the most pending deliveries (metrics_backlog_top_streams)",
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            let depth = format!(
                "Pending deliveries of enabled streams (due or scheduled for a retry), {what}."
            );
            let depth_name = format!("{name}_deliveries");
            let mut family =
                encoder.encode_descriptor(&depth_name, &depth, None, MetricType::Gauge)?;
            for row in rows.iter() {
                ConstGauge::new(row.pending as i64).encode(family.encode_family(&row.labels())?)?;
            }
            let age = format!(
                "How long the oldest due delivery has waited since it became due (0: none is due), {what}."
            );
            let age_name = format!("{name}_oldest_due_age");
            let mut family = encoder.encode_descriptor(
                &age_name,
                &age,
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for row in rows.iter() {
                ConstGauge::new(row.oldest_due_age_seconds)
                    .encode(family.encode_family(&row.labels())?)?;
            }
        }
        Ok(())
    }
}

impl Row {
    fn labels(&self) -> Vec<(&'static str, &str)> {
        let mut labels = vec![("tenant", self.tenant.as_str())];
        if let Some(stream) = &self.stream {
            labels.push(("stream", stream.as_str()));
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, stream: &str, pending: u64, due: Option<Millis>) -> StreamBacklog {
        StreamBacklog {
            tenant_id: tenant.into(),
            stream_id: stream.into(),
            pending,
            next_due_at: due,
        }
    }

    #[test]
    fn tenants_sum_their_streams_and_only_the_deepest_streams_are_kept() {
        let now = 100_000;
        let snapshot = summarize(
            vec![
                row("ten_a", "est_1", 5, Some(now - 30_000)),
                row("ten_a", "est_2", 50, Some(now + 10_000)),
                row("ten_b", "est_3", 7, Some(now - 1_500)),
                row("ten_b", "est_4", 7, Some(now - 2_500)),
            ],
            now,
            2,
        );
        let tenants: Vec<_> = snapshot
            .tenants
            .iter()
            .map(|r| (r.tenant.as_str(), r.pending, r.oldest_due_age_seconds))
            .collect();
        assert_eq!(tenants, [("ten_a", 55, 30.0), ("ten_b", 14, 2.5)]);
        let streams: Vec<_> = snapshot
            .streams
            .iter()
            .map(|r| {
                (
                    r.stream.as_deref().unwrap(),
                    r.pending,
                    r.oldest_due_age_seconds,
                )
            })
            .collect();
        // A retry scheduled later is not due: age 0. Of equal depths, the older first.
        assert_eq!(streams, [("est_2", 50, 0.0), ("est_4", 7, 2.5)]);
    }
}
