//! Span export over OTLP: the real `herald` binary (the subscriber is process-wide, set up by
//! `main`) sends its spans to a collector on port 0. An attempt's exported span continues the
//! publisher's trace and is the parent the receiver's `traceparent` names; the spans still
//! batched at a graceful stop are sent before the process exits.

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::StatusCode;
use herald::trace::TraceParent;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Attribute;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use tokio::sync::Notify;

use crate::helpers::*;

const PUBLISHER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An OTLP/HTTP collector on port 0 that keeps every span posted to `/v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    arrived: Arc<Notify>,
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (kept, notify) = (spans.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let posted = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans);
                kept.lock().unwrap().extend(posted);
                notify.notify_waiters();
                StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector {
            url: format!("http://{addr}"),
            spans,
            arrived,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for the first span that `found` picks.
    async fn wait_for(&self, what: &str, found: impl Fn(&Span) -> bool) -> Span {
        let wait = async {
            loop {
                // Registered before the check, so an arrival in between is not missed.
                let arrived = self.arrived.notified();
                if let Some(span) = self.spans().into_iter().find(&found) {
                    return span;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| {
                panic!("the collector never got {what}; it got {:#?}", self.spans())
            })
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Attribute> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Attribute::StringValue(value)) => value.clone(),
        other => panic!("{key} is {other:?} on {span:#?}"),
    }
}

fn is_attempt(span: &Span) -> bool {
    span.name == "attempt"
}

/// Herald exporting its spans to `collector` every `delay_ms`, with a stream to `receiver`
/// (whose id comes back too). `start_server` logs at `warn`: spans are exported whatever the
/// log's level.
async fn exporting_herald(
    collector: &Collector,
    receiver: &Receiver,
    dir: &std::path::Path,
    delay_ms: &str,
) -> (Server, String) {
    let server = start_server(
        dir,
        &[
            ("HERALD_OTLP_ENDPOINT", &collector.url),
            ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
        ],
    );
    let stream_id = server
        .create_stream(&reqwest::Client::new(), receiver)
        .await;
    (server, stream_id)
}

/// Publishes event `id` with the publisher's `traceparent`.
async fn publish_traced(server: &Server, id: &str, request_id: &str) {
    publish(server, id, request_id, Some(PUBLISHER)).await;
}

async fn publish(server: &Server, id: &str, request_id: &str, traceparent: Option<&str>) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", request_id);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request
        .json(&json!({"id": id, "type": "user.created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn an_exported_attempt_continues_the_publishers_trace_and_parents_the_receivers() {
    let collector = Collector::start().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, stream_id) = exporting_herald(&collector, &receiver, dir.path(), "50").await;
    publish_traced(&server, "exported", "req_exported").await;

    let received = receiver.wait_for(1).await;
    let header = received[0].header("traceparent").expect("a traceparent");
    let sent = TraceParent::parse(header).unwrap();
    let delivery = received[0].header("webhook-id").unwrap();
    let publisher = TraceParent::parse(PUBLISHER).unwrap();
    assert_eq!(sent.trace_id, publisher.trace_id);

    let attempt = collector.wait_for("an attempt span", is_attempt).await;
    assert_eq!(
        attempt.trace_id, publisher.trace_id,
        "the publisher's trace"
    );
    assert_eq!(
        attempt.parent_span_id, publisher.parent_id,
        "a child of the publisher's span"
    );
    assert_eq!(
        attempt.span_id, sent.parent_id,
        "the receiver's traceparent names the exported span ({header})"
    );
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(text(&attempt, "tenant"), "ten_default");
    assert_eq!(text(&attempt, "stream"), stream_id);
    assert_eq!(text(&attempt, "delivery"), delivery);
    assert_eq!(text(&attempt, "status"), "succeeded");
    assert_eq!(
        attribute(&attempt, "http.response.status_code"),
        Some(&Attribute::IntValue(200))
    );

    // The publish request's own span, in the publisher's trace too.
    let request = collector
        .wait_for("the publish request's span", |span| {
            span.name == "request"
                && attribute(span, "request_id")
                    == Some(&Attribute::StringValue("req_exported".into()))
        })
        .await;
    assert_eq!(request.trace_id, publisher.trace_id);
    assert_eq!(request.parent_span_id, publisher.parent_id);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(text(&request, "method"), "POST");
    assert_eq!(text(&request, "path"), "/v1/events");
    assert_eq!(
        attribute(&request, "http.response.status_code"),
        Some(&Attribute::IntValue(202))
    );
}

#[tokio::test]
async fn spans_still_batched_are_sent_at_a_graceful_stop() {
    let collector = Collector::start().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A batch due in an hour: only the stop can send it.
    let (server, _) = exporting_herald(&collector, &receiver, dir.path(), "3600000").await;
    publish_traced(&server, "last", "req_last").await;
    let received = receiver.wait_for(1).await;
    let sent = TraceParent::parse(received[0].header("traceparent").unwrap()).unwrap();
    assert!(
        collector.spans().is_empty(),
        "nothing is due before the stop"
    );

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Waited for off the runtime: the collector answers the last export on it.
    let exit = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || {
            let mut server = server;
            server.child.wait()
        }),
    )
    .await
    .expect("herald stops after SIGTERM")
    .unwrap()
    .unwrap();
    assert!(exit.success(), "herald exited with {exit} after SIGTERM");

    let attempt = collector.wait_for("the attempt span", is_attempt).await;
    assert_eq!(attempt.span_id, sent.parent_id);
}

/// A publish that sent no trace: its request span starts one, and its attempts continue it.
#[tokio::test]
async fn an_untraced_publish_and_its_attempts_share_the_request_spans_trace() {
    let collector = Collector::start().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = exporting_herald(&collector, &receiver, dir.path(), "50").await;
    publish(&server, "plain", "req_plain", None).await;
    let received = receiver.wait_for(1).await;
    let sent = TraceParent::parse(received[0].header("traceparent").unwrap()).unwrap();

    let request = collector
        .wait_for("the publish request's span", |span| {
            span.name == "request"
                && attribute(span, "request_id")
                    == Some(&Attribute::StringValue("req_plain".into()))
        })
        .await;
    let attempt = collector.wait_for("an attempt span", is_attempt).await;
    assert_eq!(attempt.trace_id, request.trace_id, "one trace");
    assert_eq!(attempt.parent_span_id, request.span_id, "under the publish");
    assert_eq!(attempt.span_id, sent.parent_id);
    assert_eq!(sent.trace_id.to_vec(), request.trace_id);
}
