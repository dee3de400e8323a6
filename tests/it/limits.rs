//! Limits on callers: the listener's connection cap and header-read timeout, load shedding
//! and request timeouts, per-token rates, the token cache under a flood of made-up tokens,
//! per-tenant quotas, bounded filters and sample data, and rate-limited stream tests.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
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

/// A request whose head is complete but whose body never finishes: it stays in flight.
async fn hold_a_request(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: herald\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
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

#[tokio::test]
async fn requests_beyond_the_cap_are_shed_with_503_and_retry_after() {
    let app = spawn_app_with(|c| c.max_concurrent_requests = 1).await;
    let held = hold_a_request(&app).await;

    // The held request takes the only slot once its head is read.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let response = loop {
        let response = app
            .http
            .get(app.url("/v1/event-streams"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request was shed while another held the only slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_requests"),
        "{body}"
    );

    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "health checks are never shed");

    drop(held);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, _) = app.get("/v1/event-streams").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_that_outlives_the_timeout_is_answered_503() {
    let app = spawn_app_with(|c| {
        c.delivery_timeout_seconds = 1;
        c.request_timeout_seconds = 2;
    })
    .await;
    let mut held = hold_a_request(&app).await;
    let mut answer = String::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        while !answer.contains("\"request_timeout\"") {
            match held.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the request was never answered");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
}

#[tokio::test]
async fn each_token_is_rate_limited_and_platform_tokens_are_not_by_default() {
    let app = spawn_app_with(|c| {
        c.token_rate_limit_per_second = 1;
        c.token_rate_limit_burst = 3;
    })
    .await;
    let token = app
        .tenant_token("ten_default", &["read:event_streams"])
        .await;
    let list = || app.request_as(&token, reqwest::Method::GET, "/v1/event-streams", None);
    for _ in 0..3 {
        assert_eq!(list().await.0, StatusCode::OK);
    }
    let response = app
        .http
        .get(app.url("/v1/event-streams"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    for _ in 0..10 {
        assert_eq!(app.get("/v1/event-streams").await.0, StatusCode::OK);
    }

    app.clock.advance(Duration::from_secs(1));
    assert_eq!(list().await.0, StatusCode::OK);
    assert_eq!(list().await.0, StatusCode::TOO_MANY_REQUESTS);
}

/// Marks the token revoked in the store itself, behind the server's back, so that only a
/// cached lookup can still accept it.
async fn revoke_in_store(config: &herald::Config, token_id: &str) {
    match &config.database_url {
        Some(url) => {
            let (client, connection) = herald::store::postgres::parse_url(url.expose())
                .unwrap()
                .connect()
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

#[tokio::test]
async fn tenants_are_held_to_their_quotas() {
    let app = spawn_app_with(|c| {
        c.max_streams_per_tenant = 2;
        c.max_event_types_per_tenant = 1;
        c.max_tokens_per_tenant = 1;
    })
    .await;
    let url = "http://127.0.0.1:9/hook";
    let first = app.create_stream(url, &["user.created"], json!({})).await;
    app.create_stream(url, &["user.created"], json!({"name": "second"}))
        .await;
    let third = json!({
        "name": "third",
        "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": url}},
    });
    let (status, body) = app.post("/v1/event-streams", &third).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_streams_per_tenant"),
        "{body}"
    );
    let (status, _) = app
        .delete(&format!(
            "/v1/event-streams/{}",
            first["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.post("/v1/event-streams", &third).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = app
        .post("/v1/event-types", &json!({"name": "invoice.paid"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post("/v1/event-types", &json!({"name": "invoice.voided"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");

    app.tenant_token("ten_default", &["read:events"]).await;
    let (status, body) = app
        .post(
            "/v1/tokens",
            &json!({"name": "second", "scopes": ["read:events"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let (status, body) = app
        .post(
            "/v1/tokens",
            &json!({"name": "platform", "scopes": ["read:events"], "platform": true}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "platform tokens belong to no tenant: {body}"
    );
}

#[tokio::test]
async fn oversized_sample_data_and_type_filters_are_refused_with_400() {
    let app = spawn_app().await;
    let big = "x".repeat(70 * 1024);
    let (status, body) = app
        .post(
            "/v1/event-types",
            &json!({"name": "invoice.paid", "sample_data": {"note": big}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", body["error"]);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sample_data"),
        "{body}"
    );

    let stream = app
        .create_stream("http://127.0.0.1:9/hook", &["*"], json!({}))
        .await;
    let sid = stream["id"].as_str().unwrap();
    // More bound values than either database takes in one statement.
    let types: Vec<String> = (0..70_000).map(|i| format!("t{i}.x")).collect();
    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver"),
            &json!({"event_types": types, "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100"),
        "{body}"
    );
    let listed = types[..101].join(",");
    let (status, body) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?event_types={listed}"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?event_types={}",
            types[..100].join(",")
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn stream_tests_are_rate_limited_per_stream_and_per_token() {
    let app = spawn_app_with(|c| {
        c.stream_tests_per_minute = 2;
        c.stream_tests_per_minute_per_token = 3;
    })
    .await;
    let receiver = Receiver::start().await;
    let a = app
        .create_stream(&receiver.url, &["flow.run.finished"], json!({}))
        .await;
    let b = app
        .create_stream(&receiver.url, &["flow.run.finished"], json!({"name": "b"}))
        .await;
    let test = |stream: &Value| {
        let path = format!("/v1/event-streams/{}/test", stream["id"].as_str().unwrap());
        let http = app.http.clone();
        let url = app.url(&path);
        async move {
            let response = http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"event_type": "flow.run.finished"}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body)
        }
    };
    assert_eq!(test(&a).await.0, 200);
    assert_eq!(test(&a).await.0, 200);
    let (status, retry_after, body) = test(&a).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(stream_tests_per_minute)"),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("30"));

    // The token's third test, to another stream, passes; its fourth does not.
    assert_eq!(test(&b).await.0, 200);
    let (status, _, body) = test(&b).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream_tests_per_minute_per_token"),
        "{body}"
    );
    assert_eq!(receiver.received().len(), 3);

    app.clock.advance(Duration::from_secs(60));
    assert_eq!(test(&a).await.0, 200);
}

#[tokio::test]
async fn stopping_finishes_the_request_under_way_and_accepts_no_more() {
    let app = spawn_app_with(|c| c.max_concurrent_requests = 1).await;
    let addr = app.addr;
    let body = br#"{"id": "held", "type": "user.created", "data": {"id": "u1"}}"#;
    let mut held = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: herald\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    held.write_all(head.as_bytes()).await.unwrap();
    held.write_all(&body[..1]).await.unwrap();
    // In flight once it holds the only slot.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.get("/v1/event-streams").await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(tokio::time::Instant::now() < deadline, "never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "stopped with a request under way");

    held.write_all(&body[1..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, held.read_to_end(&mut answer))
        .await
        .expect("the request under way was answered and the connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the server stopped")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}
