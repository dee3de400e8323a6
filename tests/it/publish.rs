//! Publishing: validation, batches, idempotency, authentication.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn post_raw(
    app: &TestApp,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> (StatusCode, Value) {
    app.request(
        reqwest::Method::POST,
        "/v1/events",
        Some((content_type, body.into())),
    )
    .await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

#[tokio::test]
async fn every_route_needs_a_valid_bearer_token() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/event-types"),
        (reqwest::Method::POST, "/v1/events"),
        (reqwest::Method::GET, "/v1/event-streams"),
        (reqwest::Method::POST, "/v1/event-streams"),
        (reqwest::Method::GET, "/v1/event-streams/est_x"),
        (reqwest::Method::GET, "/v1/event-streams/est_x/secret"),
        (reqwest::Method::GET, "/v1/deliveries/dlv_x"),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path} without a token");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");

        let response = app
            .http
            .request(method.clone(), app.url(path))
            .bearer_auth("hrd_not_a_real_token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path} with a wrong token");
    }
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_catalog_lists_every_seed_event_with_a_sample() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/event-types").await;
    assert_eq!(status, StatusCode::OK);
    let types = body["event_types"].as_array().unwrap();
    let names: Vec<&str> = types.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for name in [
        "flow.run.finished",
        "user.created",
        "organization.member.added",
        "mfa.enabled",
    ] {
        assert!(names.contains(&name), "{name} missing");
    }
    assert!(
        types
            .iter()
            .all(|t| t["category"].is_string() && t["sample_data"].is_object())
    );

    let (_, flows) = app.get("/v1/event-types?category=flow").await;
    let flows = flows["event_types"].as_array().unwrap();
    assert!(!flows.is_empty() && flows.iter().all(|t| t["category"] == "flow"));
}

#[tokio::test]
async fn a_minimal_event_gets_an_id_and_a_stream_delivery() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.*"], json!({}))
        .await;
    let body = app
        .publish(json!({"type": "user.created", "data": {"user_id": "u1"}}))
        .await;
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("evt_") && id.len() == 30, "{id}");
    assert_eq!(body["duplicate"], false);
    assert_eq!(body["deliveries"], 1);
    assert_eq!(body["source"], "urn:herald:ten_default");
    let deliveries = app.deliveries(stream["id"].as_str().unwrap(), id).await;
    assert_eq!(deliveries.len(), 1);
    assert!(deliveries[0]["id"].as_str().unwrap().starts_with("dlv_"));
}

#[tokio::test]
async fn publishing_the_same_source_and_id_twice_stores_it_once() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    let event = json!({"id": "e-1", "source": "/auth", "type": "user.created"});
    let first = app.publish(event.clone()).await;
    let second = app.publish(event).await;
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["deliveries"], 0);
    assert_eq!(app.deliveries(stream_id, "e-1").await.len(), 1);

    // The same id from another source is another event.
    let other = app
        .publish(json!({"id": "e-1", "source": "/billing", "type": "user.created"}))
        .await;
    assert_eq!(other["duplicate"], false);
    assert_eq!(app.deliveries(stream_id, "e-1").await.len(), 2);
}

#[tokio::test]
async fn bad_events_get_clear_errors() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "application/json",
            br#"{"type":"nope.unknown"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "unknown_event_type",
        ),
        (
            "application/json",
            br#"{"type":"user.created""#.to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "application/json",
            b"not json at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "application/cloudevents+json",
            br#"{"data":{"a":1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "missing_type",
        ),
        (
            "application/json",
            br#"{"type":"user.created","time":"last tuesday"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "application/json",
            br#"{"type":"user.created","specversion":"0.3"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "application/json",
            br#"{"type":"user.created","id":"a\u0000b"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "application/json",
            br#"{"type":"user.created","userid":"u\u0000"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "application/json",
            br#"[{"type":"user.created"}]"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "text/plain",
            br#"{"type":"user.created"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "application/cloudevents-batch+json",
            br#"{"type":"user.created"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "application/cloudevents-batch+json",
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let text = String::from_utf8_lossy(&body).into_owned();
        let (got, response) = post_raw(&app, content_type, body).await;
        assert_eq!(got, status, "{content_type} {text}: {response}");
        assert_eq!(error_code(&response), code, "{content_type} {text}");
        assert!(response["error"]["message"].as_str().unwrap().len() > 10);
    }
}

#[tokio::test]
async fn size_limits_are_enforced_with_their_own_codes() {
    let app = spawn_app().await;
    let big = json!({"type": "user.created", "data": {"blob": "x".repeat(256 * 1024)}});
    let (status, body) =
        post_raw(&app, "application/json", serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "event_too_large");

    // The same event inside a batch is refused by index.
    let batch = json!([{"type": "user.created"}, big]);
    let (status, body) = app.post_batch(&batch).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "event_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]")
    );

    let too_many: Vec<Value> = (0..1001).map(|_| json!({"type": "user.created"})).collect();
    let (status, body) = app.post_batch(&too_many).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "batch_too_large");
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app.create_stream(&receiver.url, &["*"], json!({})).await;
    let stream_id = stream["id"].as_str().unwrap();

    let bad = json!([
        {"id": "b-1", "source": "/s", "type": "user.created"},
        {"id": "b-2", "source": "/s", "type": "no.such.type"},
    ]);
    let (status, body) = app.post_batch(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "unknown_event_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]")
    );
    let (status, _) = app
        .get(&format!("/v1/event-streams/{stream_id}/deliveries/b-1"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing of a refused batch is stored"
    );

    let good: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("g-{i}"), "source": "/s", "type": "flow.run.finished"}))
        .collect();
    let (status, body) = app.post_batch(&good).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1000);
    assert!(
        events
            .iter()
            .all(|e| e["duplicate"] == false && e["deliveries"] == 1)
    );
    assert_eq!(events[999]["id"], "g-999");
    receiver.wait_for(1000).await;
}

/// A deeply nested event is refused when it arrives, with a clear 400, so the tenant's audit
/// log stays readable; other JSON bodies have the same limit.
#[tokio::test]
async fn deeply_nested_json_is_refused_and_the_log_stays_readable() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let body = format!(r#"{{"id": "deep", "type": "user.created", "data": {deep}}}"#);
    let (status, error) = post_raw(&app, "application/cloudevents+json", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["code"], "too_deep", "{error}");
    let batch = format!(r#"[{{"id": "deep", "type": "user.created", "data": {deep}}}]"#);
    let (status, error) = post_raw(&app, "application/cloudevents-batch+json", batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    // Just inside the limit: accepted, and the log shows it.
    let fine = format!("{}{}", "[".repeat(60), "]".repeat(60));
    let body = format!(r#"{{"id": "fine", "type": "user.created", "data": {fine}}}"#);
    let (status, _) = post_raw(&app, "application/cloudevents+json", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, list) = app.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let (status, shown) = app.get("/v1/events/fine").await;
    assert_eq!(status, StatusCode::OK, "{shown}");

    let stream = json!({
        "name": "deep", "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "https://example.com"}},
        "x": serde_json::from_str::<Value>(&format!("{}{}", "[".repeat(70), "]".repeat(70))).unwrap(),
    });
    let (status, error) = app.post("/v1/event-streams", &stream).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["code"], "too_deep", "{error}");
}

/// A publish whose fan-out is too large for one commit is answered at once with the number of
/// deliveries each event gets, and every one of them then arrives, exactly once.
#[tokio::test]
async fn a_large_fan_out_is_answered_at_once_and_delivered_in_full() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let streams = 12;
    for i in 0..streams {
        app.create_stream(&receiver.url, &["user.*"], json!({"name": format!("s{i}")}))
            .await;
    }
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("fan-{i}"), "type": "user.created"}))
        .collect();
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, 202, "{body}");
    for event in body["events"].as_array().unwrap() {
        assert_eq!(event["deliveries"], streams, "{body}");
    }
    let received = receiver.wait_for(100 * streams).await;
    let mut per_event = std::collections::HashMap::<String, usize>::new();
    for r in &received {
        *per_event
            .entry(r.json()["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), 100);
    assert!(per_event.values().all(|&n| n == streams), "{per_event:?}");
}
