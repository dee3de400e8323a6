//! The delivery queue on PostgreSQL: publishing events with their deliveries, leasing due
//! deliveries for one node at a time, recording attempts (with the statistics rollups, stream
//! health and Herald's own notices in the same transaction), and redelivery.
//!
//! Each call is a few set-based statements over arrays (`unnest`), never a statement per
//! row: a batch of a thousand outcomes costs the same round trips as one.
//!
//! Lock order: a transaction that changes several of these rows takes them in one order, so
//! two transactions never each hold what the other waits for (PostgreSQL would abort one of
//! them after a second). Queue rows first, in key order (locked with `ORDER BY seq ... FOR
//! UPDATE` before they change), then their deliveries, then streams in (tenant, id) order.
//! So a stream's backlog is cancelled before the stream's own row is updated or deleted.
//! Claims skip locked rows rather than wait for them. Pending fan-outs come before all of
//! these (a chunk holds its fan-out's row while it adds deliveries and queue rows), and a
//! redelivery takes its advisory locks before the fan-outs. Event keys come after the rest,
//! in key order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{EVENT_COLUMNS, Params, event_from_row, history, notify_streams_changed};
use crate::clock::Millis;
use crate::event::Event;
use crate::store::columns;
use crate::store::fanout::{self, Cursor, NewDelivery, Subscriber};
use crate::store::outcomes::{Disabled, Outcomes, Rollup, RollupKey, StoredRun};
use crate::store::{
    AttemptRecord, ClaimBatch, ClaimRequest, Claimed, DeliveryFilter, FannedOut, LATENCY_BOUNDS_MS,
    Published, RecordEffects, StoreResult,
};

/// One publish call: a tenant's events, when they arrived, and whether the caller leases the
/// deliveries to enabled streams (until when).
pub struct PublishRequest {
    pub tenant_id: String,
    pub events: Vec<Event>,
    pub now: Millis,
    pub lease_until: Option<Millis>,
}

/// Stores `events` and a pending delivery for each stream subscribed to them that is enabled
/// or paused. With `lease_until`, the deliveries to enabled streams are leased to the caller
/// and returned; the streams of the others are added to `due`, for every node to hear of.
/// More than `MAX_INLINE_DELIVERIES` are left to a pending fan-out (see `store::fanout`).
pub async fn publish(
    tx: &impl GenericClient,
    lease_until: Option<Millis>,
    tenant_id: &str,
    events: Vec<Event>,
    now: Millis,
    due: &mut Vec<String>,
) -> StoreResult<Vec<Published>> {
    let request = PublishRequest {
        tenant_id: tenant_id.to_string(),
        events,
        now,
        lease_until,
    };
    let mut published = publish_all(tx, std::slice::from_ref(&request), due).await?;
    Ok(published.pop().unwrap_or_default())
}

/// [`publish`] for several requests at once, with the same statements as one (a group
/// commit's): each request's events are stored and fanned out as if it were alone, in
/// order, so a request that repeats an event of an earlier one in the group gets a duplicate.
/// Gives each request's results, in order.
pub async fn publish_all(
    tx: &impl GenericClient,
    requests: &[PublishRequest],
    due: &mut Vec<String>,
) -> StoreResult<Vec<Vec<Published>>> {
    static SUBSCRIBERS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT tenant_id, id, subscriptions, {} FROM streams \
             WHERE tenant_id = ANY($1) AND status IN ('enabled', 'paused')",
            fanout::LEASABLE
        )
    });
    let select = tx.prepare_cached(&SUBSCRIBERS).await?;
    let mut tenants: Vec<&str> = requests.iter().map(|r| r.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();

    // One array per column, every request's events in order.
    let events = || requests.iter().flat_map(|r| r.events.iter());
    let contexts: Vec<_> = events().map(columns::event_context).collect();
    let event_tenants: Vec<&str> = requests
        .iter()
        .flat_map(|r| r.events.iter().map(|_| r.tenant_id.as_str()))
        .collect();
    let received: Vec<Millis> = requests
        .iter()
        .flat_map(|r| r.events.iter().map(|_| r.now))
        .collect();
    let ids: Vec<&str> = events().map(|e| e.id.as_str()).collect();
    let sources: Vec<&str> = events().map(|e| e.source.as_str()).collect();
    let types: Vec<&str> = events().map(|e| e.event_type.as_str()).collect();
    let times: Vec<Millis> = events().map(|e| e.time).collect();
    let subjects: Vec<Option<&str>> = events().map(|e| e.subject.as_deref()).collect();
    let contenttypes: Vec<Option<&str>> = events().map(|e| e.datacontenttype.as_deref()).collect();
    let schemas: Vec<Option<&str>> = events().map(|e| e.dataschema.as_deref()).collect();
    let datas: Vec<&str> = events().map(|e| e.data.get()).collect();
    let extensions: Vec<Option<&str>> = contexts.iter().map(|c| c.0.as_deref()).collect();
    let projectids: Vec<Option<&str>> = contexts.iter().map(|c| c.1.as_deref()).collect();
    let userids: Vec<Option<&str>> = contexts.iter().map(|c| c.2.as_deref()).collect();
    // Each event takes its key's `seq` in publish order, and its key is claimed first (see
    // `014_partitioned_history.sql`): only the events whose key was not taken are stored. A
    // key repeated within the statement is taken by its first occurrence. Keys are taken in
    // key order (see the module's lock order): two groups taking the same keys in their
    // own orders deadlocked, and PostgreSQL aborted one of them after a second.
    let insert = tx
        .prepare_cached(
            "WITH u AS (SELECT u.*, nextval('events_seq_seq') AS seq FROM unnest($1::text[], \
               $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], \
               $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[]) \
               WITH ORDINALITY AS u(tenant_id, id, source, type, time, subject, datacontenttype, \
               dataschema, data, extensions, projectid, userid, received_at, n) ORDER BY u.n), \
             k AS (INSERT INTO event_keys (tenant_id, id, source, seq) \
               SELECT u.tenant_id, u.id, u.source, u.seq FROM u \
               ORDER BY u.tenant_id, u.id, u.source, u.n \
               ON CONFLICT (tenant_id, id, source) DO NOTHING RETURNING seq) \
             INSERT INTO events (seq, tenant_id, id, source, type, time, subject, datacontenttype, \
             dataschema, data, extensions, projectid, userid, received_at) \
             SELECT u.seq, u.tenant_id, u.id, u.source, u.type, u.time, u.subject, \
             u.datacontenttype, u.dataschema, u.data, u.extensions, u.projectid, u.userid, \
             u.received_at FROM u WHERE u.seq IN (SELECT seq FROM k) ORDER BY u.seq \
             RETURNING seq, tenant_id, source, id",
        )
        .await?;
    let select_params: [&(dyn ToSql + Sync); 1] = [&tenants];
    let insert_params: [&(dyn ToSql + Sync); 13] = [
        &event_tenants,
        &ids,
        &sources,
        &types,
        &times,
        &subjects,
        &contenttypes,
        &schemas,
        &datas,
        &extensions,
        &projectids,
        &userids,
        &received,
    ];
    // Sent together: the connection pipelines them.
    let (stream_rows, rows) = tokio::try_join!(
        tx.query(&select, &select_params),
        tx.query(&insert, &insert_params)
    )?;
    let mut streams: HashMap<String, Vec<Subscriber>> = HashMap::new();
    for row in stream_rows {
        streams.entry(row.get(0)).or_default().push(Subscriber {
            id: row.get(1),
            patterns: columns::decode_patterns(row.get(2))?,
            leasable: row.get(3),
        });
    }
    // A repeat within the group is inserted once: the first occurrence takes the row.
    let mut inserted: HashMap<(String, String, String), i64> = rows
        .iter()
        .map(|r| ((r.get(1), r.get(2), r.get(3)), r.get(0)))
        .collect();

    let no_streams = Vec::new();
    let mut new_deliveries = NewDeliveries::default();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let tenant_id = request.tenant_id.as_str();
        let streams = streams.get(tenant_id).unwrap_or(&no_streams);
        let seqs: Vec<Option<i64>> = request
            .events
            .iter()
            .map(|e| inserted.remove(&(tenant_id.to_string(), e.source.clone(), e.id.clone())))
            .collect();
        let plan = fanout::plan(
            tenant_id,
            streams,
            &request.events,
            &seqs,
            request.lease_until,
            request.now,
        );
        if let Some(pending) = &plan.pending {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO fanouts (tenant_id, event_seqs, first_seq, last_seq, streams, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            let params: [&(dyn ToSql + Sync); 6] = [
                &tenant_id,
                &pending.event_seqs,
                &pending.first_seq,
                &pending.last_seq,
                &pending.streams,
                &request.now,
            ];
            tx.execute(&insert, &params).await?;
        }
        for d in &plan.deliveries {
            let lease = d.leased.and(request.lease_until);
            new_deliveries.push(tenant_id, d, lease, request.now);
        }
        results.push(plan.published);
    }
    let seqs = new_deliveries.insert(tx, Existing::None).await?;
    for claimed in results
        .iter_mut()
        .flatten()
        .flat_map(|p| p.leased.iter_mut())
    {
        claimed.key = seqs[&(claimed.tenant_id.clone(), claimed.id.clone())];
        // The queue row's first lease generation.
        claimed.lease = 1;
    }
    due.extend(new_deliveries.unleased);
    Ok(results)
}

/// Creates the next chunk of a pending fan-out (about `limit` deliveries): of the first
/// fan-out after `after` that no other node is working on, or the first of all. See
/// `Store::fan_out`.
pub async fn fan_out(
    tx: &impl GenericClient,
    after: i64,
    limit: usize,
    now: Millis,
    due: &mut Vec<String>,
) -> StoreResult<Option<FannedOut>> {
    let pick = tx
        .prepare_cached(
            "SELECT seq, tenant_id, event_seqs, streams, next, next_stream, row_end, created_at \
             FROM fanouts WHERE seq > $1 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let mut row = tx.query_opt(&pick, &[&after]).await?;
    if row.is_none() && after > 0 {
        row = tx.query_opt(&pick, &[&0i64]).await?;
    }
    let Some(row) = row else {
        return Ok(None);
    };
    let at = |i| row.get::<_, i32>(i).max(0) as usize;
    let cursor = Cursor {
        next: at(4),
        next_stream: at(5),
        row_end: at(6),
    };
    let (fanout, tenant_id, event_seqs, created_at): (i64, String, Vec<i64>, Millis) =
        (row.get(0), row.get(1), row.get(2), row.get(7));
    let streams = match fanout::decode_streams(row.get(3)) {
        Ok(streams) => streams,
        Err(e) => {
            // Kept, it would stop every fan-out behind it; its events stay in the audit log.
            tracing::error!(error = %e, tenant = %tenant_id, fanout, "dropping a pending fan-out that cannot be read; redeliver its events to send them");
            tx.execute("DELETE FROM fanouts WHERE seq = $1", &[&fanout])
                .await?;
            return Ok(Some(FannedOut {
                fanout,
                streams: Vec::new(),
            }));
        }
    };
    let (tile, after) = fanout::Tile::at(cursor, event_seqs.len(), streams.len(), limit);
    let streams = &streams[tile.streams];
    let chunk = &event_seqs[tile.events];
    let stream_ids: Vec<&str> = streams.iter().map(|(id, _)| id.as_str()).collect();
    let streams_params: [&(dyn ToSql + Sync); 2] = [&tenant_id, &stream_ids];
    let events_params: [&(dyn ToSql + Sync); 2] = [&tenant_id, &chunk];
    let (existing, events) = tokio::try_join!(
        // The streams still there: one deleted since the publish gets nothing.
        tx.query(
            "SELECT id FROM streams WHERE tenant_id = $1 AND id = ANY($2)",
            &streams_params,
        ),
        // Prepared for this chunk alone, so planned with its keys: only the partitions
        // of their days are locked and read.
        tx.query(
            "SELECT seq, type FROM events WHERE tenant_id = $1 AND seq = ANY($2)",
            &events_params,
        ),
    )?;
    let existing: HashSet<String> = existing.iter().map(|r| r.get(0)).collect();
    // In the fan-out's order, the events still there.
    let mut types: HashMap<i64, String> = events.iter().map(|r| (r.get(0), r.get(1))).collect();
    let events: Vec<(i64, String)> = chunk
        .iter()
        .filter_map(|seq| Some((*seq, types.remove(seq)?)))
        .collect();
    let mut new_deliveries = NewDeliveries::default();
    let deliveries = fanout::chunk_deliveries(streams, |id| existing.contains(id), &events, now);
    for d in &deliveries {
        new_deliveries.push(&tenant_id, d, None, created_at);
    }
    new_deliveries.insert(tx, Existing::Skip).await?;
    match after {
        None => {
            tx.execute("DELETE FROM fanouts WHERE seq = $1", &[&fanout])
                .await?
        }
        Some(at) => {
            tx.execute(
                "UPDATE fanouts SET next = $2, next_stream = $3, row_end = $4 WHERE seq = $1",
                &[
                    &fanout,
                    &(at.next as i32),
                    &(at.next_stream as i32),
                    &(at.row_end as i32),
                ],
            )
            .await?
        }
    };
    let mut streams: Vec<String> = new_deliveries.unleased;
    streams.sort();
    streams.dedup();
    due.extend(streams.iter().cloned());
    Ok(Some(FannedOut { fanout, streams }))
}

/// Stops the tenant's pending fan-outs from giving `stream_id` any more deliveries: its
/// backlog is being skipped. Run before the backlog is cancelled: a chunk under way holds
/// its fan-out, so this waits for it, and the cancelling then sees what it created.
pub async fn skip_pending_fan_outs(
    tx: &impl GenericClient,
    tenant_id: &str,
    stream_id: &str,
) -> StoreResult<()> {
    let rows = tx
        .query(
            "SELECT seq, streams FROM fanouts WHERE tenant_id = $1 ORDER BY seq FOR UPDATE",
            &[&tenant_id],
        )
        .await?;
    for row in rows {
        if let Ok(Some(changed)) = fanout::without_stream(row.get(1), stream_id) {
            tx.execute(
                "UPDATE fanouts SET streams = $2 WHERE seq = $1",
                &[&row.get::<_, i64>(0), &changed],
            )
            .await?;
        }
    }
    Ok(())
}

/// Whether deliveries being added may exist already.
#[derive(Clone, Copy)]
enum Existing {
    /// Their events are being published in this transaction.
    None,
    /// Skip the (event, stream) pairs that have one.
    Skip,
}

/// Deliveries to insert with one statement, of one tenant or several.
#[derive(Default)]
struct NewDeliveries {
    tenants: Vec<String>,
    ids: Vec<String>,
    streams: Vec<String>,
    event_seqs: Vec<i64>,
    event_types: Vec<String>,
    lease_untils: Vec<Option<Millis>>,
    created_ats: Vec<Millis>,
    /// Streams with deliveries nobody leased: other nodes are told.
    unleased: Vec<String>,
}

impl NewDeliveries {
    fn push(&mut self, tenant_id: &str, d: &NewDelivery, lease_until: Option<Millis>, now: Millis) {
        self.tenants.push(tenant_id.to_string());
        self.ids.push(d.id.clone());
        self.streams.push(d.stream_id.to_string());
        self.event_seqs.push(d.event_seq);
        self.event_types.push(d.event_type.to_string());
        self.lease_untils.push(lease_until);
        self.created_ats.push(now);
        if lease_until.is_none() {
            self.unleased.push(d.stream_id.to_string());
        }
    }

    /// Inserts them, each with its row in the queue; gives each new delivery's row key by
    /// (tenant, delivery id). Deliveries of events published before this transaction may
    /// exist already (`Existing::Skip`): existing (event, stream) pairs are then left alone.
    /// No unique index can say so across the partitions, so the pair is looked up, in the
    /// partitions of its event's day and later; the callers that pass `Skip` take turns
    /// (see `redeliver_event`), so no two of them add the same pair at once.
    async fn insert(
        &self,
        tx: &impl GenericClient,
        existing: Existing,
    ) -> StoreResult<HashMap<(String, String), i64>> {
        fn insert_sql(condition: &str) -> String {
            format!(
                "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                   $4::bigint[], $5::text[], $6::bigint[], $7::bigint[]) \
                   AS u(tenant_id, id, stream_id, event_seq, event_type, lease_until, created_at)), \
                 d AS (INSERT INTO deliveries (tenant_id, id, stream_id, event_seq, event_type, \
                   status, due_at, created_at, updated_at) \
                   SELECT u.tenant_id, u.id, u.stream_id, u.event_seq, u.event_type, 'pending', \
                   u.created_at, u.created_at, u.created_at FROM u {condition} \
                   RETURNING tenant_id, id, seq, stream_id, created_at), \
                 q AS (INSERT INTO queue (seq, tenant_id, stream_id, due_at, lease, lease_until, \
                   created_at) \
                   SELECT d.seq, d.tenant_id, d.stream_id, COALESCE(u.lease_until, d.created_at), \
                   (u.lease_until IS NOT NULL)::int, u.lease_until, d.created_at \
                   FROM d JOIN u ON u.id = d.id) \
                 SELECT tenant_id, id, seq FROM d"
            )
        }
        static INSERT_NEW: LazyLock<String> = LazyLock::new(|| insert_sql(""));
        if self.ids.is_empty() {
            return Ok(HashMap::new());
        }
        let insert = match existing {
            Existing::None => tx.prepare_cached(&INSERT_NEW).await?,
            // The days before the oldest event's are named as out of reach, so that they are
            // neither planned nor locked (see `history::within_days_of`). A text of its own
            // for each oldest day, prepared each time: fan-out chunks and redeliveries are
            // few beside the deliveries they add.
            Existing::Skip => {
                let oldest = self.event_seqs.iter().min().copied().unwrap_or_default();
                tx.prepare(&insert_sql(&format!(
                    "WHERE (SELECT true FROM deliveries x WHERE x.event_seq = u.event_seq \
                     AND x.stream_id = u.stream_id AND x.seq >= (u.event_seq >> 32) << 32 \
                     AND x.seq >= {} LIMIT 1) IS NULL",
                    history::first_key(history::day_of_key(oldest))
                )))
                .await?
            }
        };
        let rows = tx
            .query(
                &insert,
                &[
                    &self.tenants,
                    &self.ids,
                    &self.streams,
                    &self.event_seqs,
                    &self.event_types,
                    &self.lease_untils,
                    &self.created_ats,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }
}

/// The oldest day a claim's lookups of deliveries and events reach: a hint that bounds
/// their cost, never what they find. Days before it are left out of the claim's text, so
/// PostgreSQL neither plans nor locks their partitions (see `history::within_days_of`);
/// with a month kept, a claim that reached every day cost about twice as much as one that
/// named two. A row whose delivery or event lies before the floor is looked up again
/// without it, and the floor moves down to that day; it goes back to the day before the
/// claim's own after [`FLOOR_KEPT_MS`], so one old retry costs a wide lookup now and then,
/// not every claim.
pub struct ClaimFloor(std::sync::Mutex<Option<(i64, Millis)>>);

/// How long a floor moved down by an old row holds.
const FLOOR_KEPT_MS: Millis = 10 * 60 * 1_000;

impl ClaimFloor {
    pub fn new() -> ClaimFloor {
        ClaimFloor(std::sync::Mutex::new(None))
    }

    /// The floor for a claim at `now`: the day before `now`'s (a claim just after midnight
    /// finds the last day's deliveries), or lower while an old row's day holds.
    fn day(&self, now: Millis) -> i64 {
        let default = history::day_of(now) - 1;
        let mut floor = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *floor {
            Some((day, since)) if now < since + FLOOR_KEPT_MS => day.min(default),
            _ => {
                *floor = None;
                default
            }
        }
    }

    fn lower_to(&self, day: i64, now: Millis) {
        let mut floor = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *floor = Some(match *floor {
            Some((held, since)) => (held.min(day), since.max(now)),
            None => (day, now),
        });
    }
}

/// Leases up to `limit` due deliveries per request, oldest due first, skipping rows another
/// node is claiming at the same moment; then learns when each stream next has work (leased
/// deliveries are due at their lease's expiry, in case their node dies). Only enabled
/// streams are served, whatever the caller last heard: another node may have just paused one.
///
/// Each claimed row reads its delivery and event through a `LATERAL ... LIMIT 1`, a lookup
/// by key in one partition: autovacuum analyzes the partitions but never their parents, and
/// without the parents' statistics the planner would join the whole tables instead. The
/// lookups reach back to `floor` only (see [`ClaimFloor`]).
pub async fn claim(
    client: &deadpool_postgres::Object,
    floor: &ClaimFloor,
    requests: Vec<ClaimRequest>,
    now: Millis,
    lease_until: Millis,
) -> StoreResult<Vec<ClaimBatch>> {
    // Queue rows whose delivery or event is not found on any day (`ANY_DAY`), under the
    // lease the claim just gave them. Retention drops a day's events with its deliveries,
    // and a redelivery racing that drop can queue a delivery of such a day again; a row left
    // so would be claimed at every lease's end, for ever.
    const ORPHANS: &str = "DELETE FROM queue q USING unnest($1::bigint[], $2::bigint[]) AS u(seq, lease) \
         WHERE q.seq = u.seq AND q.lease = u.lease";
    const NEXT_DUE: &str = "SELECT r.stream_id, \
           (SELECT q.due_at FROM queue q WHERE q.tenant_id = r.tenant_id \
              AND q.stream_id = r.stream_id ORDER BY q.due_at LIMIT 1) \
         FROM unnest($1::text[], $2::text[]) AS r(tenant_id, stream_id)";
    // Rows the bounded lookups missed, looked up on every day.
    static ANY_DAY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM unnest($1::bigint[], $2::bigint[]) AS c(seq, lease) {} \
             ORDER BY c.seq",
            claimed_columns(),
            lookups(None)
        )
    });

    let floor_day = floor.day(now);
    let claim = prepare_for_days(
        client,
        &format!(
            "WITH picked AS ( \
               SELECT p.seq FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(tenant_id, stream_id, lim) \
               CROSS JOIN LATERAL ( \
                 SELECT q.seq FROM queue q \
                 WHERE q.tenant_id = r.tenant_id AND q.stream_id = r.stream_id AND q.due_at <= $4 \
                   AND EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = r.tenant_id \
                     AND s.id = r.stream_id AND s.status = 'enabled') \
                 ORDER BY q.due_at LIMIT r.lim FOR UPDATE SKIP LOCKED) p \
             ), c AS ( \
               UPDATE queue q SET lease = q.lease + 1, lease_until = $5, due_at = $5 \
               FROM picked WHERE q.seq = picked.seq RETURNING q.seq, q.lease \
             ) \
             SELECT {} FROM c {} ORDER BY c.seq",
            claimed_columns(),
            lookups(Some(history::first_key(floor_day)))
        ),
    )
    .await?;

    let tenants: Vec<&str> = requests.iter().map(|r| r.tenant_id.as_str()).collect();
    let streams: Vec<&str> = requests.iter().map(|r| r.stream_id.as_str()).collect();
    let limits: Vec<i64> = requests.iter().map(|r| r.limit as i64).collect();
    let mut rows = client
        .query(&claim, &[&tenants, &streams, &limits, &now, &lease_until])
        .await?;
    let found = |row: &tokio_postgres::Row| {
        row.get::<_, Option<&str>>(2).is_some() && row.get::<_, Option<&str>>(6).is_some()
    };
    let (missed_seqs, missed_leases): (Vec<i64>, Vec<i64>) = rows
        .iter()
        .filter(|row| !found(row))
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        .unzip();
    if !missed_seqs.is_empty() {
        rows.retain(found);
        let any_day = client.prepare_cached(&ANY_DAY).await?;
        let again = client
            .query(&any_day, &[&missed_seqs, &missed_leases])
            .await?;
        let oldest = again
            .iter()
            .filter(|row| found(row))
            .flat_map(|row| [row.get::<_, i64>(0), row.get::<_, i64>(EVENT_KEY)])
            .map(history::day_of_key)
            .min();
        if let Some(day) = oldest {
            floor.lower_to(day, now);
        }
        // In key order, as the claim gives them: each stream's deliveries go out oldest first.
        rows.extend(again);
        rows.sort_by_key(|row| row.get::<_, i64>(0));
    }

    let mut by_stream: HashMap<String, Vec<Claimed>> = HashMap::new();
    let mut orphans: (Vec<i64>, Vec<i64>) = Default::default();
    for row in &rows {
        // A queue row whose delivery or event is gone can never be sent (see `ORPHANS`).
        if !found(row) {
            orphans.0.push(row.get(0));
            orphans.1.push(row.get(1));
            continue;
        }
        let stream_id: String = row.get(4);
        let claimed = Claimed {
            key: row.get(0),
            lease: row.get(1),
            lease_until,
            id: row.get(2),
            tenant_id: row.get(3),
            attempts: row.get::<_, i64>(5) as u32,
            event: Arc::new(event_from_row(row, 6)?),
            stream_id: stream_id.clone(),
        };
        by_stream.entry(stream_id).or_default().push(claimed);
    }
    if !orphans.0.is_empty() {
        tracing::warn!(
            count = orphans.0.len(),
            "dropping queued deliveries whose delivery or event is gone"
        );
        client.execute(ORPHANS, &[&orphans.0, &orphans.1]).await?;
    }
    let next_due = client.prepare_cached(NEXT_DUE).await?;
    let due: HashMap<String, Option<Millis>> = client
        .query(&next_due, &[&tenants, &streams])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(requests
        .into_iter()
        .map(|request| ClaimBatch {
            deliveries: by_stream.remove(&request.stream_id).unwrap_or_default(),
            next_due: due
                .get(&request.stream_id)
                .copied()
                .flatten()
                .map(|at| at.max(now)),
            tenant_id: request.tenant_id,
            stream_id: request.stream_id,
        })
        .collect())
}

/// What a claim reads of each row (`c`, with its delivery `d` and event `e`): the row's key
/// and lease, the delivery, the event from column 6, and the event's key last.
fn claimed_columns() -> String {
    format!(
        "c.seq, c.lease, d.id, d.tenant_id, d.stream_id, d.attempts - d.round_start, \
         {EVENT_COLUMNS}, d.event_seq"
    )
}
/// The column of [`claimed_columns`] that holds the event's key.
const EVENT_KEY: usize = 15;

/// The claim's lookups of a row's delivery and event, by key, from key `from` on (their
/// days' partitions only).
fn lookups(from: Option<i64>) -> String {
    let bound = |column: &str| from.map_or(String::new(), |key| format!("AND {column} >= {key}"));
    format!(
        "LEFT JOIN LATERAL (SELECT * FROM deliveries d WHERE d.seq = c.seq {} LIMIT 1) d ON true \
         LEFT JOIN LATERAL (SELECT * FROM events e WHERE e.seq = d.event_seq \
           AND e.tenant_id = d.tenant_id {} LIMIT 1) e ON true",
        bound("d.seq"),
        bound("e.seq"),
    )
}

/// Gives leases back: the deliveries are claimable again at once, by any node. Returns their
/// streams. The queue rows are locked in key order (see the module's lock order), found by
/// key in the queue's index (see `record`).
pub async fn release(
    client: &impl GenericClient,
    leases: Vec<(i64, i64)>,
    now: Millis,
) -> StoreResult<Vec<String>> {
    let (seqs, generations): (Vec<i64>, Vec<i64>) = leases.into_iter().unzip();
    let rows = client
        .query(
            "WITH locked AS (SELECT q.seq FROM queue q \
               JOIN unnest($1::bigint[], $2::bigint[]) AS u(seq, lease) \
               ON q.seq = u.seq AND q.lease = u.lease \
               WHERE q.seq = ANY($1) ORDER BY q.seq FOR UPDATE OF q) \
             UPDATE queue q SET lease_until = NULL, due_at = $3 \
             FROM locked WHERE q.seq = locked.seq RETURNING q.stream_id",
            &[&seqs, &generations, &now],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The rollup upsert over arrays, one row per (stream, hour, event type) of a batch, in the
/// node's own shard (`$24`).
static ROLLUP_SQL: LazyLock<String> = LazyLock::new(|| {
    let buckets = LATENCY_BOUNDS_MS.len() + 1;
    let columns: Vec<String> = (0..buckets).map(|i| format!("l{i}")).collect();
    let arrays: Vec<String> = (0..buckets)
        .map(|i| format!("${}::bigint[]", i + 9))
        .collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = stream_stats.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO stream_stats (tenant_id, stream_id, hour, event_type, succeeded, failed, \
         attempts, failed_attempts, {cols}, shard) \
         SELECT *, ${shard}::smallint FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], \
         $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], {arrays}) \
         ON CONFLICT (tenant_id, stream_id, hour, event_type, shard) DO UPDATE SET \
         succeeded = stream_stats.succeeded + excluded.succeeded, \
         failed = stream_stats.failed + excluded.failed, \
         attempts = stream_stats.attempts + excluded.attempts, \
         failed_attempts = stream_stats.failed_attempts + excluded.failed_attempts, {updates}",
        cols = columns.join(", "),
        arrays = arrays.join(", "),
        updates = updates.join(", "),
        shard = buckets + 9,
    )
});

/// Stores attempts and their deliveries' next states; streams that got Herald's own notices
/// are added to `due`.
pub async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    records: Vec<AttemptRecord>,
    now: Millis,
    shard: i16,
    due: &mut Vec<String>,
) -> StoreResult<RecordEffects> {
    let keys: Vec<i64> = records.iter().map(|r| r.key).collect();
    let Some(days) = history::within_days_of("d.seq", &keys) else {
        return Ok(RecordEffects::default());
    };
    // Only for deliveries still there: retention may have dropped the day of one whose
    // attempt was under way (it was cancelled, or redelivered as the day was dropped), and
    // its attempt has no partition left to go to. A subquery with a `LIMIT`, so that each
    // row looks its delivery up by key rather than the planner joining the whole table (see
    // `claim`). Both statements name the days of the batch's deliveries, so that only
    // those days' partitions are planned and locked.
    let insert = prepare_for_days(
        tx,
        &format!(
            "INSERT INTO attempts (tenant_id, delivery_seq, attempted_at, duration_ms, \
             response_status, response_body, error_kind, error_message, detail) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], \
             $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[]) \
             AS u(tenant_id, delivery_seq, attempted_at, duration_ms, response_status, \
             response_body, error_kind, error_message, detail) \
             WHERE (SELECT true FROM deliveries d WHERE d.seq = u.delivery_seq AND {days} LIMIT 1)"
        ),
    )
    .await?;
    let tenants: Vec<&str> = records.iter().map(|r| r.tenant_id.as_str()).collect();
    let attempted: Vec<i64> = records.iter().map(|r| r.attempted_at).collect();
    let durations: Vec<i64> = records.iter().map(|r| r.duration_ms).collect();
    let statuses: Vec<Option<i32>> = records
        .iter()
        .map(|r| r.response_status.map(i32::from))
        .collect();
    let bodies: Vec<Option<&str>> = records.iter().map(|r| r.response_body.as_deref()).collect();
    let kinds: Vec<Option<&str>> = records.iter().map(|r| r.error_kind).collect();
    let messages: Vec<Option<&str>> = records.iter().map(|r| r.error_message.as_deref()).collect();
    let details: Vec<Option<&str>> = records.iter().map(|r| r.detail.as_deref()).collect();

    // The delivery's new state, only under the lease the attempt was made with: a node whose
    // lease lapsed (and whose delivery another node took over) records its attempt but no
    // longer decides the delivery's state. Nor does an attempt on a cancelled delivery,
    // which has left the queue. Storing an outcome uses its lease up (a retry's queue row
    // moves to the next generation, a finished delivery leaves the queue), so a batch
    // offered twice (its first commit's answer lost with the connection) changes each
    // delivery once. The delivery's own row changes no indexed column: a HOT update. The
    // queue rows are locked in key order first (see the module's lock order), found by key
    // in the queue's index: joined as a table, the queue was read whole, dead rows and all,
    // for every batch.
    let update = prepare_for_days(
        tx,
        &format!(
            "WITH u AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], \
               $6::bigint[], $7::bigint[], $8::int4[], $9::text[]) \
               AS u(seq, lease, tenant_id, status, due_at, attempted_at, response_status, error_kind)), \
             locked AS (SELECT q.seq, u.lease, u.status, u.due_at FROM queue q JOIN u \
               ON q.seq = u.seq AND q.lease = u.lease AND q.tenant_id = u.tenant_id \
               WHERE q.seq = ANY($2) ORDER BY q.seq FOR UPDATE OF q), \
             retried AS (UPDATE queue q SET due_at = l.due_at, lease = q.lease + 1, lease_until = NULL \
               FROM locked l WHERE q.seq = l.seq AND q.lease = l.lease AND l.status = 'pending' \
               RETURNING q.seq, l.lease), \
             finished AS (DELETE FROM queue q USING locked l \
               WHERE q.seq = l.seq AND q.lease = l.lease AND l.status <> 'pending' \
               RETURNING q.seq, l.lease) \
             UPDATE deliveries d SET status = u.status, attempts = d.attempts + 1, \
             due_at = u.due_at, lease = u.lease, last_attempt_at = u.attempted_at, \
             last_response_status = u.response_status, last_error_kind = u.error_kind, updated_at = $1 \
             FROM u WHERE d.seq = u.seq AND {days} AND (u.seq, u.lease) IN \
               (SELECT seq, lease FROM retried UNION ALL SELECT seq, lease FROM finished) \
             RETURNING d.seq"
        ),
    )
    .await?;
    let leases: Vec<i64> = records.iter().map(|r| r.lease).collect();
    let states: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    let dues: Vec<Option<Millis>> = records.iter().map(AttemptRecord::due_at).collect();
    let insert_params: [&(dyn ToSql + Sync); 9] = [
        &tenants, &keys, &attempted, &durations, &statuses, &bodies, &kinds, &messages, &details,
    ];
    let update_params: [&(dyn ToSql + Sync); 9] = [
        &now, &keys, &leases, &tenants, &states, &dues, &attempted, &statuses, &kinds,
    ];
    // Sent together: the connection pipelines them.
    let (_, updated) = tokio::try_join!(
        tx.execute(&insert, &insert_params),
        tx.query(&update, &update_params)
    )?;
    let owned: HashSet<i64> = updated.iter().map(|r| r.get(0)).collect();

    let outcomes = Outcomes::of(records.iter().filter(|r| owned.contains(&r.key)));
    add_to_rollups(tx, &outcomes.rollups, shard).await?;
    let disabled = update_health(tx, &outcomes, now).await?;
    let mut effects = RecordEffects::disabling(&disabled);
    for (tenant_id, notice) in outcomes.notices(&disabled, now) {
        effects.notified(Box::pin(publish(tx, None, &tenant_id, vec![notice], now, due)).await?);
    }
    Ok(effects)
}

/// Most statements a connection keeps prepared, all kinds together. Statements that name
/// days (see `history::within_days_of`, and the claim's floor) add a few texts a day, more
/// while old retries move the claim's floor about; past this, a connection's cache starts
/// over (its other statements prepared again as they are next used) rather than grow for as
/// long as the connection lives.
const CACHED_STATEMENTS: usize = 256;

/// A pooled connection, or a transaction on one, with its cache of prepared statements.
trait Cached: GenericClient {
    fn statement_cache(&self) -> &deadpool_postgres::StatementCache;
}

impl Cached for deadpool_postgres::Object {
    fn statement_cache(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }
}

impl Cached for deadpool_postgres::Transaction<'_> {
    fn statement_cache(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }
}

/// `client.prepare_cached(sql)` for a statement that names days.
async fn prepare_for_days(
    client: &impl Cached,
    sql: &str,
) -> StoreResult<tokio_postgres::Statement> {
    let cache = client.statement_cache();
    if cache.size() > CACHED_STATEMENTS {
        cache.clear();
    }
    Ok(client.prepare_cached(sql).await?)
}

async fn add_to_rollups(
    tx: &impl GenericClient,
    rollups: &BTreeMap<RollupKey<'_>, Rollup>,
    shard: i16,
) -> StoreResult<()> {
    if rollups.is_empty() {
        return Ok(());
    }
    let mut keys: (Vec<&str>, Vec<&str>, Vec<Millis>, Vec<&str>) = Default::default();
    let mut counts: [Vec<i64>; 4] = Default::default();
    let mut latency: Vec<Vec<i64>> = vec![Vec::new(); LATENCY_BOUNDS_MS.len() + 1];
    for ((tenant, stream, hour, event_type), r) in rollups {
        keys.0.push(tenant);
        keys.1.push(stream);
        keys.2.push(*hour);
        keys.3.push(event_type);
        for (column, value) in
            counts
                .iter_mut()
                .zip([r.succeeded, r.failed, r.attempts, r.failed_attempts])
        {
            column.push(value);
        }
        for (column, value) in latency.iter_mut().zip(r.latency) {
            column.push(value);
        }
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&keys.0, &keys.1, &keys.2, &keys.3];
    params.extend(counts.iter().map(|c| c as &(dyn ToSql + Sync)));
    params.extend(latency.iter().map(|c| c as &(dyn ToSql + Sync)));
    params.push(&shard);
    let upsert = tx.prepare_cached(&ROLLUP_SQL).await?;
    tx.execute(&upsert, &params).await?;
    Ok(())
}

/// The streams rows a batch changes, a column each.
#[derive(Default)]
struct RunUpdates<'a> {
    tenants: Vec<&'a str>,
    ids: Vec<&'a str>,
    failures: Vec<i64>,
    since: Vec<Option<Millis>>,
    reasons: Vec<Option<String>>,
}

/// Applies a batch's outcomes to its streams' runs of failures (`Health::apply`), and gives
/// the streams it disabled.
async fn update_health(
    tx: &impl GenericClient,
    outcomes: &Outcomes<'_>,
    now: Millis,
) -> StoreResult<Vec<Disabled>> {
    if outcomes.health.is_empty() {
        return Ok(Vec::new());
    }
    let mut tenants = Vec::with_capacity(outcomes.health.len());
    let mut ids = Vec::with_capacity(outcomes.health.len());
    let mut failed = Vec::with_capacity(outcomes.health.len());
    for (&(tenant_id, stream_id), health) in &outcomes.health {
        tenants.push(tenant_id);
        ids.push(stream_id);
        failed.push(health.failed());
    }
    // Only the streams with a run to count or to clear are locked, all in the server's order
    // of (tenant, id), as key rotation locks them too, so concurrent transactions take them
    // in one order: most batches write no stream at all.
    let read = tx
        .prepare_cached(
            "SELECT s.tenant_id, s.id, s.consecutive_failures, s.failing_since, \
             s.status = 'disabled', s.name \
             FROM streams s JOIN unnest($1::text[], $2::text[], $3::bool[]) AS u(tenant_id, id, failed) \
             ON s.tenant_id = u.tenant_id AND s.id = u.id \
             WHERE u.failed OR s.consecutive_failures <> 0 \
             ORDER BY s.tenant_id, s.id FOR UPDATE OF s",
        )
        .await?;
    let rows = tx.query(&read, &[&tenants, &ids, &failed]).await?;
    let mut changed = RunUpdates::default();
    let mut disabled = Vec::new();
    for row in &rows {
        let key: (&str, &str) = (row.get(0), row.get(1));
        let Some((&(tenant_id, stream_id), health)) = outcomes.health.get_key_value(&key) else {
            continue;
        };
        let stored = StoredRun {
            failures: row.get(2),
            since: row.get(3),
            disabled: row.get(4),
        };
        let run = health.apply(&stored, now);
        if !run.changes(&stored) {
            continue;
        }
        if let Some(reason) = &run.disable {
            disabled.push(Disabled {
                tenant_id: tenant_id.to_string(),
                stream_id: stream_id.to_string(),
                name: row.get(5),
                reason: reason.clone(),
            });
        }
        changed.tenants.push(tenant_id);
        changed.ids.push(stream_id);
        changed.failures.push(run.failures);
        changed.since.push(run.since);
        changed.reasons.push(run.disable);
    }
    // The notices follow the streams in the order both stores use, not the server's.
    disabled.sort_by(|a, b| (&a.tenant_id, &a.stream_id).cmp(&(&b.tenant_id, &b.stream_id)));
    if changed.tenants.is_empty() {
        return Ok(disabled);
    }
    let write = tx
        .prepare_cached(
            "UPDATE streams s SET consecutive_failures = u.failures, failing_since = u.since, \
             status = CASE WHEN u.reason IS NULL THEN s.status ELSE 'disabled' END, \
             status_reason = COALESCE(u.reason, s.status_reason), \
             updated_at = CASE WHEN u.reason IS NULL THEN s.updated_at ELSE $6 END \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]) \
             AS u(tenant_id, id, failures, since, reason) \
             WHERE s.tenant_id = u.tenant_id AND s.id = u.id",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 6] = [
        &changed.tenants,
        &changed.ids,
        &changed.failures,
        &changed.since,
        &changed.reasons,
        &now,
    ];
    tx.execute(&write, &params).await?;
    if !disabled.is_empty() {
        notify_streams_changed(tx).await?;
    }
    Ok(disabled)
}

/// The SQL condition (on `deliveries d`) for `filter`, its values appended to `params`.
pub fn filter_sql(filter: &DeliveryFilter, params: &mut Params) -> String {
    let mut sql = String::new();
    if !filter.statuses.is_empty() {
        let statuses: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        params.push(Box::new(statuses));
        sql.push_str(&format!(" AND d.status = ANY(${})", params.len()));
    }
    if !filter.event_types.is_empty() {
        params.push(Box::new(filter.event_types.clone()));
        sql.push_str(&format!(" AND d.event_type = ANY(${})", params.len()));
    }
    if let Some(from) = filter.date_from {
        params.push(Box::new(from));
        sql.push_str(&format!(" AND d.created_at >= ${}", params.len()));
    }
    if let Some(to) = filter.date_to {
        params.push(Box::new(to));
        sql.push_str(&format!(" AND d.created_at < ${}", params.len()));
    }
    sql
}

/// Cancels a stream's pending deliveries: out of the queue, each keeping the lease
/// generation it had, so an attempt still under way cannot match a later round's lease.
/// Their queue rows are locked in key order (see the module's lock order).
pub async fn cancel_pending(
    tx: &impl GenericClient,
    tenant_id: &str,
    stream_id: &str,
    now: Millis,
) -> StoreResult<()> {
    tx.execute(
        "WITH locked AS (SELECT seq FROM queue WHERE tenant_id = $1 AND stream_id = $2 \
           ORDER BY seq FOR UPDATE), \
         gone AS (DELETE FROM queue q USING locked WHERE q.seq = locked.seq \
           RETURNING q.seq, q.lease) \
         UPDATE deliveries d SET status = 'cancelled', due_at = NULL, lease = gone.lease, \
         updated_at = $3 FROM gone WHERE d.seq = gone.seq",
        &[&tenant_id, &stream_id, &now],
    )
    .await?;
    Ok(())
}

/// Starts a new round for the deliveries `condition` picks (on `deliveries d`, with `$1` now
/// and `NOT_IN_FLIGHT` among its terms): due now, retry budget reset, and back in the queue
/// under a new lease generation, so an attempt still finishing from an earlier round cannot
/// write its outcome over the new one. Attempts under way (a live lease) are left to finish.
/// Returns how many.
///
/// Their queue rows are locked first (in key order), then their deliveries, as outcomes and
/// cancellations take them: queue row, then delivery. The second statement reads the queue
/// after any claim that committed meanwhile; a queue row it finds that the first did not lock
/// (a publish's, or another redelivery's, since) is requeued only if no live lease holds it.
async fn requeue(
    tx: &impl GenericClient,
    condition: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<u64> {
    tx.query(
        &format!(
            "SELECT lq.seq FROM deliveries d JOIN queue lq ON lq.seq = d.seq \
             WHERE {condition} ORDER BY lq.seq FOR UPDATE OF lq"
        ),
        params,
    )
    .await?;
    Ok(tx
        .execute(
            &format!(
                "WITH r AS (UPDATE deliveries AS d SET status = 'pending', due_at = $1, \
                   round_start = attempts, updated_at = $1 WHERE {condition} \
                   RETURNING d.seq, d.tenant_id, d.stream_id, d.lease, d.created_at) \
                 INSERT INTO queue (seq, tenant_id, stream_id, due_at, lease, lease_until, \
                   created_at) \
                 SELECT seq, tenant_id, stream_id, $1, lease + 1, NULL, created_at FROM r \
                 ON CONFLICT (seq) DO UPDATE SET due_at = excluded.due_at, \
                 lease = queue.lease + 1, lease_until = NULL \
                 WHERE queue.lease_until IS NULL OR queue.lease_until <= $1"
            ),
            params,
        )
        .await?)
}
const NOT_IN_FLIGHT: &str =
    "NOT EXISTS (SELECT 1 FROM queue q WHERE q.seq = d.seq AND q.lease_until > $1)";

pub async fn redeliver_event(
    tx: &impl GenericClient,
    tenant_id: &str,
    stream_id: &str,
    event_id: &str,
    now: Millis,
) -> StoreResult<Option<u64>> {
    history::hold_off_drops(tx).await?;
    // Deliveries of these events may be added meanwhile, by another redelivery to the stream
    // or by a chunk of a pending fan-out: wait for both, so the lookup below sees what they
    // added (see `NewDeliveries::insert`). Fan-outs before the queue, in the lock order.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.herald_redeliver.' || $1 || '.' || $2))",
        &[&tenant_id, &stream_id],
    )
    .await?;
    tx.execute(
        "SELECT 1 FROM fanouts WHERE tenant_id = $1 ORDER BY seq FOR UPDATE",
        &[&tenant_id],
    )
    .await?;
    let events = tx
        .query(
            "SELECT e.seq, e.type FROM event_keys k JOIN events e ON e.seq = k.seq \
             WHERE k.tenant_id = $1 AND k.id = $2",
            &[&tenant_id, &event_id],
        )
        .await?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut new = NewDeliveries::default();
    for row in &events {
        let delivery = NewDelivery {
            id: crate::ids::delivery_id(now),
            stream_id,
            event_seq: row.get(0),
            event_type: row.get(1),
            leased: None,
        };
        new.push(tenant_id, &delivery, None, now);
    }
    let created = new.insert(tx, Existing::Skip).await?.len() as u64;
    let requeued = requeue(
        tx,
        &format!(
            "d.tenant_id = $2 AND d.stream_id = $4 AND d.id <> ALL($5) AND d.event_seq IN \
             (SELECT k.seq FROM event_keys k WHERE k.tenant_id = $2 AND k.id = $3) \
             AND {NOT_IN_FLIGHT}"
        ),
        &[&now, &tenant_id, &event_id, &stream_id, &new.ids],
    )
    .await?;
    Ok(Some(created + requeued))
}

pub async fn redeliver(
    tx: &impl GenericClient,
    tenant_id: &str,
    stream_id: &str,
    filter: &DeliveryFilter,
    dry_run: bool,
    now: Millis,
) -> StoreResult<u64> {
    let mut params: Params = vec![
        Box::new(now),
        Box::new(tenant_id.to_string()),
        Box::new(stream_id.to_string()),
    ];
    let conditions = filter_sql(filter, &mut params);
    let condition =
        format!("d.tenant_id = $2 AND d.stream_id = $3{conditions} AND {NOT_IN_FLIGHT}");
    history::hold_off_drops(tx).await?;
    let params = super::refs(&params);
    if dry_run {
        let sql = format!("SELECT COUNT(*) FROM deliveries d WHERE {condition}");
        let count: i64 = tx.query_one(&sql, &params).await?.get(0);
        return Ok(count as u64);
    }
    requeue(tx, &condition, &params).await
}

#[cfg(test)]
mod tests {
    use super::{ClaimFloor, FLOOR_KEPT_MS};

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_claim_floor_reaches_back_to_an_old_row_for_a_while() {
        let floor = ClaimFloor::new();
        let now = 20_000 * DAY + 5;
        assert_eq!(floor.day(now), 19_999, "the day before the claim's");

        floor.lower_to(19_990, now);
        floor.lower_to(19_995, now + 1);
        assert_eq!(floor.day(now + 2), 19_990, "the oldest row's day holds");
        // Held from the last row found below the default, even one found out of order.
        floor.lower_to(19_995, now - 1_000);
        assert_eq!(floor.day(now + FLOOR_KEPT_MS), 19_990);
        assert_eq!(floor.day(now + 1 + FLOOR_KEPT_MS), 19_999, "then back");
        // Days later, the day before the new one.
        assert_eq!(floor.day(now + 3 * DAY), 20_002);
    }
}
