//! Limits on callers: the listener's connection cap and header-read timeout, and the token
//! cache under a flood of made-up tokens.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Waits until the peer closes `stream` (or resets it); panics after `PATIENCE`.
async fn wait_closed(stream: &mut TcpStream) {
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn a_request_head_not_sent_in_time_closes_the_connection() {
    let app = spawn_app_with(|c| c.header_read_timeout_seconds = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n")
        .await
        .unwrap();
    wait_closed(&mut stream).await;

    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    wait_closed(&mut silent).await;

    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|c| c.max_connections = 2).await;
    let held = [
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let refused = quick.get(app.url("/healthz")).send().await;
    assert!(
        refused.is_err(),
        "a third connection was served while two were held: {refused:?}"
    );

    drop(held);
    let response = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Marks the token revoked in the store itself, behind the server's back, so that only a
/// cached lookup can still accept it.
async fn revoke_in_store(config: &herald::Config, token_id: &str) {
    match &config.database_url {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url.expose(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let changed = client
                .execute(
                    "UPDATE api_tokens SET revoked_at = 1 WHERE id = $1",
                    &[&token_id],
                )
                .await
                .unwrap();
            assert_eq!(changed, 1);
        }
        None => {
            let db = rusqlite::Connection::open(config.database_path()).unwrap();
            db.busy_timeout(PATIENCE).unwrap();
            let changed = db
                .execute(
                    "UPDATE api_tokens SET revoked_at = 1 WHERE id = ?1",
                    [token_id],
                )
                .unwrap();
            assert_eq!(changed, 1);
        }
    }
}

#[tokio::test]
async fn a_flood_of_unknown_tokens_does_not_evict_known_ones() {
    let mut config = None;
    let app = spawn_app_with(|c| config = Some(c.clone())).await;
    let config = config.unwrap();
    let (status, created) = app
        .post(
            "/v1/tokens",
            &json!({"name": "reader", "scopes": ["read:event_streams"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let app = &app;
    let list = |token: String| async move {
        app.request_as(&token, reqwest::Method::GET, "/v1/event-streams", None)
            .await
            .0
    };
    assert_eq!(list(token.clone()).await, StatusCode::OK);
    revoke_in_store(&config, created["id"].as_str().unwrap()).await;

    // More made-up tokens than the cache held in all before.
    let refused = flood(app, 10_500, 16).await;
    assert_eq!(refused, 10_500, "every made-up token is refused");

    assert_eq!(
        list(token.clone()).await,
        StatusCode::OK,
        "the known token was evicted by the flood and read from the store again"
    );
    // The store does refuse it: the answer above came from the cache.
    app.clock.advance(Duration::from_secs(6));
    assert_eq!(list(token).await, StatusCode::UNAUTHORIZED);
}

/// Sends `n` requests with distinct random tokens, `concurrency` at a time; counts the 401s.
async fn flood(app: &TestApp, n: usize, concurrency: usize) -> usize {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let http = app.http.clone();
        let url = app.url("/v1/event-streams");
        workers.spawn(async move {
            let mut refused = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let made_up = format!("hrd_made_up_{}", ulid::Ulid::new());
                let response = http.get(&url).bearer_auth(made_up).send().await.unwrap();
                if response.status() == 401 {
                    refused += 1;
                }
            }
            refused
        });
    }
    let mut refused = 0;
    while let Some(n) = workers.join_next().await {
        refused += n.unwrap();
    }
    refused
}
