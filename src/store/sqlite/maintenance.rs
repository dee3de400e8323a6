//! Work on an embedded store beside its server: which secret key seals its secrets and the
//! rotation to a new one (see `store::keys`), and consistent backups and restores. A running
//! server may keep running through a rotation or a backup: the rotation's writes are short
//! transactions between the server's own, and a backup reads one snapshot (WAL readers never
//! block the writer).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{MIGRATIONS, lock_exclusively, open_locked};
use crate::secret::Cipher;
use crate::store::keys::{self, Rotation};
use crate::store::{StoreError, StoreResult};

/// Checks that `cipher` holds the store's current secret key, recording it on first use.
pub(super) fn check_key(conn: &Connection, cipher: &Cipher, path: &Path) -> StoreResult<()> {
    let check = |conn: &Connection| -> rusqlite::Result<Option<Vec<u8>>> {
        conn.query_row(
            "SELECT value FROM settings WHERE name = 'key_check'",
            [],
            |r| r.get(0),
        )
        .optional()
    };
    let sealed = match check(conn)? {
        Some(sealed) => sealed,
        None => {
            let existing: Option<Vec<u8>> = conn
                .query_row("SELECT destination FROM streams LIMIT 1", [], |r| r.get(0))
                .optional()?;
            let initial = keys::initial_key(cipher, existing.as_deref()).map_err(|e| match e {
                StoreError::Open { reason, .. } => StoreError::Open {
                    path: path.display().to_string(),
                    reason,
                },
                other => other,
            })?;
            conn.execute(
                "INSERT INTO settings (name, value) VALUES ('key_check', ?1) ON CONFLICT DO NOTHING",
                params![initial],
            )?;
            check(conn)?.expect("the key check was just recorded")
        }
    };
    let retired: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM settings WHERE name = 'retired_key_check'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    keys::current_key(
        cipher,
        &sealed,
        retired.as_deref(),
        &path.display().to_string(),
    )?;
    Ok(())
}

/// The cipher to seal with inside a writer job: the store's current key. The writer's
/// transactions are `IMMEDIATE`, so a rotation's record of a new key is either before this
/// job (seen here) or after it (and this value is re-sealed by the rotation).
pub(super) fn sealing(conn: &Connection, cipher: &Cipher) -> StoreResult<Cipher> {
    let check: Vec<u8> = conn
        .prepare_cached("SELECT value FROM settings WHERE name = 'key_check'")?
        .query_row([], |r| r.get(0))?;
    Ok(cipher.current_for(&check)?)
}

/// Records `cipher`'s first key as the store's current one, then re-seals every value sealed
/// with another key, in short transactions. Runs beside a server using the store; safe to run
/// again after an interruption.
/// `batches` bounds the re-sealing transactions of this run (`None`: until done); a run
/// stopped early, by it or by a crash, is finished by running again.
pub fn rotate_secret_key(
    path: &Path,
    cipher: &Cipher,
    batches: Option<usize>,
) -> StoreResult<Rotation> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            reason: "there is no embedded store here".into(),
        });
    }
    // Without a server on the store, hold its lock (and bring its schema up to date) so none
    // starts midway; with one, it has done both.
    let (_lock, mut conn) = match open_locked(path) {
        Ok((lock, conn)) => (Some(lock), conn),
        Err(_) => {
            let conn = Connection::open(path)?;
            let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version != MIGRATIONS.len() {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!(
                        "the server running on it uses schema version {version}, this herald \
                         {}: run the same Herald version as the server",
                        MIGRATIONS.len()
                    ),
                });
            }
            (None, conn)
        }
    };
    // Waits out the server's commits, which are short.
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    check_key(&conn, cipher, path)?;
    // Every value must open before anything is recorded: with a key missing, the run refuses
    // and changes nothing. Values sealed after this pass are sealed with the current key,
    // which the recording transaction checks this run holds.
    {
        let mut values = conn.prepare(
            "SELECT destination FROM streams UNION ALL SELECT secret FROM stream_secrets",
        )?;
        let mut rows = values.query([])?;
        while let Some(row) = rows.next()? {
            keys::opens(
                cipher,
                &row.get::<_, Vec<u8>>(0)?,
                &path.display().to_string(),
            )?;
        }
    }
    let mut report = Rotation::default();
    let mut budget = batches.unwrap_or(usize::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let check: Vec<u8> = tx.query_row(
        "SELECT value FROM settings WHERE name = 'key_check'",
        [],
        |r| r.get(0),
    )?;
    // Checked again under the write lock: another rotation may have recorded a key since.
    let retired: Option<Vec<u8>> = tx
        .query_row(
            "SELECT value FROM settings WHERE name = 'retired_key_check'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    keys::current_key(
        cipher,
        &check,
        retired.as_deref(),
        &path.display().to_string(),
    )?;
    if !cipher.seals(&check) {
        tx.execute(
            "INSERT INTO settings (name, value) VALUES ('retired_key_check', ?1) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![check],
        )?;
        tx.execute(
            "UPDATE settings SET value = ?1 WHERE name = 'key_check'",
            params![cipher.seal_check()],
        )?;
        report.recorded = true;
    }
    tx.commit()?;
    let mut after = (String::new(), String::new());
    loop {
        if budget == 0 {
            return Ok(report);
        }
        budget -= 1;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(String, String, Vec<u8>)> = tx
            .prepare(
                "SELECT tenant_id, id, destination FROM streams WHERE (tenant_id, id) > (?1, ?2) \
                 ORDER BY tenant_id, id LIMIT ?3",
            )?
            .query_map(params![after.0, after.1, keys::ROTATION_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after = (last.0.clone(), last.1.clone());
        for (tenant_id, id, sealed) in &rows {
            if let Some(resealed) = keys::reseal(cipher, sealed)? {
                tx.execute(
                    "UPDATE streams SET destination = ?3 WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant_id, id, resealed],
                )?;
                report.destinations += 1;
            }
        }
        tx.commit()?;
    }
    let mut after = 0_i64;
    loop {
        if budget == 0 {
            return Ok(report);
        }
        budget -= 1;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, Vec<u8>)> = tx
            .prepare("SELECT seq, secret FROM stream_secrets WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![after, keys::ROTATION_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        for (seq, sealed) in &rows {
            if let Some(resealed) = keys::reseal(cipher, sealed)? {
                tx.execute(
                    "UPDATE stream_secrets SET secret = ?2 WHERE seq = ?1",
                    params![seq, resealed],
                )?;
                report.stream_secrets += 1;
            }
        }
        tx.commit()?;
    }
    report.finished = true;
    Ok(report)
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("there is no embedded store at {0}")]
    NoStore(String),
    #[error("{0} already exists: choose another file, or pass --force to replace it")]
    Exists(String),
    #[error("{path} is not a Herald store: {reason}")]
    NotAStore { path: String, reason: String },
    #[error(
        "{0} already holds a store: pass --force to replace it (what it holds is lost), or \
         restore into an empty data directory"
    )]
    Occupied(String),
    #[error("{0}")]
    InUse(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
}

/// Pages copied per step of a backup or restore (256 KiB of 4 KiB pages): between steps the
/// process's other connections get their turn.
const PAGES_PER_STEP: std::os::raw::c_int = 64;

/// What a backup or restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// Steps of `PAGES_PER_STEP` pages the copy took; more than its size needs means it
    /// started over.
    pub steps: u64,
    pub schema_version: usize,
    pub events: u64,
}

/// Copies the store at `db` into `to`, consistently while a server runs on it: one read
/// transaction (a snapshot) copied in steps, into a temporary file renamed into place at the
/// end, so `to` is never half-written.
pub fn backup(db: &Path, to: &Path, force: bool) -> Result<Copied, BackupError> {
    if !db.exists() {
        return Err(BackupError::NoStore(db.display().to_string()));
    }
    if to.exists() && !force {
        return Err(BackupError::Exists(to.display().to_string()));
    }
    let mut source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    source.busy_timeout(std::time::Duration::from_secs(5))?;
    // The snapshot starts at the first read; every step copies from it.
    let snapshot = source.transaction()?;
    let (schema_version, events) = herald_store(&snapshot, db)?;
    let partial = with_suffix(to, ".partial");
    let steps = copy_into(&snapshot, &partial)?;
    snapshot.finish()?;
    std::fs::rename(&partial, to)
        .map_err(io(format!("could not move the copy to {}", to.display())))?;
    sync_dir(to)?;
    Ok(Copied {
        bytes: file_len(to)?,
        steps,
        schema_version,
        events,
    })
}

/// Copies the backup `from` into `data_dir` as its store, after checking it is a Herald store
/// this version knows and intact. Refuses while a server runs on `data_dir`, and replaces a
/// store there only with `force`.
pub fn restore(from: &Path, data_dir: &Path, force: bool) -> Result<Copied, BackupError> {
    if !from.is_file() {
        return Err(BackupError::NoStore(from.display().to_string()));
    }
    let source = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (schema_version, events) = herald_store(&source, from)?;
    let integrity: String = source.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        return Err(BackupError::NotAStore {
            path: from.display().to_string(),
            reason: format!("it is damaged ({integrity})"),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(io(format!(
        "could not create the data directory {}",
        data_dir.display()
    )))?;
    let db = data_dir.join(crate::config::DATABASE_FILE);
    let _lock = lock_exclusively(&db.with_extension("lock")).map_err(BackupError::InUse)?;
    if db.exists() && !force {
        return Err(BackupError::Occupied(data_dir.display().to_string()));
    }
    let partial = with_suffix(&db, ".restoring");
    let steps = copy_into(&source, &partial)?;
    // A write-ahead log left by the replaced store would be applied to the restored one.
    for stale in [with_suffix(&db, "-wal"), with_suffix(&db, "-shm")] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("could not remove {}", stale.display()))(e));
            }
            _ => {}
        }
    }
    std::fs::rename(&partial, &db)
        .map_err(io(format!("could not move the copy to {}", db.display())))?;
    sync_dir(&db)?;
    Ok(Copied {
        bytes: file_len(&db)?,
        steps,
        schema_version,
        events,
    })
}

/// The schema version and event count of a Herald store; an error for anything else.
fn herald_store(conn: &Connection, path: &Path) -> Result<(usize, u64), BackupError> {
    let not_a_store = |reason: String| BackupError::NotAStore {
        path: path.display().to_string(),
        reason,
    };
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| not_a_store(e.to_string()))?;
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' \
             AND name IN ('tenants', 'streams', 'events', 'deliveries')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| not_a_store(e.to_string()))?;
    if version == 0 || tables != 4 {
        return Err(not_a_store("it has none of Herald's tables".into()));
    }
    if version > MIGRATIONS.len() {
        return Err(not_a_store(format!(
            "its schema version {version} is newer than this herald knows ({}): use the Herald \
             version that made it",
            MIGRATIONS.len()
        )));
    }
    let events: u64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    Ok((version, events))
}

/// Copies `source` (as its open transaction sees it) into a new file at `to`, in steps.
fn copy_into(source: &Connection, to: &Path) -> Result<u64, BackupError> {
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("could not remove {}", to.display()))(e));
        }
        _ => {}
    }
    // Created private before SQLite opens it: the copy holds event payloads, token hashes and
    // sealed secrets.
    create_private(to)?;
    let mut target = Connection::open(to)?;
    let mut steps = 0;
    {
        let copy = rusqlite::backup::Backup::new(source, &mut target)?;
        loop {
            steps += 1;
            match copy.step(PAGES_PER_STEP)? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::yield_now(),
            }
        }
    }
    // The copy came in WAL mode, as its source; in rollback mode it is one file that opens
    // anywhere, even read-only. `herald serve` puts it back in WAL mode.
    target.pragma_update_and_check(None, "journal_mode", "DELETE", |_| Ok(()))?;
    target.close().map_err(|(_, e)| e)?;
    std::fs::File::open(to)
        .and_then(|file| file.sync_all())
        .map_err(io(format!("could not write {}", to.display())))?;
    Ok(steps)
}

/// Creates the empty file `path`, readable by its owner alone.
fn create_private(path: &Path) -> Result<(), BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(io(format!("could not create {}", path.display())))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_len(path: &Path) -> Result<u64, BackupError> {
    Ok(std::fs::metadata(path)
        .map_err(io(format!("could not read {}", path.display())))?
        .len())
}

/// Makes a rename into `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        // A bare file name's parent is "": the working directory.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(format!("could not sync {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> BackupError {
    move |source| BackupError::Io { context, source }
}
