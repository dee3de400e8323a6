//! The audit log and statistics on PostgreSQL: listing and reading events, erasing payloads,
//! retention sweeps, and reading the hourly rollups.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{EVENT_COLUMNS, Params, event_from_row, refs};
use crate::clock::Millis;
use crate::store::{
    Backlog, ERASED_EVENT, Erase, EventFilter, HourOutcomes, KEPT_BY_PENDING_WORK,
    LATENCY_BOUNDS_MS, LogPosition, LogStart, LoggedEvent, NOT_NEWEST, Page, StatsRow, StoreResult,
    StreamActivity, Swept, TENANT_HOURS,
};

const LOGGED_COLUMNS: &str = "e.seq, e.received_at, e.erased_at";

fn logged_from_row(row: &Row) -> StoreResult<(i64, LoggedEvent)> {
    logged_from_row_at(row, 0)
}

/// The logged columns starting at column `at`.
fn logged_from_row_at(row: &Row, at: usize) -> StoreResult<(i64, LoggedEvent)> {
    Ok((
        row.get(at),
        LoggedEvent {
            received_at: row.get(at + 1),
            erased_at: row.get(at + 2),
            event: event_from_row(row, at + 3)?,
        },
    ))
}

pub async fn list_events(
    client: &impl GenericClient,
    tenant_id: &str,
    filter: &EventFilter,
    before: Option<i64>,
    take: usize,
) -> StoreResult<Page<LoggedEvent>> {
    let mut params: Params = vec![Box::new(tenant_id.to_string())];
    let mut sql = String::new();
    let mut condition =
        |condition: &str, value: Box<dyn tokio_postgres::types::ToSql + Sync + Send>| {
            params.push(value);
            sql.push_str(&format!(" AND e.{condition} ${}", params.len()));
        };
    for (column, value) in [
        ("type", &filter.event_type),
        ("subject", &filter.subject),
        ("projectid", &filter.projectid),
        ("userid", &filter.userid),
    ] {
        if let Some(v) = value {
            condition(&format!("{column} ="), Box::new(v.clone()));
        }
    }
    if let Some(from) = filter.date_from {
        condition("received_at >=", Box::new(from));
    }
    if let Some(to) = filter.date_to {
        condition("received_at <", Box::new(to));
    }
    if let Some(before) = before {
        condition("seq <", Box::new(before));
    }
    params.push(Box::new(take as i64 + 1));
    let rows = client
        .query(
            &format!(
                "SELECT {LOGGED_COLUMNS}, {EVENT_COLUMNS} FROM events e \
                 WHERE e.tenant_id = $1{sql} ORDER BY e.seq DESC LIMIT ${}",
                params.len()
            ),
            &refs(&params),
        )
        .await?;
    Page::from_newest(rows.iter().map(logged_from_row), take)
}

/// The oldest transaction still open anywhere in the database: every transaction below it
/// has committed or rolled back, so its events are in the log for good.
const HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

pub async fn log_position(
    client: &impl GenericClient,
    tenant_id: &str,
    start: LogStart,
) -> StoreResult<Option<LogPosition>> {
    let position = |row: &Row| LogPosition {
        xid: row.get(0),
        seq: row.get(1),
    };
    Ok(match start {
        LogStart::After {
            position: after,
            received_since,
        } => {
            let stmt = client
                .prepare_cached(
                    "SELECT 1 FROM events WHERE tenant_id = $1 AND xid = $2 AND seq = $3 \
                     AND received_at >= $4",
                )
                .await?;
            let since = received_since.unwrap_or(i64::MIN);
            let found = client
                .query_opt(&stmt, &[&tenant_id, &after.xid, &after.seq, &since])
                .await?;
            found.map(|_| after)
        }
        // The first visible event received since then, or else the end, from one snapshot:
        // computed in two statements, the horizon could pass events in between.
        // `xid + 0` keeps the planner off walking `events_by_log` in order until a row
        // matches: it expects matches spread over the log, but they are all at its end, so
        // a recent time would read the tenant's whole log. Through `events_by_received` the
        // search reads the events since then, which the reader goes on to read anyway (the
        // generic plan of the cached statement does too).
        LogStart::ReceivedFrom(time) => {
            let stmt = client
                .prepare_cached(&format!(
                    "WITH h AS (SELECT {HORIZON} AS x) \
                     SELECT COALESCE(e.xid, h.x), COALESCE(e.seq - 1, 0) FROM h LEFT JOIN LATERAL \
                     (SELECT xid, seq FROM events WHERE tenant_id = $1 AND received_at >= $2 \
                      AND xid < h.x ORDER BY xid + 0, seq LIMIT 1) e ON true"
                ))
                .await?;
            Some(position(
                &client.query_one(&stmt, &[&tenant_id, &time]).await?,
            ))
        }
        // Before every transaction still open: what they commit is still to come.
        LogStart::End => {
            let row = client
                .query_one(&format!("SELECT {HORIZON}, 0::bigint"), &[])
                .await?;
            Some(position(&row))
        }
    })
}

pub async fn read_log(
    client: &impl GenericClient,
    tenant_id: &str,
    after: LogPosition,
    take: usize,
) -> StoreResult<Vec<(LogPosition, LoggedEvent)>> {
    // One statement, so the horizon and the rows come from the same snapshot.
    let stmt = client
        .prepare_cached(&format!(
            "SELECT e.xid, {LOGGED_COLUMNS}, {EVENT_COLUMNS} FROM events e \
             WHERE e.tenant_id = $1 AND (e.xid, e.seq) > ($2, $3) AND e.xid < {HORIZON} \
             ORDER BY e.xid, e.seq LIMIT $4"
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&tenant_id, &after.xid, &after.seq, &(take as i64)])
        .await?;
    rows.iter()
        .map(|row| {
            let xid: i64 = row.get(0);
            let (seq, logged) = logged_from_row_at(row, 1)?;
            Ok((LogPosition { xid, seq }, logged))
        })
        .collect()
}

pub async fn get_event(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
    source: Option<&str>,
) -> StoreResult<Option<LoggedEvent>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {LOGGED_COLUMNS}, {EVENT_COLUMNS} FROM event_keys k JOIN events e ON e.seq = k.seq \
             WHERE k.tenant_id = $1 AND k.id = $2 AND ($3::text IS NULL OR k.source = $3) \
             ORDER BY k.seq DESC LIMIT 1"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&tenant_id, &id, &source])
        .await?
        .map(|row| logged_from_row(&row).map(|(_, logged)| logged))
        .transpose()
}

/// Erases the events and their attempts' response bodies in one transaction (see
/// `ERASED_EVENT`).
pub async fn erase(
    tx: &impl GenericClient,
    tenant_id: &str,
    what: &Erase,
    now: Millis,
) -> StoreResult<u64> {
    // Events are found by id through their keys (see `014_partitioned_history.sql`).
    let (condition, values): (&str, Vec<&str>) = match what {
        Erase::Events(ids) => (
            "seq IN (SELECT seq FROM event_keys WHERE tenant_id = $2 AND id = ANY($3))",
            ids.iter().map(String::as_str).collect(),
        ),
        Erase::Subject(subject) => ("subject = ANY($3)", vec![subject.as_str()]),
    };
    let erased: Vec<i64> = tx
        .query(
            &format!(
                "UPDATE events SET {ERASED_EVENT}, erased_at = $1 \
                 WHERE tenant_id = $2 AND {condition} RETURNING seq"
            ),
            &[&now, &tenant_id, &values],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !erased.is_empty() {
        tx.execute(
            "UPDATE attempts a SET response_body = NULL FROM deliveries d \
             WHERE d.tenant_id = $1 AND d.event_seq = ANY($2) \
             AND a.tenant_id = d.tenant_id AND a.delivery_seq = d.seq AND a.response_body IS NOT NULL",
            &[&tenant_id, &erased],
        )
        .await?;
    }
    Ok(erased.len() as u64)
}

/// One node sweeps at a time (a transaction-scoped advisory lock per schema); the others
/// skip their turn. Rows go oldest first, in insertion order; what keeps an event is
/// `KEPT_BY_PENDING_WORK`.
pub async fn sweep(
    tx: &impl GenericClient,
    events_before: Option<Millis>,
    bodies_before: Option<Millis>,
    limit: usize,
) -> StoreResult<Swept> {
    let mut swept = Swept::default();
    let ours: bool = tx
        .query_one(
            &format!("SELECT pg_try_advisory_xact_lock({})", super::SWEEP_LOCK),
            &[],
        )
        .await?
        .get(0);
    if !ours {
        return Ok(swept);
    }
    if let Some(cutoff) = events_before {
        let old = tx
            .query(
                &format!(
                    "SELECT e.seq, e.tenant_id, e.id, e.source FROM events e WHERE e.received_at < $1 \
                     AND NOT {KEPT_BY_PENDING_WORK} AND {NOT_NEWEST} ORDER BY e.seq LIMIT $2"
                ),
                &[&cutoff, &(limit as i64)],
            )
            .await?;
        let seqs: Vec<i64> = old.iter().map(|r| r.get(0)).collect();
        let tenants: Vec<&str> = old.iter().map(|r| r.get(1)).collect();
        let ids: Vec<&str> = old.iter().map(|r| r.get(2)).collect();
        let sources: Vec<&str> = old.iter().map(|r| r.get(3)).collect();
        // A pending delivery's queue row before the delivery (see `queue`'s lock order).
        tx.execute(
            "SELECT q.seq FROM queue q JOIN deliveries d ON d.seq = q.seq \
             JOIN unnest($1::bigint[], $2::text[]) AS u(seq, tenant_id) \
             ON d.tenant_id = u.tenant_id AND d.event_seq = u.seq ORDER BY q.seq FOR UPDATE OF q",
            &[&seqs, &tenants],
        )
        .await?;
        // Joined on (tenant, event) so the deletes use the tenant-led indexes.
        tx.execute(
            "DELETE FROM attempts a USING deliveries d, unnest($1::bigint[], $2::text[]) AS u(seq, tenant_id) \
             WHERE d.tenant_id = u.tenant_id AND d.event_seq = u.seq \
             AND a.tenant_id = d.tenant_id AND a.delivery_seq = d.seq",
            &[&seqs, &tenants],
        )
        .await?;
        let deliveries: Vec<i64> = tx
            .query(
                "DELETE FROM deliveries d USING unnest($1::bigint[], $2::text[]) AS u(seq, tenant_id) \
                 WHERE d.tenant_id = u.tenant_id AND d.event_seq = u.seq RETURNING d.seq",
                &[&seqs, &tenants],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // A delivery still pending here is to a deleted stream: its queue row goes too, read
        // after the deletion so that one a redelivery queued meanwhile is seen.
        tx.execute("DELETE FROM queue WHERE seq = ANY($1)", &[&deliveries])
            .await?;
        tx.execute(
            "DELETE FROM event_keys k USING unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) \
             AS u(tenant_id, id, source, seq) \
             WHERE k.tenant_id = u.tenant_id AND k.id = u.id AND k.source = u.source AND k.seq = u.seq",
            &[&tenants, &ids, &sources, &seqs],
        )
        .await?;
        tx.execute("DELETE FROM events WHERE seq = ANY($1)", &[&seqs])
            .await?;
        swept.events = seqs.len() as u64;
        tx.execute(
            "DELETE FROM stream_stats WHERE hour < $1",
            &[&(cutoff - 3_600_000)],
        )
        .await?;
    }
    if let Some(cutoff) = bodies_before {
        swept.bodies = tx
            .execute(
                "UPDATE attempts SET response_body = NULL WHERE seq IN (SELECT seq FROM attempts \
                 WHERE attempted_at < $1 AND response_body IS NOT NULL ORDER BY seq LIMIT $2)",
                &[&cutoff, &(limit as i64)],
            )
            .await?;
    }
    Ok(swept)
}

pub async fn stats(
    client: &impl GenericClient,
    tenant_id: &str,
    stream_id: &str,
    from: Millis,
    to: Millis,
) -> StoreResult<Vec<StatsRow>> {
    let buckets = LATENCY_BOUNDS_MS.len() + 1;
    let latency_columns: Vec<String> = (0..buckets).map(|i| format!("l{i}")).collect();
    let stmt = client
        .prepare_cached(&format!(
            "SELECT hour, event_type, SUM(succeeded)::bigint, SUM(failed)::bigint, \
             SUM(attempts)::bigint, SUM(failed_attempts)::bigint, {} \
             FROM stream_stats WHERE tenant_id = $1 AND stream_id = $2 AND hour >= $3 AND hour < $4 \
             GROUP BY hour, event_type ORDER BY hour, event_type",
            latency_columns
                .iter()
                .map(|c| format!("SUM({c})::bigint"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&tenant_id, &stream_id, &from, &to])
        .await?;
    Ok(rows
        .iter()
        .map(|r| StatsRow {
            hour: r.get(0),
            event_type: r.get(1),
            succeeded: r.get::<_, i64>(2) as u64,
            failed: r.get::<_, i64>(3) as u64,
            attempts: r.get::<_, i64>(4) as u64,
            failed_attempts: r.get::<_, i64>(5) as u64,
            latency: (0..buckets)
                .map(|i| r.get::<_, i64>(6 + i) as u64)
                .collect(),
        })
        .collect())
}

/// The pending deliveries of each of a tenant's streams: their rows in the queue.
const TENANT_BACKLOGS: &str = "SELECT stream_id, COUNT(*), MIN(created_at) \
     FROM queue WHERE tenant_id = $1 GROUP BY stream_id";

pub async fn stream_activity(
    client: &impl GenericClient,
    tenant_id: &str,
    from: Millis,
    to: Millis,
) -> StoreResult<StreamActivity> {
    let mut activity = StreamActivity::default();
    let stmt = client.prepare_cached(TENANT_BACKLOGS).await?;
    for r in client.query(&stmt, &[&tenant_id]).await? {
        activity.backlogs.insert(
            r.get(0),
            Backlog {
                pending: r.get::<_, i64>(1) as u64,
                oldest_created_at: r.get(2),
            },
        );
    }
    let stmt = client.prepare_cached(TENANT_HOURS).await?;
    for r in client.query(&stmt, &[&tenant_id, &from, &to]).await? {
        activity
            .hours
            .entry(r.get(0))
            .or_default()
            .push(HourOutcomes {
                hour: r.get(1),
                succeeded: r.get::<_, i64>(2) as u64,
                failed: r.get::<_, i64>(3) as u64,
            });
    }
    Ok(activity)
}
