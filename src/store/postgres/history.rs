//! The history's partitions: `events`, `deliveries` and `attempts` are split by UTC day (see
//! `014_partitioned_history.sql`), and this module makes each day's partitions, moves the
//! key sequences into a new day, and drops the days retention is done with.
//!
//! A day is a range of keys, not of times: day N holds the keys from N << 32 up to
//! (N + 1) << 32. Before a node writes an event or a delivery stamped with a time on day N,
//! it makes sure both sequences hand out keys of day N or later ([`History::roll`]). So a
//! row never lands in a partition older than the day its time says, and dropping every day
//! before a cutoff day removes only rows from before it. A row can land in a later day's
//! partition (a node whose clock runs behind another's); retention's row-by-row pass finds
//! those few. Keys are JSON-safe integers (below 2^53) until the year 8000 or so.
//!
//! A day's partitions are made by one node at a time (an advisory lock), each with
//! `CREATE TABLE` and then `ATTACH PARTITION`, which lets publishes go on; creating one with
//! `PARTITION OF` would lock them out. Dropping detaches first, concurrently, for the same
//! reason; that needs a connection outside any transaction, so it gets one of its own.
//!
//! Moving the sequences into a day waits for the writes under way to end (see
//! `wait_for_writes`): a statement that began before the day's partitions were attached
//! knows only the partitions there were then. Meanwhile the node's writes of the new day wait
//! for the move, once a day: usually milliseconds, at most `WRITES_WAIT` behind a write
//! transaction that runs long.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Pool};

use super::Target;
use crate::clock::Millis;
use crate::store::StoreResult;

const DAY_MS: Millis = 86_400_000;
/// The partitioned tables, in the order a day's are detached (events first, while
/// redeliveries wait; see `drop_days`): once a day's deliveries are detached, no new
/// transaction finds them, so none adds an attempt of theirs (see `queue::record`) before
/// the attempts go too.
const TABLES: [&str; 3] = ["events", "deliveries", "attempts"];
/// The tables whose key sequences move into each new day. Deliveries first: a delivery's
/// key is never of an earlier day than its event's (`queue::NewDeliveries` relies on it).
const KEYED: [&str; 2] = ["deliveries", "events"];

/// The UTC day of a time.
pub fn day_of(at: Millis) -> i64 {
    at.div_euclid(DAY_MS)
}

/// The first key of a day.
pub fn first_key(day: i64) -> i64 {
    day << 32
}

/// The day a key belongs to.
pub fn day_of_key(key: i64) -> i64 {
    key >> 32
}

/// `column` (a key) bounded by literals to the days of `keys`, for a statement that joins
/// by key on an array of them. PostgreSQL prunes such a join only as it runs, after a
/// generic plan has locked and opened every partition it could touch: with a month of
/// days kept, that costs more than the statement's own work. Named in the text, the days
/// are pruned when the statement is planned. Each run of consecutive days is a range of its
/// own, so an old key (a retry, a redelivery of an old event) does not bring in the days
/// between. Parenthesised; `None` for no keys.
pub fn within_days_of(column: &str, keys: &[i64]) -> Option<String> {
    let mut days: Vec<i64> = keys.iter().map(|&key| day_of_key(key)).collect();
    days.sort_unstable();
    days.dedup();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for day in days {
        match runs.last_mut() {
            Some((_, end)) if *end == day => *end = day + 1,
            _ => runs.push((day, day + 1)),
        }
    }
    let ranges: Vec<String> = runs
        .iter()
        .map(|&(start, end)| {
            format!(
                "{column} >= {} AND {column} < {}",
                first_key(start),
                first_key(end)
            )
        })
        .collect();
    (!ranges.is_empty()).then(|| format!("(({}))", ranges.join(") OR (")))
}

fn partition(table: &str, day: i64) -> String {
    format!("{table}_e{day}")
}

/// Serialises the making of partitions and the moving of sequences across nodes.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.herald_history'))";

/// One node's view of the partitions: the latest day it has moved the sequences into.
pub struct History {
    pool: Pool,
    day: AtomicI64,
    rolling: tokio::sync::Mutex<()>,
}

impl History {
    pub fn new(pool: Pool) -> History {
        History {
            pool,
            day: AtomicI64::new(i64::MIN),
            rolling: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes sure that keys taken from now on belong to `now`'s day or a later one, its
    /// partitions made if need be. Costs nothing but a load once this node is on the day.
    pub async fn roll(&self, now: Millis) -> StoreResult<()> {
        let day = day_of(now);
        if day <= self.day.load(Ordering::Acquire) {
            return Ok(());
        }
        let _turn = self.rolling.lock().await;
        if day <= self.day.load(Ordering::Acquire) {
            return Ok(());
        }
        // The partitions are committed before any key of the day is handed out, and the
        // writes under way once they are end first (up to `WRITES_WAIT`).
        make_day(&self.pool, day).await?;
        let mut client = self.pool.get().await?;
        wait_for_writes(&client).await?;
        let tx = client.transaction().await?;
        tx.batch_execute(LOCK).await?;
        for table in KEYED {
            let sequence = sequence(table);
            // Forward only: another node may already be on a later day.
            tx.execute(
                &format!(
                    "SELECT setval('{sequence}', $1, false) FROM {sequence} WHERE last_value < $1"
                ),
                &[&first_key(day)],
            )
            .await?;
        }
        tx.commit().await?;
        self.day.store(day, Ordering::Release);
        // The next day's partitions, ahead of time, so that its first write only moves the
        // sequences.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = make_day(&pool, day + 1).await {
                tracing::warn!(error = %e, day = day + 1, "could not make the next day's history partitions; its first write will");
            }
        });
        Ok(())
    }
}

/// How long a node moving the sequences into a new day waits for the writes under way (see
/// [`wait_for_writes`]) before it moves them anyway: its own writes of the day wait as long.
const WRITES_WAIT: Duration = Duration::from_secs(5);
/// The first and the longest pause between two looks at the writers: each look reads every
/// lock of the server.
const WRITES_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(50));

/// Waits until the transactions that were writing to a keyed table have ended, for at most
/// [`WRITES_WAIT`]. A statement routes its rows by the partitions its table had when it
/// began: one that began before a day's partitions were attached, and took a key of that
/// day once the sequences moved, would find no partition for its row (and its publish would
/// fail). Writes that begin from now on see the new partitions, and go on meanwhile: this
/// looks the writers up and waits for their transactions rather than lock the tables. Once
/// a day per node, for as long as the longest write under way; one that outlasts the wait
/// (a session left open in a transaction) is not waited for further.
async fn wait_for_writes(client: &impl GenericClient) -> StoreResult<()> {
    let writers: Vec<String> = client
        .query_one(
            "SELECT COALESCE(array_agg(DISTINCT virtualtransaction), '{}') FROM pg_locks \
             WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND relation IN (to_regclass('events'), to_regclass('deliveries')) \
             AND mode = 'RowExclusiveLock' AND pid IS DISTINCT FROM pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    if writers.is_empty() {
        return Ok(());
    }
    // A transaction holds the lock of its own virtual id until it ends.
    let still = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'virtualxid' \
             AND virtualtransaction = ANY($1))",
        )
        .await?;
    let until = Instant::now() + WRITES_WAIT;
    let mut pause = WRITES_POLL.0;
    while client
        .query_one(&still, &[&writers])
        .await?
        .get::<_, bool>(0)
    {
        if Instant::now() >= until {
            tracing::warn!(
                transactions = ?writers,
                "moving the history's sequences into a new day while transactions that began before its partitions are still open"
            );
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(WRITES_POLL.1);
    }
    Ok(())
}

/// The name of a table's key sequence (see `014_partitioned_history.sql`).
fn sequence(table: &str) -> String {
    format!("{table}_seq_seq")
}

/// Makes the day's partitions that are missing, in a transaction of their own, one node at
/// a time.
async fn make_day(pool: &Pool, day: i64) -> StoreResult<()> {
    let mut client = pool.get().await?;
    make_day_with(&mut client, day).await
}

/// Makes a day's partitions, where missing, on `client`.
pub async fn make_day_with(client: &mut tokio_postgres::Client, day: i64) -> StoreResult<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(LOCK).await?;
    for table in TABLES {
        let name = partition(table, day);
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get(0);
        if exists {
            continue;
        }
        // A delivery's row is updated once or twice as it is sent: room on its page keeps
        // the update HOT, and early vacuuming keeps the table small (see versions 1 and 12).
        let storage = if table == "deliveries" {
            " WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, \
             autovacuum_analyze_scale_factor = 0.02)"
        } else {
            ""
        };
        tx.batch_execute(&format!(
            "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS){storage}; \
             ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({}) TO ({})",
            first_key(day),
            first_key(day + 1),
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The days whose partitions retention may drop before `cutoff`: wholly before the
/// cutoff's day, and older than the day the sequences are on (whose partitions take today's
/// writes, whatever the cutoff). A day counts while any of its tables is left, attached or
/// not (a drop a crash interrupted).
async fn droppable_days(client: &tokio_postgres::Client, cutoff: Millis) -> StoreResult<Vec<i64>> {
    let current = day_of_key(
        client
            .query_one(
                &format!("SELECT last_value FROM {}", sequence("events")),
                &[],
            )
            .await?
            .get(0),
    );
    let rows = client
        .query(
            "SELECT relname::text FROM pg_class WHERE relkind = 'r' \
             AND relnamespace = current_schema()::regnamespace \
             AND relname ~ '^(events|deliveries|attempts)_e[0-9]+$'",
            &[],
        )
        .await?;
    let mut days: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.get::<_, &str>(0).rsplit_once("_e")?.1.parse().ok())
        .filter(|&day| day > 0 && day < current && (day + 1) * DAY_MS <= cutoff)
        .collect();
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

/// Whether a day's rows must stay: the store's newest event is among them, or work is
/// pending on them (as the row-by-row rule, `KEPT_BY_PENDING_WORK`, has it: a delivery
/// pending to a stream that still exists, or a pending fan-out). Its expired rows are then
/// left to the row-by-row pass.
async fn day_is_kept(client: &tokio_postgres::Client, day: i64) -> StoreResult<bool> {
    let (lo, hi) = (first_key(day), first_key(day + 1));
    Ok(client
        .query_one(
            "SELECT (SELECT MAX(seq) FROM events) BETWEEN $1::bigint AND $2::bigint - 1 \
             OR EXISTS (SELECT 1 FROM fanouts f WHERE f.first_seq < $2 AND f.last_seq >= $1) \
             OR EXISTS (SELECT 1 FROM queue q \
               JOIN streams s ON s.tenant_id = q.tenant_id AND s.id = q.stream_id \
               WHERE q.seq >= $1 AND q.seq < $2) \
             OR EXISTS (SELECT 1 FROM queue q JOIN deliveries d ON d.seq = q.seq \
               JOIN streams s ON s.tenant_id = q.tenant_id AND s.id = q.stream_id \
               WHERE d.event_seq >= $1 AND d.event_seq < $2)",
            &[&lo, &hi],
        )
        .await?
        .get::<_, Option<bool>>(0)
        .unwrap_or(false))
}

/// Finishes the concurrent detaches a crash or a cancel left pending: while one partition of
/// a table is pending, no other can be detached concurrently.
async fn finish_detaches(client: &tokio_postgres::Client) -> StoreResult<()> {
    let pending = client
        .query(
            "SELECT p.relname::text, c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
             WHERE i.inhdetachpending AND p.relnamespace = current_schema()::regnamespace \
             AND p.relname IN ('events', 'deliveries', 'attempts')",
            &[],
        )
        .await?;
    for row in &pending {
        let (parent, name): (&str, &str) = (row.get(0), row.get(1));
        client
            .batch_execute(&format!(
                "ALTER TABLE {parent} DETACH PARTITION {name} FINALIZE"
            ))
            .await?;
    }
    Ok(())
}

/// Whether some of a day's tables are detached already, or being detached: a drop was cut
/// short, and is finished whatever the day now holds (its events are gone or going).
async fn partly_dropped(client: &tokio_postgres::Client, day: i64) -> StoreResult<bool> {
    let names: Vec<String> = TABLES.iter().map(|t| partition(t, day)).collect();
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c \
               LEFT JOIN pg_inherits i ON i.inhrelid = c.oid \
               WHERE c.oid = ANY(SELECT to_regclass(n) FROM unnest($1::text[]) AS n) \
               AND (NOT c.relispartition OR i.inhdetachpending))",
            &[&names],
        )
        .await?
        .get(0))
}

/// Drops the days of history wholly before `cutoff` that nothing keeps, one node at a time
/// (the sweep's lock); returns how many events went. A connection of `pool` looks for such
/// days first, so that a sweep with none opens no connection of its own.
pub async fn drop_expired_days(pool: &Pool, target: &Target, cutoff: Millis) -> StoreResult<u64> {
    let pooled = pool.get().await?;
    if droppable_days(&pooled, cutoff).await?.is_empty() {
        return Ok(0);
    }
    drop(pooled);
    // A connection of its own, outside the pools and their statement and lock timeouts, and
    // outside any transaction, as a concurrent detach needs.
    let mut client = target.open().await?;
    // Detaching waits for every transaction that reads the table; one left open (a session
    // forgotten in a transaction) must not hold retention up for ever. A detach cut short
    // stays pending and is finished by the next sweep.
    client
        .batch_execute("SET statement_timeout = '5min'; SET lock_timeout = '5min'")
        .await?;
    let sweep_lock = super::SWEEP_LOCK;
    let ours: bool = client
        .query_one(&format!("SELECT pg_try_advisory_lock({sweep_lock})"), &[])
        .await?
        .get(0);
    if !ours {
        return Ok(0);
    }
    let dropped = drop_days(&mut client, cutoff).await;
    // Released at once, for the row-by-row sweep that follows; should that fail, the lock
    // goes with the connection.
    client
        .execute(&format!("SELECT pg_advisory_unlock({sweep_lock})"), &[])
        .await?;
    dropped
}

async fn drop_days(client: &mut tokio_postgres::Client, cutoff: Millis) -> StoreResult<u64> {
    finish_detaches(client).await?;
    let mut dropped = 0;
    for day in droppable_days(client, cutoff).await? {
        // Redeliveries wait while the day is checked and its events detached (see
        // `DROP_LOCK`).
        client
            .execute(&format!("SELECT pg_advisory_lock({DROP_LOCK})"), &[])
            .await?;
        let events = async {
            // A day a crash left partly dropped is finished whatever it held.
            if !partly_dropped(client, day).await? && day_is_kept(client, day).await? {
                return Ok(None);
            }
            // Counted through the parent: none once detached.
            let (lo, hi) = (first_key(day), first_key(day + 1));
            let events: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM events WHERE seq >= $1 AND seq < $2",
                    &[&lo, &hi],
                )
                .await?
                .get(0);
            detach(client, "events", day).await?;
            StoreResult::Ok(Some(events as u64))
        }
        .await;
        client
            .execute(&format!("SELECT pg_advisory_unlock({DROP_LOCK})"), &[])
            .await?;
        let Some(events) = events? else {
            continue;
        };
        finish_day(client, day).await?;
        dropped += events;
    }
    Ok(dropped)
}

/// Keeps redeliveries from a day of history while retention checks it and detaches its
/// events, so that none is accepted for a day about to go: retention holds it alone, each
/// redelivery shares it (`hold_off_drops`).
const DROP_LOCK: &str = "hashtext(current_schema() || '.herald_history_drop')";

/// Waits while retention checks and detaches a day of history, and keeps it from starting
/// one until the transaction ends (see `DROP_LOCK`). The first thing a redelivery does,
/// before it touches a table.
pub async fn hold_off_drops(tx: &impl GenericClient) -> StoreResult<()> {
    tx.execute(
        &format!("SELECT pg_advisory_xact_lock_shared({DROP_LOCK})"),
        &[],
    )
    .await?;
    Ok(())
}

/// Detaches a day's partition of `table` concurrently (publishes, claims and outcomes go on
/// meanwhile), if it is still attached.
async fn detach(client: &tokio_postgres::Client, table: &str, day: i64) -> StoreResult<()> {
    let name = partition(table, day);
    let attached = client
        .query_opt(
            "SELECT c.relispartition FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&name],
        )
        .await?
        .is_some_and(|row| row.get::<_, bool>(0));
    if attached {
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} DETACH PARTITION {name} CONCURRENTLY"
            ))
            .await?;
    }
    Ok(())
}

/// Finishes a day whose events are detached: its deliveries and attempts are detached too;
/// then its deliveries' queue rows go (pending only to deleted streams, or requeued since
/// the day was checked), and the deliveries of its events in later days' partitions (a
/// fan-out chunk or a redelivery wrote them after the day ended) with their attempts and
/// queue rows, and its event keys; then the detached tables are dropped. Each step can be
/// run again, so a drop a crash interrupted is finished by the next.
async fn finish_day(client: &mut tokio_postgres::Client, day: i64) -> StoreResult<()> {
    for table in &TABLES[1..] {
        detach(client, table, day).await?;
    }
    let (lo, hi) = (first_key(day), first_key(day + 1));
    let tx = client.transaction().await?;
    // Queue rows first, in key order, then attempts, deliveries and the keys last, as tenant
    // deletion takes them (see `queue`'s lock order). Statement by statement, so that each
    // sees what committed while the one before waited.
    tx.execute(
        "SELECT q.seq FROM queue q WHERE q.seq >= $1 AND q.seq < $2 \
         OR EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = q.seq \
           AND d.event_seq >= $1 AND d.event_seq < $2) \
         ORDER BY q.seq FOR UPDATE",
        &[&lo, &hi],
    )
    .await?;
    tx.execute(
        "DELETE FROM queue WHERE seq >= $1 AND seq < $2",
        &[&lo, &hi],
    )
    .await?;
    let later: Vec<(i64, String)> = tx
        .query(
            "SELECT seq, tenant_id FROM deliveries WHERE event_seq >= $1 AND event_seq < $2",
            &[&lo, &hi],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (seqs, tenants): (Vec<i64>, Vec<String>) = later.into_iter().unzip();
    tx.execute(
        "DELETE FROM attempts a USING unnest($1::bigint[], $2::text[]) AS u(seq, tenant_id) \
         WHERE a.delivery_seq = u.seq AND a.tenant_id = u.tenant_id",
        &[&seqs, &tenants],
    )
    .await?;
    tx.execute("DELETE FROM deliveries WHERE seq = ANY($1)", &[&seqs])
        .await?;
    tx.execute("DELETE FROM queue WHERE seq = ANY($1)", &[&seqs])
        .await?;
    tx.execute(
        "DELETE FROM event_keys WHERE seq >= $1 AND seq < $2",
        &[&lo, &hi],
    )
    .await?;
    tx.commit().await?;
    for table in TABLES {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", partition(table, day)))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_named_for_keys_merge_neighbours_and_leave_out_the_days_between() {
        let key = |day: i64, n: i64| first_key(day) + n;
        assert_eq!(within_days_of("d.seq", &[]), None);
        assert_eq!(
            within_days_of("d.seq", &[key(5, 9), key(5, 0)]).unwrap(),
            format!("((d.seq >= {} AND d.seq < {}))", key(5, 0), key(6, 0))
        );
        assert_eq!(
            within_days_of("d.seq", &[key(7, 1), key(2, 3), key(6, 0), key(7, 0)]).unwrap(),
            format!(
                "((d.seq >= {} AND d.seq < {}) OR (d.seq >= {} AND d.seq < {}))",
                key(2, 0),
                key(3, 0),
                key(6, 0),
                key(8, 0)
            )
        );
        // Keys below 2^32 (from before the history was split, in the first partition).
        assert_eq!(
            within_days_of("e.seq", &[1]).unwrap(),
            format!("((e.seq >= 0 AND e.seq < {}))", key(1, 0))
        );
    }
}
