//! `GET /v1/events/stream`: the event log as Server-Sent Events, resumed across disconnects
//! without gaps or repeats, filtered, per tenant, and refused with 410 once an offset's event
//! is gone. Run on both stores (CI runs the API tests again on PostgreSQL); two real nodes
//! publishing at once on PostgreSQL are in `two_nodes_publishing_at_once_are_read_once_each`.
//!
//! `herald events tail` runs as a process against `herald serve` processes, each test on
//! the store it picks: resumed across a restart on both stores, across a proxy that drops
//! its connections in front of two PostgreSQL nodes, from the server's time when it was
//! dropped before any event, and backing off when connections end empty.

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::cli::tail::{SseMessage, SseParser};
use herald::clock::Clock;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

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

/// On PostgreSQL an event joins the log once every older transaction has ended. A reader
/// that starts at a time while another transaction on the server is open starts before the
/// events that transaction holds back, whenever they were received: those received before
/// the time are skipped, not served.
#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn a_reader_from_a_time_skips_earlier_events_an_open_transaction_held_back() {
    let database = postgres_database().await;
    let app = spawn_app_with(|c| {
        c.database_url = Some(herald::secret::Secret::new(database.url.clone()));
    })
    .await;
    let base = app.url("");
    let other = crate::helpers::sql_client(&database.url).await;
    other
        .batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    app.publish(event("old", "user.created")).await;
    app.clock.advance(Duration::from_secs(60));
    let from = herald::event::format_time(app.clock.now_ms());
    app.publish(event("new", "user.created")).await;
    let query = format!(
        "?from_timestamp={}",
        url::form_urlencoded::byte_serialize(from.as_bytes()).collect::<String>()
    );
    let mut reader = SseClient::open(&base, ADMIN_TOKEN, &query, None).await;
    other.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        reader.next().await.data["id"],
        "new",
        "not `old`, before the time"
    );
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

/// A `herald events tail --json` process, its printed lines as they come.
struct Tail {
    child: Child,
    stdout: UnboundedReceiver<String>,
    stderr: UnboundedReceiver<String>,
}

impl Tail {
    fn start(server: &str, args: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["events", "tail", "--json"])
            .args(args)
            .env("HERALD_SERVER", server)
            .env("HERALD_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the herald binary starts");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Tail {
            child,
            stdout,
            stderr,
        }
    }

    /// The ids of the events printed up to and including `last`.
    async fn events_until(&mut self, last: &str) -> Vec<String> {
        let mut printed = Vec::new();
        while printed.last().is_none_or(|id| id != last) {
            printed.push(self.next_event().await);
        }
        printed
    }

    /// The id of the next event printed.
    async fn next_event(&mut self) -> String {
        let line = tokio::time::timeout(PATIENCE, self.stdout.recv())
            .await
            .expect("tail printed an event within the test's patience")
            .expect("tail is running");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert!(value["offset"].is_string(), "{line}");
        value["event"]["id"].as_str().unwrap().to_string()
    }

    /// The delay, in seconds, of the next reconnection tail announces.
    async fn next_reconnection(&mut self) -> u64 {
        let mut other = Vec::new();
        loop {
            let line = tokio::time::timeout(PATIENCE, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("tail did not reconnect; it said {other:?}"))
                .expect("tail is running");
            match line.split_once("; reconnecting in ") {
                Some((_, after)) => return after.trim_end_matches(" s").parse().unwrap(),
                None => other.push(line),
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines a child writes to `pipe`, read on a thread of their own.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> UnboundedReceiver<String> {
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

async fn publish_to(base: &str, id: &str) {
    let sent = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&event(id, "user.created"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202, "{id}");
}

/// What the proxy does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// Forwards both ways until cut.
    Through,
    /// Closes it at once, as a server that is down would.
    Refuse,
    /// Forwards the request and the head of the answer, then closes it: the stream ends
    /// before any event.
    HeadOnly,
}

/// A TCP proxy on port 0 in front of Herald nodes (the `n`th connection goes to node
/// `n % nodes`), that a test cuts to drop `tail`'s connection without either end meaning to.
struct CutProxy {
    url: String,
    state: Arc<Mutex<ProxyState>>,
    /// Connections whose answer started to reach the client.
    answered: tokio::sync::watch::Receiver<usize>,
}

struct ProxyState {
    relay: Relay,
    /// Cancelled to close every connection open.
    live: CancellationToken,
    /// When each connection was accepted.
    accepted: Vec<Instant>,
}

impl CutProxy {
    async fn start(nodes: &[&str]) -> CutProxy {
        let nodes: Vec<SocketAddr> = nodes
            .iter()
            .map(|base| base.trim_start_matches("http://").parse().unwrap())
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ProxyState {
            relay: Relay::Through,
            live: CancellationToken::new(),
            accepted: Vec::new(),
        }));
        let (answered_tx, answered) = tokio::sync::watch::channel(0);
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (relay, cut, n) = {
                    let mut state = shared.lock().unwrap();
                    state.accepted.push(Instant::now());
                    (state.relay, state.live.clone(), state.accepted.len() - 1)
                };
                if relay == Relay::Refuse {
                    continue; // Dropped: the connection closes.
                }
                let node = nodes[n % nodes.len()];
                let answered = answered_tx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = relay_one(client, node, relay, answered) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        CutProxy {
            url,
            state,
            answered,
        }
    }

    fn relay(&self, relay: Relay) {
        self.state.lock().unwrap().relay = relay;
    }

    /// Closes every connection open.
    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.live.cancel();
        state.live = CancellationToken::new();
    }

    fn accepted(&self) -> Vec<Instant> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Waits until `n` connections in all have had an answer start to reach the client.
    async fn wait_answered(&self, n: usize) {
        let mut answered = self.answered.clone();
        tokio::time::timeout(PATIENCE, answered.wait_for(|a| *a >= n))
            .await
            .expect("the connection was answered within the test's patience")
            .unwrap();
    }
}

async fn relay_one(
    mut client: TcpStream,
    node: SocketAddr,
    relay: Relay,
    answered: tokio::sync::watch::Sender<usize>,
) {
    let Ok(mut server) = TcpStream::connect(node).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut head = Vec::new();
        let mut first = true;
        loop {
            let n = from_server.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let mut chunk = &buf[..n];
            let mut done = false;
            if relay == Relay::HeadOnly {
                let before = head.len();
                head.extend_from_slice(chunk);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    chunk = &buf[..end + 4 - before];
                    done = true;
                }
            }
            to_client.write_all(chunk).await?;
            if std::mem::take(&mut first) {
                answered.send_modify(|a| *a += 1);
            }
            if done {
                return Ok(());
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
        _ = down => {}
    }
}

/// `herald events tail --json` against a real server that is killed and started again on the
/// same address and data: the command reconnects on its own and prints every event once, in
/// order. On the embedded store here, on PostgreSQL below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_across_a_server_restart_without_gaps_or_repeats() {
    tail_across_a_restart(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn tail_resumes_across_a_server_restart_on_postgres() {
    let database = postgres_database().await;
    tail_across_a_restart(&[
        ("HERALD_DATABASE_URL", &database.url),
        ("HERALD_SECRET_KEY", SECRET_KEY),
    ])
    .await;
}

/// The secret key of the PostgreSQL nodes in these tests, the same on each.
const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

async fn tail_across_a_restart(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("HERALD_LISTEN", listen.as_str())])
        .collect();
    let mut server = start_server(dir.path(), &env);
    let base = server.base.clone();
    let mut tail = Tail::start(&base, &["--from-timestamp", "2000-01-01T00:00:00Z"]);
    for i in 0..10 {
        publish_to(&base, &format!("e{i}")).await;
    }
    let mut printed = Vec::new();
    for _ in 0..10 {
        printed.push(tail.next_event().await);
    }
    // Killed: the connection breaks without an end.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    let server = start_server(dir.path(), &env);
    assert_eq!(server.base, base, "the same address");
    for i in 10..20 {
        publish_to(&base, &format!("e{i}")).await;
    }
    publish_to(&base, "sentinel").await;
    printed.extend(tail.events_until("sentinel").await);
    let mut expected: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    expected.push("sentinel".into());
    assert_eq!(printed, expected, "every event once, in order");
}

/// Started at the end (no `--from`), `tail` whose connection drops before any event arrives
/// resumes from the time of its first connection, the server's `Date`: what was published
/// while it was away is printed, once, rather than skipped by starting at the end again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_started_at_the_end_keeps_what_was_published_while_it_was_away() {
    let dir = tempfile::tempdir().unwrap();
    // A server process, on the system clock that `Date` reads too.
    let server = start_server(dir.path(), &[]);
    let proxy = CutProxy::start(&[&server.base]).await;
    let mut tail = Tail::start(&proxy.url, &[]);
    // The first answer's head, and its `Date`, reached tail: drop it, and keep it away.
    proxy.wait_answered(1).await;
    proxy.relay(Relay::Refuse);
    proxy.cut();
    for i in 0..5 {
        publish_to(&server.base, &format!("away{i}")).await;
    }
    proxy.relay(Relay::Through);
    proxy.wait_answered(2).await;
    publish_to(&server.base, "back").await;
    let printed = tail.events_until("back").await;
    assert_eq!(
        printed,
        ["away0", "away1", "away2", "away3", "away4", "back"],
        "every event since tail started, once"
    );
}

/// A connection that ends before it carries anything (here a proxy that passes the answer's
/// head and closes) does not reset the backoff: tail waits longer each time, as it would
/// for a server it cannot reach, rather than reconnecting every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_backs_off_after_connections_that_end_before_any_event() {
    let app = spawn_app().await;
    let proxy = CutProxy::start(&[&app.url("")]).await;
    proxy.relay(Relay::HeadOnly);
    let mut tail = Tail::start(&proxy.url, &[]);
    let mut delays = Vec::new();
    for _ in 0..3 {
        delays.push(tail.next_reconnection().await);
    }
    assert_eq!(delays, [1, 2, 4], "each announced wait doubles");
    // And each was waited: no connection came sooner than announced.
    let accepted = proxy.accepted();
    assert!(accepted.len() >= 3, "{accepted:?}");
    for (i, pair) in accepted.windows(2).enumerate().take(delays.len()) {
        let between = pair[1] - pair[0];
        assert!(
            between >= Duration::from_secs(delays[i]),
            "connection {} came {between:?} after the one before, announced {} s",
            i + 2,
            delays[i]
        );
    }
}

/// `tail` through a proxy in front of two PostgreSQL nodes, while four publishers spread
/// over both publish at once; the proxy drops tail's connection now and then, and each
/// reconnection goes to the other node. Every acknowledged event is printed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn tail_across_two_nodes_publishing_at_once_prints_every_event_once() {
    const PER_PUBLISHER: usize = 100;
    let database = postgres_database().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| {
            start_server(
                dir.path(),
                &[
                    ("HERALD_DATABASE_URL", &database.url),
                    ("HERALD_SECRET_KEY", SECRET_KEY),
                ],
            )
        })
        .collect();
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let proxy = CutProxy::start(&[&bases[0], &bases[1]]).await;
    let mut tail = Tail::start(&proxy.url, &["--from-timestamp", "2000-01-01T00:00:00Z"]);

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (base, acknowledged) = (bases[p % 2].clone(), acknowledged.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                let id = format!("p{p}-{i}");
                publish_to(&base, &id).await;
                acknowledged.lock().unwrap().insert(id);
            }
        }));
    }
    let mut printed = Vec::new();
    for (cuts, cut_at) in [50, 150, 250, 350].into_iter().enumerate() {
        while printed.len() < cut_at {
            printed.push(tail.next_event().await);
        }
        // Each cut drops a live connection: the next cut waits for tail to be back.
        proxy.cut();
        proxy.wait_answered(cuts + 2).await;
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    publish_to(&bases[1], "sentinel").await;
    printed.extend(tail.events_until("sentinel").await);
    printed.pop();
    let unique: HashSet<&String> = printed.iter().collect();
    assert_eq!(unique.len(), printed.len(), "no event twice");
    let acknowledged = acknowledged.lock().unwrap();
    assert_eq!(
        printed.len(),
        acknowledged.len(),
        "every acknowledged event"
    );
    assert!(printed.iter().all(|id| acknowledged.contains(id)));
    assert!(
        proxy.accepted().len() >= 5,
        "tail reconnected after each cut"
    );
    drop(nodes);
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
