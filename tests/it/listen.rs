//! `herald listen` and the listen sessions behind it: the command run against the real
//! server forwards signed deliveries to a real local receiver and reports its answers; the
//! WebSocket protocol spoken directly covers reconnection, the grace period and refusals.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use herald::secret::Secret;

use crate::helpers::*;

fn event(id: &str, event_type: &str) -> Value {
    json!({ "id": id, "source": "/listen-test", "type": event_type, "data": { "n": id } })
}

/// A running `herald listen`, its stdout as lines.
struct Listen {
    /// Taken by `interrupt`.
    child: Option<Child>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    printed: Vec<String>,
}

impl Listen {
    fn start(app: &TestApp, args: &[&str]) -> Listen {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("listen")
            .args(args)
            .env("HERALD_SERVER", app.url(""))
            .env("HERALD_TOKEN", ADMIN_TOKEN)
            .env("HERALD_CONFIG", "/nonexistent/herald-test-profiles.toml")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the herald binary starts");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Listen {
            child: Some(child),
            lines,
            printed: Vec::new(),
        }
    }

    /// Reads lines until one starts with `prefix`, and answers it.
    async fn line_starting(&mut self, prefix: &str) -> String {
        self.line_where(prefix, |l| l.starts_with(prefix)).await
    }

    async fn line_where(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("herald listen never printed {what}: {:?}", self.printed)
                })
                .unwrap_or_else(|| {
                    panic!(
                        "herald listen ended before printing {what}: {:?}",
                        self.printed
                    )
                });
            self.printed.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Ctrl-C, then the exit code.
    async fn interrupt(mut self) -> (i32, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code().unwrap_or(-1))
            .await
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.printed.push(line);
        }
        (code, std::mem::take(&mut self.printed))
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The story a developer lives: `herald listen` prints its secret, a published event
/// arrives at the local URL signed with it, the command prints a line for it, the attempt is
/// recorded with the local answer, and Ctrl-C ends the session on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_forwards_signed_deliveries_and_records_the_local_answers() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200).with_body("thanks"));
    let mut listen = Listen::start(
        &app,
        &[
            "--events",
            "user.*,flow.run.finished",
            "--forward-to",
            &receiver.url,
        ],
    );
    let forwarding = listen.line_starting("Forwarding ").await;
    assert!(
        forwarding.contains("user.*, flow.run.finished"),
        "{forwarding}"
    );
    let secret = listen.line_starting("Signing secret: ").await;
    let secret = secret.trim_start_matches("Signing secret: ").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let session = listen.line_starting("Session ").await;
    let session = session.split([' ', ':']).nth(1).unwrap().to_string();
    listen.line_starting("Ready").await;

    app.publish(event("evt-not-subscribed", "flow.created"))
        .await;
    app.publish(event("evt-listen-1", "user.created")).await;
    let received = receiver.wait_for(1).await;
    verify(&secret, &received[0]).expect("signed with the session's secret");
    let body = received[0].json();
    assert_eq!(body["id"], "evt-listen-1", "only subscribed types: {body}");
    assert_eq!(body["type"], "user.created");
    let line = listen
        .line_where("a line for the request", |l| l.contains("evt-listen-1"))
        .await;
    assert!(
        line.contains("user.created") && line.contains(" 200 "),
        "{line}"
    );
    assert!(line.ends_with(" ms"), "{line}");

    let delivery = app
        .wait_for_delivery(&session, "evt-listen-1", |d| d["status"] == "succeeded")
        .await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["response_status"], 200, "{delivery}");
    assert_eq!(attempt["response_body"], "thanks", "{delivery}");
    assert_eq!(
        received[0].header("webhook-id"),
        delivery["id"].as_str(),
        "the delivery id is the webhook id"
    );
    let (status, stream) = app.get(&format!("/v1/event-streams/{session}")).await;
    assert_eq!(status, 200);
    assert_eq!(stream["destination"]["type"], "listen");
    assert_eq!(
        stream["destination"]["configuration"]["forward_to"],
        receiver.url.as_str()
    );

    let (code, printed) = listen.interrupt().await;
    assert_eq!(code, 0, "{printed:?}");
    assert!(
        printed.last().is_some_and(|l| l.contains("ended")),
        "{printed:?}"
    );
    let (status, _) = app.get(&format!("/v1/event-streams/{session}")).await;
    assert_eq!(status, 404, "Ctrl-C ends the session on the server");
}

/// A local handler that fails is recorded as the failed attempt it is, retried on the
/// session's schedule, and a second attempt that succeeds is the same delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_local_handler_is_recorded_and_retried() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503).with_body("deploying")]);
    let mut listen = Listen::start(
        &app,
        &[
            "--json",
            "--events",
            "user.created",
            "--forward-to",
            &receiver.url,
        ],
    );
    let session: Value = serde_json::from_str(&listen.line_starting("{").await).unwrap();
    let session = session["id"].as_str().unwrap().to_string();
    // With --json nothing marks the connection: the delivery waits for it.
    app.publish(event("evt-retry", "user.created")).await;
    let first = listen
        .line_where("the failed request", |l| l.contains("evt-retry"))
        .await;
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["status"], 503, "{first}");
    let delivery = app.wait_for_attempts(&session, "evt-retry", 1).await;
    assert_eq!(
        delivery["attempts"][0]["response_status"], 503,
        "{delivery}"
    );
    assert_eq!(delivery["attempts"][0]["response_body"], "deploying");
    assert_eq!(delivery["status"], "pending");

    app.clock.advance(Duration::from_secs(10));
    let delivery = app
        .wait_for_delivery(&session, "evt-retry", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        delivery["attempts"].as_array().unwrap().len(),
        2,
        "{delivery}"
    );
    let received = receiver.wait_for(2).await;
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
}

/// A local URL nobody listens on: the attempt records the connection error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_local_url_is_recorded_as_a_connection_error() {
    let app = spawn_app().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let mut listen = Listen::start(&app, &["--events", "user.created", "--forward-to", &url]);
    let session = listen.line_starting("Session ").await;
    let session = session.split([' ', ':']).nth(1).unwrap().to_string();
    listen.line_starting("Ready").await;
    app.publish(event("evt-nobody", "user.created")).await;
    let line = listen
        .line_where("the failed request", |l| l.contains("evt-nobody"))
        .await;
    assert!(line.contains("connect: "), "{line}");
    let delivery = app.wait_for_attempts(&session, "evt-nobody", 1).await;
    assert_eq!(
        delivery["attempts"][0]["error"]["kind"], "connect",
        "{delivery}"
    );
}

/// A listener connected with the WebSocket protocol itself.
struct Socket {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

async fn open_session(app: &TestApp, body: Value) -> Value {
    let (status, session) = app.post("/v1/listen-sessions", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    session
}

fn connect_request(
    app: &TestApp,
    id: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}/v1/listen-sessions/{id}/connect", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

impl Socket {
    async fn connect(app: &TestApp, id: &str) -> Socket {
        let (socket, response) =
            tokio_tungstenite::connect_async(connect_request(app, id, ADMIN_TOKEN))
                .await
                .expect("the session accepts a connection");
        assert_eq!(response.status(), 101);
        Socket { socket }
    }

    /// The next delivery sent.
    async fn delivery(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a delivery arrives")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(value["type"], "delivery", "{value}");
                return value;
            }
        }
    }

    /// Reads for a moment: a ping read is answered (on the next read).
    async fn answer_pings(&mut self) {
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(message)) = tokio::time::timeout_at(until, self.socket.next()).await {
            assert!(
                !matches!(message, Ok(Message::Close(_))),
                "closed: {message:?}"
            );
        }
    }

    async fn answer(&mut self, delivery: &Value, status: u16) {
        let result = json!({
            "type": "result",
            "forward_id": delivery["forward_id"],
            "duration_ms": 7,
            "status": status,
            "body": "ok",
        });
        self.socket
            .send(Message::Text(result.to_string().into()))
            .await
            .unwrap();
    }
}

impl Socket {
    /// Waits for the server's close frame: its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the server closes the connection")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// The delivery's request as a receiver would get it, for the signature check.
fn as_received(delivery: &Value) -> Received {
    use base64::Engine as _;
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in delivery["headers"].as_object().unwrap() {
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.as_str().unwrap().parse().unwrap(),
        );
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(delivery["body_base64"].as_str().unwrap())
        .unwrap();
    Received {
        headers,
        body: body.into(),
    }
}

/// Mirroring a stream copies its subscriptions and leaves the stream alone; deliveries made
/// while the listener is away wait for it to reconnect within the grace period; once it has
/// been gone longer, the session is deleted and cannot be connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waits_for_its_listener_for_the_grace_period_only() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    let session = open_session(
        &app,
        json!({"stream_id": stream_id, "forward_to": "http://localhost:3000/webhook"}),
    )
    .await;
    let id = session["id"].as_str().unwrap().to_string();
    let secret = session["signing_secret"].as_str().unwrap().to_string();
    assert_eq!(session["subscriptions"], stream["subscriptions"]);
    assert_ne!(
        secret,
        app.get(&format!("/v1/event-streams/{stream_id}/secret"))
            .await
            .1["secret"]
    );

    let mut socket = Socket::connect(&app, &id).await;
    app.publish(event("evt-mirror", "user.created")).await;
    let delivery = socket.delivery().await;
    assert_eq!(delivery["event_id"], "evt-mirror");
    assert_eq!(delivery["event_type"], "user.created");
    verify(&secret, &as_received(&delivery)).expect("signed with the session's secret");
    socket.answer(&delivery, 204).await;
    app.wait_for_delivery(&id, "evt-mirror", |d| d["status"] == "succeeded")
        .await;
    // The mirrored stream got its own delivery, untouched.
    receiver.wait_for(1).await;
    let own = app
        .wait_for_delivery(stream_id, "evt-mirror", |d| d["status"] == "succeeded")
        .await;
    assert_ne!(own["id"], delivery["delivery_id"]);

    // Away, then back within the grace period: what was published meanwhile arrives.
    drop(socket);
    app.publish(event("evt-while-away", "user.created")).await;
    app.clock.advance(Duration::from_secs(30));
    let mut socket = Socket::connect(&app, &id).await;
    let delivery = socket.delivery().await;
    assert_eq!(delivery["event_id"], "evt-while-away");
    socket.answer(&delivery, 200).await;
    let delivered = app
        .wait_for_delivery(&id, "evt-while-away", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        delivered["attempts"].as_array().unwrap().len(),
        1,
        "nothing is counted while the listener is away: {delivered}"
    );

    // A connection keeps the session alive past its first expiry, answering pings.
    for _ in 0..2 {
        app.clock.advance(Duration::from_secs(50));
        socket.answer_pings().await;
    }
    let (status, _) = app.get(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(status, 200, "a connected session does not expire");

    // Gone for longer than the grace period: the session ends. Each step lets the reaper
    // look again, whenever the server notices the connection is gone.
    drop(socket);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut waited = Duration::ZERO;
    loop {
        let (status, _) = app.get(&format!("/v1/event-streams/{id}")).await;
        if status == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never expired"
        );
        app.clock.advance(Duration::from_secs(20));
        waited += Duration::from_secs(20);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        waited >= Duration::from_secs(60),
        "not before the grace period: {waited:?}"
    );
    let refused = tokio_tungstenite::connect_async(connect_request(&app, &id, ADMIN_TOKEN)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("an expired session must refuse: {other:?}"),
    }
    let (status, _) = app.get(&format!("/v1/event-streams/{stream_id}")).await;
    assert_eq!(status, 200, "the mirrored stream stays");
}

/// Bad input gets a clear 4xx; a tenant cannot reach another's session; a listener that
/// sends what the protocol does not allow is disconnected with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_sessions_refuse_what_they_cannot_serve() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/event-streams",
            &json!({
                "name": "sneaky",
                "subscriptions": [{"event_type": "user.created"}],
                "destination": {"type": "listen", "configuration": {"forward_to": "http://localhost:1/x"}}
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("herald listen"),
        "{body}"
    );

    for (request, code) in [
        (
            json!({"forward_to": "http://localhost:3000/x"}),
            "invalid_request",
        ),
        (
            json!({"event_types": ["user.*"], "stream_id": "est_x", "forward_to": "http://localhost:3000/x"}),
            "invalid_request",
        ),
        (
            json!({"event_types": ["user.*"], "forward_to": "localhost:3000"}),
            "invalid_request",
        ),
        (
            json!({"event_types": ["nothing.*"], "forward_to": "http://localhost:3000/x"}),
            "invalid_request",
        ),
        (
            json!({"event_types": [], "forward_to": "http://localhost:3000/x"}),
            "invalid_request",
        ),
        (
            json!({"stream_id": "est_missing", "forward_to": "http://localhost:3000/x"}),
            "not_found",
        ),
    ] {
        let (status, body) = app.post("/v1/listen-sessions", &request).await;
        assert!(status.is_client_error(), "{request}: {status} {body}");
        assert_eq!(body["error"]["code"], code, "{request}: {body}");
    }

    let session = open_session(
        &app,
        json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
    )
    .await;
    let id = session["id"].as_str().unwrap().to_string();
    // Not a WebSocket opening.
    let (status, body) = app.get(&format!("/v1/listen-sessions/{id}/connect")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "websocket_required");
    // Another tenant's token sees no such session.
    let (status, _) = app
        .post("/v1/tenants", &json!({"name": "other", "id": "ten_other"}))
        .await;
    assert_eq!(status, 201);
    let other = app
        .tenant_token("ten_other", &["create:event_streams"])
        .await;
    match tokio_tungstenite::connect_async(connect_request(&app, &id, &other)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("another tenant must not connect: {other:?}"),
    }
    let (status, _) = app
        .request_as(
            &other,
            reqwest::Method::DELETE,
            &format!("/v1/listen-sessions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // A plain stream is not a session.
    let receiver = Receiver::start().await;
    let plain = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let (status, _) = app
        .delete(&format!(
            "/v1/listen-sessions/{}",
            plain["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404);

    // A message outside the protocol ends the connection with a reason.
    let mut socket = Socket::connect(&app, &id).await;
    socket
        .socket
        .send(Message::Text("{\"type\": \"gossip\"}".into()))
        .await
        .unwrap();
    let (code, reason) = socket.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("cannot read"), "{reason}");

    // At most ten sessions per tenant.
    for _ in 1..10 {
        open_session(
            &app,
            json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
        )
        .await;
    }
    let (status, body) = app
        .post(
            "/v1/listen-sessions",
            &json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "listen_session_limit");
    // Ending one makes room.
    let (status, _) = app.delete(&format!("/v1/listen-sessions/{id}")).await;
    assert_eq!(status, 204);
    open_session(
        &app,
        json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
    )
    .await;
}

/// On a shared store, only the node the listener is connected to sends the session's
/// deliveries, wherever the event was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn with_two_nodes_the_listeners_node_delivers() {
    let database = postgres_database().await;
    let url = database.url.clone();
    let node = |c: &mut herald::Config| {
        c.database_url = Some(Secret::new(url.clone()));
        c.secret_key = Some(Secret::new("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="));
    };
    let one = spawn_app_with(node).await;
    let two = spawn_app_with(node).await;
    let session = open_session(
        &one,
        json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
    )
    .await;
    let id = session["id"].as_str().unwrap().to_string();
    let mut socket = Socket::connect(&one, &id).await;
    for i in 0..5 {
        two.publish(event(&format!("evt-two-{i}"), "user.created"))
            .await;
    }
    // Each node has a manual clock of its own, started when it was: node one's must reach
    // the time node two made the deliveries due at.
    one.clock.advance(Duration::from_secs(1));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let delivery = socket.delivery().await;
        seen.push(delivery["event_id"].as_str().unwrap().to_string());
        socket.answer(&delivery, 200).await;
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..5).map(|i| format!("evt-two-{i}")).collect::<Vec<_>>()
    );
    for i in 0..5 {
        let delivery = two
            .wait_for_delivery(&id, &format!("evt-two-{i}"), |d| d["status"] == "succeeded")
            .await;
        assert_eq!(
            delivery["attempts"].as_array().unwrap().len(),
            1,
            "{delivery}"
        );
    }
}

/// A session's stream belongs to its command: the stream API may not change it; ending it,
/// by DELETE or by deleting its stream, closes its connection at once; a newer connection
/// replaces an older one, which is closed with a reason; a revoked token ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_and_is_replaced_as_its_command_expects() {
    let app = spawn_app().await;
    let open = || async {
        open_session(
            &app,
            json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let id = open().await;
    let (status, body) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"status": "paused"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("herald listen"),
        "{body}"
    );
    let (status, body) = app
        .post(&format!("/v1/event-streams/{id}/secret/rotate"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // A newer connection replaces the first, which hears why. The first is known to hold
    // the session once a delivery came over it.
    let mut first = Socket::connect(&app, &id).await;
    app.publish(event("evt-first", "user.created")).await;
    let delivery = first.delivery().await;
    first.answer(&delivery, 200).await;
    let mut second = Socket::connect(&app, &id).await;
    let (code, reason) = first.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("newer connection"), "{reason}");
    app.publish(event("evt-second", "user.created")).await;
    let delivery = second.delivery().await;
    assert_eq!(delivery["event_id"], "evt-second");
    second.answer(&delivery, 200).await;
    app.wait_for_delivery(&id, "evt-second", |d| d["status"] == "succeeded")
        .await;

    // DELETE closes the connection now.
    let (status, _) = app.delete(&format!("/v1/listen-sessions/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(
        second.closed().await,
        (1000, "the session has ended".to_string())
    );

    // So does deleting its stream.
    let id = open().await;
    let mut socket = Socket::connect(&app, &id).await;
    let (status, _) = app.delete(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(socket.closed().await.0, 1000);

    // A revoked token ends its connection at the next check.
    let (status, created) = app
        .post(
            "/v1/tokens",
            &json!({"name": "listen", "scopes": ["create:event_streams"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap();
    let (status, session) = app
        .request_as(
            token,
            reqwest::Method::POST,
            "/v1/listen-sessions",
            Some((
                "application/json",
                serde_json::to_vec(
                    &json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
                )
                .unwrap(),
            )),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let id = session["id"].as_str().unwrap();
    let (socket, _) = tokio_tungstenite::connect_async(connect_request(&app, id, token))
        .await
        .unwrap();
    let mut socket = Socket { socket };
    // The connection is known to be served (its touches timed from now) once a delivery
    // came over it.
    app.publish(event("evt-before-revoke", "user.created"))
        .await;
    let delivery = socket.delivery().await;
    socket.answer(&delivery, 200).await;
    let (status, _) = app
        .delete(&format!("/v1/tokens/{}", created["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 204);
    app.clock.advance(Duration::from_secs(21));
    let (code, reason) = socket.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("no longer valid"), "{reason}");
}

/// A server that stops while the listener is answering waits for the answer: the attempt
/// is recorded with the local status, not as a broken connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_waits_for_the_listeners_answers() {
    // The embedded store, whose data outlives the process for the look after the restart.
    let app = spawn_app_with(|c| c.database_url = None).await;
    let session = open_session(
        &app,
        json!({"event_types": ["user.created"], "forward_to": "http://localhost:3000/x"}),
    )
    .await;
    let id = session["id"].as_str().unwrap().to_string();
    let mut socket = Socket::connect(&app, &id).await;
    app.publish(event("evt-stopping", "user.created")).await;
    let delivery = socket.delivery().await;
    let data_dir = app.data_dir().to_path_buf();
    let stopped = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stopped.is_finished(), "the server waits for the answer");
    socket.answer(&delivery, 200).await;
    assert_eq!(socket.closed().await.0, 1001);
    let dir = stopped.await.unwrap();
    let app = spawn_app_with(|c| {
        c.database_url = None;
        c.data_dir = data_dir;
    })
    .await;
    let found = app
        .wait_for_delivery(&id, "evt-stopping", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(found["attempts"][0]["response_status"], 200, "{found}");
    drop(dir);
}
