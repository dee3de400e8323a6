//! The embedded store: SQLite in WAL mode. Whatever is acknowledged to a client (a publish, a
//! stream change) is committed with `synchronous = FULL`, on disk before anyone is told;
//! attempt outcomes are committed lazily, surviving a killed process but not a power cut,
//! where their loss means only a repeated attempt. Leases are not written at all: one
//! process owns the store, so they are kept in memory (see `queue::Leases`). Writes go
//! through one writer thread that batches concurrent callers into shared commits (see
//! `writer`); reads use their own connections.

mod log;
mod maintenance;
mod queue;
mod writer;

pub use maintenance::{BackupError, backup, restore, rotate_secret_key};

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::columns::{self, EventRow, StreamRow};
use super::*;
use crate::catalog::EventType;
use crate::secret::{Cipher, Secret};
use writer::{Checkpointer, Readers, Writer};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("002_destination_kinds.sql"),
    include_str!("003_failing_streams.sql"),
    include_str!("004_fanouts.sql"),
    include_str!("005_stream_names.sql"),
    include_str!("006_settings.sql"),
    include_str!("007_temporary_streams.sql"),
    include_str!("008_events_by_received.sql"),
    include_str!("009_console_sessions.sql"),
    include_str!("010_console_links.sql"),
    include_str!("011_fewer_index_pages.sql"),
];

/// Rows one job of a bulk administrative write (a redelivery, an erasure by subject, a
/// tenant's deletion) touches at most. Each chunk is a writer job of its own, committed on
/// its own: publishes queued behind a large job wait for one chunk, a few milliseconds, not
/// for all of it. A bulk write cut short (a crash) has done part of its work; asking again
/// finishes it.
pub const BULK_CHUNK: usize = 1_000;

pub struct SqliteStore {
    /// Held for the store's lifetime: one process owns a data directory.
    _lock: std::fs::File,
    /// The deliveries being attempted; used only inside writer jobs.
    leases: Arc<std::sync::Mutex<queue::Leases>>,
    writer: Writer,
    readers: Readers,
    checkpointer: Checkpointer,
    cipher: Arc<Cipher>,
}

impl SqliteStore {
    /// One writer job of an erasure: up to `limit` events of each id, or of the subject.
    async fn erase_chunk(
        &self,
        tenant_id: &str,
        what: Erase,
        now: Millis,
        limit: usize,
    ) -> StoreResult<u64> {
        let tenant_id = tenant_id.to_string();
        self.writer
            .write(move |conn| log::erase(conn, &tenant_id, &what, now, limit))
            .await
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path, cipher: Cipher) -> StoreResult<SqliteStore> {
        let (lock, conn) = open_locked(path)?;
        maintenance::check_key(&conn, &cipher, path)?;
        // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power
        // loss. The writer lowers it for lazy batches (see `writer::Durability`).
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Savepoints' copies of changed pages stay in memory rather than in a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "wal_autocheckpoint", writer::WRITER_CHECKPOINT_PAGES)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(writer::STATEMENT_CACHE);
        let leases: Arc<std::sync::Mutex<queue::Leases>> = Arc::default();
        let writer = Writer::start(conn, Arc::new(LeaseJournal(leases.clone())));
        let checkpointer = writer.start_checkpointer(path)?;
        Ok(SqliteStore {
            _lock: lock,
            writer,
            leases,
            readers: Readers::new(path),
            checkpointer,
            cipher: Arc::new(cipher),
        })
    }
}

impl SqliteStore {
    /// The sizes and times of the group commits, for the metrics endpoint.
    pub fn commit_metrics(&self) -> crate::metrics::CommitMetrics {
        self.writer.commit_metrics()
    }

    /// Ends the writer thread the way a panicking job would. Only for the test that
    /// readiness notices; nothing else calls it.
    #[doc(hidden)]
    pub async fn kill_writer_for_tests(&self) {
        let killed = self
            .writer
            .write_lazy(|_| -> StoreResult<()> { panic!("the writer was killed for a test") })
            .await;
        debug_assert!(killed.is_err());
    }
}

/// Takes the data directory's lock, then opens the database in WAL mode with its schema
/// up to date.
fn open_locked(path: &Path) -> StoreResult<(std::fs::File, Connection)> {
    let open_err = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let lock = lock_exclusively(&path.with_extension("lock")).map_err(open_err)?;
    let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| open_err(e.to_string()))?;
    migrate(&mut conn).map_err(open_err)?;
    Ok((lock, conn))
}

/// An embedded store opened to be read in full (`herald migrate-store`), locked as a running
/// server locks it, so nothing writes to it meanwhile.
pub struct Export {
    _lock: std::fs::File,
    conn: Connection,
}

impl Export {
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

pub fn open_for_export(path: &Path) -> StoreResult<Export> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            reason: "there is no embedded store here".into(),
        });
    }
    let (lock, conn) = open_locked(path)?;
    Ok(Export { _lock: lock, conn })
}

fn lock_exclusively(path: &Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open the lock file: {e}"))?;
    file.try_lock().map_err(|_| {
        "another herald process is using this data directory; stop it or choose another --data-dir"
            .to_string()
    })?;
    Ok(file)
}

/// The leases follow the writer's transactions: a rolled-back job's lease changes are undone.
struct LeaseJournal(Arc<std::sync::Mutex<queue::Leases>>);

impl writer::Journal for LeaseJournal {
    fn begin_job(&self) {
        lock(&self.0).begin_job();
    }

    fn undo_job(&self) {
        lock(&self.0).undo_job();
    }

    fn committed(&self) {
        lock(&self.0).committed();
    }

    fn rolled_back(&self) {
        lock(&self.0).rolled_back();
    }
}

fn lock(leases: &std::sync::Mutex<queue::Leases>) -> std::sync::MutexGuard<'_, queue::Leases> {
    leases.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails with [`StoreError::NameTaken`] when another stream of the tenant has `name` and
/// stream `id` does not have it already (streams that shared a name before names were
/// unique keep it until renamed). The single writer makes check and write one step.
fn name_free(conn: &Connection, tenant_id: &str, id: &str, name: &str) -> StoreResult<()> {
    let taken: Option<String> = conn
        .query_row(
            "SELECT o.id FROM streams o WHERE o.tenant_id = ?1 AND o.name = ?3 AND o.id <> ?2 \
             AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = ?1 AND s.id = ?2 \
             AND s.name = ?3) ORDER BY o.created_at, o.id LIMIT 1",
            params![tenant_id, id, name],
            |row| row.get(0),
        )
        .optional()?;
    match taken {
        Some(other) => Err(StoreError::NameTaken(other)),
        None => Ok(()),
    }
}

/// Brings the schema up to date, or refuses a schema newer than this binary knows.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if applied > MIGRATIONS.len() {
        return Err(schema_too_new(applied, MIGRATIONS.len()));
    }
    migrate_from(conn, applied).map_err(|e| e.to_string())
}

fn migrate_from(conn: &mut Connection, applied: usize) -> rusqlite::Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn tenant_from_row(row: &Row) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: row.get(0)?,
        name: row.get(1)?,
        created_at: row.get(2)?,
    })
}

const TOKEN_COLUMNS: &str = "id, tenant_id, name, scopes, created_at";

const CONSOLE_LINK_COLUMNS: &str =
    "hash, token_hash, tenant_id, scopes, name, created_at, expires_at";

fn console_link_from_row(row: &Row) -> StoreResult<ConsoleLink> {
    let hash: Vec<u8> = row.get(0)?;
    let token_hash: Vec<u8> = row.get(1)?;
    let scopes: String = row.get(3)?;
    Ok(ConsoleLink {
        hash: columns::token_hash(&hash)?,
        token_hash: columns::token_hash(&token_hash)?,
        tenant_id: row.get(2)?,
        scopes: columns::decode_scopes(&scopes)?,
        name: row.get(4)?,
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
    })
}

fn token_from_row(row: &Row) -> StoreResult<Token> {
    let scopes: String = row.get(3)?;
    Ok(Token {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        name: row.get(2)?,
        scopes: columns::decode_scopes(&scopes)?,
        created_at: row.get(4)?,
    })
}

/// Forgets the leases of every stream of the tenant, whose rows are being deleted. Leases are
/// rows on PostgreSQL, deleted with the tenant; here they are in memory and must go too.
fn forget_leases_of_tenant(
    conn: &Connection,
    leases: &std::sync::Mutex<queue::Leases>,
    tenant_id: &str,
) -> StoreResult<()> {
    let streams: Vec<String> = conn
        .prepare_cached("SELECT id FROM streams WHERE tenant_id = ?1")?
        .query_map(params![tenant_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut held = lock(leases);
    for stream_id in &streams {
        held.forget_stream(stream_id);
    }
    Ok(())
}

/// Deletes a stream, its secrets, and cancels its pending deliveries; false if it did not
/// exist.
fn delete_stream_rows(
    conn: &Connection,
    leases: &std::sync::Mutex<queue::Leases>,
    tenant_id: &str,
    id: &str,
    now: Millis,
) -> StoreResult<bool> {
    let deleted = conn.execute(
        "DELETE FROM streams WHERE tenant_id = ?1 AND id = ?2",
        params![tenant_id, id],
    )?;
    conn.execute(
        "DELETE FROM stream_secrets WHERE tenant_id = ?1 AND stream_id = ?2",
        params![tenant_id, id],
    )?;
    queue::cancel_pending(conn, &mut lock(leases), tenant_id, id, now)?;
    Ok(deleted == 1)
}

const STREAM_COLUMNS: &str = "tenant_id, id, name, status, status_reason, subscriptions, \
     destination, payload_format, retry_policy, created_at, updated_at, max_consecutive_failures, \
     content_mode, disable_after_failing_seconds, expires_at";

fn stream_from_row(row: &Row, cipher: &Cipher) -> StoreResult<Stream> {
    StreamRow {
        tenant_id: row.get(0)?,
        id: row.get(1)?,
        name: row.get(2)?,
        status: row.get(3)?,
        status_reason: row.get(4)?,
        subscriptions: row.get(5)?,
        destination: row.get(6)?,
        payload_format: row.get(7)?,
        retry_policy: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        max_consecutive_failures: row.get(11)?,
        content_mode: row.get(12)?,
        disable_after_failing_seconds: row.get(13)?,
        expires_at: row.get(14)?,
    }
    .decode(cipher)
}

const EVENT_COLUMNS: &str = "e.id, e.source, e.type, e.time, e.subject, e.datacontenttype, e.dataschema, e.data, e.extensions";

/// Reads an event from `EVENT_COLUMNS` starting at column `at`.
fn event_from_row(row: &Row, at: usize) -> StoreResult<Event> {
    EventRow {
        id: row.get(at)?,
        source: row.get(at + 1)?,
        event_type: row.get(at + 2)?,
        time: row.get(at + 3)?,
        subject: row.get(at + 4)?,
        datacontenttype: row.get(at + 5)?,
        dataschema: row.get(at + 6)?,
        data: row.get(at + 7)?,
        extensions: row.get(at + 8)?,
    }
    .decode()
}

const DELIVERY_COLUMNS: &str = "d.seq, d.id, d.stream_id, e.id, d.event_type, d.status, d.due_at, \
     d.created_at, d.updated_at, d.attempts, d.last_attempt_at, d.last_response_status, \
     d.last_error_kind";

/// A delivery from `DELIVERY_COLUMNS`, without its attempts; also its `seq`.
fn delivery_from_row(row: &Row) -> StoreResult<(i64, DeliveryView)> {
    let status: String = row.get(5)?;
    let status = columns::decode_status(&status)?;
    let view = DeliveryView {
        id: row.get(1)?,
        stream_id: row.get(2)?,
        event_id: row.get(3)?,
        event_type: row.get(4)?,
        status,
        next_attempt_at: if status == DeliveryStatus::Pending {
            row.get(6)?
        } else {
            None
        },
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        attempt_count: row.get(9)?,
        last_attempt_at: row.get(10)?,
        last_response_status: row.get(11)?,
        last_error_kind: row.get(12)?,
        attempts: Vec::new(),
    };
    Ok((row.get(0)?, view))
}

/// The deliveries whose `column` (`d.id` or `e.id`) equals `?2`, of tenant `?1`. The tenant
/// is checked (`+`) rather than searched on: its own indexes hold all the tenant's
/// deliveries, where the delivery's or the event's id finds the few rows at once.
fn delivery_views_sql(column: &str) -> String {
    format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE +d.tenant_id = ?1 AND e.tenant_id = ?1 AND {column} = ?2 ORDER BY d.seq"
    )
}

/// Deliveries whose `column` equals `value`, each with every attempt.
fn delivery_views(
    conn: &Connection,
    tenant_id: &str,
    column: &str,
    value: &str,
) -> StoreResult<Vec<DeliveryView>> {
    let mut stmt = conn.prepare_cached(&delivery_views_sql(column))?;
    let mut attempts = conn.prepare_cached(
        "SELECT attempted_at, duration_ms, response_status, response_body, error_kind, error_message, \
         detail FROM attempts WHERE tenant_id = ?1 AND delivery_seq = ?2 ORDER BY seq",
    )?;
    let mut views = Vec::new();
    let mut rows = stmt.query(params![tenant_id, value])?;
    while let Some(row) = rows.next()? {
        let (seq, mut view) = delivery_from_row(row)?;
        view.attempts = attempts
            .query_map(params![tenant_id, seq], |a| {
                Ok(AttemptView {
                    attempted_at: a.get(0)?,
                    duration_ms: a.get(1)?,
                    response_status: a.get(2)?,
                    response_body: a.get(3)?,
                    error_kind: a.get(4)?,
                    error_message: a.get(5)?,
                    detail: a.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        views.push(view);
    }
    Ok(views)
}

fn list_deliveries(
    conn: &Connection,
    tenant_id: &str,
    stream_id: &str,
    filter: &DeliveryFilter,
    before: Option<i64>,
    take: usize,
) -> StoreResult<Page<DeliveryView>> {
    let mut values = vec![
        rusqlite::types::Value::Text(tenant_id.into()),
        rusqlite::types::Value::Text(stream_id.into()),
    ];
    let mut conditions = queue::filter_sql(filter, &mut values);
    if let Some(before) = before {
        conditions.push_str(" AND d.seq < ?");
        values.push(rusqlite::types::Value::Integer(before));
    }
    values.push(rusqlite::types::Value::Integer(take as i64 + 1));
    let mut stmt = conn.prepare(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.tenant_id = ? AND d.stream_id = ?{conditions} ORDER BY d.seq DESC LIMIT ?"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    Page::from_newest(read_rows(&mut rows, delivery_from_row), take)
}

/// The rows of a query as an iterator of what `read` makes of each, for `Page::from_newest`.
fn read_rows<'a, T>(
    rows: &'a mut rusqlite::Rows<'_>,
    read: impl Fn(&Row) -> StoreResult<T> + 'a,
) -> impl Iterator<Item = StoreResult<T>> + 'a {
    std::iter::from_fn(move || match rows.next() {
        Ok(Some(row)) => Some(read(row)),
        Ok(None) => None,
        Err(e) => Some(Err(e.into())),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        self.checkpointer.stop();
        self.readers.close();
        self.writer.close().await;
    }

    /// Both halves must answer: reads succeed even when the writer thread is gone.
    async fn ping(&self) -> StoreResult<()> {
        self.writer.ping()?;
        self.readers
            .read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn create_tenant(&self, tenant: Tenant) -> StoreResult<bool> {
        self.writer
            .write(move |conn| {
                let inserted = conn.execute(
                    "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![tenant.id, tenant.name, tenant.created_at],
                )?;
                Ok(inserted == 1)
            })
            .await
    }

    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT id, name, created_at FROM tenants WHERE id = ?1")?
                    .query_row(params![id], tenant_from_row)
                    .optional()?)
            })
            .await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.readers
            .read(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, name, created_at FROM tenants ORDER BY created_at, id",
                )?;
                let rows = stmt.query_map([], tenant_from_row)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn rename_tenant(&self, id: &str, name: &str) -> StoreResult<Option<Tenant>> {
        let (id, name) = (id.to_string(), name.to_string());
        self.writer
            .write(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "UPDATE tenants SET name = ?2 WHERE id = ?1 RETURNING id, name, created_at",
                    )?
                    .query_row(params![id, name], tenant_from_row)
                    .optional()?)
            })
            .await
    }

    async fn close_tenant(&self, id: &str) -> StoreResult<bool> {
        let leases = self.leases.clone();
        let tenant = id.to_string();
        self.writer
            .write(move |conn| {
                forget_leases_of_tenant(conn, &leases, &tenant)?;
                for table in CLOSED_WITH_TENANT {
                    conn.execute(
                        &format!("DELETE FROM {table} WHERE tenant_id = ?1"),
                        params![tenant],
                    )?;
                }
                Ok(conn
                    .query_row(
                        "SELECT 1 FROM tenants WHERE id = ?1",
                        params![tenant],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some())
            })
            .await
    }

    async fn delete_tenant(&self, id: &str) -> StoreResult<bool> {
        // Closed first, so nothing of the tenant is claimed, sent or accepted meanwhile.
        self.close_tenant(id).await?;
        // Then its bulk, a chunk at a time.
        for table in ["attempts", "deliveries", "events"] {
            loop {
                let tenant = id.to_string();
                let deleted = self
                    .writer
                    .write(move |conn| {
                        Ok(conn.execute(
                            &format!(
                                "DELETE FROM {table} WHERE seq IN \
                                 (SELECT seq FROM {table} WHERE tenant_id = ?1 LIMIT ?2)"
                            ),
                            params![tenant, BULK_CHUNK as i64],
                        )?)
                    })
                    .await?;
                if deleted < BULK_CHUNK {
                    break;
                }
            }
        }
        // Then the rest, and whatever arrived meanwhile, with the tenant itself.
        let id = id.to_string();
        let leases = self.leases.clone();
        self.writer
            .write(move |conn| {
                // A stream created meanwhile may hold leases too.
                forget_leases_of_tenant(conn, &leases, &id)?;
                for table in TENANT_TABLES {
                    conn.execute(
                        &format!("DELETE FROM {table} WHERE tenant_id = ?1"),
                        params![id],
                    )?;
                }
                Ok(conn.execute("DELETE FROM tenants WHERE id = ?1", params![id])? == 1)
            })
            .await
    }

    async fn count_tokens(&self) -> StoreResult<u64> {
        self.readers
            .read(|conn| {
                Ok(conn.query_row("SELECT COUNT(*) FROM api_tokens", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64)
            })
            .await
    }

    async fn put_token(&self, token: Token, hash: TokenHash) -> StoreResult<()> {
        self.writer
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO api_tokens (hash, id, tenant_id, name, scopes, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, \
                 revoked_at = CASE WHEN api_tokens.hash = excluded.hash THEN api_tokens.revoked_at END",
                    params![
                        hash.as_slice(),
                        token.id,
                        token.tenant_id,
                        token.name,
                        columns::encode_scopes(&token.scopes),
                        token.created_at
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn find_token(&self, hash: TokenHash) -> StoreResult<Option<Token>> {
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL"
                ))?;
                let mut rows = stmt.query(params![hash.as_slice()])?;
                rows.next()?.map(token_from_row).transpose()
            })
            .await
    }

    async fn list_tokens(&self, tenant_id: Option<&str>) -> StoreResult<Vec<Token>> {
        let tenant_id = tenant_id.map(str::to_string);
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens \
                     WHERE tenant_id IS ?1 AND revoked_at IS NULL ORDER BY created_at, id"
                ))?;
                let mut rows = stmt.query(params![tenant_id])?;
                let mut tokens = Vec::new();
                while let Some(row) = rows.next()? {
                    tokens.push(token_from_row(row)?);
                }
                Ok(tokens)
            })
            .await
    }

    async fn revoke_token(
        &self,
        tenant_id: Option<&str>,
        id: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let (tenant_id, id) = (tenant_id.map(str::to_string), id.to_string());
        self.writer
            .write(move |conn| {
                Ok(conn.execute(
                    "UPDATE api_tokens SET revoked_at = ?3 \
                     WHERE tenant_id IS ?1 AND id = ?2 AND revoked_at IS NULL",
                    params![tenant_id, id, now],
                )? == 1)
            })
            .await
    }

    async fn create_console_session(&self, session: ConsoleSession) -> StoreResult<()> {
        self.writer
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO console_sessions (hash, token_hash, tenant_id, scopes, name, \
                     created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        session.hash.as_slice(),
                        session.token_hash.as_slice(),
                        session.tenant_id,
                        session.scopes.as_deref().map(columns::encode_scopes),
                        session.name,
                        session.created_at,
                        session.expires_at
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn find_console_session(
        &self,
        hash: TokenHash,
    ) -> StoreResult<Option<(ConsoleSession, Token)>> {
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT t.id, t.tenant_id, t.name, t.scopes, t.created_at, s.token_hash, \
                     s.tenant_id, s.created_at, s.expires_at, s.scopes, s.name \
                     FROM console_sessions s \
                     JOIN api_tokens t ON t.hash = s.token_hash AND t.revoked_at IS NULL \
                     WHERE s.hash = ?1 \
                 AND (s.tenant_id IS NULL \
                      OR EXISTS (SELECT 1 FROM tenants WHERE tenants.id = s.tenant_id \
                                 AND tenants.created_at <= s.created_at))",
                )?;
                let mut rows = stmt.query(params![hash.as_slice()])?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let token = token_from_row(row)?;
                let token_hash: Vec<u8> = row.get(5)?;
                let scopes: Option<String> = row.get(9)?;
                let session = ConsoleSession {
                    hash,
                    token_hash: columns::token_hash(&token_hash)?,
                    tenant_id: row.get(6)?,
                    scopes: scopes.as_deref().map(columns::decode_scopes).transpose()?,
                    name: row.get(10)?,
                    created_at: row.get(7)?,
                    expires_at: row.get(8)?,
                };
                Ok(Some((session, token)))
            })
            .await
    }

    async fn touch_console_session(
        &self,
        hash: TokenHash,
        expires_at: Millis,
    ) -> StoreResult<bool> {
        // Soft state: a touch lost in a crash only ends the session sooner.
        self.writer
            .write_lazy(move |conn| {
                Ok(conn.execute(
                    "UPDATE console_sessions SET expires_at = ?2 WHERE hash = ?1",
                    params![hash.as_slice(), expires_at],
                )? == 1)
            })
            .await
    }

    async fn delete_console_session(&self, hash: TokenHash) -> StoreResult<bool> {
        self.writer
            .write(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM console_sessions WHERE hash = ?1",
                    params![hash.as_slice()],
                )? == 1)
            })
            .await
    }

    async fn delete_expired_console_sessions(&self, now: Millis) -> StoreResult<u64> {
        self.writer
            .write_lazy(move |conn| {
                let sessions = conn.execute(
                    "DELETE FROM console_sessions WHERE expires_at <= ?1",
                    params![now],
                )?;
                let links = conn.execute(
                    "DELETE FROM console_links WHERE expires_at <= ?1",
                    params![now],
                )?;
                Ok((sessions + links) as u64)
            })
            .await
    }

    async fn withdraw_console_links(&self, tenant_id: &str) -> StoreResult<(u64, u64)> {
        let tenant_id = tenant_id.to_string();
        self.writer
            .write(move |conn| {
                let links = conn.execute(
                    "DELETE FROM console_links WHERE tenant_id = ?1",
                    params![tenant_id],
                )?;
                // A session a link opened is the one with scopes of its own.
                let sessions = conn.execute(
                    "DELETE FROM console_sessions WHERE tenant_id = ?1 AND scopes IS NOT NULL",
                    params![tenant_id],
                )?;
                Ok((links as u64, sessions as u64))
            })
            .await
    }

    async fn create_console_link(&self, link: ConsoleLink) -> StoreResult<()> {
        self.writer
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO console_links (hash, token_hash, tenant_id, scopes, name, \
                     created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        link.hash.as_slice(),
                        link.token_hash.as_slice(),
                        link.tenant_id,
                        columns::encode_scopes(&link.scopes),
                        link.name,
                        link.created_at,
                        link.expires_at
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn find_console_link(
        &self,
        hash: TokenHash,
        now: Millis,
    ) -> StoreResult<Option<ConsoleLink>> {
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {CONSOLE_LINK_COLUMNS} FROM console_links \
                     WHERE hash = ?1 AND expires_at > ?2"
                ))?;
                let mut rows = stmt.query(params![hash.as_slice(), now])?;
                rows.next()?.map(console_link_from_row).transpose()
            })
            .await
    }

    async fn consume_console_link(
        &self,
        hash: TokenHash,
        now: Millis,
    ) -> StoreResult<Option<ConsoleLink>> {
        let link = self
            .writer
            .write(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "DELETE FROM console_links WHERE hash = ?1 RETURNING {CONSOLE_LINK_COLUMNS}"
                ))?;
                let mut rows = stmt.query(params![hash.as_slice()])?;
                rows.next()?.map(console_link_from_row).transpose()
            })
            .await?;
        // An ended link is taken too: it serves nobody.
        Ok(link.filter(|link| link.expires_at > now))
    }

    async fn create_event_type(
        &self,
        tenant_id: &str,
        event_type: EventType,
        now: Millis,
    ) -> StoreResult<bool> {
        let tenant_id = tenant_id.to_string();
        self.writer
            .write(move |conn| {
                let schema = event_type.schema.as_ref().map(|s| s.to_string());
                Ok(conn.execute(
                    "INSERT INTO event_types (tenant_id, name, category, description, schema, \
                     sample_data, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT DO NOTHING",
                    params![
                        tenant_id,
                        event_type.name,
                        event_type.category,
                        event_type.description,
                        schema,
                        event_type.sample_data.to_string(),
                        now
                    ],
                )? == 1)
            })
            .await
    }

    async fn list_event_types(&self, tenant_id: &str) -> StoreResult<Vec<EventType>> {
        let tenant_id = tenant_id.to_string();
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT name, category, description, schema, sample_data FROM event_types \
                     WHERE tenant_id = ?1 ORDER BY name",
                )?;
                let mut rows = stmt.query(params![tenant_id])?;
                let mut types = Vec::new();
                while let Some(row) = rows.next()? {
                    let sample: String = row.get(4)?;
                    types.push(columns::decode_event_type(
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        &sample,
                    )?);
                }
                Ok(types)
            })
            .await
    }

    async fn delete_event_type(&self, tenant_id: &str, name: &str) -> StoreResult<bool> {
        let (tenant_id, name) = (tenant_id.to_string(), name.to_string());
        self.writer
            .write(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM event_types WHERE tenant_id = ?1 AND name = ?2",
                    params![tenant_id, name],
                )? == 1)
            })
            .await
    }

    async fn create_stream(&self, stream: Stream, secret: Option<StreamSecret>) -> StoreResult<()> {
        let cipher = self.cipher.clone();
        self.writer
            .write(move |conn| {
                name_free(conn, &stream.tenant_id, &stream.id, &stream.name)?;
                let cipher = maintenance::sealing(conn, &cipher)?;
                let (subscriptions, destination, retry_policy) = columns::encode_stream(&stream, &cipher);
                conn.execute(
                    &format!(
                        "INSERT INTO streams ({STREAM_COLUMNS}, destination_type) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                    ),
                    params![
                        stream.tenant_id,
                        stream.id,
                        stream.name,
                        stream.status.as_str(),
                        stream.status_reason,
                        subscriptions,
                        destination,
                        stream.payload_format.as_str(),
                        retry_policy,
                        stream.created_at,
                        stream.updated_at,
                        stream.max_consecutive_failures,
                        stream.content_mode.map(|m| m.as_str()),
                        stream.disable_after_failing_seconds as i64,
                        stream.expires_at,
                        stream.destination.kind(),
                    ],
                )?;
                if let Some(secret) = secret {
                    conn.execute(
                        "INSERT INTO stream_secrets (tenant_id, stream_id, secret, created_at, expires_at) \
                         VALUES (?1, ?2, ?3, ?4, NULL)",
                        params![
                            stream.tenant_id,
                            stream.id,
                            cipher.encrypt(secret.secret.expose().as_bytes()),
                            secret.created_at
                        ],
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn get_stream(&self, tenant_id: &str, id: &str) -> StoreResult<Option<Stream>> {
        let (tenant_id, id, cipher) = (tenant_id.to_string(), id.to_string(), self.cipher.clone());
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {STREAM_COLUMNS} FROM streams WHERE tenant_id = ?1 AND id = ?2"
                ))?;
                let mut rows = stmt.query(params![tenant_id, id])?;
                rows.next()?
                    .map(|row| stream_from_row(row, &cipher))
                    .transpose()
            })
            .await
    }

    async fn list_streams(&self, tenant_id: &str) -> StoreResult<Vec<Stream>> {
        let (tenant_id, cipher) = (tenant_id.to_string(), self.cipher.clone());
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {STREAM_COLUMNS} FROM streams WHERE tenant_id = ?1 ORDER BY created_at, id"
                ))?;
                let mut rows = stmt.query(params![tenant_id])?;
                let mut streams = Vec::new();
                while let Some(row) = rows.next()? {
                    streams.push(stream_from_row(row, &cipher)?);
                }
                Ok(streams)
            })
            .await
    }

    async fn update_stream(&self, update: StreamUpdate) -> StoreResult<Option<Vec<Published>>> {
        let cipher = self.cipher.clone();
        let leases = self.leases.clone();
        self.writer
            .write(move |conn| {
                let stream = &update.stream;
                name_free(conn, &stream.tenant_id, &stream.id, &stream.name)?;
                let cipher = maintenance::sealing(conn, &cipher)?;
                let (subscriptions, destination, retry_policy) = columns::encode_stream(stream, &cipher);
                let changed = conn.execute(
                    "UPDATE streams SET name = ?3, status = ?4, status_reason = ?5, subscriptions = ?6, \
                     destination = ?7, payload_format = ?8, retry_policy = ?9, updated_at = ?10, \
                     destination_type = ?11, max_consecutive_failures = ?12, content_mode = ?13, \
                     disable_after_failing_seconds = ?14, \
                     consecutive_failures = CASE WHEN status = ?4 THEN consecutive_failures ELSE 0 END, \
                     failing_since = CASE WHEN status = ?4 THEN failing_since ELSE NULL END \
                     WHERE tenant_id = ?1 AND id = ?2",
                    params![
                        stream.tenant_id,
                        stream.id,
                        stream.name,
                        stream.status.as_str(),
                        stream.status_reason,
                        subscriptions,
                        destination,
                        stream.payload_format.as_str(),
                        retry_policy,
                        stream.updated_at,
                        stream.destination.kind(),
                        stream.max_consecutive_failures,
                        stream.content_mode.map(|m| m.as_str()),
                        stream.disable_after_failing_seconds as i64,
                    ],
                )?;
                if changed == 0 {
                    return Ok(None);
                }
                if update.skip_backlog {
                    queue::skip_pending_fan_outs(conn, &stream.tenant_id, &stream.id)?;
                    queue::cancel_pending(
                        conn,
                        &mut lock(&leases),
                        &stream.tenant_id,
                        &stream.id,
                        stream.updated_at,
                    )?;
                }
                let published =
                    queue::publish(conn, None, &stream.tenant_id, update.notices, stream.updated_at)?;
                Ok(Some(published))
            })
            .await
    }

    async fn delete_stream(&self, tenant_id: &str, id: &str, now: Millis) -> StoreResult<bool> {
        let (tenant_id, id) = (tenant_id.to_string(), id.to_string());
        let leases = self.leases.clone();
        self.writer
            .write(move |conn| delete_stream_rows(conn, &leases, &tenant_id, &id, now))
            .await
    }

    async fn hold_stream(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        expires_at: Millis,
    ) -> StoreResult<bool> {
        let (tenant_id, id, holder) = (tenant_id.to_string(), id.to_string(), holder.to_string());
        self.writer
            .write(move |conn| {
                let changed = conn.execute(
                    "UPDATE streams SET held_by = ?3, expires_at = ?4 \
                     WHERE tenant_id = ?1 AND id = ?2 AND destination_type = 'listen'",
                    params![tenant_id, id, holder, expires_at],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    async fn touch_stream(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        expires_at: Millis,
    ) -> StoreResult<Holding> {
        let (tenant_id, id, holder) = (tenant_id.to_string(), id.to_string(), holder.to_string());
        // Soft state, pushed again within seconds: not worth an fsync of its own.
        self.writer
            .write_lazy(move |conn| {
                let held_by: Option<Option<String>> = conn
                    .query_row(
                        "SELECT held_by FROM streams \
                         WHERE tenant_id = ?1 AND id = ?2 AND destination_type = 'listen'",
                        params![tenant_id, id],
                        |row| row.get(0),
                    )
                    .optional()?;
                Ok(match held_by {
                    None => Holding::Gone,
                    Some(by) if by.as_deref() != Some(holder.as_str()) => Holding::Taken,
                    Some(_) => {
                        conn.execute(
                            "UPDATE streams SET expires_at = ?3 WHERE tenant_id = ?1 AND id = ?2",
                            params![tenant_id, id, expires_at],
                        )?;
                        Holding::Held
                    }
                })
            })
            .await
    }

    async fn delete_expired_streams(&self, now: Millis) -> StoreResult<Vec<(String, String)>> {
        let leases = self.leases.clone();
        self.writer
            .write(move |conn| {
                let expired: Vec<(String, String)> = {
                    let mut stmt = conn.prepare_cached(
                        "SELECT tenant_id, id FROM streams \
                         WHERE destination_type = 'listen' AND expires_at <= ?1",
                    )?;
                    let rows =
                        stmt.query_map(params![now], |row| Ok((row.get(0)?, row.get(1)?)))?;
                    rows.collect::<Result<_, _>>()?
                };
                for (tenant_id, id) in &expired {
                    delete_stream_rows(conn, &leases, tenant_id, id, now)?;
                }
                Ok(expired)
            })
            .await
    }

    async fn stream_secrets(
        &self,
        tenant_id: &str,
        stream_id: &str,
        now: Millis,
    ) -> StoreResult<Vec<StreamSecret>> {
        let (tenant_id, stream_id, cipher) = (
            tenant_id.to_string(),
            stream_id.to_string(),
            self.cipher.clone(),
        );
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT secret, created_at, expires_at FROM stream_secrets \
                     WHERE tenant_id = ?1 AND stream_id = ?2 AND (expires_at IS NULL OR expires_at > ?3) \
                     ORDER BY seq DESC",
                )?;
                let mut rows = stmt.query(params![tenant_id, stream_id, now])?;
                let mut secrets = Vec::new();
                while let Some(row) = rows.next()? {
                    let sealed: Vec<u8> = row.get(0)?;
                    let plain = String::from_utf8(cipher.decrypt(&sealed)?)
                        .map_err(|_| StoreError::Corrupt("stream secret".into()))?;
                    secrets.push(StreamSecret {
                        secret: Secret::new(plain),
                        created_at: row.get(1)?,
                        expires_at: row.get(2)?,
                    });
                }
                Ok(secrets)
            })
            .await
    }

    async fn rotate_secret(
        &self,
        tenant_id: &str,
        stream_id: &str,
        secret: StreamSecret,
        old_expires_at: Millis,
    ) -> StoreResult<bool> {
        let (tenant_id, stream_id, cipher) = (
            tenant_id.to_string(),
            stream_id.to_string(),
            self.cipher.clone(),
        );
        self.writer
            .write(move |conn| {
                let exists: bool = conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM streams WHERE tenant_id = ?1 AND id = ?2)",
                    params![tenant_id, stream_id],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Ok(false);
                }
                let cipher = maintenance::sealing(conn, &cipher)?;
                // Secrets already expiring keep their earlier expiry.
                conn.execute(
                    "UPDATE stream_secrets SET expires_at = MIN(COALESCE(expires_at, ?3), ?3) \
                     WHERE tenant_id = ?1 AND stream_id = ?2",
                    params![tenant_id, stream_id, old_expires_at],
                )?;
                conn.execute(
                    "INSERT INTO stream_secrets (tenant_id, stream_id, secret, created_at, expires_at) \
                     VALUES (?1, ?2, ?3, ?4, NULL)",
                    params![
                        tenant_id,
                        stream_id,
                        cipher.encrypt(secret.secret.expose().as_bytes()),
                        secret.created_at
                    ],
                )?;
                Ok(true)
            })
            .await
    }

    async fn streams_with_status(&self, status: StreamStatus) -> StoreResult<Vec<Stream>> {
        let cipher = self.cipher.clone();
        self.readers
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {STREAM_COLUMNS} FROM streams WHERE status = ?1"
                ))?;
                let mut rows = stmt.query(params![status.as_str()])?;
                let mut streams = Vec::new();
                while let Some(row) = rows.next()? {
                    streams.push(stream_from_row(row, &cipher)?);
                }
                Ok(streams)
            })
            .await
    }

    async fn publish(
        &self,
        tenant_id: &str,
        events: Vec<Event>,
        now: Millis,
        lease_until: Option<Millis>,
    ) -> StoreResult<Vec<Published>> {
        let tenant_id = tenant_id.to_string();
        let leases = self.leases.clone();
        self.writer
            .write(move |conn| {
                let mut held = lock(&leases);
                let lease = lease_until.map(|until| (&mut *held, until));
                queue::publish(conn, lease, &tenant_id, events, now)
            })
            .await
    }

    async fn fan_out(
        &self,
        after: i64,
        limit: usize,
        now: Millis,
    ) -> StoreResult<Option<FannedOut>> {
        // A look first, on a reader: the worker asks every few seconds, and a write to learn
        // there is nothing would take a turn of the writer.
        let pending = self
            .readers
            .read(|conn| {
                Ok(
                    conn.query_row("SELECT EXISTS (SELECT 1 FROM fanouts)", [], |r| {
                        r.get::<_, bool>(0)
                    })?,
                )
            })
            .await?;
        if !pending {
            return Ok(None);
        }
        // Not synced: a chunk lost with the machine's power is created again from the fan-out
        // row, which went back with it.
        self.writer
            .write_in_background(move |conn| queue::fan_out(conn, after, limit, now))
            .await
    }

    async fn claim(
        &self,
        requests: Vec<ClaimRequest>,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimBatch>> {
        let leases = self.leases.clone();
        self.writer
            .write_lazy(move |conn| {
                queue::claim(conn, &mut lock(&leases), requests, now, lease_until)
            })
            .await
    }

    async fn record(
        &self,
        attempts: Vec<AttemptRecord>,
        now: Millis,
    ) -> StoreResult<RecordEffects> {
        let leases = self.leases.clone();
        self.writer
            .write_lazy(move |conn| queue::record(conn, &mut lock(&leases), attempts, now))
            .await
    }

    async fn release(&self, leases: Vec<(i64, i64)>, _now: Millis) -> StoreResult<()> {
        // Through the writer, so a release is ordered with claims and records.
        let held = self.leases.clone();
        self.writer
            .write_lazy(move |_| {
                let mut held = lock(&held);
                for (key, token) in leases {
                    held.give_back(key, token);
                }
                Ok(())
            })
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
        let (tenant_id, stream_id) = (tenant_id.to_string(), stream_id.to_string());
        self.readers
            .read(move |conn| list_deliveries(conn, &tenant_id, &stream_id, &filter, before, take))
            .await
    }

    async fn redeliver_event(
        &self,
        tenant_id: &str,
        stream_id: &str,
        event_id: &str,
        now: Millis,
    ) -> StoreResult<Option<u64>> {
        let (tenant_id, stream_id, event_id) = (
            tenant_id.to_string(),
            stream_id.to_string(),
            event_id.to_string(),
        );
        let leases = self.leases.clone();
        self.writer
            .write(move |conn| {
                queue::redeliver_event(conn, &lock(&leases), &tenant_id, &stream_id, &event_id, now)
            })
            .await
    }

    async fn redeliver(
        &self,
        tenant_id: &str,
        stream_id: &str,
        filter: DeliveryFilter,
        dry_run: bool,
        now: Millis,
    ) -> StoreResult<u64> {
        // The stream's deliveries as they are at the first chunk, in chunks of `BULK_CHUNK` in
        // `seq` order; those created meanwhile are not part of it.
        let mut window = (0, None);
        let mut total = 0;
        loop {
            let (tenant, stream, filter) =
                (tenant_id.to_string(), stream_id.to_string(), filter.clone());
            let leases = self.leases.clone();
            let (count, next) = self
                .writer
                .write(move |conn| {
                    queue::redeliver(
                        conn,
                        &lock(&leases),
                        &tenant,
                        &stream,
                        &filter,
                        dry_run,
                        now,
                        window,
                    )
                })
                .await?;
            total += count;
            match next {
                Some(next) => window = (next.0, Some(next.1)),
                None => return Ok(total),
            }
        }
    }

    async fn backlog(&self, tenant_id: &str, stream_id: &str) -> StoreResult<Backlog> {
        let (tenant_id, stream_id) = (tenant_id.to_string(), stream_id.to_string());
        self.readers
            .read(move |conn| {
                Ok(conn.query_row(
                    "SELECT COUNT(*), MIN(created_at) FROM deliveries \
                     WHERE tenant_id = ?1 AND stream_id = ?2 AND status = 'pending'",
                    params![tenant_id, stream_id],
                    |r| {
                        Ok(Backlog {
                            pending: r.get::<_, i64>(0)? as u64,
                            oldest_created_at: r.get(1)?,
                        })
                    },
                )?)
            })
            .await
    }

    async fn backlogs(&self) -> StoreResult<Vec<StreamBacklog>> {
        self.readers
            .read(|conn| {
                let mut stmt =
                    conn.prepare_cached(&backlogs_sql("deliveries WHERE status = 'pending'"))?;
                let rows = stmt.query_map([], |r| {
                    Ok(StreamBacklog {
                        tenant_id: r.get(0)?,
                        stream_id: r.get(1)?,
                        pending: r.get::<_, i64>(2)? as u64,
                        next_due_at: r.get(3)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn stream_activity(
        &self,
        tenant_id: &str,
        from: Millis,
        to: Millis,
    ) -> StoreResult<StreamActivity> {
        let tenant_id = tenant_id.to_string();
        self.readers
            .read(move |conn| log::stream_activity(conn, &tenant_id, from, to))
            .await
    }

    async fn stats(
        &self,
        tenant_id: &str,
        stream_id: &str,
        from: Millis,
        to: Millis,
    ) -> StoreResult<Vec<StatsRow>> {
        let (tenant_id, stream_id) = (tenant_id.to_string(), stream_id.to_string());
        self.readers
            .read(move |conn| log::stats(conn, &tenant_id, &stream_id, from, to))
            .await
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        filter: EventFilter,
        before: Option<i64>,
        take: usize,
    ) -> StoreResult<Page<LoggedEvent>> {
        let tenant_id = tenant_id.to_string();
        self.readers
            .read(move |conn| log::list_events(conn, &tenant_id, &filter, before, take))
            .await
    }

    async fn log_position(
        &self,
        tenant_id: &str,
        start: LogStart,
    ) -> StoreResult<Option<LogPosition>> {
        let tenant_id = tenant_id.to_string();
        self.readers
            .read(move |conn| log::log_position(conn, &tenant_id, start))
            .await
    }

    async fn read_log(
        &self,
        tenant_id: &str,
        after: LogPosition,
        take: usize,
    ) -> StoreResult<Vec<(LogPosition, LoggedEvent)>> {
        let tenant_id = tenant_id.to_string();
        self.readers
            .read(move |conn| log::read_log(conn, &tenant_id, after, take))
            .await
    }

    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
        source: Option<&str>,
    ) -> StoreResult<Option<LoggedEvent>> {
        let (tenant_id, id, source) = (
            tenant_id.to_string(),
            id.to_string(),
            source.map(str::to_string),
        );
        self.readers
            .read(move |conn| log::get_event(conn, &tenant_id, &id, source.as_deref()))
            .await
    }

    async fn erase(&self, tenant_id: &str, what: Erase, now: Millis) -> StoreResult<u64> {
        // A writer job per chunk: up to `BULK_CHUNK` ids, with every event of each (an id may
        // be shared by several sources); or `BULK_CHUNK` events of the subject, which an
        // erased event no longer has, so each job takes the next ones.
        let mut total = 0;
        match what {
            Erase::Events(ids) => {
                for ids in ids.chunks(BULK_CHUNK) {
                    let what = Erase::Events(ids.to_vec());
                    total += self
                        .erase_chunk(tenant_id, what, now, i64::MAX as usize)
                        .await?;
                }
            }
            Erase::Subject(subject) => loop {
                let what = Erase::Subject(subject.clone());
                let erased = self.erase_chunk(tenant_id, what, now, BULK_CHUNK).await?;
                total += erased;
                if erased < BULK_CHUNK as u64 {
                    break;
                }
            },
        }
        Ok(total)
    }

    async fn sweep(
        &self,
        events_before: Option<Millis>,
        bodies_before: Option<Millis>,
        limit: usize,
    ) -> StoreResult<Swept> {
        self.writer
            .write(move |conn| log::sweep(conn, events_before, bodies_before, limit))
            .await
    }

    async fn get_delivery(&self, tenant_id: &str, id: &str) -> StoreResult<Option<DeliveryView>> {
        let (tenant_id, id) = (tenant_id.to_string(), id.to_string());
        self.readers
            .read(move |conn| Ok(delivery_views(conn, &tenant_id, "d.id", &id)?.pop()))
            .await
    }

    async fn event_deliveries(
        &self,
        tenant_id: &str,
        event_id: &str,
    ) -> StoreResult<Vec<DeliveryView>> {
        let (tenant_id, event_id) = (tenant_id.to_string(), event_id.to_string());
        self.readers
            .read(move |conn| delivery_views(conn, &tenant_id, "e.id", &event_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_columns(conn: &Connection, index: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name FROM pragma_index_info('{index}') ORDER BY seqno"
            ))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // The plan does not depend on the values.
        let values = vec!["x"; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(values), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
        .join("; ")
    }

    /// Version 11 on a store populated at version 10: the rows stay, events are found by id
    /// and by (source, id) through the one unique index, and a duplicate is still refused.
    #[test]
    fn the_fewer_index_pages_upgrade_keeps_a_populated_store_working() {
        let mut conn = Connection::open_in_memory().unwrap();
        for (i, sql) in MIGRATIONS[..10].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        conn.execute_batch(crate::store::UPGRADE_TEST_ROWS).unwrap();

        migrate(&mut conn).unwrap();

        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        assert!(index_columns(&conn, "events_by_id").is_empty());
        assert_eq!(
            index_columns(&conn, "events_by_source_id"),
            ["tenant_id", "id", "source"]
        );
        assert_eq!(index_columns(&conn, "deliveries_by_id"), ["id"]);
        assert_eq!(
            index_columns(&conn, "deliveries_by_event"),
            ["event_seq", "stream_id"]
        );
        // The statements that look events and deliveries up by id search the new indexes,
        // rather than walking all of the tenant's rows.
        let by_id = plan(&conn, &log::get_event_sql());
        assert!(
            by_id.contains("events_by_source_id (tenant_id=? AND id=?)"),
            "{by_id}"
        );
        let by_event = plan(&conn, &delivery_views_sql("e.id"));
        assert!(
            by_event.contains("events_by_source_id (tenant_id=? AND id=?)"),
            "{by_event}"
        );
        assert!(
            by_event.contains("deliveries_by_event (event_seq=?)"),
            "{by_event}"
        );
        let by_delivery = plan(&conn, &delivery_views_sql("d.id"));
        assert!(
            by_delivery.contains("deliveries_by_id (id=?)"),
            "{by_delivery}"
        );
        for plan in [&by_id, &by_event, &by_delivery] {
            assert!(!plan.contains("SCAN"), "{plan}");
        }
        let count: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM deliveries d JOIN events e ON e.seq = d.event_seq",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 2);
        // The same (source, id) again is refused; the same id from another source is not.
        let publish = |source: &str| {
            conn.execute(
                "INSERT INTO events (tenant_id, id, source, type, time, data, received_at) \
                 VALUES ('ten_a', 'e1', ?1, 'user.created', 0, '{}', 0) \
                 ON CONFLICT (tenant_id, id, source) DO NOTHING",
                [source],
            )
            .unwrap()
        };
        assert_eq!(publish("src"), 0);
        let another_source = publish("other");
        assert_eq!(another_source, 1);
    }

    /// A store a newer Herald upgraded is refused, by name, and left as it was.
    #[test]
    fn a_schema_newer_than_this_herald_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        let key = || Cipher::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        drop(SqliteStore::open(&path, key()).unwrap());
        let newer = MIGRATIONS.len() + 1;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let refused = SqliteStore::open(&path, key()).err().unwrap();
        assert!(
            refused.to_string().contains("newer than this Herald knows"),
            "{refused}"
        );
        let version: usize = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, newer);
    }
}
