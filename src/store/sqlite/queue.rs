//! The delivery queue on SQLite: publishing events with their deliveries, leasing due
//! deliveries, recording attempts (with the statistics rollups, stream health and Herald's
//! own notices in the same commit), and redelivery. Every function here runs inside the
//! writer's transaction, one at a time.
//!
//! One process owns an embedded store (the data directory is locked), so leases need not be
//! written down: [`Leases`] holds, in memory, the deliveries being attempted. A claim is then
//! a read, and a crash leaves nothing to recover: whatever was leased is simply still due.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use super::event_from_row;
use crate::clock::Millis;
use crate::event::Event;
use crate::store::fanout::{self, Cursor, NewDelivery, Subscriber};
use crate::store::outcomes::{Disabled, Outcomes, StoredRun};
use crate::store::{
    AttemptRecord, ClaimBatch, ClaimRequest, Claimed, DeliveryFilter, FannedOut, LATENCY_BOUNDS_MS,
    Published, RecordEffects, StoreResult,
};

/// Stores `events` and a pending delivery for each stream subscribed to them that is enabled
/// or paused (a paused stream keeps its deliveries until it is enabled again). With `lease`,
/// the deliveries to enabled streams are leased until its expiry and returned. More than
/// `MAX_INLINE_DELIVERIES` are left to a pending fan-out instead (see `store::fanout`).
pub fn publish(
    conn: &Connection,
    mut lease: Option<(&mut Leases, Millis)>,
    tenant_id: &str,
    events: Vec<Event>,
    now: Millis,
) -> StoreResult<Vec<Published>> {
    let mut streams = Vec::new();
    {
        static SUBSCRIBERS: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT id, subscriptions, {} FROM streams \
                 WHERE tenant_id = ?1 AND status IN ('enabled', 'paused')",
                fanout::LEASABLE
            )
        });
        let mut stmt = conn.prepare_cached(&SUBSCRIBERS)?;
        let mut rows = stmt.query(params![tenant_id])?;
        while let Some(row) = rows.next()? {
            let patterns: String = row.get(1)?;
            streams.push(Subscriber {
                id: row.get(0)?,
                patterns: crate::store::columns::decode_patterns(&patterns)?,
                leasable: row.get(2)?,
            });
        }
    }
    let mut insert_event = conn.prepare_cached(
        "INSERT INTO events (tenant_id, id, source, type, time, subject, datacontenttype, \
         dataschema, data, extensions, projectid, userid, received_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT (tenant_id, id, source) DO NOTHING",
    )?;
    // Each event's new row; a duplicate has none.
    let mut seqs: Vec<Option<i64>> = Vec::with_capacity(events.len());
    for event in &events {
        let (extensions, projectid, userid) = crate::store::columns::event_context(event);
        let rows = insert_event.execute(params![
            tenant_id,
            event.id,
            event.source,
            event.event_type,
            event.time,
            event.subject,
            event.datacontenttype,
            event.dataschema,
            event.data.get(),
            extensions,
            projectid,
            userid,
            now,
        ])?;
        seqs.push((rows == 1).then(|| conn.last_insert_rowid()));
    }
    let until = lease.as_ref().map(|(_, until)| *until);
    let mut plan = fanout::plan(tenant_id, &streams, &events, &seqs, until, now);
    if let Some(pending) = &plan.pending {
        conn.prepare_cached(
            "INSERT INTO fanouts (tenant_id, event_seqs, first_seq, last_seq, streams, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            tenant_id,
            serde_json::to_string(&pending.event_seqs).expect("numbers always serialize"),
            pending.first_seq,
            pending.last_seq,
            pending.streams,
            now,
        ])?;
    }
    for d in &plan.deliveries {
        insert_delivery(conn, tenant_id, d, now)?;
        if let (Some((event, at)), Some((leases, until))) = (d.leased, lease.as_mut()) {
            let claimed = &mut plan.published[event].leased[at];
            claimed.key = conn.last_insert_rowid();
            claimed.lease = leases.take(d.stream_id, claimed.key, *until);
        }
    }
    Ok(plan.published)
}

/// Creates the next chunk of a pending fan-out (about `limit` deliveries): of the first
/// fan-out after `after`, or the first of all. See `Store::fan_out`.
pub fn fan_out(
    conn: &Connection,
    after: i64,
    limit: usize,
    now: Millis,
) -> StoreResult<Option<FannedOut>> {
    let mut pick = conn.prepare_cached(
        "SELECT seq, tenant_id, event_seqs, streams, next, next_stream, row_end, created_at \
         FROM fanouts WHERE seq > ?1 ORDER BY seq LIMIT 1",
    )?;
    let read = |r: &rusqlite::Row| {
        let at = |i| r.get::<_, i64>(i).map(|v| v.max(0) as usize);
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            Cursor {
                next: at(4)?,
                next_stream: at(5)?,
                row_end: at(6)?,
            },
            r.get::<_, Millis>(7)?,
        ))
    };
    let row = match pick.query_row(params![after], read).optional()? {
        Some(row) => Some(row),
        None if after > 0 => pick.query_row(params![0], read).optional()?,
        None => None,
    };
    let Some((fanout, tenant_id, event_seqs, streams, cursor, created_at)) = row else {
        return Ok(None);
    };
    let decoded = fanout::decode_event_seqs(&event_seqs)
        .and_then(|seqs| Ok((seqs, fanout::decode_streams(&streams)?)));
    let (event_seqs, streams) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            // Kept, it would stop every fan-out behind it; its events stay in the audit log.
            tracing::error!(error = %e, tenant = %tenant_id, fanout, "dropping a pending fan-out that cannot be read; redeliver its events to send them");
            conn.prepare_cached("DELETE FROM fanouts WHERE seq = ?1")?
                .execute(params![fanout])?;
            return Ok(Some(FannedOut {
                fanout,
                streams: Vec::new(),
            }));
        }
    };
    let (tile, after) = fanout::Tile::at(cursor, event_seqs.len(), streams.len(), limit);
    // The tile's streams still there (one deleted since the publish gets nothing), and
    // its events (one gone with a deletion gets no deliveries).
    let streams = &streams[tile.streams];
    let mut exists =
        conn.prepare_cached("SELECT 1 FROM streams WHERE tenant_id = ?1 AND id = ?2")?;
    let mut existing = HashSet::new();
    for (id, patterns) in streams {
        if !patterns.is_empty() && exists.exists(params![tenant_id, id])? {
            existing.insert(id.as_str());
        }
    }
    let mut event_type =
        conn.prepare_cached("SELECT type FROM events WHERE seq = ?1 AND tenant_id = ?2")?;
    let mut events = Vec::new();
    if !existing.is_empty() {
        for &event_seq in &event_seqs[tile.events] {
            if let Some(event_type) = event_type
                .query_row(params![event_seq, tenant_id], |r| r.get(0))
                .optional()?
            {
                events.push((event_seq, event_type));
            }
        }
    }
    let deliveries = fanout::chunk_deliveries(streams, |id| existing.contains(id), &events, now);
    let mut woken = HashSet::new();
    for d in &deliveries {
        insert_delivery(conn, &tenant_id, d, created_at)?;
        woken.insert(d.stream_id.to_string());
    }
    match after {
        None => conn
            .prepare_cached("DELETE FROM fanouts WHERE seq = ?1")?
            .execute(params![fanout])?,
        Some(at) => conn
            .prepare_cached(
                "UPDATE fanouts SET next = ?2, next_stream = ?3, row_end = ?4 WHERE seq = ?1",
            )?
            .execute(params![
                fanout,
                at.next as i64,
                at.next_stream as i64,
                at.row_end as i64
            ])?,
    };
    Ok(Some(FannedOut {
        fanout,
        streams: woken.into_iter().collect(),
    }))
}

/// Stops the tenant's pending fan-outs from giving `stream_id` any more deliveries: its
/// backlog is being skipped.
pub fn skip_pending_fan_outs(
    conn: &Connection,
    tenant_id: &str,
    stream_id: &str,
) -> StoreResult<()> {
    let rows: Vec<(i64, String)> = conn
        .prepare_cached("SELECT seq, streams FROM fanouts WHERE tenant_id = ?1")?
        .query_map(params![tenant_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, streams) in rows {
        if let Ok(Some(changed)) = fanout::without_stream(&streams, stream_id) {
            conn.prepare_cached("UPDATE fanouts SET streams = ?2 WHERE seq = ?1")?
                .execute(params![seq, changed])?;
        }
    }
    Ok(())
}

fn insert_delivery(
    conn: &Connection,
    tenant_id: &str,
    d: &NewDelivery,
    now: Millis,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO deliveries (tenant_id, id, stream_id, event_seq, event_type, status, due_at, \
         created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?6) \
         ON CONFLICT (event_seq, stream_id) DO NOTHING",
    )?
    .execute(params![
        tenant_id,
        d.id,
        d.stream_id,
        d.event_seq,
        d.event_type,
        now
    ])
}

/// The deliveries being attempted, by stream, kept by the writer. A lease lapses at its
/// expiry, so one never given back (its holder lost track of it) costs a delay, not the
/// delivery.
///
/// Leases change inside writer jobs, beside rows that a failed job or commit rolls back; so
/// every change is journalled until the commit, and undone with the rows it went with (see
/// `writer::Journal`). A lease taken by a publish that then failed would otherwise hide the
/// delivery that reuses its row id, and one given back by a failed `record` would let the
/// delivery be claimed again while its attempt is still being recorded.
///
/// Each lease has a token of its own (the `lease` of `Claimed`), and is given back only by
/// it: a row id freed by a deletion goes to another delivery, and a late release of the old
/// one must not take the new one's lease.
#[derive(Default)]
pub struct Leases {
    by_stream: HashMap<String, HashSet<i64>>,
    held: HashMap<i64, Lease>,
    /// Each change since the last commit, as the lease it replaced, oldest first.
    journal: Vec<(i64, Option<Lease>)>,
    /// Where the changes of the job running now begin in `journal`.
    job_start: usize,
    /// The token of the last lease taken.
    last_token: i64,
}

#[derive(Clone)]
struct Lease {
    stream_id: String,
    until: Millis,
    token: i64,
}

impl Leases {
    fn of_stream(&self, stream_id: &str) -> Option<&HashSet<i64>> {
        self.by_stream.get(stream_id)
    }

    /// Leases `key` to `stream_id` until `until`; returns the lease's token.
    fn take(&mut self, stream_id: &str, key: i64, until: Millis) -> i64 {
        self.last_token += 1;
        let token = self.last_token;
        let lease = Lease {
            stream_id: stream_id.to_string(),
            until,
            token,
        };
        self.change(key, Some(lease));
        token
    }

    /// Gives back `key`'s lease if it is the one `token` names (lapsed or not, as long as no
    /// other lease replaced it); whether it was.
    pub fn give_back(&mut self, key: i64, token: i64) -> bool {
        let held = self.held.get(&key).is_some_and(|l| l.token == token);
        if held {
            self.change(key, None);
        }
        held
    }

    /// Forgets every lease of the stream, whose deliveries are being cancelled or deleted:
    /// an attempt under way must no longer decide a delivery's state, and a row id freed
    /// by a deletion is reused, where a lease left on it would hide the delivery that gets it.
    pub fn forget_stream(&mut self, stream_id: &str) {
        let keys: Vec<i64> = self
            .of_stream(stream_id)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default();
        for key in keys {
            self.change(key, None);
        }
    }

    fn change(&mut self, key: i64, lease: Option<Lease>) {
        let replaced = self.set(key, lease);
        self.journal.push((key, replaced));
    }

    /// Puts `lease` on `key` (or none), and returns the lease it replaced.
    fn set(&mut self, key: i64, lease: Option<Lease>) -> Option<Lease> {
        let replaced = self.held.remove(&key);
        if let Some(old) = &replaced
            && let Some(keys) = self.by_stream.get_mut(&old.stream_id)
        {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_stream.remove(&old.stream_id);
            }
        }
        if let Some(lease) = lease {
            self.by_stream
                .entry(lease.stream_id.clone())
                .or_default()
                .insert(key);
            self.held.insert(key, lease);
        }
        replaced
    }

    /// Undoes the changes journalled after `mark`, newest first.
    fn undo_to(&mut self, mark: usize) {
        let undone = self.journal.split_off(mark.min(self.journal.len()));
        for (key, lease) in undone.into_iter().rev() {
            self.set(key, lease);
        }
    }

    /// A job is about to run.
    pub fn begin_job(&mut self) {
        self.job_start = self.journal.len();
    }

    /// The job that began last was rolled back.
    pub fn undo_job(&mut self) {
        self.undo_to(self.job_start);
    }

    /// The transaction committed: its changes stand.
    pub fn committed(&mut self) {
        self.journal.clear();
        self.job_start = 0;
    }

    /// The transaction was rolled back: so are the changes of all its jobs.
    pub fn rolled_back(&mut self) {
        self.undo_to(0);
        self.job_start = 0;
    }

    /// When the lease on `key` lapses, if it is held and has not lapsed by `now`.
    fn held_until(&self, key: i64, now: Millis) -> Option<Millis> {
        self.held
            .get(&key)
            .map(|l| l.until)
            .filter(|until| *until > now)
    }
}

/// Leases up to `limit` due deliveries per request. Reads the stream's pending deliveries in
/// due order, skipping those already leased, and learns from the first one not yet due when
/// the stream next has work.
pub fn claim(
    conn: &Connection,
    leases: &mut Leases,
    requests: Vec<ClaimRequest>,
    now: Millis,
    lease_until: Millis,
) -> StoreResult<Vec<ClaimBatch>> {
    let mut select = conn.prepare_cached(&format!(
        "SELECT d.seq, d.id, d.attempts - d.round_start, d.due_at, {} \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.tenant_id = ?1 AND d.stream_id = ?2 AND d.status = 'pending' \
         ORDER BY d.due_at LIMIT ?3",
        super::EVENT_COLUMNS
    ))?;
    let mut enabled = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM streams WHERE tenant_id = ?1 AND id = ?2 AND status = 'enabled')",
    )?;
    let mut batches = Vec::with_capacity(requests.len());
    for request in requests {
        // The dispatcher may not have heard yet that the stream was paused or disabled.
        let serving: bool =
            enabled.query_row(params![request.tenant_id, request.stream_id], |r| r.get(0))?;
        if !serving {
            batches.push(ClaimBatch {
                tenant_id: request.tenant_id,
                stream_id: request.stream_id,
                deliveries: Vec::new(),
                next_due: None,
            });
            continue;
        }
        let leased = leases.of_stream(&request.stream_id).map_or(0, HashSet::len);
        // Enough rows to get past the leased ones, fill the request, and see one more.
        let window = request.limit + leased + 1;
        let mut deliveries = Vec::new();
        let mut next_due = None;
        let mut rows =
            select.query(params![request.tenant_id, request.stream_id, window as i64])?;
        while let Some(row) = rows.next()? {
            let key: i64 = row.get(0)?;
            if let Some(until) = leases.held_until(key, now) {
                // Under way: due again only if its lease lapses.
                next_due = Some(next_due.map_or(until, |due: Millis| due.min(until)));
                continue;
            }
            let due_at: Millis = row.get(3)?;
            if due_at > now || deliveries.len() == request.limit {
                let due = due_at.max(now);
                next_due = Some(next_due.map_or(due, |d: Millis| d.min(due)));
                break;
            }
            deliveries.push(Claimed {
                key,
                id: row.get(1)?,
                attempts: row.get(2)?,
                lease: 0,
                lease_until,
                tenant_id: request.tenant_id.clone(),
                stream_id: request.stream_id.clone(),
                event: Arc::new(event_from_row(row, 4)?),
            });
        }
        drop(rows);
        // A lapsed lease is replaced only on the deliveries taken: on any other, the late
        // attempt under it may still store its outcome.
        for d in &mut deliveries {
            d.lease = leases.take(&request.stream_id, d.key, lease_until);
        }
        batches.push(ClaimBatch {
            tenant_id: request.tenant_id,
            stream_id: request.stream_id,
            deliveries,
            next_due,
        });
    }
    Ok(batches)
}

/// Stores attempts and, under the lease each was made with, their deliveries' next states;
/// then what follows from those outcomes (see `store::outcomes`).
pub fn record(
    conn: &Connection,
    leases: &mut Leases,
    records: Vec<AttemptRecord>,
    now: Millis,
) -> StoreResult<RecordEffects> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO attempts (tenant_id, delivery_seq, attempted_at, duration_ms, response_status, \
         response_body, error_kind, error_message, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, attempts = attempts + 1, due_at = ?3, \
         last_attempt_at = ?4, last_response_status = ?5, last_error_kind = ?6, updated_at = ?7 \
         WHERE seq = ?1 AND tenant_id = ?8 AND id = ?9 AND status = 'pending'",
    )?;
    let mut owned = Vec::with_capacity(records.len());
    for r in &records {
        // Only the lease the attempt was made under decides the delivery's state: a
        // delivery cancelled meanwhile has lost its lease, and if it was redelivered and
        // claimed again, the new attempt holds another.
        let current = leases.give_back(r.key, r.lease);
        insert.execute(params![
            r.tenant_id,
            r.key,
            r.attempted_at,
            r.duration_ms,
            r.response_status,
            r.response_body,
            r.error_kind,
            r.error_message,
            r.detail
        ])?;
        // No row changes when the delivery was cancelled meanwhile: the attempt is on record,
        // but it no longer decides the delivery's state.
        if current
            && update.execute(params![
                r.key,
                r.status.as_str(),
                r.due_at(),
                r.attempted_at,
                r.response_status,
                r.error_kind,
                now,
                r.tenant_id,
                r.delivery_id
            ])? == 1
        {
            owned.push(r);
        }
    }

    let outcomes = Outcomes::of(owned);
    let mut rollup = conn.prepare_cached(&ROLLUP_SQL)?;
    for ((tenant_id, stream_id, hour, event_type), r) in &outcomes.rollups {
        let mut values: Vec<SqlValue> = vec![
            SqlValue::Text(tenant_id.to_string()),
            SqlValue::Text(stream_id.to_string()),
            SqlValue::Integer(*hour),
            SqlValue::Text(event_type.to_string()),
        ];
        let counts = [r.succeeded, r.failed, r.attempts, r.failed_attempts];
        values.extend(
            counts
                .iter()
                .chain(&r.latency)
                .map(|&n| SqlValue::Integer(n)),
        );
        rollup.execute(params_from_iter(values))?;
    }

    let mut read = conn.prepare_cached(
        "SELECT consecutive_failures, failing_since, status = 'disabled', name FROM streams \
         WHERE tenant_id = ?1 AND id = ?2",
    )?;
    // The run as `Health::apply` leaves it, and with a reason the stream is disabled.
    let mut write = conn.prepare_cached(
        "UPDATE streams SET consecutive_failures = ?3, failing_since = ?4, \
         status = CASE WHEN ?5 IS NULL THEN status ELSE 'disabled' END, \
         status_reason = COALESCE(?5, status_reason), \
         updated_at = CASE WHEN ?5 IS NULL THEN updated_at ELSE ?6 END \
         WHERE tenant_id = ?1 AND id = ?2",
    )?;
    let mut disabled = Vec::new();
    for (&(tenant_id, stream_id), health) in &outcomes.health {
        let row = read
            .query_row(params![tenant_id, stream_id], |row| {
                let stored = StoredRun {
                    failures: row.get(0)?,
                    since: row.get(1)?,
                    disabled: row.get(2)?,
                };
                Ok((stored, row.get::<_, String>(3)?))
            })
            .optional()?;
        let Some((stored, name)) = row else {
            continue; // The stream was deleted meanwhile.
        };
        if !health.failed() && stored.failures == 0 {
            continue;
        }
        let run = health.apply(&stored, now);
        if !run.changes(&stored) {
            continue;
        }
        write.execute(params![
            tenant_id,
            stream_id,
            run.failures,
            run.since,
            run.disable,
            now
        ])?;
        if let Some(reason) = run.disable {
            disabled.push(Disabled {
                tenant_id: tenant_id.to_string(),
                stream_id: stream_id.to_string(),
                name,
                reason,
            });
        }
    }
    let mut effects = RecordEffects::disabling(&disabled);
    for (tenant_id, notice) in outcomes.notices(&disabled, now) {
        effects.notified(publish(conn, None, &tenant_id, vec![notice], now)?);
    }
    Ok(effects)
}

/// The rollup upsert: adds a batch's sums to a row of `stream_stats`.
static ROLLUP_SQL: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = (0..=LATENCY_BOUNDS_MS.len())
        .map(|i| format!("l{i}"))
        .collect();
    let values: Vec<String> = (1..=columns.len() + 8).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = ["succeeded", "failed", "attempts", "failed_attempts"]
        .iter()
        .map(|c| c.to_string())
        .chain(columns.iter().cloned())
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO stream_stats (tenant_id, stream_id, hour, event_type, succeeded, failed, \
         attempts, failed_attempts, {cols}) VALUES ({values}) \
         ON CONFLICT (tenant_id, stream_id, hour, event_type) DO UPDATE SET {updates}",
        cols = columns.join(", "),
        values = values.join(", "),
        updates = updates.join(", "),
    )
});

/// The SQL condition (on `deliveries d`) for `filter`, its values appended to `values`.
pub fn filter_sql(filter: &DeliveryFilter, values: &mut Vec<SqlValue>) -> String {
    let mut sql = String::new();
    if !filter.statuses.is_empty() {
        sql.push_str(" AND d.status IN (");
        for (i, status) in filter.statuses.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            values.push(SqlValue::Text(status.as_str().into()));
        }
        sql.push(')');
    }
    if !filter.event_types.is_empty() {
        sql.push_str(" AND d.event_type IN (");
        for (i, event_type) in filter.event_types.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            values.push(SqlValue::Text(event_type.clone()));
        }
        sql.push(')');
    }
    if let Some(from) = filter.date_from {
        sql.push_str(" AND d.created_at >= ?");
        values.push(SqlValue::Integer(from));
    }
    if let Some(to) = filter.date_to {
        sql.push_str(" AND d.created_at < ?");
        values.push(SqlValue::Integer(to));
    }
    sql
}

/// Cancels a stream's pending deliveries and forgets their leases, as on PostgreSQL: an
/// attempt still under way decides nothing (it is kept as an attempt), and a cancelled
/// delivery can be redelivered at once.
pub fn cancel_pending(
    conn: &Connection,
    leases: &mut Leases,
    tenant_id: &str,
    stream_id: &str,
    now: Millis,
) -> StoreResult<()> {
    conn.execute(
        "UPDATE deliveries SET status = 'cancelled', due_at = NULL, updated_at = ?3 \
         WHERE tenant_id = ?1 AND stream_id = ?2 AND status = 'pending'",
        params![tenant_id, stream_id, now],
    )?;
    leases.forget_stream(stream_id);
    Ok(())
}

/// Starts a new round for a delivery: due now, retry budget reset. Attempts under way
/// (leased) are left to finish.
const REQUEUE: &str = "status = 'pending', due_at = ?, round_start = attempts, updated_at = ?";

/// The leased deliveries of a stream as a JSON array, for `d.seq NOT IN (SELECT value FROM
/// json_each(?))`.
fn leased_json(leases: &Leases, stream_id: &str, now: Millis) -> String {
    let keys: Vec<i64> = leases
        .of_stream(stream_id)
        .map(|keys| {
            keys.iter()
                .copied()
                .filter(|key| leases.held_until(*key, now).is_some())
                .collect()
        })
        .unwrap_or_default();
    serde_json::to_string(&keys).expect("integers serialise")
}
const NOT_IN_FLIGHT: &str = "d.seq NOT IN (SELECT value FROM json_each(?))";

pub fn redeliver_event(
    conn: &Connection,
    leases: &Leases,
    tenant_id: &str,
    stream_id: &str,
    event_id: &str,
    now: Millis,
) -> StoreResult<Option<u64>> {
    let events: Vec<(i64, String)> = conn
        .prepare_cached("SELECT seq, type FROM events WHERE tenant_id = ?1 AND id = ?2")?
        .query_map(params![tenant_id, event_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut queued = 0;
    for (event_seq, event_type) in events {
        let delivery = NewDelivery {
            id: crate::ids::delivery_id(now),
            stream_id,
            event_seq,
            event_type: &event_type,
            leased: None,
        };
        let created = insert_delivery(conn, tenant_id, &delivery, now)?;
        queued += if created == 1 {
            1
        } else {
            conn.execute(
                &format!(
                    "UPDATE deliveries AS d SET {REQUEUE} \
                     WHERE d.tenant_id = ? AND d.event_seq = ? AND d.stream_id = ? AND {NOT_IN_FLIGHT}"
                ),
                params![now, now, tenant_id, event_seq, stream_id, leased_json(leases, stream_id, now)],
            )?
        } as u64;
    }
    Ok(Some(queued))
}

/// Requeues (or with `dry_run` counts) the stream's deliveries that match `filter`, among the
/// next `BULK_CHUNK` after `window.0`, up to `window.1` in `seq` order (the stream's last
/// delivery when `None`). Returns how many, and the next chunk's window unless this was the
/// last.
#[allow(clippy::too_many_arguments)]
pub fn redeliver(
    conn: &Connection,
    leases: &Leases,
    tenant_id: &str,
    stream_id: &str,
    filter: &DeliveryFilter,
    dry_run: bool,
    now: Millis,
    window: (i64, Option<i64>),
) -> StoreResult<(u64, Option<(i64, i64)>)> {
    let (after, last) = window;
    let last = match last {
        Some(last) => last,
        None => conn
            .prepare_cached(
                "SELECT MAX(seq) FROM deliveries WHERE tenant_id = ?1 AND stream_id = ?2",
            )?
            .query_row(params![tenant_id, stream_id], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .unwrap_or(0),
    };
    let upto: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(seq) FROM (SELECT seq FROM deliveries \
             WHERE tenant_id = ?1 AND stream_id = ?2 AND seq > ?3 AND seq <= ?4 ORDER BY seq LIMIT ?5)",
        )?
        .query_row(
            params![tenant_id, stream_id, after, last, super::BULK_CHUNK as i64],
            |r| r.get(0),
        )?;
    let Some(upto) = upto else {
        return Ok((0, None));
    };
    let mut values = Vec::new();
    let head = if dry_run {
        "SELECT COUNT(*) FROM deliveries d WHERE".to_string()
    } else {
        values.push(SqlValue::Integer(now));
        values.push(SqlValue::Integer(now));
        format!("UPDATE deliveries AS d SET {REQUEUE} WHERE")
    };
    values.push(SqlValue::Text(tenant_id.into()));
    values.push(SqlValue::Text(stream_id.into()));
    let conditions = filter_sql(filter, &mut values);
    values.push(SqlValue::Text(leased_json(leases, stream_id, now)));
    values.push(SqlValue::Integer(after));
    values.push(SqlValue::Integer(upto));
    let sql = format!(
        "{head} d.tenant_id = ? AND d.stream_id = ?{conditions} AND {NOT_IN_FLIGHT} \
         AND d.seq > ? AND d.seq <= ?"
    );
    let count = if dry_run {
        conn.query_row(&sql, params_from_iter(values), |r| r.get::<_, i64>(0))? as u64
    } else {
        conn.execute(&sql, params_from_iter(values))? as u64
    };
    Ok((count, (upto < last).then_some((upto, last))))
}
