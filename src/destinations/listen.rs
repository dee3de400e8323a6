//! The `listen` destination: the temporary stream of a `herald listen` session. Its
//! deliveries travel over the WebSocket the command opened to the server (no inbound port
//! on the developer's machine, no relay), already signed and shaped exactly as a webhook
//! POST; the command forwards each to a local URL and sends back what that URL answered,
//! which is recorded as the attempt's outcome like any other.
//!
//! This module owns the connection side the dispatcher sees: a registry of the sessions
//! connected to this node ([`Listeners`]), the client that hands a delivery to one and waits
//! for its result ([`ListenClient`]), and the messages both ends exchange ([`ToListener`],
//! [`FromListener`]). The route that accepts the WebSocket lives in `api::listen`, the
//! command in `cli::listen`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::webhook::{self, Envelope};
use super::{ErrorKind, Message, Outcome, RESPONSE_EXCERPT_BYTES, Report, StreamContext};
use crate::clock::Millis;

/// Longest `forward_to` shown on the stream.
const MAX_FORWARD_TO_LEN: usize = 2048;
/// Longest error text a listener may report for an attempt.
const MAX_ERROR_LEN: usize = 1024;
/// Deliveries waiting to be written to one connection.
const OUTBOX: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Where the session's `herald listen` forwards to, shown on the stream. Herald never
    /// sends there itself: the address is the developer's own machine.
    pub forward_to: String,
}

impl ListenConfig {
    /// Checks a session's `forward_to`. The destination kind itself is never accepted on a
    /// stream the API creates or changes: see [`super::Destination::validate`].
    pub fn validate_forward_to(forward_to: &str) -> Result<(), String> {
        if forward_to.len() > MAX_FORWARD_TO_LEN {
            return Err(format!(
                "`forward_to` must be at most {MAX_FORWARD_TO_LEN} characters"
            ));
        }
        match url::Url::parse(forward_to) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
            _ => Err(format!(
                "`forward_to` `{forward_to}` is not an http(s) URL such as http://localhost:3000/webhook"
            )),
        }
    }

    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({ "forward_to": self.forward_to })
    }
}

/// What the server sends a connected listener.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToListener {
    /// One attempt of one delivery: the webhook request to make locally.
    Delivery(Forward),
}

/// What a listener sends back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromListener {
    Result(ForwardResult),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Forward {
    /// Names this attempt on this connection; its result quotes it.
    pub forward_id: u64,
    pub delivery_id: String,
    pub event_id: String,
    pub event_type: String,
    /// How long the server waits for the result before it counts the attempt as timed out.
    pub timeout_ms: u64,
    /// The request's headers, Standard Webhooks signature included.
    pub headers: BTreeMap<String, String>,
    pub body_base64: String,
}

impl Forward {
    pub fn body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.body_base64)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardResult {
    pub forward_id: u64,
    /// How long the local request took.
    pub duration_ms: u64,
    /// The local answer's status; absent when no answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The answer's `Retry-After`, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// The start of the answer's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Why no answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ForwardError>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardError {
    /// `dns`, `connect`, `tls`, `timeout` or `io`.
    pub kind: String,
    pub message: String,
}

/// The sessions whose `herald listen` is connected to this node, by stream id. Only this
/// node's dispatcher sends a session's deliveries, so its results come back on the
/// connection that carried them.
#[derive(Debug, Default)]
pub struct Listeners {
    connected: Mutex<HashMap<String, Arc<Connection>>>,
    /// Held while a connection takes its session (in the store, then here), so two
    /// connections of one session on this node take it in the same order in both places.
    taking: tokio::sync::Mutex<()>,
}

/// One connected listener: what is waiting to be written to it, the attempts waiting for
/// its results, and whether this node ended it.
#[derive(Debug)]
pub struct Connection {
    outbox: mpsc::Sender<Forward>,
    pending: Mutex<HashMap<u64, oneshot::Sender<ForwardResult>>>,
    next_id: AtomicU64,
    ended: CancellationToken,
    why: std::sync::OnceLock<Ended>,
}

/// Why this node ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A newer connection of the session took its place.
    Replaced,
    /// The session was ended (`DELETE`).
    SessionEnded,
}

impl Listeners {
    /// Connects a session here, replacing the connection it had (which then gets nothing
    /// more). The receiver yields what to write to the new connection.
    pub fn attach(&self, stream_id: &str) -> (Arc<Connection>, mpsc::Receiver<Forward>) {
        let (outbox, receiver) = mpsc::channel(OUTBOX);
        let connection = Arc::new(Connection {
            outbox,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            ended: CancellationToken::new(),
            why: std::sync::OnceLock::new(),
        });
        let replaced = self
            .lock()
            .insert(stream_id.to_string(), connection.clone());
        if let Some(replaced) = replaced {
            replaced.end(Ended::Replaced);
        }
        (connection, receiver)
    }

    /// Ends the session's connection here, if it has one: it closes at once.
    pub fn end(&self, stream_id: &str) {
        if let Some(connection) = self.lock().remove(stream_id) {
            connection.end(Ended::SessionEnded);
        }
    }

    /// Disconnects `connection`, unless a newer one replaced it. Attempts still waiting on it
    /// fail at once. True if it was the session's connection.
    pub fn detach(&self, stream_id: &str, connection: &Arc<Connection>) -> bool {
        let mut connected = self.lock();
        let current = connected
            .get(stream_id)
            .is_some_and(|c| Arc::ptr_eq(c, connection));
        if current {
            connected.remove(stream_id);
        }
        drop(connected);
        connection.fail_pending();
        current
    }

    /// One connection at a time takes its session: hold the guard across the store's
    /// `hold_stream` and [`Listeners::attach`].
    pub async fn taking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.taking.lock().await
    }

    pub fn is_connected(&self, stream_id: &str) -> bool {
        self.lock().contains_key(stream_id)
    }

    fn get(&self, stream_id: &str) -> Option<Arc<Connection>> {
        self.lock().get(stream_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Connection>>> {
        self.connected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Connection {
    /// Resolves once this node ends the connection; [`Connection::why`] then says why.
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }

    pub fn why(&self) -> Option<Ended> {
        self.why.get().copied()
    }

    /// Attempts waiting for a result.
    pub fn pending_count(&self) -> usize {
        self.pending().len()
    }

    fn end(&self, why: Ended) {
        let _ = self.why.set(why);
        self.fail_pending();
        self.ended.cancel();
    }

    /// Hands a listener's result to the attempt waiting for it. False if none waits (an
    /// unknown id, a repeat, or an attempt that already timed out).
    pub fn complete(&self, result: ForwardResult) -> bool {
        match self.pending().remove(&result.forward_id) {
            Some(waiting) => waiting.send(result).is_ok(),
            None => false,
        }
    }

    fn fail_pending(&self) {
        self.pending().clear();
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ForwardResult>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A listen session's client: its signing keys and encoding, and the registry its
/// connection is found in at each attempt (the listener may reconnect between two).
#[derive(Debug)]
pub struct ListenClient {
    listeners: Arc<Listeners>,
    stream_id: String,
    envelope: Envelope,
    timeout: Duration,
}

impl ListenClient {
    pub fn build(stream: &StreamContext<'_>, shared: &super::Destinations) -> ListenClient {
        ListenClient {
            listeners: shared.listeners.clone(),
            stream_id: stream.stream_id.to_string(),
            envelope: Envelope::new(stream),
            timeout: shared.egress.timeout,
        }
    }

    pub async fn send(&self, batch: &[Message<'_>], now: Millis) -> Vec<Report> {
        let mut reports = Vec::with_capacity(batch.len());
        for message in batch {
            reports.push(self.forward(message, now).await);
        }
        reports
    }

    async fn forward(&self, message: &Message<'_>, now: Millis) -> Report {
        let started = Instant::now();
        // The listener just left (the dispatcher has yet to let the stream go): nothing is
        // sent, and the attempt is not counted.
        let not_sent = || Report {
            outcome: Outcome::NotSent,
            ..Report::failed(
                ErrorKind::Connect,
                "no `herald listen` is connected",
                started.elapsed(),
            )
        };
        let Some(connection) = self.listeners.get(&self.stream_id) else {
            return not_sent();
        };
        let (headers, body) = self.envelope.request(message, now);
        let forward_id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let forward = Forward {
            forward_id,
            delivery_id: message.id.to_string(),
            event_id: message.event.id.clone(),
            event_type: message.event.event_type.clone(),
            timeout_ms: self.timeout.as_millis() as u64,
            headers: headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
                })
                .collect(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&body),
        };
        let (waiting, result) = oneshot::channel();
        connection.pending().insert(forward_id, waiting);
        let queued = tokio::time::timeout(self.timeout, connection.outbox.send(forward)).await;
        if !matches!(queued, Ok(Ok(()))) {
            connection.pending().remove(&forward_id);
            return not_sent();
        }
        let remaining = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, result).await {
            Ok(Ok(result)) => report(result, now, started.elapsed()),
            Ok(Err(_)) => Report::failed(
                ErrorKind::Connect,
                "the `herald listen` connection closed before the local URL answered",
                started.elapsed(),
            ),
            Err(_) => {
                connection.pending().remove(&forward_id);
                Report::failed(
                    ErrorKind::Timeout,
                    format!(
                        "`herald listen` reported no result within {} s",
                        self.timeout.as_secs()
                    ),
                    started.elapsed(),
                )
            }
        }
    }
}

/// The attempt's record from what the listener reported, judged as a webhook's answer is.
/// The listener's own duration is taken up to what the server waited (`elapsed`).
fn report(result: ForwardResult, now: Millis, elapsed: Duration) -> Report {
    let duration = Duration::from_millis(result.duration_ms).min(elapsed);
    if let Some(status) = result.status {
        let Ok(status) = StatusCode::from_u16(status) else {
            return Report::failed(
                ErrorKind::Io,
                format!("`herald listen` reported an impossible status {status}"),
                duration,
            );
        };
        let retry_after = result
            .retry_after
            .as_deref()
            .and_then(|v| super::http::parse_retry_after(v, now));
        // A local `410 Gone` ends that delivery, not the session: a developer's handler
        // may answer anything while it is being written.
        let outcome = match webhook::classify(status, retry_after, now) {
            Outcome::DisableStream { .. } => Outcome::GiveUp,
            outcome => outcome,
        };
        return Report {
            outcome,
            duration,
            response_status: Some(status.as_u16()),
            response_body: Some(truncate(
                result.body.unwrap_or_default(),
                RESPONSE_EXCERPT_BYTES,
            )),
            error: None,
            detail: None,
        };
    }
    let (kind, message) = match result.error {
        Some(error) => (
            match error.kind.as_str() {
                "dns" => ErrorKind::Dns,
                "connect" => ErrorKind::Connect,
                "tls" => ErrorKind::Tls,
                "timeout" => ErrorKind::Timeout,
                _ => ErrorKind::Io,
            },
            truncate(error.message, MAX_ERROR_LEN),
        ),
        None => (
            ErrorKind::Io,
            "`herald listen` reported neither a status nor an error".to_string(),
        ),
    };
    Report::failed(kind, message, duration)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(result: ForwardResult, now: Millis) -> Report {
        report(result, now, Duration::from_secs(1))
    }

    fn result(status: Option<u16>, error: Option<(&str, &str)>) -> ForwardResult {
        ForwardResult {
            forward_id: 1,
            duration_ms: 12,
            status,
            retry_after: Some("30".into()),
            body: Some("é".repeat(3000)),
            error: error.map(|(kind, message)| ForwardError {
                kind: kind.into(),
                message: message.into(),
            }),
        }
    }

    #[test]
    fn a_reported_answer_is_judged_as_a_webhook_answer() {
        let ok = report_of(result(Some(204), None), 0);
        assert_eq!(ok.outcome, Outcome::Delivered);
        assert_eq!(ok.response_status, Some(204));
        assert_eq!(ok.duration, Duration::from_millis(12));
        let body = ok.response_body.unwrap();
        assert!(body.len() <= RESPONSE_EXCERPT_BYTES && body.starts_with('é'));

        let busy = report_of(result(Some(503), None), 0);
        assert_eq!(
            busy.outcome,
            Outcome::Retry {
                after: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            report_of(result(Some(400), None), 0).outcome,
            Outcome::GiveUp
        );
        assert_eq!(
            report_of(result(Some(410), None), 0).outcome,
            Outcome::GiveUp,
            "a local 410 never disables the session"
        );
        let impossible = report_of(result(Some(1000), None), 0);
        assert_eq!(impossible.error.unwrap().kind, ErrorKind::Io);
    }

    #[test]
    fn a_reported_failure_keeps_its_kind() {
        let refused = report_of(result(None, Some(("connect", "connection refused"))), 0);
        assert_eq!(refused.outcome, Outcome::Retry { after: None });
        let error = refused.error.unwrap();
        assert_eq!(
            (error.kind, error.message.as_str()),
            (ErrorKind::Connect, "connection refused")
        );
        let odd = report_of(result(None, Some(("weird", &"x".repeat(5000)))), 0);
        let error = odd.error.unwrap();
        assert_eq!(error.kind, ErrorKind::Io);
        assert_eq!(error.message.len(), MAX_ERROR_LEN);
        assert!(report_of(result(None, None), 0).error.is_some());
    }

    #[test]
    fn a_listener_cannot_claim_more_time_than_the_server_waited() {
        let mut claimed = result(Some(200), None);
        claimed.duration_ms = u64::MAX;
        let report = report(claimed, 0, Duration::from_millis(40));
        assert_eq!(report.duration, Duration::from_millis(40));
    }

    #[test]
    fn forward_to_must_be_an_http_url() {
        assert!(ListenConfig::validate_forward_to("http://localhost:3000/webhook").is_ok());
        assert!(ListenConfig::validate_forward_to("https://127.0.0.1/x").is_ok());
        assert!(ListenConfig::validate_forward_to("localhost:3000").is_err());
        assert!(ListenConfig::validate_forward_to("ftp://host/x").is_err());
        assert!(
            ListenConfig::validate_forward_to(&format!("http://h/{}", "a".repeat(3000))).is_err()
        );
    }

    #[tokio::test]
    async fn a_result_reaches_only_the_attempt_waiting_on_the_current_connection() {
        let listeners = Listeners::default();
        let (first, _rx1) = listeners.attach("est_1");
        let (waiting, result_rx) = oneshot::channel();
        first.pending().insert(7, waiting);
        // A reconnection replaces the first connection: it is ended, its waiting attempt
        // fails at once.
        let (second, _rx2) = listeners.attach("est_1");
        assert!(result_rx.await.is_err());
        first.ended().await;
        assert_eq!(first.why(), Some(Ended::Replaced));
        assert_eq!(second.why(), None);
        assert!(!first.complete(result(Some(200), None)));
        // The old connection's end leaves the new one connected.
        assert!(!listeners.detach("est_1", &first));
        assert!(listeners.is_connected("est_1"));
        let (waiting, result_rx) = oneshot::channel();
        second.pending().insert(1, waiting);
        assert!(second.complete(result(Some(200), None)));
        assert_eq!(result_rx.await.unwrap().status, Some(200));
        assert!(
            !second.complete(result(Some(200), None)),
            "a repeat is ignored"
        );
        assert!(listeners.detach("est_1", &second));
        assert!(!listeners.is_connected("est_1"));
        // Ending a session ends its connection here.
        let (third, _rx3) = listeners.attach("est_1");
        listeners.end("est_1");
        third.ended().await;
        assert_eq!(third.why(), Some(Ended::SessionEnded));
        assert!(!listeners.is_connected("est_1"));
    }

    #[tokio::test]
    async fn a_delivery_without_a_connection_is_not_sent_nor_counted() {
        let shared = super::super::Destinations::new(
            crate::net::ssrf::AddressPolicy::new(Vec::new()),
            Duration::from_secs(5),
            Default::default(),
        );
        let secrets = [crate::secret::StreamSecret {
            secret: crate::secret::Secret::new(crate::ids::signing_secret()),
            created_at: 0,
            expires_at: None,
        }];
        let context = StreamContext {
            tenant_id: "ten_1",
            stream_id: "est_1",
            encoding: super::super::Encoding {
                format: super::super::PayloadFormat::Cloudevents,
                mode: super::super::ContentMode::Structured,
            },
            secrets: &secrets,
        };
        let client = ListenClient::build(&context, &shared);
        let event = crate::event::Event {
            id: "evt_1".into(),
            source: "/t".into(),
            event_type: "user.created".into(),
            time: 0,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: serde_json::value::RawValue::from_string("null".into()).unwrap(),
            extensions: serde_json::Map::new(),
        };
        let message = Message {
            id: "dlv_1",
            tenant_id: "ten_1",
            event: &event,
        };
        let reports = client.send(&[message], 0).await;
        assert_eq!(reports[0].outcome, Outcome::NotSent);
    }
}
