//! Test harness: the real server on port 0 with a controllable clock, a real receiver on port
//! 0 whose answers a test scripts, and typed request helpers.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use herald::clock::ManualClock;
use herald::secret::Secret;
pub use herald::store::postgres::Scratch;
use herald::{App, Config};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "hrd_test_admin_token_0123456789";

/// How long a test waits for something asynchronous before failing. Never a timing
/// assertion: only a bound on a hung test.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub addr: SocketAddr,
    /// The metrics listener, when the test's configuration set `metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
    _database: Option<Scratch>,
}

/// The server as tests usually want it: plain http and loopback receivers allowed.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.to_path_buf();
    config.allow_http = true;
    config.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// With `HERALD_TEST_APP_DATABASE=postgres`, every app runs on PostgreSQL instead (a schema of
/// its own on `HERALD_TEST_DATABASE_URL`): CI runs the API tests that way a second time.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let database = match std::env::var("HERALD_TEST_APP_DATABASE").as_deref() {
        Ok("postgres") => Some(
            test_database()
                .await
                .expect("HERALD_TEST_APP_DATABASE=postgres needs HERALD_TEST_DATABASE_URL"),
        ),
        _ => None,
    };
    if let Some(database) = &database {
        config.database_url = Some(Secret::new(database.url.clone()));
    }
    adjust(&mut config);
    let clock = Arc::new(ManualClock::default());
    let app = App::build(config, clock.clone())
        .await
        .expect("the app builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        metrics_addr,
        clock,
        http: reqwest::Client::new(),
        shutdown,
        server: Some(server),
        _dir: dir,
        _database: database,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's data directory (the embedded store's, unless on PostgreSQL).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Shuts the server down gracefully and hands back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self._dir, placeholder)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        self.request_as(ADMIN_TOKEN, method, path, body).await
    }

    /// A request with `token` as the bearer credential.
    pub async fn request_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        // Text answers (the metrics) as a string; anything else must be JSON.
        let text_answer = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"));
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else if text_answer {
            Value::String(text)
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request(
            reqwest::Method::POST,
            path,
            Some(("application/json", bytes)),
        )
        .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request(
            reqwest::Method::PATCH,
            path,
            Some(("application/json", bytes)),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    /// A request of the platform admin acting on `tenant` (its `Herald-Tenant` header), with
    /// a JSON body if one is given.
    pub async fn request_in(
        &self,
        tenant: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("herald-tenant", tenant);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    /// Creates a token of `tenant` named `name` with `scopes`: (its id, its secret).
    pub async fn token_in(&self, tenant: &str, name: &str, scopes: &[&str]) -> (String, String) {
        let (status, body) = self
            .request_in(
                tenant,
                reqwest::Method::POST,
                "/v1/tokens",
                Some(&json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    /// Creates a tenant token with `scopes`, acting as the platform admin on `tenant`.
    pub async fn tenant_token(&self, tenant: &str, scopes: &[&str]) -> String {
        self.token_in(tenant, "test token", scopes).await.1
    }

    /// Publishes a batch (`application/cloudevents-batch+json`).
    pub async fn post_batch(&self, events: &impl serde::Serialize) -> (StatusCode, Value) {
        let body = serde_json::to_vec(events).unwrap();
        self.request(
            reqwest::Method::POST,
            "/v1/events",
            Some(("application/cloudevents-batch+json", body)),
        )
        .await
    }

    /// Publishes one event; panics unless it is accepted.
    pub async fn publish(&self, event: Value) -> Value {
        let (status, body) = self.post("/v1/events", &event).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Creates a webhook stream to `url` subscribed to `types`, with extra fields merged in.
    pub async fn create_stream(&self, url: &str, types: &[&str], extra: Value) -> Value {
        let mut body = json!({
            "name": unique_stream_name("test stream"),
            "subscriptions": types.iter().map(|t| json!({"event_type": t})).collect::<Vec<_>>(),
            "destination": {"type": "webhook", "configuration": {"webhook_endpoint": url}},
        });
        if let (Value::Object(base), Value::Object(more)) = (&mut body, extra) {
            base.extend(more);
        }
        let (status, stream) = self.post("/v1/event-streams", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{stream}");
        stream
    }

    /// Fires a test delivery of `event_type`'s sample to the stream (`POST …/test`).
    pub async fn test_stream(&self, stream_id: &str, event_type: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/event-streams/{stream_id}/test"),
            &json!({ "event_type": event_type }),
        )
        .await
    }

    /// The deliveries of `event_id` to `stream_id`.
    pub async fn deliveries(&self, stream_id: &str, event_id: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!(
                "/v1/event-streams/{stream_id}/deliveries/{event_id}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    /// Polls the single delivery of `event_id` to `stream_id` until `done` holds for it.
    pub async fn wait_for_delivery(
        &self,
        stream_id: &str,
        event_id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self
                .get(&format!(
                    "/v1/event-streams/{stream_id}/deliveries/{event_id}"
                ))
                .await;
            if status == StatusCode::OK && done(&body[0]) {
                return body[0].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery of {event_id} never reached the expected state; last seen: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the delivery has `n` recorded attempts.
    pub async fn wait_for_attempts(&self, stream_id: &str, event_id: &str, n: usize) -> Value {
        self.wait_for_delivery(stream_id, event_id, |d| {
            d["attempts"].as_array().map_or(0, Vec::len) >= n
        })
        .await
    }
}

/// What a receiver answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Hold the answer back this long (a slow or hung endpoint).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn with_body(mut self, body: &str) -> Reply {
        self.body = body.to_string();
        self
    }

    pub fn delayed(mut self, by: Duration) -> Reply {
        self.delay = Some(by);
        self
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Option<Reply>>,
    arrived: Notify,
}

/// A webhook receiver on port 0. Answers from its script, then its default (200).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = handler_state.clone();
            async move {
                let reply = {
                    let scripted = state.script.lock().unwrap().pop_front();
                    scripted
                        .or_else(|| state.default_reply.lock().unwrap().clone())
                        .unwrap_or_else(|| Reply::status(200))
                };
                state
                    .received
                    .lock()
                    .unwrap()
                    .push(Received { headers, body });
                state.arrived.notify_waiters();
                if let Some(delay) = reply.delay {
                    tokio::time::sleep(delay).await;
                }
                let mut response = axum::response::Response::builder().status(reply.status);
                for (name, value) in &reply.headers {
                    response = response.header(*name, value);
                }
                response.body(axum::body::Body::from(reply.body)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Answers every unscripted request with `reply`.
    pub fn always(&self, reply: Reply) {
        *self.state.default_reply.lock().unwrap() = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let wait = async {
            loop {
                let arrived = self.state.arrived.notified();
                // Counted without copying: a wait for thousands of requests stays linear.
                if self.state.received.lock().unwrap().len() >= n {
                    return self.received();
                }
                arrived.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the receiver never saw {n} requests; it got {}",
                    self.received().len()
                )
            })
    }

    /// Waits until `done` holds for everything received so far, and returns it.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let wait = async {
            loop {
                // Registered before the check, so an arrival in between is not missed.
                let arrived = self.state.arrived.notified();
                let received = self.received();
                if done(&received) {
                    return received;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the receiver never saw {what}; it got {} requests",
                    self.received().len()
                )
            })
    }
}

/// A PostgreSQL schema of its own for one test, on the server `HERALD_TEST_DATABASE_URL`
/// names; dropped with everything in it when the test ends. `None` when the variable is
/// unset.
pub async fn test_database() -> Option<Scratch> {
    let base = std::env::var("HERALD_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())?;
    let scratch = Scratch::create(&base, "herald_test")
        .await
        .unwrap_or_else(|e| {
            panic!("HERALD_TEST_DATABASE_URL is set, so PostgreSQL must be reachable: {e}")
        });
    Some(scratch)
}

/// The database of a test that needs PostgreSQL. Such a test carries
/// `#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]`:
/// `build.rs` sets that cfg when the variable is set at build time, so without it the test is
/// reported as ignored rather than passing without having run.
pub async fn postgres_database() -> Scratch {
    test_database()
        .await
        .expect("this test needs HERALD_TEST_DATABASE_URL (it was set when the tests were built)")
}

/// A plain connection to a test database (its `url` names the test's schema), for a test to
/// look at or hold what the store wrote.
pub async fn sql_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// A `herald serve` child process.
pub struct Server {
    pub child: Child,
    pub base: String,
}

/// A failing test must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `herald` binary on `data_dir` with the test settings, plus `env` (which wins).
pub fn start_server(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    try_start_server(data_dir, env)
        .unwrap_or_else(|status| panic!("herald exited with {status} before listening"))
}

/// Like `start_server`, but a process that exits before it listens gives its exit status.
pub fn try_start_server(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<Server, std::process::ExitStatus> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", data_dir)
        .env("HERALD_ALLOW_HTTP", "true")
        .env("HERALD_ALLOW_CIDRS", "127.0.0.0/8")
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        // A narrow pipe to the receiver, so a backlog is pending when the process dies.
        .env("HERALD_MAX_IN_FLIGHT_PER_STREAM", "2")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the herald binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(line) => {
                if let Some(url) = line.unwrap().strip_prefix("herald listening on ") {
                    break url.to_string();
                }
            }
            None => return Err(child.wait().unwrap()),
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server { child, base })
}

impl Server {
    /// Creates a stream of every event type to `receiver`; gives its id.
    pub async fn create_stream(&self, http: &reqwest::Client, receiver: &Receiver) -> String {
        let response = http
            .post(format!("{}/v1/event-streams", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({
                "name": unique_stream_name("everything"),
                "subscriptions": [{"event_type": "*"}],
                "destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}}
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// `base` and a number no other call in this process gave: stream names are unique per
/// tenant, and tests create several streams.
pub fn unique_stream_name(base: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{base} {n}")
}

/// What one run of `herald` printed, and its exit code.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The value of a `key  value` line of a key/value block.
    pub fn field(&self, key: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)
                    .filter(|rest| rest.starts_with("  "))
                    .map(str::trim)
            })
            .unwrap_or_else(|| panic!("no `{key}` line: {self:?}"))
    }
}

/// Checks a received request's Standard Webhooks signature with the reference library.
pub fn verify(secret: &str, received: &Received) -> Result<(), String> {
    standardwebhooks::Webhook::new(secret)
        .map_err(|e| e.to_string())?
        .verify(&received.body, &received.headers)
        .map_err(|e| e.to_string())
}
