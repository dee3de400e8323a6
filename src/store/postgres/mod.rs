//! The shared store: PostgreSQL, for running several Herald nodes on one database. It keeps
//! the same tables and encodings as the embedded store; what differs is that leases are rows
//! (several processes share the queue), so a claim is an `UPDATE` of up to a batch of rows
//! picked with `FOR UPDATE SKIP LOCKED`, and every outcome is fenced by the lease generation
//! it was attempted under. Those rows are in `queue`, a narrow table holding a row per
//! pending delivery, so the churn of claims and outcomes stays off `deliveries` and its
//! indexes (see `012_narrow_queue.sql`). Changes other nodes must hear of (new due work,
//! changed streams) are sent with `NOTIFY` in the same transaction; see `listen`. Concurrent
//! publishes share one transaction and one commit; see `group`. The history (events,
//! deliveries, attempts) is partitioned by UTC day, so retention drops whole days; see
//! `history`.
//!
//! Connections come from a small pool with short timeouts: when the database is unreachable,
//! calls fail fast with [`StoreError::Unavailable`] and succeed again once it is back,
//! without a restart.

mod group;
mod history;
mod import;
mod listen;
mod log;
mod queue;
mod scratch;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Publish groups written at once; the group commit test occupies each.
#[doc(hidden)]
pub use group::WRITERS as PUBLISH_WRITERS;
/// Days of history, for the benchmark's stores that keep many.
#[doc(hidden)]
pub use history::{day_of as history_day, make_day_with as make_history_day};
pub use import::{ImportReport, check_source_key, import_sqlite};
pub use listen::{Notice, listen};
pub use scratch::Scratch;

use super::columns::{self, EventRow, StreamRow};
use super::*;
use crate::catalog::EventType;
use crate::crashpoint;
use crate::secret::{Cipher, Secret};

/// Schema migrations, applied in order inside one transaction each; `schema_migrations`
/// records which ran.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("002_destination_kinds.sql"),
    include_str!("003_failing_streams.sql"),
    include_str!("004_fanouts.sql"),
    include_str!("005_stream_names.sql"),
    include_str!("006_event_log.sql"),
    include_str!("007_temporary_streams.sql"),
    include_str!("008_events_by_received.sql"),
    include_str!("009_console_sessions.sql"),
    include_str!("010_console_links.sql"),
    include_str!("011_fewer_index_pages.sql"),
    include_str!("012_narrow_queue.sql"),
    include_str!("013_rollups_per_node.sql"),
    include_str!("014_partitioned_history.sql"),
];

/// The advisory lock retention holds, so one node sweeps at a time: a transaction's for the
/// row-by-row sweep, a session's for dropping days of history.
const SWEEP_LOCK: &str = "hashtext(current_schema() || '.herald_sweep')";

/// Channels of the notifications this store sends.
const DUE_CHANNEL: &str = "herald_due";
const STREAMS_CHANNEL: &str = "herald_streams";
const EVENTS_CHANNEL: &str = "herald_events";

/// How long a call waits for a connection, or for a new one to open, before the database
/// counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Server-side limits on every session, so that a node cut off mid-transaction cannot hold
/// row locks for long, and no call waits on a lock or a statement indefinitely.
const SESSION_LIMITS: &str = "-c lock_timeout=10s -c statement_timeout=60s \
     -c idle_in_transaction_session_timeout=60s";

pub struct PgStore {
    pool: Pool,
    /// Connections that commit without waiting for the flush, for what a crash may lose at
    /// the cost of a repeated attempt only: claims, outcomes, releases, announcements. The
    /// same trade as the embedded store's lazy commits.
    lazy: Pool,
    announcer: listen::Announcer,
    cipher: Arc<Cipher>,
    /// Publishes, committed in groups.
    publishes: group::GroupCommit,
    commit_metrics: crate::metrics::CommitMetrics,
    /// This node's rows of the statistics rollups (see migration 13), drawn at start.
    shard: i16,
    /// The history's daily partitions (see `history`).
    history: Arc<history::History>,
    /// The oldest day this node's claims look up (see `queue::ClaimFloor`).
    claim_floor: queue::ClaimFloor,
    /// Where the database is, for the retention sweep's connection of its own.
    target: Target,
}

/// Connections in the lazy pool: the dispatcher claims, the recorder records, releases and
/// announcements are occasional.
const LAZY_CONNECTIONS: usize = 4;

/// The lazy pool's statements find their rows through an index: by key, by the queue's due
/// index, or by an expiry. The queue is a small table that churns: between vacuums most of
/// its pages hold dead rows, which cost more to read than the planner reckons, and it chose
/// to read the whole queue (or hash it) for a batch of keys; about half of the outcome
/// updates in S9 did, at twice the cost of the lookups by key. With sequential scans priced
/// out, a table without a usable index is still read whole.
const LAZY_PLANS: &str = "-c enable_seqscan=off";

/// A parameter list built at run time (filters).
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Connection classes (08), operator intervention such as a shutdown (57P), and
        // exhausted resources (53) pass; anything else is a fault of the statement itself.
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            if ["08", "57P", "53"]
                .iter()
                .any(|class| code.starts_with(class))
            {
                return StoreError::Unavailable(db.message().to_string());
            }
            return StoreError::Postgres(e.to_string());
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            StoreError::Unavailable(crate::error_chain(&e))
        } else {
            StoreError::Postgres(crate::error_chain(&e))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // Opening a connection failed: whatever the cause, the database cannot be used.
            deadpool_postgres::PoolError::Backend(e) => {
                StoreError::Unavailable(crate::error_chain(&e))
            }
            deadpool_postgres::PoolError::Timeout(_) => {
                StoreError::Unavailable("no database connection could be had in time".into())
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Where a database is and how to reach it: tokio-postgres's settings and the TLS connector
/// the URL's `sslmode` and `sslrootcert` call for. Every connection Herald opens is made from
/// one of these.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: tls::MakeRustls,
}

impl Target {
    /// One connection, its driver left to the caller.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                tls::RustlsStream<tokio_postgres::Socket>,
            >,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }

    /// One connection, its driver running until the client is dropped.
    pub async fn open(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

/// Parses a `postgres://` URL, with timeouts that make a lost database show quickly.
pub fn parse_url(url: &str) -> StoreResult<Target> {
    let invalid = |reason: String| StoreError::Open {
        path: redact_url(url),
        reason,
    };
    let options = tls::split_url(url).map_err(invalid)?;
    let tls = options.connector().map_err(invalid)?;
    let mut config: tokio_postgres::Config = options
        .rest
        .parse()
        .map_err(|e| invalid(format!("not a valid PostgreSQL URL: {e}")))?;
    config.ssl_mode(options.wire_mode());
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(10));
    if config.get_application_name().is_none() {
        config.application_name("herald");
    }
    Ok(Target { config, tls })
}

fn pool(url: &str, max_connections: usize) -> StoreResult<Pool> {
    pool_with(url, max_connections, SESSION_LIMITS)
}

/// A pool whose connections start with these server `options` too.
fn pool_with(url: &str, max_connections: usize, options: &str) -> StoreResult<Pool> {
    let Target { mut config, tls } = parse_url(url)?;
    let options = match config.get_options() {
        Some(given) => format!("{given} {options}"),
        None => options.to_string(),
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Open {
            path: redact_url(url),
            reason: e.to_string(),
        })
}

/// Applies the migrations not yet applied. Nodes starting together take turns (an
/// advisory lock per schema), so each migration runs once.
async fn migrate(pool: &Pool) -> StoreResult<usize> {
    let mut client = pool.get().await?;
    // Retention detaches partitions concurrently (see `history`), which came in version 14.
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    if version < 140_000 {
        return Err(StoreError::Postgres(format!(
            "Herald needs PostgreSQL 14 or later; this server is version {}.{}",
            version / 10_000,
            version % 10_000
        )));
    }
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; \
         SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.herald_migrate')); \
         CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let applied: i64 = tx
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await?
        .get(0);
    // An older node on a newer schema would write what the schema no longer accepts, or
    // miss what it now needs: it must not start.
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Postgres(schema_too_new(
            applied as usize,
            MIGRATIONS.len(),
        )));
    }
    let mut ran = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(i as i32 + 1), &crate::clock::system_now_ms()],
        )
        .await?;
        ran += 1;
    }
    tx.commit().await?;
    Ok(ran)
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

impl PgStore {
    /// Connects, brings the schema up to date, and checks that `cipher` is the key the
    /// installation's secrets are sealed with (recording it on first use).
    pub async fn connect(url: &str, cipher: Cipher, max_connections: usize) -> StoreResult<Self> {
        let lazy = pool_with(
            url,
            LAZY_CONNECTIONS,
            &format!("{SESSION_LIMITS} -c synchronous_commit=off {LAZY_PLANS}"),
        )?;
        let pool = pool(url, max_connections)?;
        let announcer = listen::Announcer::start(lazy.clone());
        let commit_metrics = crate::metrics::CommitMetrics::default();
        let history = Arc::new(history::History::new(pool.clone()));
        let store = PgStore {
            publishes: group::GroupCommit::start(
                pool.clone(),
                announcer.clone(),
                commit_metrics.clone(),
                history.clone(),
            ),
            history,
            claim_floor: queue::ClaimFloor::new(),
            target: parse_url(url)?,
            pool,
            announcer,
            lazy,
            cipher: Arc::new(cipher),
            commit_metrics,
            shard: i16::from_le_bytes(crate::ids::random_bytes::<2>()),
        };
        migrate(&store.pool).await.map_err(|e| StoreError::Open {
            path: redact_url(url),
            reason: e.to_string(),
        })?;
        store.check_key().await?;
        Ok(store)
    }

    /// Brings the schema at `url` up to date; returns how many migrations ran.
    pub async fn migrate_database(url: &str) -> StoreResult<usize> {
        let pool = pool(url, 1)?;
        let ran = migrate(&pool).await.map_err(|e| StoreError::Open {
            path: redact_url(url),
            reason: e.to_string(),
        });
        pool.close();
        ran
    }

    /// Checks that this node holds the store's current secret key, recording it on first use.
    async fn check_key(&self) -> StoreResult<()> {
        let client = self.pool.get().await?;
        let check = "SELECT value FROM settings WHERE name = 'key_check'";
        if client.query_opt(check, &[]).await?.is_none() {
            let existing: Option<Vec<u8>> = client
                .query_opt("SELECT destination FROM streams LIMIT 1", &[])
                .await?
                .map(|row| row.get(0));
            let initial = keys::initial_key(&self.cipher, existing.as_deref())?;
            client
                .execute(
                    "INSERT INTO settings (name, value) VALUES ('key_check', $1) ON CONFLICT DO NOTHING",
                    &[&initial],
                )
                .await?;
        }
        let sealed: Vec<u8> = client.query_one(check, &[]).await?.get(0);
        let retired = retired_key_check(&client).await?;
        keys::current_key(&self.cipher, &sealed, retired.as_deref(), "the database")?;
        Ok(())
    }

    /// The cipher to seal with inside `tx`: the store's current key, read under a share lock,
    /// so a rotation recording a new key waits for this transaction (see `store::keys`).
    async fn sealing(&self, tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<Cipher> {
        let stmt = tx
            .prepare_cached("SELECT value FROM settings WHERE name = 'key_check' FOR SHARE")
            .await?;
        let check: Vec<u8> = tx.query_one(&stmt, &[]).await?.get(0);
        Ok(self.cipher.current_for(&check)?)
    }

    /// Records this node's `secret_key` as the store's current key, then re-seals every value
    /// sealed with another key, in batches. Safe to run again after an interruption.
    /// `batches` bounds the re-sealing transactions of this run (`None`: until done); a run
    /// stopped early, by it or by a crash, is finished by running again.
    pub async fn rotate_secret_key(&self, batches: Option<usize>) -> StoreResult<keys::Rotation> {
        let mut report = keys::Rotation::default();
        let mut budget = batches.unwrap_or(usize::MAX);
        let mut client = self.client().await?;
        self.check_every_value_opens(&client).await?;
        let tx = client.transaction().await?;
        let check: Vec<u8> = tx
            .query_one(
                "SELECT value FROM settings WHERE name = 'key_check' FOR UPDATE",
                &[],
            )
            .await?
            .get(0);
        // Checked again under the lock: another rotation may have recorded a key since.
        let retired = retired_key_check(&tx).await?;
        keys::current_key(&self.cipher, &check, retired.as_deref(), "the database")?;
        if !self.cipher.seals(&check) {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ('retired_key_check', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&check],
            )
            .await?;
            tx.execute(
                "UPDATE settings SET value = $1 WHERE name = 'key_check'",
                &[&self.cipher.seal_check()],
            )
            .await?;
            report.recorded = true;
        }
        tx.commit().await?;
        let batch = keys::ROTATION_BATCH as i64;
        let mut after = (String::new(), String::new());
        loop {
            if budget == 0 {
                return Ok(report);
            }
            budget -= 1;
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "SELECT tenant_id, id, destination FROM streams WHERE (tenant_id, id) > ($1, $2) \
                     ORDER BY tenant_id, id LIMIT $3 FOR UPDATE",
                    &[&after.0, &after.1, &batch],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = (last.get(0), last.get(1));
            for row in &rows {
                let sealed: Vec<u8> = row.get(2);
                if let Some(resealed) = keys::reseal(&self.cipher, &sealed)? {
                    let (tenant_id, id): (String, String) = (row.get(0), row.get(1));
                    tx.execute(
                        "UPDATE streams SET destination = $3 WHERE tenant_id = $1 AND id = $2",
                        &[&tenant_id, &id, &resealed],
                    )
                    .await?;
                    report.destinations += 1;
                }
            }
            tx.commit().await?;
        }
        let mut after = 0_i64;
        loop {
            if budget == 0 {
                return Ok(report);
            }
            budget -= 1;
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "SELECT seq, secret FROM stream_secrets WHERE seq > $1 ORDER BY seq LIMIT $2 \
                     FOR UPDATE",
                    &[&after, &batch],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            for row in &rows {
                let sealed: Vec<u8> = row.get(1);
                if let Some(resealed) = keys::reseal(&self.cipher, &sealed)? {
                    let seq: i64 = row.get(0);
                    tx.execute(
                        "UPDATE stream_secrets SET secret = $2 WHERE seq = $1",
                        &[&seq, &resealed],
                    )
                    .await?;
                    report.stream_secrets += 1;
                }
            }
            tx.commit().await?;
        }
        report.finished = true;
        Ok(report)
    }

    /// Refuses, before a rotation records anything, when a sealed value opens with none of
    /// the configured keys. Values sealed after this pass are sealed with the current key,
    /// which the rotation checks it holds under its lock.
    async fn check_every_value_opens(&self, client: &deadpool_postgres::Object) -> StoreResult<()> {
        let batch = keys::ROTATION_BATCH as i64;
        let mut after = (String::new(), String::new());
        loop {
            let rows = client
                .query(
                    "SELECT tenant_id, id, destination FROM streams WHERE (tenant_id, id) > ($1, $2) \
                     ORDER BY tenant_id, id LIMIT $3",
                    &[&after.0, &after.1, &batch],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = (last.get(0), last.get(1));
            for row in &rows {
                keys::opens(&self.cipher, &row.get::<_, Vec<u8>>(2), "the database")?;
            }
        }
        let mut after = 0_i64;
        loop {
            let rows = client
                .query(
                    "SELECT seq, secret FROM stream_secrets WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &batch],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            for row in &rows {
                keys::opens(&self.cipher, &row.get::<_, Vec<u8>>(1), "the database")?;
            }
        }
        Ok(())
    }

    /// The group commits of publishes, for the metrics.
    pub fn commit_metrics(&self) -> crate::metrics::CommitMetrics {
        self.commit_metrics.clone()
    }

    /// Publish calls queued for the next group commit, not yet being written.
    #[doc(hidden)]
    pub fn publishes_waiting(&self) -> usize {
        self.publishes.waiting()
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// Deliveries with their attempts, read from one snapshot: a delivery's state and its
    /// attempts always agree, even while an outcome is being stored.
    async fn delivery_views(
        &self,
        tenant_id: &str,
        condition: &str,
        value: &str,
    ) -> StoreResult<Vec<DeliveryView>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let views = delivery_views(&tx, tenant_id, condition, value).await?;
        tx.commit().await?;
        Ok(views)
    }
}

fn tenant_from_row(row: &Row) -> Tenant {
    Tenant {
        id: row.get(0),
        name: row.get(1),
        created_at: row.get(2),
    }
}

const TOKEN_COLUMNS: &str = "id, tenant_id, name, scopes, created_at";

const CONSOLE_LINK_COLUMNS: &str =
    "hash, token_hash, tenant_id, scopes, name, created_at, expires_at";

fn console_link_from_row(row: &Row) -> StoreResult<ConsoleLink> {
    Ok(ConsoleLink {
        hash: columns::token_hash(row.get(0))?,
        token_hash: columns::token_hash(row.get(1))?,
        tenant_id: row.get(2),
        scopes: columns::decode_scopes(row.get(3))?,
        name: row.get(4),
        created_at: row.get(5),
        expires_at: row.get(6),
    })
}

fn token_from_row(row: &Row) -> StoreResult<Token> {
    Ok(Token {
        id: row.get(0),
        tenant_id: row.get(1),
        name: row.get(2),
        scopes: columns::decode_scopes(row.get(3))?,
        created_at: row.get(4),
    })
}

/// Deletes a stream, its secrets, and cancels its pending deliveries; false if it did not
/// exist.
async fn delete_stream_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: &str,
    id: &str,
    now: Millis,
) -> StoreResult<bool> {
    // The backlog before the stream's row, in the queue's lock order.
    queue::cancel_pending(tx, tenant_id, id, now).await?;
    delete_stream_row(tx, tenant_id, id).await
}

/// Deletes a stream and its secrets, once its backlog is cancelled. Whether it existed.
async fn delete_stream_row(
    tx: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> StoreResult<bool> {
    let deleted = tx
        .execute(
            "DELETE FROM streams WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &id],
        )
        .await?;
    tx.execute(
        "DELETE FROM stream_secrets WHERE tenant_id = $1 AND stream_id = $2",
        &[&tenant_id, &id],
    )
    .await?;
    Ok(deleted == 1)
}

const STREAM_COLUMNS: &str = "tenant_id, id, name, status, status_reason, subscriptions, \
     destination, payload_format, retry_policy, created_at, updated_at, max_consecutive_failures, \
     content_mode, disable_after_failing_seconds, expires_at";

fn stream_from_row(row: &Row, cipher: &Cipher) -> StoreResult<Stream> {
    StreamRow {
        tenant_id: row.get(0),
        id: row.get(1),
        name: row.get(2),
        status: row.get(3),
        status_reason: row.get(4),
        subscriptions: row.get(5),
        destination: row.get(6),
        payload_format: row.get(7),
        retry_policy: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
        max_consecutive_failures: row.get(11),
        content_mode: row.get(12),
        disable_after_failing_seconds: row.get(13),
        expires_at: row.get(14),
    }
    .decode(cipher)
}

const EVENT_COLUMNS: &str = "e.id, e.source, e.type, e.time, e.subject, e.datacontenttype, e.dataschema, e.data, e.extensions";

/// Reads an event from `EVENT_COLUMNS` starting at column `at`.
fn event_from_row(row: &Row, at: usize) -> StoreResult<Event> {
    EventRow {
        id: row.get(at),
        source: row.get(at + 1),
        event_type: row.get(at + 2),
        time: row.get(at + 3),
        subject: row.get(at + 4),
        datacontenttype: row.get(at + 5),
        dataschema: row.get(at + 6),
        data: row.get(at + 7),
        extensions: row.get(at + 8),
    }
    .decode()
}

/// Joins each delivery (`d`) to its event (`e`) by key, in the event's partition: a
/// `LATERAL ... LIMIT 1`, as the planner, without statistics for the partitioned parents,
/// would otherwise join the whole tables (see `queue::claim`).
const EVENT_OF_DELIVERY: &str = "CROSS JOIN LATERAL (SELECT * FROM events e \
     WHERE e.seq = d.event_seq AND e.tenant_id = d.tenant_id LIMIT 1) e";

const DELIVERY_COLUMNS: &str = "d.seq, d.id, d.stream_id, e.id, d.event_type, d.status, d.due_at, \
     d.created_at, d.updated_at, d.attempts, d.last_attempt_at, d.last_response_status, \
     d.last_error_kind";

/// A delivery from `DELIVERY_COLUMNS`, without its attempts; also its `seq`.
fn delivery_from_row(row: &Row) -> StoreResult<(i64, DeliveryView)> {
    let status = columns::decode_status(row.get(5))?;
    let view = DeliveryView {
        id: row.get(1),
        stream_id: row.get(2),
        event_id: row.get(3),
        event_type: row.get(4),
        status,
        next_attempt_at: if status == DeliveryStatus::Pending {
            row.get(6)
        } else {
            None
        },
        created_at: row.get(7),
        updated_at: row.get(8),
        attempt_count: row.get::<_, i64>(9) as u32,
        last_attempt_at: row.get(10),
        last_response_status: row.get::<_, Option<i32>>(11).map(|s| s as u16),
        last_error_kind: row.get(12),
        attempts: Vec::new(),
    };
    Ok((row.get(0), view))
}

/// Deliveries `condition` picks (on `deliveries d`, with `$1` the tenant and `$2` `value`),
/// each with every attempt.
async fn delivery_views(
    client: &impl GenericClient,
    tenant_id: &str,
    condition: &str,
    value: &str,
) -> StoreResult<Vec<DeliveryView>> {
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d {EVENT_OF_DELIVERY} \
                 WHERE d.tenant_id = $1 AND {condition} ORDER BY d.seq"
            ),
            &[&tenant_id, &value],
        )
        .await?;
    let attempts = client
        .prepare_cached(
            "SELECT attempted_at, duration_ms, response_status, response_body, error_kind, \
             error_message, detail FROM attempts WHERE tenant_id = $1 AND delivery_seq = $2 ORDER BY seq",
        )
        .await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        let (seq, mut view) = delivery_from_row(&row)?;
        view.attempts = client
            .query(&attempts, &[&tenant_id, &seq])
            .await?
            .iter()
            .map(|a| AttemptView {
                attempted_at: a.get(0),
                duration_ms: a.get(1),
                response_status: a.get::<_, Option<i32>>(2).map(|s| s as u16),
                response_body: a.get(3),
                error_kind: a.get(4),
                error_message: a.get(5),
                detail: a.get(6),
            })
            .collect();
        views.push(view);
    }
    Ok(views)
}

/// Tells every node that stream definitions changed (sent when the transaction commits).
async fn notify_streams_changed(client: &impl GenericClient) -> StoreResult<()> {
    client
        .execute(&format!("NOTIFY {STREAMS_CHANNEL}"), &[])
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn close(&self) {
        self.pool.close();
        self.lazy.close();
    }

    async fn ping(&self) -> StoreResult<()> {
        self.client().await?.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn create_tenant(&self, tenant: Tenant) -> StoreResult<bool> {
        let inserted = self
            .client()
            .await?
            .execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&tenant.id, &tenant.name, &tenant.created_at],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&id])
            .await?
            .map(|r| tenant_from_row(&r)))
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, name, created_at FROM tenants ORDER BY created_at, id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }

    async fn rename_tenant(&self, id: &str, name: &str) -> StoreResult<Option<Tenant>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE tenants SET name = $2 WHERE id = $1 RETURNING id, name, created_at",
                &[&id, &name],
            )
            .await?;
        Ok(row.map(|r| tenant_from_row(&r)))
    }

    async fn close_tenant(&self, id: &str) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for table in CLOSED_WITH_TENANT {
            if table == "streams" {
                // In (tenant, id) order, as outcomes lock them (see `queue`'s lock order).
                tx.execute(
                    "SELECT 1 FROM streams WHERE tenant_id = $1 ORDER BY id FOR UPDATE",
                    &[&id],
                )
                .await?;
            }
            tx.execute(&format!("DELETE FROM {table} WHERE tenant_id = $1"), &[&id])
                .await?;
        }
        let exists = tx
            .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&id])
            .await?
            .is_some();
        notify_streams_changed(&tx).await?;
        tx.commit().await?;
        Ok(exists)
    }

    async fn delete_tenant(&self, id: &str) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The queue right after the pending fan-outs (whose chunks add to it): no claim
        // leases a delivery of the tenant once its deletion is under way, and the queue
        // rows are locked in key order before their deliveries and streams, as outcomes
        // lock them (see `queue`'s lock order).
        let (fanouts, rest) = TENANT_TABLES.split_at(1);
        for table in fanouts {
            tx.execute(&format!("DELETE FROM {table} WHERE tenant_id = $1"), &[&id])
                .await?;
        }
        tx.execute(
            "WITH locked AS (SELECT seq FROM queue WHERE tenant_id = $1 ORDER BY seq FOR UPDATE) \
             DELETE FROM queue q USING locked WHERE q.seq = locked.seq",
            &[&id],
        )
        .await?;
        for table in rest.iter().chain(&["event_keys"]) {
            tx.execute(&format!("DELETE FROM {table} WHERE tenant_id = $1"), &[&id])
                .await?;
        }
        let deleted = tx
            .execute("DELETE FROM tenants WHERE id = $1", &[&id])
            .await?
            == 1;
        notify_streams_changed(&tx).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn count_tokens(&self) -> StoreResult<u64> {
        let count: i64 = self
            .client()
            .await?
            .query_one("SELECT COUNT(*) FROM api_tokens", &[])
            .await?
            .get(0);
        Ok(count as u64)
    }

    async fn put_token(&self, token: Token, hash: TokenHash) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO api_tokens (hash, id, tenant_id, name, scopes, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, \
                 revoked_at = CASE WHEN api_tokens.hash = excluded.hash THEN api_tokens.revoked_at END",
                &[
                    &hash.as_slice(),
                    &token.id,
                    &token.tenant_id,
                    &token.name,
                    &columns::encode_scopes(&token.scopes),
                    &token.created_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn find_token(&self, hash: TokenHash) -> StoreResult<Option<Token>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&hash.as_slice()])
            .await?
            .map(|r| token_from_row(&r))
            .transpose()
    }

    async fn list_tokens(&self, tenant_id: Option<&str>) -> StoreResult<Vec<Token>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens \
                     WHERE tenant_id IS NOT DISTINCT FROM $1 AND revoked_at IS NULL \
                     ORDER BY created_at, id"
                ),
                &[&tenant_id],
            )
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(
        &self,
        tenant_id: Option<&str>,
        id: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let revoked = self
            .client()
            .await?
            .execute(
                "UPDATE api_tokens SET revoked_at = $3 \
                 WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2 AND revoked_at IS NULL",
                &[&tenant_id, &id, &now],
            )
            .await?;
        Ok(revoked == 1)
    }

    async fn create_console_session(&self, session: ConsoleSession) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO console_sessions (hash, token_hash, tenant_id, scopes, name, \
                 created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &session.hash.as_slice(),
                    &session.token_hash.as_slice(),
                    &session.tenant_id,
                    &session.scopes.as_deref().map(columns::encode_scopes),
                    &session.name,
                    &session.created_at,
                    &session.expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn find_console_session(
        &self,
        hash: TokenHash,
    ) -> StoreResult<Option<(ConsoleSession, Token)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT t.id, t.tenant_id, t.name, t.scopes, t.created_at, s.token_hash, \
                 s.tenant_id, s.created_at, s.expires_at, s.scopes, s.name \
                 FROM console_sessions s \
                 JOIN api_tokens t ON t.hash = s.token_hash AND t.revoked_at IS NULL \
                 WHERE s.hash = $1 \
                 AND (s.tenant_id IS NULL \
                      OR EXISTS (SELECT 1 FROM tenants WHERE tenants.id = s.tenant_id \
                                 AND tenants.created_at <= s.created_at))",
            )
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&hash.as_slice()]).await? else {
            return Ok(None);
        };
        let token = token_from_row(&row)?;
        let scopes: Option<&str> = row.get(9);
        let session = ConsoleSession {
            hash,
            token_hash: columns::token_hash(row.get(5))?,
            tenant_id: row.get(6),
            scopes: scopes.map(columns::decode_scopes).transpose()?,
            name: row.get(10),
            created_at: row.get(7),
            expires_at: row.get(8),
        };
        Ok(Some((session, token)))
    }

    async fn touch_console_session(
        &self,
        hash: TokenHash,
        expires_at: Millis,
    ) -> StoreResult<bool> {
        // Soft state: a touch lost in a crash only ends the session sooner.
        let touched = self
            .lazy
            .get()
            .await?
            .execute(
                "UPDATE console_sessions SET expires_at = $2 WHERE hash = $1",
                &[&hash.as_slice(), &expires_at],
            )
            .await?;
        Ok(touched == 1)
    }

    async fn delete_console_session(&self, hash: TokenHash) -> StoreResult<bool> {
        let deleted = self
            .client()
            .await?
            .execute(
                "DELETE FROM console_sessions WHERE hash = $1",
                &[&hash.as_slice()],
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn delete_expired_console_sessions(&self, now: Millis) -> StoreResult<u64> {
        let client = self.lazy.get().await?;
        let sessions = client
            .execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1",
                &[&now],
            )
            .await?;
        let links = client
            .execute("DELETE FROM console_links WHERE expires_at <= $1", &[&now])
            .await?;
        Ok(sessions + links)
    }

    async fn withdraw_console_links(&self, tenant_id: &str) -> StoreResult<(u64, u64)> {
        let client = self.client().await?;
        let links = client
            .execute(
                "DELETE FROM console_links WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await?;
        // A session a link opened is the one with scopes of its own.
        let sessions = client
            .execute(
                "DELETE FROM console_sessions WHERE tenant_id = $1 AND scopes IS NOT NULL",
                &[&tenant_id],
            )
            .await?;
        Ok((links, sessions))
    }

    async fn create_console_link(&self, link: ConsoleLink) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO console_links (hash, token_hash, tenant_id, scopes, name, \
                 created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &link.hash.as_slice(),
                    &link.token_hash.as_slice(),
                    &link.tenant_id,
                    &columns::encode_scopes(&link.scopes),
                    &link.name,
                    &link.created_at,
                    &link.expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn find_console_link(
        &self,
        hash: TokenHash,
        now: Millis,
    ) -> StoreResult<Option<ConsoleLink>> {
        self.client()
            .await?
            .query_opt(
                &format!(
                    "SELECT {CONSOLE_LINK_COLUMNS} FROM console_links \
                     WHERE hash = $1 AND expires_at > $2"
                ),
                &[&hash.as_slice(), &now],
            )
            .await?
            .map(|r| console_link_from_row(&r))
            .transpose()
    }

    async fn consume_console_link(
        &self,
        hash: TokenHash,
        now: Millis,
    ) -> StoreResult<Option<ConsoleLink>> {
        // One DELETE: of concurrent ones for the same row, PostgreSQL lets one delete it and
        // the others find nothing.
        let link = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "DELETE FROM console_links WHERE hash = $1 RETURNING {CONSOLE_LINK_COLUMNS}"
                ),
                &[&hash.as_slice()],
            )
            .await?
            .map(|r| console_link_from_row(&r))
            .transpose()?;
        // An ended link is taken too: it serves nobody.
        Ok(link.filter(|link| link.expires_at > now))
    }

    async fn create_event_type(
        &self,
        tenant_id: &str,
        event_type: EventType,
        now: Millis,
    ) -> StoreResult<bool> {
        let schema = event_type.schema.as_ref().map(|s| s.to_string());
        let inserted = self
            .client()
            .await?
            .execute(
                "INSERT INTO event_types (tenant_id, name, category, description, schema, \
                 sample_data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT DO NOTHING",
                &[
                    &tenant_id,
                    &event_type.name,
                    &event_type.category,
                    &event_type.description,
                    &schema,
                    &event_type.sample_data.to_string(),
                    &now,
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn list_event_types(&self, tenant_id: &str) -> StoreResult<Vec<EventType>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT name, category, description, schema, sample_data FROM event_types \
                 WHERE tenant_id = $1 ORDER BY name",
            )
            .await?;
        client
            .query(&stmt, &[&tenant_id])
            .await?
            .iter()
            .map(|row| {
                columns::decode_event_type(
                    row.get(0),
                    row.get(1),
                    row.get(2),
                    row.get(3),
                    row.get(4),
                )
            })
            .collect()
    }

    async fn delete_event_type(&self, tenant_id: &str, name: &str) -> StoreResult<bool> {
        let deleted = self
            .client()
            .await?
            .execute(
                "DELETE FROM event_types WHERE tenant_id = $1 AND name = $2",
                &[&tenant_id, &name],
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn create_stream(&self, stream: Stream, secret: Option<StreamSecret>) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        name_free(&tx, &stream.tenant_id, &stream.id, &stream.name).await?;
        let cipher = self.sealing(&tx).await?;
        let (subscriptions, destination, retry_policy) = columns::encode_stream(&stream, &cipher);
        tx.execute(
            &format!(
                "INSERT INTO streams ({STREAM_COLUMNS}, destination_type) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
            ),
            &[
                &stream.tenant_id,
                &stream.id,
                &stream.name,
                &stream.status.as_str(),
                &stream.status_reason,
                &subscriptions,
                &destination,
                &stream.payload_format.as_str(),
                &retry_policy,
                &stream.created_at,
                &stream.updated_at,
                &(stream.max_consecutive_failures as i64),
                &stream.content_mode.map(|m| m.as_str()),
                &(stream.disable_after_failing_seconds as i64),
                &stream.expires_at,
                &stream.destination.kind(),
            ],
        )
        .await?;
        if let Some(secret) = secret {
            tx.execute(
                "INSERT INTO stream_secrets (tenant_id, stream_id, secret, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, NULL)",
                &[
                    &stream.tenant_id,
                    &stream.id,
                    &cipher.encrypt(secret.secret.expose().as_bytes()),
                    &secret.created_at,
                ],
            )
            .await?;
        }
        notify_streams_changed(&tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_stream(&self, tenant_id: &str, id: &str) -> StoreResult<Option<Stream>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {STREAM_COLUMNS} FROM streams WHERE tenant_id = $1 AND id = $2"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&tenant_id, &id])
            .await?
            .map(|row| stream_from_row(&row, &self.cipher))
            .transpose()
    }

    async fn list_streams(&self, tenant_id: &str) -> StoreResult<Vec<Stream>> {
        self.client()
            .await?
            .query(
                &format!(
                    "SELECT {STREAM_COLUMNS} FROM streams WHERE tenant_id = $1 ORDER BY created_at, id"
                ),
                &[&tenant_id],
            )
            .await?
            .iter()
            .map(|row| stream_from_row(row, &self.cipher))
            .collect()
    }

    async fn update_stream(&self, update: StreamUpdate) -> StoreResult<Option<Vec<Published>>> {
        let stream = &update.stream;
        // Herald's own notices may be published.
        self.history.roll(stream.updated_at).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        name_free(&tx, &stream.tenant_id, &stream.id, &stream.name).await?;
        let cipher = self.sealing(&tx).await?;
        let (subscriptions, destination, retry_policy) = columns::encode_stream(stream, &cipher);
        // The backlog before the stream's row, in the queue's lock order (a stream that is
        // not there has none, and the transaction is rolled back below).
        if update.skip_backlog {
            queue::skip_pending_fan_outs(&tx, &stream.tenant_id, &stream.id).await?;
            queue::cancel_pending(&tx, &stream.tenant_id, &stream.id, stream.updated_at).await?;
        }
        let changed = tx
            .execute(
                "UPDATE streams SET name = $3, status = $4, status_reason = $5, subscriptions = $6, \
                 destination = $7, payload_format = $8, retry_policy = $9, updated_at = $10, \
                 destination_type = $11, max_consecutive_failures = $12, content_mode = $13, \
                 disable_after_failing_seconds = $14, \
                 consecutive_failures = CASE WHEN status = $4 THEN consecutive_failures ELSE 0 END, \
                 failing_since = CASE WHEN status = $4 THEN failing_since ELSE NULL END \
                 WHERE tenant_id = $1 AND id = $2",
                &[
                    &stream.tenant_id,
                    &stream.id,
                    &stream.name,
                    &stream.status.as_str(),
                    &stream.status_reason,
                    &subscriptions,
                    &destination,
                    &stream.payload_format.as_str(),
                    &retry_policy,
                    &stream.updated_at,
                    &stream.destination.kind(),
                    &(stream.max_consecutive_failures as i64),
                    &stream.content_mode.map(|m| m.as_str()),
                    &(stream.disable_after_failing_seconds as i64),
                ],
            )
            .await?;
        if changed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut due = Vec::new();
        let published = queue::publish(
            &tx,
            None,
            &stream.tenant_id,
            update.notices,
            stream.updated_at,
            &mut due,
        )
        .await?;
        notify_streams_changed(&tx).await?;
        tx.commit().await?;
        self.announcer.due(due);
        Ok(Some(published))
    }

    async fn delete_stream(&self, tenant_id: &str, id: &str, now: Millis) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = delete_stream_rows(&tx, tenant_id, id, now).await?;
        notify_streams_changed(&tx).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn hold_stream(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        expires_at: Millis,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE streams SET held_by = $3, expires_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND destination_type = 'listen'",
                &[&tenant_id, &id, &holder, &expires_at],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn touch_stream(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        expires_at: Millis,
    ) -> StoreResult<Holding> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH touched AS ( \
                     UPDATE streams SET expires_at = $4 \
                     WHERE tenant_id = $1 AND id = $2 AND destination_type = 'listen' \
                       AND held_by = $3 \
                     RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM touched), EXISTS ( \
                     SELECT 1 FROM streams \
                     WHERE tenant_id = $1 AND id = $2 AND destination_type = 'listen')",
                &[&tenant_id, &id, &holder, &expires_at],
            )
            .await?;
        Ok(
            match row.map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1))) {
                Some((true, _)) => Holding::Held,
                Some((false, true)) => Holding::Taken,
                _ => Holding::Gone,
            },
        )
    }

    async fn delete_expired_streams(&self, now: Millis) -> StoreResult<Vec<(String, String)>> {
        let mut client = self.client().await?;
        let candidates = client
            .query(
                "SELECT tenant_id, id FROM streams \
                 WHERE destination_type = 'listen' AND expires_at <= $1 ORDER BY tenant_id, id",
                &[&now],
            )
            .await?;
        let mut expired = Vec::new();
        // A transaction per session, so that nodes reaping at once wait for one session at
        // a time, never for each other. Its backlog first, in the queue's lock order; then
        // the session, locked and checked again, so one its listener revived meanwhile
        // stays, backlog and all, and one another node is deleting is left to it.
        for row in candidates {
            let (tenant_id, id): (String, String) = (row.get(0), row.get(1));
            let tx = client.transaction().await?;
            queue::cancel_pending(&tx, &tenant_id, &id, now).await?;
            let still = tx
                .query_opt(
                    "SELECT 1 FROM streams WHERE tenant_id = $1 AND id = $2 \
                     AND destination_type = 'listen' AND expires_at <= $3 FOR UPDATE SKIP LOCKED",
                    &[&tenant_id, &id, &now],
                )
                .await?;
            if still.is_none() {
                tx.rollback().await?;
                continue;
            }
            delete_stream_row(&tx, &tenant_id, &id).await?;
            notify_streams_changed(&tx).await?;
            tx.commit().await?;
            expired.push((tenant_id, id));
        }
        Ok(expired)
    }

    async fn stream_secrets(
        &self,
        tenant_id: &str,
        stream_id: &str,
        now: Millis,
    ) -> StoreResult<Vec<StreamSecret>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT secret, created_at, expires_at FROM stream_secrets \
                 WHERE tenant_id = $1 AND stream_id = $2 AND (expires_at IS NULL OR expires_at > $3) \
                 ORDER BY seq DESC",
            )
            .await?;
        let mut secrets = Vec::new();
        for row in client.query(&stmt, &[&tenant_id, &stream_id, &now]).await? {
            let sealed: Vec<u8> = row.get(0);
            let plain = String::from_utf8(self.cipher.decrypt(&sealed)?)
                .map_err(|_| StoreError::Corrupt("stream secret".into()))?;
            secrets.push(StreamSecret {
                secret: Secret::new(plain),
                created_at: row.get(1),
                expires_at: row.get(2),
            });
        }
        Ok(secrets)
    }

    async fn rotate_secret(
        &self,
        tenant_id: &str,
        stream_id: &str,
        secret: StreamSecret,
        old_expires_at: Millis,
    ) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locks the stream, so concurrent rotations run one after the other.
        let exists = tx
            .query_opt(
                "SELECT 1 FROM streams WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                &[&tenant_id, &stream_id],
            )
            .await?
            .is_some();
        if !exists {
            tx.rollback().await?;
            return Ok(false);
        }
        let cipher = self.sealing(&tx).await?;
        // Secrets already expiring keep their earlier expiry.
        tx.execute(
            "UPDATE stream_secrets SET expires_at = LEAST(COALESCE(expires_at, $3), $3) \
             WHERE tenant_id = $1 AND stream_id = $2",
            &[&tenant_id, &stream_id, &old_expires_at],
        )
        .await?;
        tx.execute(
            "INSERT INTO stream_secrets (tenant_id, stream_id, secret, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, NULL)",
            &[
                &tenant_id,
                &stream_id,
                &cipher.encrypt(secret.secret.expose().as_bytes()),
                &secret.created_at,
            ],
        )
        .await?;
        notify_streams_changed(&tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn streams_with_status(&self, status: StreamStatus) -> StoreResult<Vec<Stream>> {
        self.client()
            .await?
            .query(
                &format!("SELECT {STREAM_COLUMNS} FROM streams WHERE status = $1"),
                &[&status.as_str()],
            )
            .await?
            .iter()
            .map(|row| stream_from_row(row, &self.cipher))
            .collect()
    }

    async fn publish(
        &self,
        tenant_id: &str,
        events: Vec<Event>,
        now: Millis,
        lease_until: Option<Millis>,
    ) -> StoreResult<Vec<Published>> {
        self.publishes
            .publish(queue::PublishRequest {
                tenant_id: tenant_id.to_string(),
                events,
                now,
                lease_until,
            })
            .await
    }

    async fn fan_out(
        &self,
        after: i64,
        limit: usize,
        now: Millis,
    ) -> StoreResult<Option<FannedOut>> {
        self.history.roll(now).await?;
        let mut client = self.lazy.get().await?;
        let tx = client.transaction().await?;
        let mut due = Vec::new();
        let chunk = queue::fan_out(&tx, after, limit, now, &mut due).await?;
        tx.commit().await?;
        self.announcer.due(due);
        Ok(chunk)
    }

    async fn claim(
        &self,
        requests: Vec<ClaimRequest>,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimBatch>> {
        let client = self.lazy.get().await?;
        queue::claim(&client, &self.claim_floor, requests, now, lease_until).await
    }

    async fn record(
        &self,
        attempts: Vec<AttemptRecord>,
        now: Millis,
    ) -> StoreResult<RecordEffects> {
        // Herald's own notices may be published.
        self.history.roll(now).await?;
        let mut client = self.lazy.get().await?;
        let tx = client.transaction().await?;
        let mut due = Vec::new();
        let effects = queue::record(&tx, attempts, now, self.shard, &mut due).await?;
        crashpoint::hit(crashpoint::POSTGRES_RECORD_BEFORE_COMMIT);
        tx.commit().await?;
        crashpoint::hit(crashpoint::POSTGRES_RECORD_AFTER_COMMIT);
        self.announcer.due(due);
        Ok(effects)
    }

    async fn release(&self, leases: Vec<(i64, i64)>, now: Millis) -> StoreResult<()> {
        let streams = queue::release(&self.lazy.get().await?, leases, now).await?;
        self.announcer.due(streams);
        Ok(())
    }

    async fn get_delivery(&self, tenant_id: &str, id: &str) -> StoreResult<Option<DeliveryView>> {
        Ok(self.delivery_views(tenant_id, "d.id = $2", id).await?.pop())
    }

    async fn event_deliveries(
        &self,
        tenant_id: &str,
        event_id: &str,
    ) -> StoreResult<Vec<DeliveryView>> {
        // By the event's keys (see `014_partitioned_history.sql`).
        self.delivery_views(
            tenant_id,
            "d.event_seq IN (SELECT k.seq FROM event_keys k WHERE k.tenant_id = $1 AND k.id = $2)",
            event_id,
        )
        .await
    }

    async fn list_deliveries(
        &self,
        tenant_id: &str,
        stream_id: &str,
        filter: DeliveryFilter,
        before: Option<i64>,
        take: usize,
    ) -> StoreResult<Page<DeliveryView>> {
        let mut params: Params = vec![
            Box::new(tenant_id.to_string()),
            Box::new(stream_id.to_string()),
        ];
        let mut conditions = queue::filter_sql(&filter, &mut params);
        if let Some(before) = before {
            params.push(Box::new(before));
            conditions.push_str(&format!(" AND d.seq < ${}", params.len()));
        }
        params.push(Box::new(take as i64 + 1));
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d {EVENT_OF_DELIVERY} \
                     WHERE d.tenant_id = $1 AND d.stream_id = $2{conditions} ORDER BY d.seq DESC LIMIT ${}",
                    params.len()
                ),
                &refs(&params),
            )
            .await?;
        Page::from_newest(rows.iter().map(delivery_from_row), take)
    }

    async fn redeliver_event(
        &self,
        tenant_id: &str,
        stream_id: &str,
        event_id: &str,
        now: Millis,
    ) -> StoreResult<Option<u64>> {
        self.history.roll(now).await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let queued = queue::redeliver_event(&tx, tenant_id, stream_id, event_id, now).await?;
        tx.commit().await?;
        self.announcer.due([stream_id.to_string()]);
        Ok(queued)
    }

    async fn redeliver(
        &self,
        tenant_id: &str,
        stream_id: &str,
        filter: DeliveryFilter,
        dry_run: bool,
        now: Millis,
    ) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let count = queue::redeliver(&tx, tenant_id, stream_id, &filter, dry_run, now).await?;
        tx.commit().await?;
        if !dry_run {
            self.announcer.due([stream_id.to_string()]);
        }
        Ok(count)
    }

    async fn backlog(&self, tenant_id: &str, stream_id: &str) -> StoreResult<Backlog> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*), MIN(created_at) FROM queue \
                 WHERE tenant_id = $1 AND stream_id = $2",
                &[&tenant_id, &stream_id],
            )
            .await?;
        Ok(Backlog {
            pending: row.get::<_, i64>(0) as u64,
            oldest_created_at: row.get(1),
        })
    }

    async fn backlogs(&self) -> StoreResult<Vec<StreamBacklog>> {
        // The queue holds exactly the pending deliveries.
        let rows = self
            .client()
            .await?
            .query(&backlogs_sql("queue"), &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| StreamBacklog {
                tenant_id: r.get(0),
                stream_id: r.get(1),
                pending: r.get::<_, i64>(2) as u64,
                next_due_at: r.get(3),
            })
            .collect())
    }

    async fn stream_activity(
        &self,
        tenant_id: &str,
        from: Millis,
        to: Millis,
    ) -> StoreResult<StreamActivity> {
        log::stream_activity(&self.client().await?, tenant_id, from, to).await
    }

    async fn stats(
        &self,
        tenant_id: &str,
        stream_id: &str,
        from: Millis,
        to: Millis,
    ) -> StoreResult<Vec<StatsRow>> {
        log::stats(&self.client().await?, tenant_id, stream_id, from, to).await
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        filter: EventFilter,
        before: Option<i64>,
        take: usize,
    ) -> StoreResult<Page<LoggedEvent>> {
        log::list_events(&self.client().await?, tenant_id, &filter, before, take).await
    }

    async fn log_position(
        &self,
        tenant_id: &str,
        start: LogStart,
    ) -> StoreResult<Option<LogPosition>> {
        log::log_position(&self.client().await?, tenant_id, start).await
    }

    async fn read_log(
        &self,
        tenant_id: &str,
        after: LogPosition,
        take: usize,
    ) -> StoreResult<Vec<(LogPosition, LoggedEvent)>> {
        log::read_log(&self.client().await?, tenant_id, after, take).await
    }

    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
        source: Option<&str>,
    ) -> StoreResult<Option<LoggedEvent>> {
        log::get_event(&self.client().await?, tenant_id, id, source).await
    }

    async fn erase(&self, tenant_id: &str, what: Erase, now: Millis) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let erased = log::erase(&tx, tenant_id, &what, now).await?;
        tx.commit().await?;
        Ok(erased)
    }

    async fn sweep(
        &self,
        events_before: Option<Millis>,
        bodies_before: Option<Millis>,
        limit: usize,
    ) -> StoreResult<Swept> {
        // Whole days first (see `history`). A failure leaves their rows to the sweep below
        // and the days to the next.
        let dropped = match events_before {
            Some(cutoff) => history::drop_expired_days(&self.pool, &self.target, cutoff)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not drop expired days of history; sweeping their rows instead");
                    0
                }),
            None => 0,
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut swept = log::sweep(&tx, events_before, bodies_before, limit).await?;
        tx.commit().await?;
        swept.events += dropped;
        Ok(swept)
    }
}

/// The key check of the key the last rotation replaced, if any (see `store::keys`).
async fn retired_key_check(client: &impl GenericClient) -> StoreResult<Option<Vec<u8>>> {
    Ok(client
        .query_opt(
            "SELECT value FROM settings WHERE name = 'retired_key_check'",
            &[],
        )
        .await?
        .map(|row| row.get(0)))
}

/// Fails with [`StoreError::NameTaken`] when another stream of the tenant has `name` and
/// stream `id` does not have it already (streams that shared a name before names were
/// unique keep it until renamed). A transaction-scoped lock per tenant makes the check and
/// the write that follows one step for concurrent creates and renames.
async fn name_free(
    tx: &impl GenericClient,
    tenant_id: &str,
    id: &str,
    name: &str,
) -> StoreResult<()> {
    let key = format!("herald.stream_names:{tenant_id}");
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&key],
    )
    .await?;
    let taken = tx
        .query_opt(
            "SELECT o.id FROM streams o WHERE o.tenant_id = $1 AND o.name = $3 AND o.id <> $2 \
             AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = $1 AND s.id = $2 \
             AND s.name = $3) ORDER BY o.created_at, o.id LIMIT 1",
            &[&tenant_id, &id, &name],
        )
        .await?;
    match taken {
        Some(row) => Err(StoreError::NameTaken(row.get(0))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions 11 to 14 on a store populated at version 10: the rows stay, events are found
    /// by id and by (source, id) through the one unique index, a duplicate is still refused,
    /// the pending deliveries are in the queue, and a node's rollups go to rows of its own.
    #[tokio::test]
    #[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
    async fn the_upgrades_since_version_10_keep_a_populated_store_working() {
        let base = std::env::var("HERALD_TEST_DATABASE_URL").unwrap();
        let scratch = scratch::Scratch::create(&base, "herald_test")
            .await
            .unwrap();
        let client = scratch::connect(&scratch.url).await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await
            .unwrap();
        for (i, sql) in MIGRATIONS[..10].iter().enumerate() {
            client.batch_execute(sql).await.unwrap();
            client
                .execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)",
                    &[&(i as i32 + 1)],
                )
                .await
                .unwrap();
        }
        client
            .batch_execute(crate::store::UPGRADE_TEST_ROWS)
            .await
            .unwrap();
        // Statistics of an hour, as version 10 kept them (one row per stream, hour and type).
        client
            .batch_execute(
                "INSERT INTO stream_stats (tenant_id, stream_id, hour, event_type, succeeded, \
                 attempts, l2) VALUES ('ten_a', 'est_a', 0, 'user.created', 5, 5, 5)",
            )
            .await
            .unwrap();
        // A delivery leased by a node and one finished, as version 10 kept them.
        client
            .batch_execute(
                "INSERT INTO deliveries (seq, tenant_id, id, stream_id, event_seq, event_type, \
                 status, due_at, lease, lease_until, created_at, updated_at) VALUES \
                 (3, 'ten_a', 'dlv_3', 'est_b', 1, 'user.created', 'pending', 500, 3, 500, 7, 7), \
                 (4, 'ten_a', 'dlv_4', 'est_c', 1, 'user.created', 'succeeded', NULL, 2, NULL, 8, 8)",
            )
            .await
            .unwrap();

        let cipher =
            || Cipher::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let mut store = PgStore::connect(&scratch.url, cipher(), 2).await.unwrap();
        store.shard = 7;

        let definitions: Vec<(String, String)> = client
            .query(
                "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() \
                 AND tablename IN ('events', 'deliveries') ORDER BY indexname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let columns = |name: &str| {
            definitions
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, def)| def[def.rfind('(').unwrap()..].to_string())
        };
        assert_eq!(columns("events_by_id"), None);
        // Version 14: idempotency is kept by the event keys, not by an index of `events`.
        assert_eq!(columns("events_by_source_id"), None);
        let keys: String = client
            .query_one(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'event_keys_pkey' \
                 AND schemaname = current_schema()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(keys.ends_with("(tenant_id, id, source)"), "{keys}");
        assert_eq!(columns("deliveries_by_id").as_deref(), Some("(id)"));
        assert_eq!(
            columns("deliveries_by_event").as_deref(),
            Some("(event_seq, stream_id)")
        );

        for source in [None, Some("src")] {
            let found = store
                .get_event("ten_a", "e1", source)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (found.event.id.as_str(), found.event.source.as_str()),
                ("e1", "src")
            );
        }
        let event = |id: &str| crate::event::Event {
            id: id.into(),
            source: "src".into(),
            event_type: "user.created".into(),
            time: 0,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            extensions: Default::default(),
        };
        let now = 1_800_000_000_000;
        let published = store
            .publish("ten_a", vec![event("e1"), event("e2")], now, None)
            .await
            .unwrap();
        assert_eq!(
            published.iter().map(|p| p.duplicate).collect::<Vec<_>>(),
            [true, false],
            "an event stored before the upgrade is still a duplicate"
        );
        // The tables before the upgrade are the first partitions; new events go to the
        // partition of their day.
        let placed: Vec<(String, String)> = client
            .query(
                "SELECT e.id, e.tableoid::regclass::text FROM events e WHERE e.tenant_id = 'ten_a' \
                 ORDER BY e.seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let today = format!("events_e{}", history::day_of(now));
        assert_eq!(
            placed,
            [("e1".into(), "events_e0".into()), ("e2".into(), today)]
        );

        type Queued = (i64, String, String, i64, i64, Option<i64>, i64);
        let queued: Vec<Queued> = client
            .query(
                "SELECT seq, tenant_id, stream_id, due_at, lease, lease_until, created_at \
                 FROM queue ORDER BY seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                )
            })
            .collect();
        let row = |seq, tenant: &str, stream: &str, due, lease, until, created| {
            (
                seq,
                tenant.into(),
                stream.into(),
                due,
                lease,
                until,
                created,
            )
        };
        assert_eq!(
            queued,
            [
                row(1, "ten_a", "est_a", 0, 0, None, 0),
                row(2, "ten_b", "est_b", 0, 0, None, 0),
                row(3, "ten_a", "est_b", 500, 3, Some(500), 7),
            ]
        );
        let backlog = store.backlog("ten_a", "est_a").await.unwrap();
        assert_eq!((backlog.pending, backlog.oldest_created_at), (1, Some(0)));
        assert_eq!(columns("deliveries_due"), None);

        // A node adds its outcomes to rollup rows of its own; the hour still reads as one.
        let outcome = AttemptRecord {
            key: 1,
            lease: 0,
            tenant_id: "ten_a".into(),
            stream_id: "est_a".into(),
            delivery_id: "dlv_1".into(),
            event_id: "e1".into(),
            event_type: "user.created".into(),
            attempt_number: 1,
            attempted_at: 10,
            duration_ms: 3,
            response_status: Some(200),
            response_body: None,
            error_kind: None,
            error_message: None,
            detail: None,
            status: crate::store::DeliveryStatus::Succeeded,
            next_attempt_at: None,
            refused: false,
            disable_stream: None,
            max_consecutive_failures: 0,
            disable_after_failing_seconds: 0,
        };
        store.record(vec![outcome], 20).await.unwrap();
        let hours = store.stats("ten_a", "est_a", 0, 3_600_000).await.unwrap();
        let read: Vec<_> = hours
            .iter()
            .map(|h| {
                (
                    h.hour,
                    h.event_type.as_str(),
                    h.succeeded,
                    h.attempts,
                    h.latency[2],
                )
            })
            .collect();
        assert_eq!(read, [(0, "user.created", 6, 6, 6)]);
        let shards: Vec<(i16, i64)> = client
            .query(
                "SELECT shard, succeeded FROM stream_stats ORDER BY shard",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(shards, [(0, 5), (7, 1)]);

        // A node older than the schema refuses to start.
        drop(store);
        client
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)",
                &[&(MIGRATIONS.len() as i32 + 1)],
            )
            .await
            .unwrap();
        let refused = PgStore::connect(&scratch.url, cipher(), 2)
            .await
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("newer than this Herald knows"),
            "{refused}"
        );
    }
}
