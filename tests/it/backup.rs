//! Backups of the embedded store (`herald backup`, `herald restore`) with the real server:
//! a backup taken while events are being published holds every event acknowledged before it
//! began and delivers the pending ones once restored; the commands refuse what would lose
//! data; a store restored without its secret key says so.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald::config::{DATABASE_FILE, KEY_FILE};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn herald(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args).env_remove("HERALD_DATA_DIR");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn embedded_node(dir: &Path) -> TestApp {
    let dir = dir.to_path_buf();
    spawn_app_with(move |config| {
        config.data_dir = dir;
        config.database_url = None;
    })
    .await
}

fn batch(prefix: &str, from: usize, n: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| json!({"id": format!("{prefix}-{i}"), "source": "/load", "type": "user.created", "data": {"n": i, "note": "x".repeat(1000)}}))
        .collect()
}

fn stored_event_ids(db: &Path) -> HashSet<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM events").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_holds_every_acknowledged_event_and_delivers_after_restore() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let app = Arc::new(embedded_node(dir.path()).await);
    // Paused: its deliveries stay pending, to be delivered from the restored store.
    let stream = app
        .create_stream(
            &receiver.url,
            &["user.created"],
            json!({"status": "paused"}),
        )
        .await;
    let stream_id = stream["id"].as_str().unwrap().to_string();
    assert_eq!(stream["status"], "paused", "{stream}");
    for i in 0..10 {
        let (status, body) = app.post_batch(&batch("early", i * 100, 100)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    // A publisher that keeps going through the backup, noting what was acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (app, acknowledged, stop) = (app.clone(), acknowledged.clone(), stop.clone());
        async move {
            let mut next = 0;
            while !stop.load(Ordering::SeqCst) {
                let events = batch("live", next, 20);
                let (status, body) = app.post_batch(&events).await;
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                let ids = events.iter().map(|e| e["id"].as_str().unwrap().to_string());
                acknowledged.lock().unwrap().extend(ids);
                next += 20;
            }
        }
    });
    while acknowledged.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let file = dir.path().join("backup.sqlite3");
    let backup = herald(&[
        "backup",
        "--data-dir",
        path(dir.path()),
        "--to",
        path(&file),
    ])
    .await;
    let during_backup = acknowledged.lock().unwrap().len();
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    assert!(
        text(&backup.stdout).contains("The secret key is not in it"),
        "{}",
        text(&backup.stdout)
    );
    // One snapshot copied in steps: under a steady stream of commits, a copy that did not
    // hold its snapshot would start over after each (and might never finish).
    let size = std::fs::metadata(&file).unwrap().len();
    let steps: u64 = text(&backup.stdout)
        .split_once(" bytes in ")
        .and_then(|(_, rest)| rest.split_once(" steps"))
        .map(|(steps, _)| steps.parse().unwrap())
        .expect("the backup says how many steps it took");
    let pages_per_step = 64 * 4096;
    assert!(
        steps >= 4 && steps <= size.div_ceil(pages_per_step) + 1,
        "{size} bytes in {steps} steps"
    );
    // One file that stands alone, openable read-only.
    assert!(!dir.path().join("backup.sqlite3-wal").exists());
    let mode: String =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
    assert_eq!(mode, "delete");
    // The server kept acknowledging while the copy ran and after.
    while acknowledged.lock().unwrap().len() < during_backup + 100 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();

    let restored = tempfile::tempdir().unwrap();
    let restore = herald(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(restored.path()),
    ])
    .await;
    assert!(restore.status.success(), "{}", text(&restore.stderr));
    assert!(
        text(&restore.stdout).contains("put the secret key the store was using"),
        "{}",
        text(&restore.stdout)
    );
    let ids = stored_event_ids(&restored.path().join(DATABASE_FILE));
    let early = batch("early", 0, 1000);
    let early = early.iter().map(|e| e["id"].as_str().unwrap().to_string());
    let missing: Vec<String> = before
        .into_iter()
        .chain(early)
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are missing from the backup, such as {:?}",
        missing.len(),
        missing.first()
    );
    std::fs::copy(dir.path().join(KEY_FILE), restored.path().join(KEY_FILE)).unwrap();
    drop(Arc::into_inner(app).unwrap().stop().await);

    // `herald serve` on the restored store delivers its pending deliveries.
    let app = embedded_node(restored.path()).await;
    let (status, body) = app
        .patch(
            &format!("/v1/event-streams/{stream_id}"),
            &json!({"status": "enabled", "backlog": "deliver"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = receiver
        .wait_until("every restored event", |received| {
            received.len() >= ids.len()
        })
        .await;
    let delivered: HashSet<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, ids);
}

#[tokio::test]
async fn backup_and_restore_refuse_what_would_lose_data() {
    let dir = tempfile::tempdir().unwrap();
    let app = embedded_node(dir.path()).await;
    let file = dir.path().join("backup.sqlite3");
    std::fs::write(&file, "an earlier backup").unwrap();
    let refused = herald(&[
        "backup",
        "--data-dir",
        path(dir.path()),
        "--to",
        path(&file),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("already exists: choose another file, or pass --force"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "an earlier backup");
    let forced = herald(&[
        "backup",
        "--data-dir",
        path(dir.path()),
        "--to",
        path(&file),
        "--force",
    ])
    .await;
    assert!(forced.status.success(), "{}", text(&forced.stderr));

    let nowhere = tempfile::tempdir().unwrap();
    let no_store = herald(&[
        "backup",
        "--data-dir",
        path(nowhere.path()),
        "--to",
        path(&file),
    ])
    .await;
    assert_eq!(no_store.status.code(), Some(2));
    assert!(text(&no_store.stderr).contains("there is no embedded store at"));

    // Not into the data directory of a running server, nor over a store without --force.
    let in_use = herald(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(dir.path()),
    ])
    .await;
    assert_eq!(in_use.status.code(), Some(2));
    assert!(
        text(&in_use.stderr).contains("another herald process is using this data directory"),
        "{}",
        text(&in_use.stderr)
    );
    drop(app.stop().await);
    let occupied = herald(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(dir.path()),
    ])
    .await;
    assert_eq!(occupied.status.code(), Some(2));
    assert!(
        text(&occupied.stderr).contains("already holds a store: pass --force"),
        "{}",
        text(&occupied.stderr)
    );

    let forced = herald(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(dir.path()),
        "--force",
    ])
    .await;
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let app = embedded_node(dir.path()).await;
    let (status, body) = app.get("/v1/event-streams").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    drop(app.stop().await);

    // Only a Herald store of a schema this version knows.
    let target = tempfile::tempdir().unwrap();
    let not_sqlite = dir.path().join("notes.txt");
    std::fs::write(
        &not_sqlite,
        "not a database at all, just some text ".repeat(200),
    )
    .unwrap();
    let other_sqlite = dir.path().join("other.sqlite3");
    rusqlite::Connection::open(&other_sqlite)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let newer = dir.path().join("newer.sqlite3");
    std::fs::copy(&file, &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    for (from, expected) in [
        (&not_sqlite, "is not a Herald store"),
        (&other_sqlite, "it has none of Herald's tables"),
        (&newer, "schema version 999 is newer than this herald knows"),
    ] {
        let output = herald(&[
            "restore",
            "--from",
            path(from),
            "--data-dir",
            path(target.path()),
        ])
        .await;
        assert_eq!(output.status.code(), Some(2), "{from:?}");
        assert!(
            text(&output.stderr).contains(expected),
            "{from:?}: {}",
            text(&output.stderr)
        );
    }
    assert!(!target.path().join(DATABASE_FILE).exists());
}

/// The backup does not hold the secret key: restored without it, the store is refused with
/// a message that says which key it needs.
#[tokio::test]
async fn a_store_restored_without_its_secret_key_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let app = embedded_node(dir.path()).await;
    app.create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let file = dir.path().join("backup.sqlite3");
    let backup = herald(&[
        "backup",
        "--data-dir",
        path(dir.path()),
        "--to",
        path(&file),
    ])
    .await;
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    drop(app.stop().await);

    let restored = tempfile::tempdir().unwrap();
    let restore = herald(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(restored.path()),
    ])
    .await;
    assert!(restore.status.success(), "{}", text(&restore.stderr));
    // What `herald serve` does: without a configured key, it makes a key file and is refused.
    let refused = herald::App::build(
        test_config(restored.path()),
        Arc::new(herald::clock::ManualClock::default()),
    )
    .await
    .err()
    .expect("a store restored without its key is refused");
    assert!(
        refused
            .to_string()
            .contains("its secrets were sealed with a different secret key"),
        "{refused}"
    );

    // With the key beside it, the same copy serves.
    std::fs::copy(dir.path().join(KEY_FILE), restored.path().join(KEY_FILE)).unwrap();
    let app = embedded_node(restored.path()).await;
    let (status, streams) = app.get("/v1/event-streams").await;
    assert_eq!(status, StatusCode::OK, "{streams}");
}

/// A backup holds event payloads, token hashes and sealed secrets: the copy, and the store a
/// restore makes of it, are readable by their owner alone. A bare file name is a file in the
/// working directory.
#[tokio::test]
async fn backups_and_restored_stores_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let app = embedded_node(dir.path()).await;
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args([
            "backup",
            "--data-dir",
            path(dir.path()),
            "--to",
            "copy.sqlite3",
        ])
        .current_dir(out.path())
        .env_remove("HERALD_DATA_DIR");
    let backup = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    drop(app.stop().await);
    let file = out.path().join("copy.sqlite3");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);

    let restored = tempfile::tempdir().unwrap();
    let restore = herald(&[
        "restore",
        "--from",
        path(&file),
        "--data-dir",
        path(restored.path()),
    ])
    .await;
    assert!(restore.status.success(), "{}", text(&restore.stderr));
    assert_eq!(mode(&restored.path().join(DATABASE_FILE)), 0o600);
}
