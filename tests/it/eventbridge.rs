//! The `eventbridge` destination against moto: events reach a custom bus and, through a rule,
//! a queue the test reads back; a refused entry of a batch is retried alone; wrong
//! credentials give up with AWS's error code; a role is assumed through STS; `test` sends
//! through the same interface.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aws::{ACCOUNT, Moto, REGION, allow};
use crate::helpers::*;

fn eventbridge(moto: &Moto, bus: &str, key: &(String, String), extra: Value) -> Value {
    let mut configuration = json!({
        "aws_account_id": ACCOUNT,
        "aws_region": REGION,
        "event_bus_name": bus,
        "endpoint_url": moto.endpoint,
        "aws_access_key_id": key.0,
        "aws_secret_access_key": key.1,
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut configuration, extra) {
        base.extend(more);
    }
    json!({"type": "eventbridge", "configuration": configuration})
}

async fn create(app: &TestApp, destination: Value, types: &[&str], extra: Value) -> String {
    let mut body = json!({
        "name": "to the bus",
        "subscriptions": types.iter().map(|t| json!({"event_type": t})).collect::<Vec<_>>(),
        "destination": destination,
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut body, extra) {
        base.extend(more);
    }
    let (status, stream) = app.post("/v1/event-streams", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{stream}");
    stream["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn events_reach_the_bus_and_its_rules() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = moto.bus_to_queue("herald-test", "user.created").await;
    let key = moto.user("herald", &["events:PutEvents"]).await;
    let app = spawn_app().await;
    let stream = create(
        &app,
        eventbridge(&moto, "herald-test", &key, json!({})),
        &["user.*"],
        json!({}),
    )
    .await;
    let (_, shown) = app.get(&format!("/v1/event-streams/{stream}")).await;
    let shown = shown.to_string();
    assert!(
        !shown.contains(&key.1) && !shown.contains(&key.0),
        "credentials are write-only: {shown}"
    );

    app.publish(json!({
        "id": "u-1", "type": "user.created", "source": "/auth", "subject": "u_1",
        "data": {"user_id": "u_1", "email": "a@example.com"}
    }))
    .await;
    let d = app
        .wait_for_delivery(&stream, "u-1", |d| d["status"] == "succeeded")
        .await;
    let attempt = &d["attempts"][0];
    assert_eq!(attempt["response_status"], 200);
    assert!(
        attempt["detail"]["aws_event_id"].is_string(),
        "the attempt keeps EventBridge's event id: {attempt}"
    );

    let messages = moto.receive(&queue, 1).await;
    let message = &messages[0];
    assert_eq!(message["detail-type"], "user.created");
    assert_eq!(message["source"], "/auth");
    let detail = &message["detail"];
    assert_eq!(detail["specversion"], "1.0");
    assert_eq!(detail["id"], "u-1");
    assert_eq!(detail["subject"], "u_1");
    assert_eq!(
        detail["data"],
        json!({"user_id": "u_1", "email": "a@example.com"})
    );
}

#[tokio::test]
async fn the_audit_shape_and_a_fixed_source_are_honoured() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = moto.bus_to_queue("audit", "user.created").await;
    let key = moto.user("herald", &["events:PutEvents"]).await;
    let app = spawn_app().await;
    create(
        &app,
        eventbridge(
            &moto,
            "audit",
            &key,
            json!({"source": "com.example.herald"}),
        ),
        &["user.created"],
        json!({"payload_format": "audit"}),
    )
    .await;
    app.publish(json!({"id": "a-1", "type": "user.created", "data": {"n": 1}, "projectid": "p1"}))
        .await;
    let message = &moto.receive(&queue, 1).await[0];
    assert_eq!(message["source"], "com.example.herald");
    assert_eq!(message["detail"]["action"], "user.created");
    assert_eq!(message["detail"]["projectId"], "p1");
    assert_eq!(message["detail"]["data"], json!({"n": 1}));
}

#[tokio::test]
async fn wrong_credentials_give_up_with_the_aws_error_code() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.bus_to_queue("herald-test", "user.created").await;
    let (id, _) = moto.user("herald", &["events:PutEvents"]).await;
    let app = spawn_app().await;
    let wrong = (id, "not-the-secret".to_string());
    let stream = create(
        &app,
        eventbridge(&moto, "herald-test", &wrong, json!({})),
        &["user.created"],
        json!({}),
    )
    .await;
    app.publish(json!({"id": "w-1", "type": "user.created"}))
        .await;
    let d = app
        .wait_for_delivery(&stream, "w-1", |d| d["status"] == "failed")
        .await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a refused signature is not retried: {d}");
    assert_eq!(attempts[0]["error"]["kind"], "rejected");
    assert_eq!(
        attempts[0]["detail"]["aws_error_code"], "SignatureDoesNotMatch",
        "{d}"
    );
    assert!(
        attempts[0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("SignatureDoesNotMatch"),
        "{d}"
    );
}

#[tokio::test]
async fn a_role_is_assumed_with_the_tenant_as_external_id() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = moto.bus_to_queue("herald-test", "user.created").await;
    // The stream's own key may only assume the role: the put succeeds only as the role.
    let key = moto.user("herald", &["sts:AssumeRole"]).await;
    // The role trusts that user only when the external id is the tenant's: what keeps another
    // tenant of the same platform from naming this role.
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/herald")},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "ten_acme"}}
        }]
    })
    .to_string();
    moto.iam(&[
        ("Action", "CreateRole"),
        ("RoleName", "herald-writer"),
        ("AssumeRolePolicyDocument", &trust),
    ])
    .await;
    moto.iam(&[
        ("Action", "PutRolePolicy"),
        ("RoleName", "herald-writer"),
        ("PolicyName", "put"),
        ("PolicyDocument", &allow(&["events:PutEvents"])),
    ])
    .await;
    let app = spawn_app().await;
    let role = format!("arn:aws:iam::{ACCOUNT}:role/herald-writer");
    let with_role = eventbridge(
        &moto,
        "herald-test",
        &key,
        json!({"role_arn": role, "sts_endpoint_url": moto.endpoint}),
    );
    let (status, body) = app
        .post("/v1/tenants", &json!({"id": "ten_acme", "name": "Acme"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let acme = app
        .tenant_token(
            "ten_acme",
            &[
                "create:event_streams",
                "read:event_streams",
                "publish:events",
                "read:event_deliveries",
            ],
        )
        .await;
    let as_acme = |method, path: String, body: Value| {
        let app = &app;
        let acme = acme.clone();
        async move {
            let bytes = serde_json::to_vec(&body).unwrap();
            app.request_as(&acme, method, &path, Some(("application/json", bytes)))
                .await
        }
    };
    let stream_body = json!({
        "name": "acme bus", "subscriptions": [{"event_type": "user.created"}],
        "destination": with_role,
    });
    let (status, stream) = as_acme(
        reqwest::Method::POST,
        "/v1/event-streams".into(),
        stream_body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{stream}");
    assert_eq!(
        stream["destination"]["configuration"]["credentials"],
        "assume_role"
    );
    let stream = stream["id"].as_str().unwrap().to_string();
    let (status, _) = as_acme(
        reqwest::Method::POST,
        "/v1/events".into(),
        json!({"id": "r-1", "type": "user.created"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let delivery = loop {
        let (_, d) = app
            .request_as(
                &acme,
                reqwest::Method::GET,
                &format!("/v1/event-streams/{stream}/deliveries/r-1"),
                None,
            )
            .await;
        if d[0]["status"] != "pending" {
            break d[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(moto.receive(&queue, 1).await[0]["detail"]["id"], "r-1");

    // The same role named by another tenant: STS refuses it (the external id differs), and
    // the delivery fails with STS's answer.
    let (status, other) = app.post("/v1/event-streams", &stream_body).await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let other = other["id"].as_str().unwrap();
    app.publish(json!({"id": "r-2", "type": "user.created"}))
        .await;
    let d = app
        .wait_for_delivery(other, "r-2", |d| d["status"] != "pending")
        .await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"][0]["error"]["kind"], "credentials", "{d}");
    assert!(
        d["attempts"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AccessDenied"),
        "{d}"
    );

    // Without the role the same key is refused: the role is what made it work.
    let direct = create(
        &app,
        eventbridge(&moto, "herald-test", &key, json!({})),
        &["user.created"],
        json!({"name": "direct"}),
    )
    .await;
    app.publish(json!({"id": "r-3", "type": "user.created"}))
        .await;
    let d = app
        .wait_for_delivery(&direct, "r-3", |d| d["status"] != "pending")
        .await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"][0]["detail"]["aws_error_code"], "AccessDenied");
}

/// What the fault-injecting proxy saw of each `PutEvents` call: the ids of its entries.
type Calls = Arc<Mutex<Vec<Vec<String>>>>;

/// A proxy in front of moto that, on the first `PutEvents` call with several entries, takes
/// the second entry out before forwarding and answers for it with a throttling error, as
/// EventBridge does when it refuses part of a call.
async fn refusing_proxy(moto_endpoint: String) -> (String, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (seen, http, upstream) = (seen.clone(), http.clone(), moto_endpoint.clone());
        async move {
            let target = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut refused = None;
            if target == "AWSEvents.PutEvents" {
                let entries = request["Entries"].as_array().unwrap();
                let ids = entries
                    .iter()
                    .map(|e| {
                        let detail: Value =
                            serde_json::from_str(e["Detail"].as_str().unwrap()).unwrap();
                        detail["id"].as_str().unwrap().to_string()
                    })
                    .collect();
                let mut seen = seen.lock().unwrap();
                seen.push(ids);
                if seen.len() == 1 && entries.len() > 1 {
                    request["Entries"].as_array_mut().unwrap().remove(1);
                    refused = Some(1);
                }
            }
            let mut forward = http
                .post(format!("{upstream}/"))
                .body(serde_json::to_vec(&request).unwrap());
            for (name, value) in &headers {
                if name != "content-length" && name != "host" {
                    forward = forward.header(name, value);
                }
            }
            let answer = forward.send().await.unwrap();
            let status = answer.status().as_u16();
            let mut text = answer.text().await.unwrap();
            if let Some(index) = refused {
                let mut result: Value = serde_json::from_str(&text).unwrap();
                result["Entries"].as_array_mut().unwrap().insert(
                    index,
                    json!({"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded"}),
                );
                result["FailedEntryCount"] = json!(1);
                text = result.to_string();
            }
            axum::response::Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.1")
                .body(axum::body::Body::from(text))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), calls)
}

#[tokio::test]
async fn a_refused_entry_is_retried_alone() {
    let Some(moto) = Moto::start_open().await else {
        return;
    };
    let queue = moto.bus_to_queue("batch", "user.created").await;
    let (proxy, calls) = refusing_proxy(moto.endpoint.clone()).await;
    let app = spawn_app().await;
    let key = ("AKIAOPEN000000000000".to_string(), "open".to_string());
    let mut destination = eventbridge(&moto, "batch", &key, json!({}));
    destination["configuration"]["endpoint_url"] = json!(proxy);
    let stream = create(
        &app,
        destination,
        &["user.created"],
        json!({"retry_policy": {"max_attempts": 3, "initial_interval_seconds": 10, "jitter": 0}}),
    )
    .await;
    let (status, body) = app
        .post_batch(&json!([
            {"id": "b-1", "type": "user.created"},
            {"id": "b-2", "type": "user.created"},
            {"id": "b-3", "type": "user.created"},
        ]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let refused = app
        .wait_for_delivery(&stream, "b-2", |d| {
            d["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(refused["status"], "pending", "{refused}");
    assert_eq!(
        refused["attempts"][0]["detail"]["aws_error_code"],
        "ThrottlingException"
    );
    for id in ["b-1", "b-3"] {
        app.wait_for_delivery(&stream, id, |d| d["status"] == "succeeded")
            .await;
    }
    assert_eq!(
        calls.lock().unwrap()[0],
        ["b-1", "b-2", "b-3"],
        "the three went in one call"
    );

    app.clock.advance(Duration::from_secs(10));
    app.wait_for_delivery(&stream, "b-2", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        calls.lock().unwrap()[1],
        ["b-2"],
        "only the refused entry is sent again"
    );
    let mut ids: Vec<String> = moto
        .receive(&queue, 3)
        .await
        .iter()
        .map(|m| m["detail"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["b-1", "b-2", "b-3"], "each event on the bus once");
}

#[tokio::test]
async fn test_sends_the_sample_through_eventbridge_and_webhooks_alike() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = moto.bus_to_queue("herald-test", "user.created").await;
    let key = moto.user("herald", &["events:PutEvents"]).await;
    let app = spawn_app().await;
    let stream = create(
        &app,
        eventbridge(&moto, "herald-test", &key, json!({})),
        &["user.*"],
        json!({}),
    )
    .await;
    let (status, result) = app.test_stream(&stream, "user.created").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["delivered"], true, "{result}");
    assert!(result["detail"]["aws_event_id"].is_string(), "{result}");
    let message = &moto.receive(&queue, 1).await[0];
    assert_eq!(message["detail"]["purpose"], "test");
    assert_eq!(message["detail"]["id"], result["event_id"]);

    // An EventBridge stream has no signing secret to show or rotate.
    let (status, body) = app.get(&format!("/v1/event-streams/{stream}/secret")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "no_stream_secret");

    let receiver = Receiver::start().await;
    let hook = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let (_, result) = app
        .test_stream(hook["id"].as_str().unwrap(), "user.created")
        .await;
    assert_eq!(result["delivered"], true, "{result}");
    assert_eq!(result["response_status"], 200);
}

#[tokio::test]
async fn bad_configurations_get_a_clear_error() {
    let app = spawn_app().await;
    let base = json!({
        "aws_account_id": ACCOUNT, "aws_region": REGION,
        "aws_access_key_id": "AKIA", "aws_secret_access_key": "s",
    });
    let cases = [
        (json!({"aws_account_id": "12"}), "aws_account_id"),
        (json!({"aws_region": "Mars"}), "aws_region"),
        (json!({"source": "aws.s3"}), "aws."),
        (json!({"aws_secret_access_key": null}), "go together"),
        (json!({"endpoint_url": "ftp://x"}), "endpoint_url"),
        (json!({"role_arn": "role"}), "role_arn"),
    ];
    for (change, expected) in cases {
        let mut configuration = base.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                configuration.as_object_mut().unwrap().remove(k);
            } else {
                configuration[k] = v.clone();
            }
        }
        let (status, body) = app
            .post(
                "/v1/event-streams",
                &json!({
                    "name": "bad", "subscriptions": [{"event_type": "user.created"}],
                    "destination": {"type": "eventbridge", "configuration": configuration},
                }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{change}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{change}: {message}");
    }
    // Without keys, the server's own identity is not lent unless the operator allows it.
    let mut keyless = base.clone();
    keyless.as_object_mut().unwrap().remove("aws_access_key_id");
    keyless
        .as_object_mut()
        .unwrap()
        .remove("aws_secret_access_key");
    let request = json!({
        "name": "keyless", "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "eventbridge", "configuration": keyless},
    });
    let (status, body) = app.post("/v1/event-streams", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let lending = spawn_app_with(|c| c.aws_server_credentials = true).await;
    let (status, body) = lending.post("/v1/event-streams", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["destination"]["configuration"]["credentials"],
        "server"
    );
    // ... and never toward an endpoint a tenant chose, which would receive its signatures.
    let mut elsewhere = request.clone();
    elsewhere["destination"]["configuration"]["endpoint_url"] = json!("https://example.com");
    let (status, body) = lending.post("/v1/event-streams", &elsewhere).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AWS's own endpoints"),
        "{body}"
    );
    // Binary mode has no meaning on a bus.
    let mut binary = request.clone();
    binary["destination"]["configuration"] = base.clone();
    binary["content_mode"] = json!("binary");
    let (status, body) = app.post("/v1/event-streams", &binary).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("structured")
    );
}
