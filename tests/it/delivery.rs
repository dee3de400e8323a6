//! Webhook delivery: payloads, headers, signatures, authorization, SSRF refusal, isolation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn secret_of(app: &TestApp, stream_id: &str) -> String {
    let (status, body) = app
        .get(&format!("/v1/event-streams/{stream_id}/secret"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_published_event_arrives_as_a_signed_cloudevent() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["flow.run.finished"], json!({}))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({
        "id": "run-42", "source": "/flows", "type": "flow.run.finished",
        "time": "2025-01-29T18:08:43.440Z", "subject": "flow-7",
        "data": {"flowRun": {"id": "run-42", "status": "FAILED"}},
        "platformid": "plat-1", "projectid": "proj-1", "userid": "user-1"
    }))
    .await;

    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(
        got.header("content-type"),
        Some("application/cloudevents+json")
    );
    assert!(got.header("user-agent").unwrap().starts_with("herald/"));
    let delivery_id = got.header("webhook-id").unwrap();
    assert!(delivery_id.starts_with("dlv_"));
    let timestamp: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert_eq!(timestamp, app.clock_now_secs());
    for name in got.headers.keys() {
        assert!(
            !name.as_str().starts_with("ce-"),
            "structured mode sends no ce- headers"
        );
    }

    let secret = secret_of(&app, stream_id).await;
    verify(&secret, &got).expect("the reference verifier accepts the signature");
    let mut tampered = got.clone();
    tampered.body = axum::body::Bytes::from([&got.body[..], b" "].concat());
    assert!(
        verify(&secret, &tampered).is_err(),
        "a changed body fails verification"
    );

    let event = got.json();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], "run-42");
    assert_eq!(event["source"], "/flows");
    assert_eq!(event["type"], "flow.run.finished");
    assert_eq!(event["time"], "2025-01-29T18:08:43.440Z");
    assert_eq!(event["subject"], "flow-7");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["flowRun"]["status"], "FAILED");
    assert_eq!(event["platformid"], "plat-1");
    assert_eq!(event["projectid"], "proj-1");
    assert_eq!(event["userid"], "user-1");

    let delivery = app
        .wait_for_delivery(stream_id, "run-42", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(delivery["id"], delivery_id);
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["response_status"], 200);
    assert!(attempt["duration_ms"].as_i64().unwrap() >= 0);
    assert!(attempt["error"].is_null());
}

#[tokio::test]
async fn audit_format_and_bearer_authorization() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(
            &receiver.url,
            &["user.signed.in"],
            json!({
                "payload_format": "audit",
                "destination": {"type": "webhook", "configuration": {
                    "webhook_endpoint": receiver.url,
                    "webhook_authorization": {"method": "bearer", "token": "s3cret-token"}
                }}
            }),
        )
        .await;
    assert_eq!(stream["payload_format"], "audit");
    app.publish(json!({
        "id": "evt-a", "type": "user.signed.in", "time": "2025-02-01T10:00:00Z",
        "data": {"user": {"id": "u1"}}, "platformid": "p1", "userid": "u1"
    }))
    .await;
    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.header("authorization"), Some("Bearer s3cret-token"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    let body = got.json();
    assert_eq!(
        body,
        json!({
            "id": "evt-a", "action": "user.signed.in", "data": {"user": {"id": "u1"}},
            "created": "2025-02-01T10:00:00.000Z", "updated": "2025-02-01T10:00:00.000Z",
            "platformId": "p1", "projectId": null, "userId": "u1"
        })
    );
}

#[tokio::test]
async fn basic_and_custom_header_authorization() {
    let app = spawn_app().await;
    let basic = Receiver::start().await;
    let custom = Receiver::start().await;
    for (receiver, auth) in [
        (
            &basic,
            json!({"method": "basic", "username": "herald", "password": "pw"}),
        ),
        (
            &custom,
            json!({"method": "custom_header", "header_name": "X-Api-Key", "header_value": "k-123"}),
        ),
    ] {
        app.create_stream(
            &receiver.url,
            &["user.created"],
            json!({"destination": {"type": "webhook", "configuration": {
                "webhook_endpoint": receiver.url, "webhook_authorization": auth
            }}}),
        )
        .await;
    }
    app.publish(json!({"type": "user.created"})).await;
    let got = basic.wait_for(1).await.remove(0);
    assert_eq!(got.header("authorization"), Some("Basic aGVyYWxkOnB3"));
    let got = custom.wait_for(1).await.remove(0);
    assert_eq!(got.header("x-api-key"), Some("k-123"));
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_until_the_grace_period_ends() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    let old = secret_of(&app, stream_id).await;

    let (status, rotated) = app
        .post(
            &format!("/v1/event-streams/{stream_id}/secret/rotate"),
            &json!({"grace_period_seconds": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(secret_of(&app, stream_id).await, new);

    app.publish(json!({"type": "user.created"})).await;
    let got = receiver.wait_for(1).await.remove(0);
    let signatures: Vec<&str> = got
        .header("webhook-signature")
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(signatures.len(), 2);
    verify(&new, &got).unwrap();
    verify(&old, &got).unwrap();

    // Past the grace period only the new secret signs. The clock has moved an hour, beyond
    // the verifier's timestamp tolerance, so the reference library signs for comparison.
    app.clock.advance(Duration::from_secs(3601));
    app.publish(json!({"type": "user.created"})).await;
    let got = receiver.wait_for(2).await.remove(1);
    let expected = |secret: &str| {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .sign(
                got.header("webhook-id").unwrap(),
                got.header("webhook-timestamp").unwrap().parse().unwrap(),
                &got.body,
            )
            .unwrap()
    };
    assert_eq!(got.header("webhook-signature").unwrap(), expected(&new));
    assert_ne!(expected(&old), expected(&new));
}

#[tokio::test]
async fn ssrf_guard_refuses_loopback_at_delivery_time() {
    let app = spawn_app_with(|config| config.allow_cidrs.clear()).await;
    let receiver = Receiver::start().await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let by_ip = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let by_name = app
        .create_stream(
            &format!("http://localhost:{port}/hook"),
            &["user.created"],
            json!({}),
        )
        .await;
    app.publish(json!({"id": "ssrf-1", "type": "user.created"}))
        .await;

    for stream in [&by_ip, &by_name] {
        let delivery = app
            .wait_for_attempts(stream["id"].as_str().unwrap(), "ssrf-1", 1)
            .await;
        let error = &delivery["attempts"][0]["error"];
        assert_eq!(error["kind"], "blocked", "{delivery}");
        // The tenant learns only that the address is refused: not which, nor its range.
        assert_eq!(
            error["message"], "the destination's address is not allowed",
            "{error}"
        );
        assert_eq!(
            delivery["status"], "pending",
            "a refused address is retried later"
        );
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the loopback receiver"
    );
}

#[tokio::test]
async fn transport_failures_are_recorded_by_kind() {
    let app = spawn_app_with(|config| config.delivery_timeout_seconds = 1).await;
    let hung = Receiver::start().await;
    hung.always(Reply::status(200).delayed(Duration::from_secs(30)));
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let slow = app
        .create_stream(&hung.url, &["user.created"], json!({}))
        .await;
    let refused = app
        .create_stream(
            &format!("http://127.0.0.1:{closed_port}/hook/s3cr3t-path?key=s3cr3t-query"),
            &["user.created"],
            json!({}),
        )
        .await;
    app.publish(json!({"id": "t-1", "type": "user.created"}))
        .await;

    let d = app
        .wait_for_attempts(slow["id"].as_str().unwrap(), "t-1", 1)
        .await;
    assert_eq!(d["attempts"][0]["error"]["kind"], "timeout", "{d}");
    let d = app
        .wait_for_attempts(refused["id"].as_str().unwrap(), "t-1", 1)
        .await;
    assert_eq!(d["attempts"][0]["error"]["kind"], "connect", "{d}");
    // Webhook URLs often carry a secret: error texts never hold them.
    let message = d["attempts"][0]["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("s3cr3t") && !message.contains("127.0.0.1"),
        "{message}"
    );
}

#[tokio::test]
async fn a_hung_endpoint_does_not_delay_other_streams() {
    let app = spawn_app_with(|config| config.max_in_flight_per_stream = 4).await;
    let hung = Receiver::start().await;
    hung.always(Reply::status(200).delayed(Duration::from_secs(60)));
    let healthy = Receiver::start().await;
    app.create_stream(&hung.url, &["user.created"], json!({}))
        .await;
    app.create_stream(&healthy.url, &["user.created"], json!({}))
        .await;

    let batch: Vec<Value> = (0..200).map(|_| json!({"type": "user.created"})).collect();
    let (status, _) = app.post_batch(&batch).await;
    assert_eq!(status, 202);
    healthy.wait_for(200).await;
    let at_hung = hung.received().len();
    assert!(
        at_hung <= 4,
        "the hung stream holds at most its own 4 slots, saw {at_hung}"
    );
}

#[tokio::test]
async fn large_response_bodies_are_cut_to_4_kib() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(400).with_body(&"é".repeat(5000)));
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    app.publish(json!({"id": "big-1", "type": "user.created"}))
        .await;
    let d = app
        .wait_for_delivery(stream["id"].as_str().unwrap(), "big-1", |d| {
            d["status"] == "failed"
        })
        .await;
    let body = d["attempts"][0]["response_body"].as_str().unwrap();
    assert!(
        body.len() <= 4096 + 3 && body.len() >= 4000,
        "{}",
        body.len()
    );
    assert_eq!(d["attempts"][0]["response_status"], 400);
}

#[tokio::test]
async fn binary_response_bodies_are_kept_as_readable_text() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    // NUL bytes, as in a protobuf answer: text columns refuse them, so they are replaced.
    receiver.always(Reply::status(200).with_body("ok\0\u{1}\0done"));
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    app.publish(json!({"id": "bin-1", "type": "user.created"}))
        .await;
    let d = app
        .wait_for_delivery(stream["id"].as_str().unwrap(), "bin-1", |d| {
            d["status"] == "succeeded"
        })
        .await;
    assert_eq!(
        d["attempts"][0]["response_body"],
        "ok\u{FFFD}\u{1}\u{FFFD}done"
    );
}

impl TestApp {
    pub fn clock_now_secs(&self) -> i64 {
        use herald::clock::Clock;
        self.clock.now_ms().div_euclid(1000)
    }
}

/// Regression: with every global slot taken by one stream, another stream's queued work used
/// to wait forever once those slots freed, since only the finishing stream was restarted.
#[tokio::test]
async fn queued_work_starts_when_global_slots_free_up() {
    let app = spawn_app_with(|config| {
        config.max_in_flight = 2;
        config.max_in_flight_per_stream = 2;
    })
    .await;
    let slow = Receiver::start().await;
    slow.always(Reply::status(200).delayed(Duration::from_millis(200)));
    let fast = Receiver::start().await;
    app.create_stream(&slow.url, &["user.created"], json!({}))
        .await;
    app.create_stream(&fast.url, &["user.deleted"], json!({}))
        .await;

    let mut events: Vec<Value> = (0..4).map(|_| json!({"type": "user.created"})).collect();
    events.extend((0..3).map(|_| json!({"type": "user.deleted"})));
    let (status, _) = app.post_batch(&events).await;
    assert_eq!(status, 202);
    fast.wait_for(3).await;
    slow.wait_for(4).await;
}

#[tokio::test]
async fn binary_mode_sends_data_as_the_body_and_attributes_as_ce_headers() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(
            &receiver.url,
            &["flow.run.finished"],
            json!({"content_mode": "binary"}),
        )
        .await;
    assert_eq!(stream["content_mode"], "binary");
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({
        "id": "run-7", "source": "/flows", "type": "flow.run.finished",
        "time": "2025-01-29T18:08:43.440Z", "subject": "flow 7 %",
        "data": {"flowRun": {"id": "run-7"}}, "projectid": "proj-1"
    }))
    .await;

    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.json(), json!({"flowRun": {"id": "run-7"}}));
    assert_eq!(got.header("ce-specversion"), Some("1.0"));
    assert_eq!(got.header("ce-id"), Some("run-7"));
    assert_eq!(got.header("ce-source"), Some("/flows"));
    assert_eq!(got.header("ce-type"), Some("flow.run.finished"));
    assert_eq!(got.header("ce-time"), Some("2025-01-29T18:08:43.440Z"));
    assert_eq!(
        got.header("ce-subject"),
        Some("flow%207%20%25"),
        "values are percent-encoded"
    );
    assert_eq!(got.header("ce-projectid"), Some("proj-1"));
    let secret = secret_of(&app, stream_id).await;
    verify(&secret, &got).expect("binary mode is signed like structured mode");

    // Binary mode carries CloudEvents attributes: the audit shape cannot use it.
    let (status, body) = app
        .patch(
            &format!("/v1/event-streams/{stream_id}"),
            &json!({"payload_format": "audit"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("content_mode")
    );
}
