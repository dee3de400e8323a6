//! Trace context: every attempt's `traceparent` continues the trace of the publish that
//! caused it, retries included, whether the publisher sent a trace or not.

use std::time::Duration;

use herald::trace::TraceParent;
use serde_json::json;

use crate::helpers::*;

const PUBLISHER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn retry_once() -> serde_json::Value {
    json!({"retry_policy": {
        "max_attempts": 3, "initial_interval_seconds": 10, "multiplier": 2,
        "max_interval_seconds": 3600, "jitter": 0
    }})
}

/// The trace context each request for event `id` carried.
fn contexts(receiver: &Receiver, id: &str) -> Vec<TraceParent> {
    receiver
        .received()
        .iter()
        .filter(|r| r.json()["id"] == id)
        .map(|r| {
            let header = r.header("traceparent").expect("a traceparent header");
            TraceParent::parse(header).unwrap_or_else(|| panic!("not a traceparent: {header}"))
        })
        .collect()
}

#[tokio::test]
async fn attempts_continue_the_publishers_trace_even_when_retried() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503)]);
    let stream = app
        .create_stream(&receiver.url, &["user.created"], retry_once())
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    let publisher = TraceParent::parse(PUBLISHER).unwrap();

    let response = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("traceparent", PUBLISHER)
        .header("tracestate", "congo=t61rcWkgMzE")
        .json(&json!({"id": "traced", "type": "user.created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.wait_for_attempts(stream_id, "traced", 1).await;
    app.clock.advance(Duration::from_secs(10));
    let received = receiver.wait_for(2).await;

    let attempts = contexts(&receiver, "traced");
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(
            attempt.trace_id, publisher.trace_id,
            "the publisher's trace"
        );
        assert_eq!(attempt.flags, publisher.flags);
        assert_ne!(attempt.parent_id, publisher.parent_id, "a span of its own");
    }
    assert_ne!(attempts[0].parent_id, attempts[1].parent_id);
    assert_eq!(received[1].header("tracestate"), Some("congo=t61rcWkgMzE"));
    // Kept with the event, as CloudEvents' distributed-tracing attribute.
    assert_eq!(received[1].json()["traceparent"], PUBLISHER);
}

#[tokio::test]
async fn an_events_own_trace_wins_over_the_request_and_an_invalid_one_is_ignored() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("traceparent", PUBLISHER)
        .json(&json!({"id": "own", "type": "user.created", "traceparent": own}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let response = app
        .http
        .post(app.url("/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("traceparent", "not-a-trace")
        .json(&json!({"id": "bad", "type": "user.created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        202,
        "an invalid traceparent is not an error"
    );
    let received = receiver.wait_for(2).await;
    let attempt = contexts(&receiver, "own").remove(0);
    assert_eq!(attempt.trace_id, TraceParent::parse(own).unwrap().trace_id);
    let bad = received.iter().find(|r| r.json()["id"] == "bad").unwrap();
    assert!(bad.json().get("traceparent").is_none(), "not kept");
    assert!(
        contexts(&receiver, "bad")[0].trace_id != TraceParent::parse(PUBLISHER).unwrap().trace_id
    );
}

/// Without a trace from the publisher, an event's deliveries still share one trace: derived
/// from the event, the same on a retry as on the first attempt.
#[tokio::test]
async fn an_untraced_events_attempts_share_one_trace() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503), Reply::status(503)]);
    let stream = app
        .create_stream(&receiver.url, &["user.created"], retry_once())
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "plain", "type": "user.created"}))
        .await;
    app.publish(json!({"id": "other", "type": "user.created"}))
        .await;
    app.wait_for_attempts(stream_id, "plain", 1).await;
    app.wait_for_attempts(stream_id, "other", 1).await;
    app.clock.advance(Duration::from_secs(10));
    receiver.wait_for(4).await;
    let attempts = contexts(&receiver, "plain");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].trace_id, attempts[1].trace_id);
    assert_ne!(attempts[0].parent_id, attempts[1].parent_id);
    assert_ne!(
        contexts(&receiver, "other")[0].trace_id,
        attempts[0].trace_id
    );
    assert!(receiver.received()[0].json().get("traceparent").is_none());
}
