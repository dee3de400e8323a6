//! `GET /v1/events/stream`: the event log as Server-Sent Events, resumed across disconnects
//! without gaps or repeats, filtered, per tenant, and refused with 410 once an offset's event
//! is gone. Run on both stores (CI runs the API tests again on PostgreSQL); two real nodes
//! publishing at once on PostgreSQL are in `two_nodes_publishing_at_once_are_read_once_each`.

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use herald::cli::tail::{SseMessage, SseParser};
use herald::clock::Clock;
use serde_json::{Value, json};

use crate::helpers::*;

/// A client of the SSE stream, reading messages as `EventSource` would.
pub struct SseClient {
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<SseMessage>,
}

/// One message: its id (the offset) and its data.
pub struct Message {
    pub id: String,
    pub data: Value,
}

impl SseClient {
    pub async fn open(
        base: &str,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let response = Self::request(base, token, query, last_event_id).await;
        assert_eq!(response.status(), 200, "the stream opens");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            response,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        }
    }

    pub async fn request(
        base: &str,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/v1/events/stream{query}"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    /// The next message, skipping comments (heartbeats).
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(message) = self.ready.pop_front() {
                    return Message {
                        id: message.id.expect("every message has an offset"),
                        data: serde_json::from_str(&message.data).unwrap(),
                    };
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .unwrap()
                    .expect("the stream ended");
                self.ready.extend(self.parser.feed(&chunk));
            }
        })
        .await
        .expect("a message within the test's patience")
    }
}

fn event(id: &str, event_type: &str) -> Value {
    json!({ "id": id, "source": "/log-test", "type": event_type, "data": { "n": id } })
}

#[tokio::test]
async fn a_reader_resumed_after_a_disconnect_sees_every_event_once() {
    let app = spawn_app().await;
    let base = app.url("");
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, "", None).await;
    for i in 0..20 {
        app.publish(event(&format!("e{i}"), "user.created")).await;
    }
    let mut seen = Vec::new();
    let mut last = String::new();
    for _ in 0..10 {
        let message = reader.next().await;
        seen.push(message.data["id"].as_str().unwrap().to_string());
        last = message.id;
    }
    drop(reader);
    for i in 20..40 {
        app.publish(event(&format!("e{i}"), "user.created")).await;
    }
    app.publish(event("sentinel", "user.created")).await;
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, "", Some(&last)).await;
    loop {
        let message = reader.next().await;
        let id = message.data["id"].as_str().unwrap().to_string();
        if id == "sentinel" {
            break;
        }
        assert_eq!(message.data["type"], "user.created");
        assert!(message.data["received_at"].is_string());
        seen.push(id);
    }
    let expected: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    assert_eq!(seen, expected, "every event once, in order");

    // `?from=` resumes the same way.
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, &format!("?from={last}"), None).await;
    assert_eq!(reader.next().await.data["id"], "e10");
}

#[tokio::test]
async fn a_reader_filters_by_type_and_starts_from_a_time() {
    let app = spawn_app().await;
    let base = app.url("");
    app.publish(event("old", "user.created")).await;
    app.clock.advance(std::time::Duration::from_secs(60));
    let from = herald::event::format_time(app.clock.now_ms());
    app.publish(event("flow", "flow.run.finished")).await;
    app.publish(event("new", "user.created")).await;
    app.publish(event("deleted", "user.deleted")).await;

    let query = format!(
        "?from_timestamp={}&event_type=user.*&event_type=nothing.matches",
        url::form_urlencoded::byte_serialize(from.as_bytes()).collect::<String>()
    );
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, &query, None).await;
    assert_eq!(
        reader.next().await.data["id"],
        "new",
        "not `old`, before the time; not `flow`"
    );
    assert_eq!(reader.next().await.data["id"], "deleted");
}

#[tokio::test]
async fn bad_offsets_and_parameters_are_refused() {
    let app = spawn_app().await;
    let base = app.url("");
    for (query, last, status, code) in [
        ("?from=nonsense", None, 400, "invalid_offset"),
        ("", Some("1-"), 400, "invalid_offset"),
        (
            "?from=0-1&from_timestamp=2025-01-01T00:00:00Z",
            None,
            400,
            "invalid_request",
        ),
        ("?from_timestamp=yesterday", None, 400, "invalid_request"),
        ("?event_type=a..b", None, 400, "invalid_request"),
        ("?take=5", None, 400, "invalid_request"),
        // Well formed, but no event of this tenant is there.
        ("?from=0-999999", None, 410, "offset_expired"),
    ] {
        let response = SseClient::request(&base, ADMIN_TOKEN, query, last).await;
        assert_eq!(response.status(), status, "{query} {last:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query} {last:?}: {body}");
    }
    let response = SseClient::request(&base, "hrd_not_a_token", "", None).await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_offset_removed_by_retention_is_gone() {
    let app = spawn_app_with(|c| c.event_retention_days = 1).await;
    let base = app.url("");
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, "", None).await;
    app.publish(event("kept-briefly", "user.created")).await;
    let offset = reader.next().await.id;
    drop(reader);
    // Retention keeps the store's newest event: this one is newer.
    app.publish(event("later", "user.created")).await;
    app.clock
        .advance(std::time::Duration::from_secs(2 * 86_400));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.get("/v1/events/kept-briefly").await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never removed the event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let response = SseClient::request(&base, ADMIN_TOKEN, "", Some(&offset)).await;
    assert_eq!(response.status(), 410);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "offset_expired");
}

#[tokio::test]
async fn a_tenant_reads_only_its_own_log() {
    let app = spawn_app().await;
    let base = app.url("");
    for tenant in ["ten_x", "ten_y"] {
        let (status, _) = app
            .post("/v1/tenants", &json!({ "id": tenant, "name": tenant }))
            .await;
        assert_eq!(status, 201);
    }
    let x = app
        .tenant_token("ten_x", &["read:events", "publish:events"])
        .await;
    let y = app
        .tenant_token("ten_y", &["read:events", "publish:events"])
        .await;
    let publish = |token: String, id: &'static str| {
        let app = &app;
        async move {
            let (status, _) = app
                .request_as(
                    &token,
                    reqwest::Method::POST,
                    "/v1/events",
                    Some((
                        "application/json",
                        event(id, "user.created").to_string().into_bytes(),
                    )),
                )
                .await;
            assert_eq!(status, 202);
        }
    };
    let mut x_reader = SseClient::open(&base, &x, "", None).await;
    let mut y_reader = SseClient::open(&base, &y, "", None).await;
    publish(y.clone(), "y1").await;
    publish(x.clone(), "x1").await;
    publish(y.clone(), "y2").await;
    publish(x.clone(), "x2").await;
    let x1 = x_reader.next().await;
    assert_eq!(x1.data["id"], "x1");
    assert_eq!(x_reader.next().await.data["id"], "x2");
    assert_eq!(y_reader.next().await.data["id"], "y1");
    assert_eq!(y_reader.next().await.data["id"], "y2");
    // X's offset is no place in Y's log.
    let response = SseClient::request(&base, &y, "", Some(&x1.id)).await;
    assert_eq!(response.status(), 410);
}

/// Two real nodes on one PostgreSQL database, four publishers spread over them, and a reader
/// on one node that drops its connection every few dozen events and resumes from its last
/// offset: it sees every acknowledged event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn two_nodes_publishing_at_once_are_read_once_each() {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const PER_PUBLISHER: usize = 150;
    let database = postgres_database().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| {
            start_server(
                dir.path(),
                &[
                    ("HERALD_DATABASE_URL", &database.url),
                    ("HERALD_SECRET_KEY", KEY),
                ],
            )
        })
        .collect();
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let token = ADMIN_TOKEN.to_string();
    let reader_base = bases[0].clone();

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (base, token, acknowledged) =
            (bases[p % 2].clone(), token.clone(), acknowledged.clone());
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..PER_PUBLISHER {
                let id = format!("p{p}-{i}");
                let sent = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&token)
                    .json(&event(&id, "user.created"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(sent.status(), 202);
                acknowledged.lock().unwrap().insert(id);
            }
        }));
    }
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut last: Option<String> = None;
        let query = "?from_timestamp=2000-01-01T00:00:00Z";
        loop {
            let mut reader = match &last {
                Some(id) => SseClient::open(&reader_base, &token, "", Some(id)).await,
                None => SseClient::open(&reader_base, &token, query, None).await,
            };
            for _ in 0..37 {
                let message = reader.next().await;
                let id = message.data["id"].as_str().unwrap().to_string();
                last = Some(message.id);
                if id == "sentinel" {
                    return seen;
                }
                seen.push(id);
            }
        }
    });
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let http = reqwest::Client::new();
    let sent = http
        .post(format!("{}/v1/events", bases[1]))
        .bearer_auth(ADMIN_TOKEN)
        .json(&event("sentinel", "user.created"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let seen = reading.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    let acknowledged = acknowledged.lock().unwrap();
    assert_eq!(seen.len(), acknowledged.len(), "every acknowledged event");
    assert!(seen.iter().all(|id| acknowledged.contains(id)));
    drop(nodes);
}

/// `herald events tail --json` against a real server that is killed and started again on the
/// same address and data: the command reconnects on its own and prints every event once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_across_a_server_restart_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = start_server(dir.path(), &[("HERALD_LISTEN", &listen)]);
    let base = server.base.clone();
    let mut tail = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "events",
            "tail",
            "--json",
            "--from-timestamp",
            "2000-01-01T00:00:00Z",
        ])
        .env("HERALD_SERVER", &base)
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the herald binary starts");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    let http = reqwest::Client::new();
    let publish = |id: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let sent = http
                .post(format!("{base}/v1/events"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&event(&id, "user.created"))
                .send()
                .await
                .unwrap();
            assert_eq!(sent.status(), 202);
        }
    };
    for i in 0..10 {
        publish(format!("e{i}")).await;
    }
    read_lines(&mut lines, &mut printed, 10).await;
    // Killed: the connection breaks without an end.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    let server = start_server(dir.path(), &[("HERALD_LISTEN", &listen)]);
    assert_eq!(server.base, base, "the same address");
    for i in 10..20 {
        publish(format!("e{i}")).await;
    }
    read_lines(&mut lines, &mut printed, 10).await;
    publish("sentinel".into()).await;
    read_lines(&mut lines, &mut printed, 1).await;
    let _ = tail.kill();
    let _ = tail.wait();
    let mut expected: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    expected.push("sentinel".into());
    assert_eq!(printed, expected, "every event once, in order");
}

/// Reads `n` lines `tail --json` printed, keeping each event's id.
async fn read_lines(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    printed: &mut Vec<String>,
    n: usize,
) {
    for _ in 0..n {
        let line = tokio::time::timeout(PATIENCE, lines.recv())
            .await
            .expect("tail printed the event")
            .expect("tail is running");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert!(value["offset"].is_string(), "{line}");
        printed.push(value["event"]["id"].as_str().unwrap().to_string());
    }
}

#[tokio::test]
async fn tail_refuses_an_offset_it_cannot_resume_from() {
    let app = spawn_app().await;
    for (args, code, says) in [
        (vec!["--from", "0-999999"], 1, "offset_expired"),
        (vec!["--from", "yesterday"], 2, "is not an offset"),
    ] {
        let output = tokio::task::spawn_blocking({
            let base = app.url("");
            move || {
                Command::new(env!("CARGO_BIN_EXE_herald"))
                    .args(["events", "tail"])
                    .args(&args)
                    .env("HERALD_SERVER", base)
                    .env("HERALD_TOKEN", ADMIN_TOKEN)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

impl SseClient {
    /// Expects the server to end the stream, with no message before the end.
    pub async fn expect_end(&mut self) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(message) = self.ready.pop_front() {
                    panic!("a message instead of the end: {message:?}");
                }
                match self.response.chunk().await {
                    Ok(Some(chunk)) => self.ready.extend(self.parser.feed(&chunk)),
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await
        .expect("the stream ends within the test's patience")
    }
}

/// A token revoked while its stream is open stops receiving events, as any request with it
/// would stop being answered: within the token cache's lifetime.
#[tokio::test]
async fn a_revoked_token_ends_its_stream() {
    let app = spawn_app().await;
    let base = app.url("");
    let response = app
        .http
        .post(app.url("/v1/tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "reader", "scopes": ["read:events"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    let mut reader = SseClient::open(&base, token, "", None).await;
    app.publish(event("before", "user.created")).await;
    assert_eq!(reader.next().await.data["id"], "before");

    let (status, _) = app
        .delete(&format!("/v1/tokens/{}", created["id"].as_str().unwrap()))
        .await;
    assert!(status.is_success(), "{status}");
    app.clock.advance(std::time::Duration::from_secs(6));
    app.publish(event("after", "user.created")).await;
    reader.expect_end().await;
}

/// An offset older than the retention period is expired even when its own event was kept
/// (a pending delivery keeps an event): retention may have removed what came after it.
#[tokio::test]
async fn an_offset_older_than_retention_is_gone_even_when_its_event_was_kept() {
    let app = spawn_app_with(|c| c.event_retention_days = 1).await;
    let base = app.url("");
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let (status, _) = app
        .patch(
            &format!("/v1/event-streams/{}", stream["id"].as_str().unwrap()),
            &json!({"status": "paused"}),
        )
        .await;
    assert!(status.is_success());
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, "", None).await;
    app.publish(event("gone", "flow.run.finished")).await;
    app.publish(event("kept", "user.created")).await;
    assert_eq!(reader.next().await.data["id"], "gone");
    let kept = reader.next().await;
    assert_eq!(kept.data["id"], "kept");
    drop(reader);
    app.clock
        .advance(std::time::Duration::from_secs(2 * 86_400));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.get("/v1/events/gone").await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.get("/v1/events/kept").await.0,
        200,
        "a pending delivery keeps it"
    );
    let response = SseClient::request(&base, ADMIN_TOKEN, "", Some(&kept.id)).await;
    assert_eq!(response.status(), 410);
}

/// A stream never ends on its own, so a tenant may hold only so many open on a node.
#[tokio::test]
async fn a_tenant_may_hold_only_so_many_readers() {
    let app = spawn_app().await;
    let base = app.url("");
    let mut open = Vec::new();
    for _ in 0..herald::api::log_stream::MAX_READERS_PER_TENANT {
        open.push(SseClient::open(&base, ADMIN_TOKEN, "", None).await);
    }
    let response = SseClient::request(&base, ADMIN_TOKEN, "", None).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_readers");
    // Another tenant is not held back by this one.
    let (status, _) = app
        .post("/v1/tenants", &json!({"id": "ten_other", "name": "other"}))
        .await;
    assert_eq!(status, 201);
    let other = app.tenant_token("ten_other", &["read:events"]).await;
    SseClient::open(&base, &other, "", None).await;
}
