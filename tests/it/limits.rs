//! Limits on callers: the listener's connection cap and header-read timeout.

use std::time::Duration;

use axum::http::StatusCode;
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
