//! `herald migrate-store`: copies an embedded store into PostgreSQL, for an installation that
//! outgrows one machine. Both stores encode rows the same way (see `store::columns`), so rows
//! are copied as they are, in one transaction: the copy lands whole or not at all. Sealed
//! secrets stay sealed with the embedded store's key, which the PostgreSQL nodes then use.

use std::path::Path;

use deadpool_postgres::GenericClient;
use rusqlite::types::Value;
use tokio_postgres::types::ToSql;

use super::{Params, PgStore, refs};
use crate::secret::Cipher;
use crate::store::{StoreError, StoreResult};

/// How a column is typed: its values are sent as an array of this type (integers as
/// `bigint`, which PostgreSQL narrows to an `integer` column on insert).
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bytes,
}

use Kind::*;

/// The tables in copy order, with their columns. A table with a `seq` keeps its keys, so
/// references between rows (`event_seq`, `delivery_seq`) stay valid.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "tenants",
        &[("id", Text), ("name", Text), ("created_at", Int)],
    ),
    (
        "api_tokens",
        &[
            ("hash", Bytes),
            ("id", Text),
            ("tenant_id", Text),
            ("name", Text),
            ("scopes", Text),
            ("created_at", Int),
            ("revoked_at", Int),
        ],
    ),
    (
        "streams",
        &[
            ("tenant_id", Text),
            ("id", Text),
            ("name", Text),
            ("status", Text),
            ("status_reason", Text),
            ("subscriptions", Text),
            ("destination_type", Text),
            ("destination", Bytes),
            ("payload_format", Text),
            ("content_mode", Text),
            ("retry_policy", Text),
            ("max_consecutive_failures", Int),
            ("consecutive_failures", Int),
            ("disable_after_failing_seconds", Int),
            ("failing_since", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("expires_at", Int),
            ("held_by", Text),
        ],
    ),
    (
        "stream_secrets",
        &[
            ("seq", Int),
            ("tenant_id", Text),
            ("stream_id", Text),
            ("secret", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
        ],
    ),
    (
        "events",
        &[
            ("seq", Int),
            ("tenant_id", Text),
            ("id", Text),
            ("source", Text),
            ("type", Text),
            ("time", Int),
            ("subject", Text),
            ("datacontenttype", Text),
            ("dataschema", Text),
            ("data", Text),
            ("extensions", Text),
            ("projectid", Text),
            ("userid", Text),
            ("received_at", Int),
            ("erased_at", Int),
        ],
    ),
    (
        "deliveries",
        &[
            ("seq", Int),
            ("tenant_id", Text),
            ("id", Text),
            ("stream_id", Text),
            ("event_seq", Int),
            ("event_type", Text),
            ("status", Text),
            ("attempts", Int),
            ("round_start", Int),
            ("due_at", Int),
            ("last_attempt_at", Int),
            ("last_response_status", Int),
            ("last_error_kind", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "attempts",
        &[
            ("seq", Int),
            ("tenant_id", Text),
            ("delivery_seq", Int),
            ("attempted_at", Int),
            ("duration_ms", Int),
            ("response_status", Int),
            ("response_body", Text),
            ("detail", Text),
            ("error_kind", Text),
            ("error_message", Text),
        ],
    ),
    (
        "stream_stats",
        &[
            ("tenant_id", Text),
            ("stream_id", Text),
            ("hour", Int),
            ("event_type", Text),
            ("succeeded", Int),
            ("failed", Int),
            ("attempts", Int),
            ("failed_attempts", Int),
            ("l0", Int),
            ("l1", Int),
            ("l2", Int),
            ("l3", Int),
            ("l4", Int),
            ("l5", Int),
            ("l6", Int),
            ("l7", Int),
            ("l8", Int),
            ("l9", Int),
            ("l10", Int),
            ("l11", Int),
            ("l12", Int),
            ("l13", Int),
            ("l14", Int),
        ],
    ),
    (
        "event_types",
        &[
            ("tenant_id", Text),
            ("name", Text),
            ("category", Text),
            ("description", Text),
            ("schema", Text),
            ("sample_data", Text),
            ("created_at", Int),
        ],
    ),
];

/// Rows per insert statement.
const CHUNK: usize = 2_000;

/// Rows copied, per table.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub tables: Vec<(&'static str, u64)>,
}

/// Checks, before anything is written to the target, that `cipher`'s key is the current key
/// of the embedded store at `sqlite_path` and seals every secret in it.
pub fn check_source_key(sqlite_path: &Path, cipher: &Cipher) -> StoreResult<()> {
    let source = crate::store::sqlite::open_for_export(sqlite_path)?;
    source_key_checks(source.conn(), cipher, sqlite_path).map(drop)
}

/// The embedded store's key-check rows, once `cipher`'s first key is known to be its current
/// key and to seal every secret in it (the copy keeps the secrets sealed as they are).
fn source_key_checks(
    source: &rusqlite::Connection,
    cipher: &Cipher,
    path: &Path,
) -> StoreResult<Vec<(String, Vec<u8>)>> {
    let refuse = |reason: &str| StoreError::Open {
        path: path.display().to_string(),
        reason: reason.into(),
    };
    let rows: Vec<(String, Vec<u8>)> = source
        .prepare(
            "SELECT name, value FROM settings WHERE name IN ('key_check', 'retired_key_check')",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let get = |name: &str| rows.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let other_key = "its secrets are sealed with another secret key: pass the key its server \
                     runs with (`secret_key`, or the secret.key of the data directory it came \
                     from) with --secret-key";
    match get("key_check") {
        Some(check) if cipher.seals(check) => {}
        Some(_) if get("retired_key_check").is_some_and(|retired| cipher.seals(retired)) => {
            return Err(refuse(
                "its secret key was rotated (`herald rotate-secret-key`) and the key given is \
                 the previous one: pass the current one, the `secret_key` its server runs with, \
                 with --secret-key",
            ));
        }
        Some(_) => return Err(refuse(other_key)),
        // A store from before key checks: its secrets say which key it uses.
        None => {}
    }
    let mut values = source
        .prepare("SELECT destination FROM streams UNION ALL SELECT secret FROM stream_secrets")?;
    let mut values = values.query([])?;
    while let Some(row) = values.next()? {
        if !cipher.seals(&row.get::<_, Vec<u8>>(0)?) {
            return Err(refuse(if rows.is_empty() {
                other_key
            } else {
                "some of its secrets are still sealed with a previous key (a rotation did not \
                 finish): run `herald rotate-secret-key` on it first"
            }));
        }
    }
    Ok(rows)
}

/// Copies the embedded store at `sqlite_path` into `target`, which must hold no streams,
/// events or deliveries yet (tenants and tokens already there, such as the default tenant a
/// first start creates, are kept). The embedded store is locked for the copy, so no Herald
/// may be running on it.
pub async fn import_sqlite(sqlite_path: &Path, target: &PgStore) -> StoreResult<ImportReport> {
    let source = crate::store::sqlite::open_for_export(sqlite_path)?;
    let key_checks = source_key_checks(source.conn(), &target.cipher, sqlite_path)?;
    let mut client = target.client().await?;
    let tx = client.transaction().await?;
    // No node may write while the copy runs: the keys it keeps must stay free.
    let mut tables: Vec<&str> = TABLES.iter().map(|(table, _)| *table).collect();
    tables.push("fanouts");
    tables.push("queue");
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = 0; LOCK TABLE {} IN EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .await?;
    let occupied: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM streams) OR EXISTS (SELECT 1 FROM events) \
             OR EXISTS (SELECT 1 FROM deliveries) OR EXISTS (SELECT 1 FROM fanouts)",
            &[],
        )
        .await?
        .get(0);
    if occupied {
        return Err(StoreError::Open {
            path: "the target database".into(),
            reason: "it already holds streams or events; migrate into an empty database".into(),
        });
    }
    let mut report = ImportReport::default();
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let mut stmt = source
            .conn()
            .prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
        let mut rows = stmt.query([])?;
        let mut chunk: Vec<Vec<Value>> = Vec::with_capacity(CHUNK);
        let mut copied = 0u64;
        loop {
            let row = rows.next()?;
            if let Some(row) = row {
                chunk.push(
                    (0..columns.len())
                        .map(|i| row.get::<_, Value>(i))
                        .collect::<Result<_, _>>()?,
                );
            }
            if chunk.len() == CHUNK || (row.is_none() && !chunk.is_empty()) {
                copied += insert_chunk(&tx, table, columns, std::mem::take(&mut chunk)).await?;
            }
            if row.is_none() {
                break;
            }
        }
        report.tables.push((table, copied));
    }
    report
        .tables
        .push(("fanouts", copy_fanouts(source.conn(), &tx).await?));
    // The pending deliveries are queued, due when they were on the embedded store (whose
    // leases were in its memory only).
    tx.execute(
        "INSERT INTO queue (seq, tenant_id, stream_id, due_at, lease, lease_until, created_at) \
         SELECT seq, tenant_id, stream_id, COALESCE(due_at, created_at), 0, NULL, created_at \
         FROM deliveries WHERE status = 'pending'",
        &[],
    )
    .await?;
    // The copied events' keys, for idempotency and lookups by id.
    tx.execute(
        "INSERT INTO event_keys (tenant_id, id, source, seq) \
         SELECT tenant_id, id, source, seq FROM events",
        &[],
    )
    .await?;
    // New rows continue after the copied keys, and never before where a node already moved
    // a sequence to (a day of history; see `history`).
    for table in ["stream_secrets", "events", "deliveries", "attempts"] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'seq'), \
                 GREATEST(COALESCE((SELECT MAX(seq) FROM {table}), 0) + 1, \
                 (SELECT last_value FROM {table}_seq_seq)), false)"
            ),
            &[],
        )
        .await?;
    }
    // The target holds no streams, so no secret: the embedded store's record of its keys
    // (the current one and, after a rotation, the one it replaced) becomes the target's.
    for (name, value) in &key_checks {
        tx.execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[name, value],
        )
        .await?;
    }
    tx.execute(&format!("NOTIFY {}", super::STREAMS_CHANNEL), &[])
        .await?;
    tx.commit().await?;
    Ok(report)
}

/// Inserts rows with one statement, one array per column. Tenants and tokens already present
/// (the default tenant and the admin token a first start creates) are left as they are;
/// any other conflict fails the copy.
async fn insert_chunk(
    tx: &impl GenericClient,
    table: &str,
    columns: &[(&str, Kind)],
    rows: Vec<Vec<Value>>,
) -> StoreResult<u64> {
    let mut params: Params = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for (i, (name, kind)) in columns.iter().enumerate() {
        let (array, sql_type): (Option<Box<dyn ToSql + Sync + Send>>, &str) = match kind {
            Text => (
                column(&rows, i, |v| match v {
                    Value::Text(s) => Some(s.clone()),
                    _ => None,
                }),
                "text",
            ),
            Int => (
                column(&rows, i, |v| match v {
                    Value::Integer(n) => Some(*n),
                    _ => None,
                }),
                "bigint",
            ),
            Bytes => (
                column(&rows, i, |v| match v {
                    Value::Blob(b) => Some(b.clone()),
                    _ => None,
                }),
                "bytea",
            ),
        };
        params.push(array.ok_or_else(|| StoreError::Corrupt(format!("{table} column `{name}`")))?);
        arrays.push(format!("${}::{sql_type}[]", i + 1));
    }
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let on_conflict = match table {
        "tenants" => " ON CONFLICT (id) DO NOTHING",
        "api_tokens" => " ON CONFLICT DO NOTHING",
        _ => "",
    };
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT * FROM unnest({}){on_conflict}",
        names.join(", "),
        arrays.join(", ")
    );
    Ok(tx.execute(&sql, &refs(&params)).await?)
}

/// Column `i` of `rows` as an array parameter: NULL stays NULL, and `take` converts the
/// rest, or gives `None` for a value of the wrong type (then so does this).
fn column<T: ToSql + Sync + Send + 'static>(
    rows: &[Vec<Value>],
    i: usize,
    take: impl Fn(&Value) -> Option<T>,
) -> Option<Box<dyn ToSql + Sync + Send>> {
    let values: Option<Vec<Option<T>>> = rows
        .iter()
        .map(|row| match &row[i] {
            Value::Null => Some(None),
            value => take(value).map(Some),
        })
        .collect();
    Some(Box::new(values?))
}

/// Copies the fan-outs still pending (a store stopped while creating a large publish's
/// deliveries), whose event list is JSON on the embedded store and an array here; the nodes
/// finish them once they start.
async fn copy_fanouts(source: &rusqlite::Connection, tx: &impl GenericClient) -> StoreResult<u64> {
    let mut stmt = source.prepare(
        "SELECT tenant_id, event_seqs, first_seq, last_seq, streams, next, next_stream, \
         row_end, created_at FROM fanouts",
    )?;
    type Row = (String, String, i64, i64, String, [i64; 3], i64);
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                [r.get(5)?, r.get(6)?, r.get(7)?],
                r.get(8)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (tenant_id, event_seqs, first, last, streams, cursor, created_at) in &rows {
        let seqs = crate::store::fanout::decode_event_seqs(event_seqs)?;
        tx.execute(
            "INSERT INTO fanouts (tenant_id, event_seqs, first_seq, last_seq, streams, next, \
             next_stream, row_end, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                tenant_id,
                &seqs,
                first,
                last,
                streams,
                &(cursor[0] as i32),
                &(cursor[1] as i32),
                &(cursor[2] as i32),
                created_at,
            ],
        )
        .await?;
    }
    Ok(rows.len() as u64)
}
