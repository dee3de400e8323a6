//! The audit log and statistics on SQLite: listing and reading events, erasing payloads,
//! retention sweeps, and reading the hourly rollups.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Row, params, params_from_iter};

use super::{EVENT_COLUMNS, event_from_row};
use crate::clock::Millis;
use crate::store::{
    Backlog, ERASED_EVENT, Erase, EventFilter, HourOutcomes, KEPT_BY_PENDING_WORK,
    LATENCY_BOUNDS_MS, LogPosition, LogStart, LoggedEvent, NOT_NEWEST, Page, StatsRow, StoreResult,
    StreamActivity, Swept, TENANT_HOURS,
};

const LOGGED_COLUMNS: &str = "e.seq, e.received_at, e.erased_at";

fn logged_from_row(row: &Row) -> StoreResult<(i64, LoggedEvent)> {
    Ok((
        row.get(0)?,
        LoggedEvent {
            received_at: row.get(1)?,
            erased_at: row.get(2)?,
            event: event_from_row(row, 3)?,
        },
    ))
}

pub fn list_events(
    conn: &Connection,
    tenant_id: &str,
    filter: &EventFilter,
    before: Option<i64>,
    take: usize,
) -> StoreResult<Page<LoggedEvent>> {
    let mut values = vec![SqlValue::Text(tenant_id.into())];
    let mut sql = String::new();
    let mut eq = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            sql.push_str(&format!(" AND e.{column} = ?"));
            values.push(SqlValue::Text(v.clone()));
        }
    };
    eq("type", &filter.event_type);
    eq("subject", &filter.subject);
    eq("projectid", &filter.projectid);
    eq("userid", &filter.userid);
    if let Some(from) = filter.date_from {
        sql.push_str(" AND e.received_at >= ?");
        values.push(SqlValue::Integer(from));
    }
    if let Some(to) = filter.date_to {
        sql.push_str(" AND e.received_at < ?");
        values.push(SqlValue::Integer(to));
    }
    if let Some(before) = before {
        sql.push_str(" AND e.seq < ?");
        values.push(SqlValue::Integer(before));
    }
    values.push(SqlValue::Integer(take as i64 + 1));
    let mut stmt = conn.prepare(&format!(
        "SELECT {LOGGED_COLUMNS}, {EVENT_COLUMNS} FROM events e \
         WHERE e.tenant_id = ?{sql} ORDER BY e.seq DESC LIMIT ?"
    ))?;
    let mut rows = stmt.query(params_from_iter(values))?;
    Page::from_newest(super::read_rows(&mut rows, logged_from_row), take)
}

/// One writer commits the embedded store's transactions in the order of their `seq`s, and
/// readers see whole commits: the log is ordered by `seq` alone, and every event a reader can
/// see is in its final place.
pub fn log_position(
    conn: &Connection,
    tenant_id: &str,
    start: LogStart,
) -> StoreResult<Option<LogPosition>> {
    let at = |seq: i64| Some(LogPosition { xid: 0, seq });
    Ok(match start {
        LogStart::After {
            position,
            received_since,
        } => {
            let found = conn
                .prepare_cached(
                    "SELECT 1 FROM events WHERE tenant_id = ?1 AND seq = ?2 AND received_at >= ?3",
                )?
                .exists(params![
                    tenant_id,
                    position.seq,
                    received_since.unwrap_or(i64::MIN)
                ])?;
            (found && position.xid == 0).then_some(position)
        }
        // The first event received since then, or else the end, in one statement (one
        // snapshot): in two, an event committed in between would be skipped.
        LogStart::ReceivedFrom(time) => at(conn
            .prepare_cached(
                "SELECT COALESCE( \
                 (SELECT MIN(seq) - 1 FROM events WHERE tenant_id = ?1 AND received_at >= ?2), \
                 (SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ?1))",
            )?
            .query_row(params![tenant_id, time], |row| row.get(0))?),
        // The tenant's own newest event, not the store's: row ids freed by deleting another
        // tenant's newest events are taken again by the next insert.
        LogStart::End => at(conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ?1")?
            .query_row(params![tenant_id], |row| row.get(0))?),
    })
}

pub fn read_log(
    conn: &Connection,
    tenant_id: &str,
    after: LogPosition,
    take: usize,
) -> StoreResult<Vec<(LogPosition, LoggedEvent)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LOGGED_COLUMNS}, {EVENT_COLUMNS} FROM events e \
         WHERE e.tenant_id = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3"
    ))?;
    let mut rows = stmt.query(params![tenant_id, after.seq, take as i64])?;
    super::read_rows(&mut rows, logged_from_row)
        .map(|row| row.map(|(seq, logged)| (LogPosition { xid: 0, seq }, logged)))
        .collect()
}

/// The newest event with an id (and source). The unique index finds the few rows with that
/// id; left to itself, the planner would rather walk the tenant's events newest first for
/// the `ORDER BY`, which for an old or unknown id reads every one.
pub(super) fn get_event_sql() -> String {
    format!(
        "SELECT {LOGGED_COLUMNS}, {EVENT_COLUMNS} FROM events e INDEXED BY events_by_source_id \
         WHERE e.tenant_id = ?1 AND e.id = ?2 AND (?3 IS NULL OR e.source = ?3) \
         ORDER BY e.seq DESC LIMIT 1"
    )
}

pub fn get_event(
    conn: &Connection,
    tenant_id: &str,
    id: &str,
    source: Option<&str>,
) -> StoreResult<Option<LoggedEvent>> {
    let mut stmt = conn.prepare_cached(&get_event_sql())?;
    let mut rows = stmt.query(params![tenant_id, id, source])?;
    rows.next()?
        .map(|row| logged_from_row(row).map(|(_, logged)| logged))
        .transpose()
}

/// Erases up to `limit` events of each id or of the subject (see `Store::erase`).
pub fn erase(
    conn: &Connection,
    tenant_id: &str,
    what: &Erase,
    now: Millis,
    limit: usize,
) -> StoreResult<u64> {
    let (condition, values): (&str, Vec<&str>) = match what {
        Erase::Events(ids) => ("id", ids.iter().map(String::as_str).collect()),
        Erase::Subject(subject) => ("subject", vec![subject.as_str()]),
    };
    // An id named twice is one event, as in `= ANY(...)` on PostgreSQL.
    let values: std::collections::BTreeSet<&str> = values.into_iter().collect();
    let mut erase = conn.prepare_cached(&format!(
        "UPDATE events SET {ERASED_EVENT}, erased_at = ?1 WHERE seq IN \
         (SELECT seq FROM events WHERE tenant_id = ?2 AND {condition} = ?3 LIMIT ?4) RETURNING seq"
    ))?;
    let mut bodies = conn.prepare_cached(
        "UPDATE attempts SET response_body = NULL WHERE tenant_id = ?1 AND response_body IS NOT NULL \
         AND delivery_seq IN (SELECT seq FROM deliveries WHERE tenant_id = ?1 AND event_seq = ?2)",
    )?;
    let mut count = 0;
    for value in values {
        let seqs: Vec<i64> = erase
            .query_map(params![now, tenant_id, value, limit as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for seq in &seqs {
            bodies.execute(params![tenant_id, seq])?;
        }
        count += seqs.len() as u64;
    }
    Ok(count)
}

/// Walks events and attempts in insertion order, oldest first: they were received in that
/// order, so the old rows come first and no index on the times is needed.
pub fn sweep(
    conn: &Connection,
    events_before: Option<Millis>,
    bodies_before: Option<Millis>,
    limit: usize,
) -> StoreResult<Swept> {
    let mut swept = Swept::default();
    if let Some(cutoff) = events_before {
        let old: Vec<(i64, String)> = conn
            .prepare_cached(&format!(
                "SELECT e.seq, e.tenant_id FROM events e WHERE e.received_at < ?1 \
                 AND NOT {KEPT_BY_PENDING_WORK} AND {NOT_NEWEST} ORDER BY e.seq LIMIT ?2"
            ))?
            .query_map(params![cutoff, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut attempts = conn.prepare_cached(
            "DELETE FROM attempts WHERE tenant_id = ?1 AND delivery_seq IN \
             (SELECT seq FROM deliveries WHERE tenant_id = ?1 AND event_seq = ?2)",
        )?;
        let mut deliveries =
            conn.prepare_cached("DELETE FROM deliveries WHERE tenant_id = ?1 AND event_seq = ?2")?;
        let mut events = conn.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        for (seq, tenant_id) in &old {
            attempts.execute(params![tenant_id, seq])?;
            deliveries.execute(params![tenant_id, seq])?;
            events.execute(params![seq])?;
        }
        swept.events = old.len() as u64;
        conn.execute(
            "DELETE FROM stream_stats WHERE hour < ?1",
            params![cutoff - 3_600_000],
        )?;
    }
    if let Some(cutoff) = bodies_before {
        swept.bodies = conn.execute(
            "UPDATE attempts SET response_body = NULL WHERE seq IN (SELECT seq FROM attempts \
             WHERE attempted_at < ?1 AND response_body IS NOT NULL ORDER BY seq LIMIT ?2)",
            params![cutoff, limit as i64],
        )? as u64;
    }
    Ok(swept)
}

pub fn stats(
    conn: &Connection,
    tenant_id: &str,
    stream_id: &str,
    from: Millis,
    to: Millis,
) -> StoreResult<Vec<StatsRow>> {
    let buckets = LATENCY_BOUNDS_MS.len() + 1;
    let latency_columns: Vec<String> = (0..buckets).map(|i| format!("l{i}")).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT hour, event_type, succeeded, failed, attempts, failed_attempts, {} \
         FROM stream_stats WHERE tenant_id = ?1 AND stream_id = ?2 AND hour >= ?3 AND hour < ?4 \
         ORDER BY hour, event_type",
        latency_columns.join(", ")
    ))?;
    let rows = stmt.query_map(params![tenant_id, stream_id, from, to], |r| {
        let latency = (0..buckets)
            .map(|i| r.get::<_, i64>(6 + i).map(|v| v as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatsRow {
            hour: r.get(0)?,
            event_type: r.get(1)?,
            succeeded: r.get::<_, i64>(2)? as u64,
            failed: r.get::<_, i64>(3)? as u64,
            attempts: r.get::<_, i64>(4)? as u64,
            failed_attempts: r.get::<_, i64>(5)? as u64,
            latency,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The pending deliveries of each of a tenant's streams. Named, the index of pending
/// deliveries is read rather than every delivery of the tenant, which SQLite (without
/// statistics) would otherwise pick.
const TENANT_BACKLOGS: &str = "SELECT stream_id, COUNT(*), MIN(created_at) \
     FROM deliveries INDEXED BY deliveries_due \
     WHERE tenant_id = ?1 AND status = 'pending' GROUP BY stream_id";

pub fn stream_activity(
    conn: &Connection,
    tenant_id: &str,
    from: Millis,
    to: Millis,
) -> StoreResult<StreamActivity> {
    let mut activity = StreamActivity::default();
    let mut stmt = conn.prepare_cached(TENANT_BACKLOGS)?;
    let mut rows = stmt.query(params![tenant_id])?;
    while let Some(r) = rows.next()? {
        activity.backlogs.insert(
            r.get(0)?,
            Backlog {
                pending: r.get::<_, i64>(1)? as u64,
                oldest_created_at: r.get(2)?,
            },
        );
    }
    let mut stmt = conn.prepare_cached(TENANT_HOURS)?;
    let mut rows = stmt.query(params![tenant_id, from, to])?;
    while let Some(r) = rows.next()? {
        activity
            .hours
            .entry(r.get(0)?)
            .or_default()
            .push(HourOutcomes {
                hour: r.get(1)?,
                succeeded: r.get::<_, i64>(2)? as u64,
                failed: r.get::<_, i64>(3)? as u64,
            });
    }
    Ok(activity)
}
