//! Rotating the secret key (`herald rotate-secret-key`) on both stores, with the real server:
//! stream secrets and destination credentials keep working through and after a rotation, a
//! node with only the old key is refused after it, a rotation cut short finishes when run
//! again, and bad key input gets a clear error.

use std::path::Path;
use std::process::{Command, Output};

use herald::secret::{Cipher, Secret};
use herald::store::postgres::PgStore;
use herald::{App, Config};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

const OLD: &str = "HyAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
const NEW: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// A node's configuration on the store in `dir` (or `database`) with these keys.
fn node_config(dir: &Path, database: Option<&Scratch>, key: &str, previous: &[&str]) -> Config {
    let mut config = test_config(dir);
    config.database_url = database.map(|d| Secret::new(d.url.clone()));
    config.secret_key = Some(Secret::new(key));
    config.previous_secret_keys = previous.iter().map(|k| Secret::new(*k)).collect();
    config
}

async fn node(dir: &Path, database: Option<&Scratch>, key: &str, previous: &[&str]) -> TestApp {
    let config = node_config(dir, database, key, previous);
    spawn_app_with(move |c| *c = config).await
}

/// `herald rotate-secret-key` as an operator runs it, with the nodes' store and keys.
async fn rotate(dir: &Path, database: Option<&Scratch>, key: &str, previous: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("rotate-secret-key")
        .current_dir(dir)
        .env("HERALD_DATA_DIR", dir)
        .env("HERALD_SECRET_KEY", key)
        .env("HERALD_PREVIOUS_SECRET_KEYS", previous.join(","))
        .env_remove("HERALD_DATABASE_URL");
    if let Some(database) = database {
        command.env("HERALD_DATABASE_URL", &database.url);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A webhook stream with a bearer token (a destination credential) and a signing secret.
async fn stream_to(app: &TestApp, receiver: &Receiver, token: &str) -> String {
    let stream = app
        .create_stream(
            &receiver.url,
            &["user.created"],
            json!({"destination": {"type": "webhook", "configuration": {
                "webhook_endpoint": receiver.url,
                "webhook_authorization": {"method": "bearer", "token": token}
            }}}),
        )
        .await;
    stream["id"].as_str().unwrap().to_string()
}

/// The newest delivery `receiver` got carries the stream's credential and verifies with its
/// current signing secret, both read back through `app`.
async fn assert_signed_with_credentials(
    app: &TestApp,
    receiver: &Receiver,
    stream_id: &str,
    token: &str,
) {
    let (status, secret) = app
        .get(&format!("/v1/event-streams/{stream_id}/secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{secret}");
    let last = receiver.received().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    standardwebhooks::Webhook::new(secret["secret"].as_str().unwrap())
        .unwrap()
        .verify(&last.body, &last.headers)
        .unwrap();
}

async fn publish(app: &TestApp, id: &str) {
    app.publish(json!({"id": id, "source": "/keys", "type": "user.created", "data": {}}))
        .await;
}

async fn rotation_keeps_every_secret_working(database: Option<Scratch>) {
    let database = database.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];

    // Before: one key.
    let app = node(dir.path(), database, OLD, &[]).await;
    let first = stream_to(&app, &receivers[0], "token-1").await;
    app.stop().await;

    // Every node gets the new key beside the old one; it keeps sealing with the old one, the
    // store's current key, so a node not yet restarted can still read what it writes.
    let app = node(dir.path(), database, NEW, &[OLD]).await;
    let second = stream_to(&app, &receivers[1], "token-2").await;

    // The rotation, while the node serves and delivers.
    let rotation = rotate(dir.path(), database, NEW, &[OLD]);
    let delivery = async {
        publish(&app, "during").await;
        receivers[0].wait_for(1).await;
        receivers[1].wait_for(1).await;
    };
    let (rotation, ()) = tokio::join!(rotation, delivery);
    assert!(rotation.status.success(), "{}", text(&rotation.stderr));
    assert!(
        text(&rotation.stdout).contains("Re-sealed 2 stream destination(s) and 2 stream secret(s)"),
        "{}",
        text(&rotation.stdout)
    );
    assert_signed_with_credentials(&app, &receivers[0], &first, "token-1").await;
    assert_signed_with_credentials(&app, &receivers[1], &second, "token-2").await;

    // Written after the rotation: sealed with the new key.
    let third = stream_to(&app, &receivers[2], "token-3").await;
    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{first}/secret/rotate"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;

    // A node with only the old key is refused, and told why.
    let refused = App::build(
        node_config(dir.path(), database, OLD, &[]),
        std::sync::Arc::new(herald::clock::ManualClock::default()),
    )
    .await
    .err()
    .expect("a node with only the old key is refused");
    assert!(
        refused.to_string().contains("secret key was rotated"),
        "{refused}"
    );

    // The new key alone opens every secret: the rotation left none behind.
    let app = node(dir.path(), database, NEW, &[]).await;
    let (status, streams) = app.get("/v1/event-streams").await;
    assert_eq!(status, StatusCode::OK, "{streams}");
    publish(&app, "after").await;
    for (receiver, (stream, token)) in receivers.iter().zip([
        (&first, "token-1"),
        (&second, "token-2"),
        (&third, "token-3"),
    ]) {
        let n = if stream == &third { 1 } else { 2 };
        receiver.wait_for(n).await;
        assert_signed_with_credentials(&app, receiver, stream, token).await;
    }
}

#[tokio::test]
async fn rotating_the_key_of_the_embedded_store_keeps_every_secret_working() {
    rotation_keeps_every_secret_working(None).await;
}

#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn rotating_the_key_of_postgres_keeps_every_secret_working() {
    rotation_keeps_every_secret_working(Some(postgres_database().await)).await;
}

/// Runs the rotation in-process for at most `batches` transactions: the state a crash
/// midway leaves.
async fn rotate_partly(dir: &Path, database: Option<&Scratch>, batches: usize) {
    let cipher = Cipher::from_base64(NEW)
        .unwrap()
        .with_previous([Cipher::from_base64(OLD).unwrap()]);
    let report = match database {
        Some(database) => PgStore::connect(&database.url, cipher, 2)
            .await
            .unwrap()
            .rotate_secret_key(Some(batches))
            .await
            .unwrap(),
        None => herald::store::sqlite::rotate_secret_key(
            &dir.join(herald::config::DATABASE_FILE),
            &cipher,
            Some(batches),
        )
        .unwrap(),
    };
    assert!(report.recorded && !report.finished, "{report:?}");
}

async fn a_rotation_cut_short_finishes_when_run_again(database: Option<Scratch>) {
    let database = database.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let app = node(dir.path(), database, OLD, &[]).await;
    let stream = stream_to(&app, &receiver, "token-1").await;
    app.stop().await;

    let app = node(dir.path(), database, NEW, &[OLD]).await;
    // Cut short after the destinations' batch: the signing secret is still under the old key.
    rotate_partly(dir.path(), database, 1).await;
    // A node with both keys reads everything meanwhile.
    publish(&app, "midway").await;
    receiver.wait_for(1).await;
    assert_signed_with_credentials(&app, &receiver, &stream, "token-1").await;
    app.stop().await;

    let app = node(dir.path(), database, NEW, &[]).await;
    let (status, _) = app.get(&format!("/v1/event-streams/{stream}/secret")).await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the secret is still under the old key"
    );
    app.stop().await;

    let rerun = rotate(dir.path(), database, NEW, &[OLD]).await;
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let stdout = text(&rerun.stdout);
    assert!(
        stdout.contains("already was `secret_key`")
            && stdout.contains("Re-sealed 0 stream destination(s) and 1 stream secret(s)"),
        "{stdout}"
    );

    let app = node(dir.path(), database, NEW, &[]).await;
    publish(&app, "finished").await;
    receiver.wait_for(2).await;
    assert_signed_with_credentials(&app, &receiver, &stream, "token-1").await;
}

#[tokio::test]
async fn a_rotation_of_the_embedded_store_cut_short_finishes_when_run_again() {
    a_rotation_cut_short_finishes_when_run_again(None).await;
}

#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn a_rotation_of_postgres_cut_short_finishes_when_run_again() {
    a_rotation_cut_short_finishes_when_run_again(Some(postgres_database().await)).await;
}

/// While a rotation runs, nodes seal with the store's current key: before it records the new
/// key, a node holding both seals with the old one (a node with only the old key reads it);
/// after, with the new one (a node with only the new key reads it).
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn nodes_seal_with_the_stores_current_key_during_a_rotation() {
    let database = postgres_database().await;
    let database = Some(&database);
    let receiver = Receiver::start().await;
    let (both_dir, old_dir, new_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let old_only = node(old_dir.path(), database, OLD, &[]).await;
    let both = node(both_dir.path(), database, NEW, &[OLD]).await;
    let before = stream_to(&both, &receiver, "token-1").await;
    let (status, body) = old_only
        .get(&format!("/v1/event-streams/{before}/secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The new key recorded, nothing re-sealed yet.
    rotate_partly(both_dir.path(), database, 0).await;
    let after = stream_to(&both, &receiver, "token-2").await;
    let new_only = node(new_dir.path(), database, NEW, &[]).await;
    let (status, body) = new_only
        .get(&format!("/v1/event-streams/{after}/secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = new_only
        .get(&format!("/v1/event-streams/{before}/secret"))
        .await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "not yet re-sealed"
    );

    let rerun = rotate(both_dir.path(), database, NEW, &[OLD]).await;
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let (status, body) = new_only
        .get(&format!("/v1/event-streams/{before}/secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn bad_key_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let app = node(dir.path(), None, OLD, &[]).await;
    app.stop().await;

    let cases: [(&str, &[&str], &str); 4] = [
        (
            "not base64!",
            &[OLD],
            "`secret_key` must be base64 of exactly 32 bytes",
        ),
        (
            "c2hvcnQ=",
            &[OLD],
            "`secret_key` must be base64 of exactly 32 bytes",
        ),
        (
            NEW,
            &["c2hvcnQ="],
            "`previous_secret_keys (key 1)` must be base64",
        ),
        // The store's current key missing from the previous keys.
        (
            NEW,
            &[],
            "put the key the store uses now in `previous_secret_keys`",
        ),
    ];
    for (key, previous, expected) in cases {
        let output = rotate(dir.path(), None, key, previous).await;
        assert_eq!(output.status.code(), Some(2), "{key} {previous:?}");
        assert!(
            text(&output.stderr).contains(expected),
            "{key} {previous:?}: {}",
            text(&output.stderr)
        );
    }

    // Nothing changed: the old key still opens the store.
    let app = node(dir.path(), None, OLD, &[]).await;
    let (status, _) = app.get("/v1/event-streams").await;
    assert_eq!(status, StatusCode::OK);
}

const THIRD: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// An earlier rotation recorded the new key but re-sealed nothing; a rotation to a third key
/// without the oldest key among the previous ones refuses before recording anything, and the
/// nodes keep working.
async fn a_rotation_missing_a_key_changes_nothing(database: Option<Scratch>) {
    let database = database.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let app = node(dir.path(), database, OLD, &[]).await;
    let stream = stream_to(&app, &receiver, "token-1").await;
    app.stop().await;
    rotate_partly(dir.path(), database, 0).await;

    let refused = rotate(dir.path(), database, THIRD, &[NEW]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("opens with none of the configured keys"),
        "{}",
        text(&refused.stderr)
    );
    // The store's current key is still NEW: a node with it (and OLD for the values not yet
    // re-sealed) serves, and finishing the rotation with the right keys works.
    let app = node(dir.path(), database, NEW, &[OLD]).await;
    let (status, body) = app.get(&format!("/v1/event-streams/{stream}/secret")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
    let done = rotate(dir.path(), database, NEW, &[OLD]).await;
    assert!(done.status.success(), "{}", text(&done.stderr));
}

#[tokio::test]
async fn a_rotation_of_the_embedded_store_missing_a_key_changes_nothing() {
    a_rotation_missing_a_key_changes_nothing(None).await;
}

#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn a_rotation_of_postgres_missing_a_key_changes_nothing() {
    a_rotation_missing_a_key_changes_nothing(Some(postgres_database().await)).await;
}

/// Two rotations at once to different keys: the one whose store handle checked the key before
/// the other recorded its key is refused when it comes to record, instead of recording its key
/// over one it does not hold.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn a_rotation_refuses_to_record_over_a_key_it_does_not_hold() {
    let database = postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let app = node(dir.path(), Some(&database), OLD, &[]).await;
    app.stop().await;
    let cipher = |key: &str| {
        Cipher::from_base64(key)
            .unwrap()
            .with_previous([Cipher::from_base64(OLD).unwrap()])
    };
    // Both connect (and check the key) while OLD is current.
    let first = PgStore::connect(&database.url, cipher(NEW), 2)
        .await
        .unwrap();
    let second = PgStore::connect(&database.url, cipher(THIRD), 2)
        .await
        .unwrap();
    first.rotate_secret_key(None).await.unwrap();
    let refused = second.rotate_secret_key(None).await.unwrap_err();
    assert!(
        refused.to_string().contains("secret key was rotated"),
        "{refused}"
    );
    // NEW is still the current key.
    let app = node(dir.path(), Some(&database), NEW, &[]).await;
    app.stop().await;
}

/// `herald migrate-store` of an embedded store whose key was rotated: with the previous key it
/// is refused and writes nothing, naming what to pass; with the current key the PostgreSQL
/// store records that key (and the retired one), and its nodes deliver with the credentials.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn migrating_a_rotated_embedded_store_needs_its_current_key() {
    let database = postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let app = node(dir.path(), None, OLD, &[]).await;
    let stream = stream_to(&app, &receiver, "token-1").await;
    app.stop().await;
    let rotation = rotate(dir.path(), None, NEW, &[OLD]).await;
    assert!(rotation.status.success(), "{}", text(&rotation.stderr));

    let migrate = |key: &'static str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["migrate-store", "--from"])
            .arg(dir.path())
            .args(["--to", &database.url, "--secret-key", key])
            .env_remove("HERALD_SECRET_KEY");
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let refused = migrate(OLD).await.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("was rotated")
            && text(&refused.stderr).contains("--secret-key"),
        "{}",
        text(&refused.stderr)
    );
    let copied = migrate(NEW).await.unwrap();
    assert!(copied.status.success(), "{}", text(&copied.stderr));

    let fresh = tempfile::tempdir().unwrap();
    let app = node(fresh.path(), Some(&database), NEW, &[]).await;
    publish(&app, "moved").await;
    receiver.wait_for(1).await;
    assert_signed_with_credentials(&app, &receiver, &stream, "token-1").await;
    app.stop().await;
    let old_only = tempfile::tempdir().unwrap();
    let refused = herald::App::build(
        node_config(old_only.path(), Some(&database), OLD, &[]),
        std::sync::Arc::new(herald::clock::ManualClock::default()),
    )
    .await
    .err()
    .expect("a node with only the previous key is refused");
    assert!(
        refused.to_string().contains("secret key was rotated"),
        "{refused}"
    );
}
