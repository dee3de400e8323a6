//! A tenant's own event types, with a JSON Schema that published `data` must match.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

fn invoice_type() -> serde_json::Value {
    json!({
        "name": "invoice.paid",
        "description": "An invoice was paid.",
        "schema": {
            "type": "object",
            "required": ["invoice_id", "amount"],
            "properties": {
                "invoice_id": {"type": "string"},
                "amount": {"type": "object", "required": ["cents"], "properties": {
                    "cents": {"type": "integer", "minimum": 0}
                }}
            }
        },
        "sample_data": {"invoice_id": "in_1", "amount": {"cents": 1200}}
    })
}

#[tokio::test]
async fn custom_types_are_listed_subscribed_and_validated_on_publish() {
    let app = spawn_app().await;
    let (status, created) = app.post("/v1/event-types", &invoice_type()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["category"], "invoice");
    assert_eq!(created["custom"], true);

    let (_, list) = app.get("/v1/event-types?category=invoice").await;
    assert_eq!(list["event_types"].as_array().unwrap().len(), 1);
    assert_eq!(list["event_types"][0]["name"], "invoice.paid");

    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["invoice.*"], json!({}))
        .await;
    let ok = app
        .publish(
            json!({"type": "invoice.paid", "data": {"invoice_id": "in_9", "amount": {"cents": 5}}}),
        )
        .await;
    assert_eq!(ok["deliveries"], 1);
    assert_eq!(
        receiver.wait_for(1).await[0].json()["data"]["amount"]["cents"],
        5
    );

    let (status, body) = app
        .post("/v1/events", &json!({"type": "invoice.paid", "data": {"invoice_id": "in_9", "amount": {"cents": -1}}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_data");
    assert_eq!(body["error"]["details"]["path"], "/amount/cents");

    let batch = json!([
        {"type": "invoice.paid", "data": {"invoice_id": "a", "amount": {"cents": 1}}},
        {"type": "invoice.paid", "data": {"amount": {"cents": 1}}}
    ]);
    let (status, body) = app.post_batch(&batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"]["index"], 1);
    assert_eq!(body["error"]["details"]["path"], "");

    // The test route uses the type's sample data.
    let sid = stream["id"].as_str().unwrap();
    let (_, result) = app.test_stream(sid, "invoice.paid").await;
    assert_eq!(result["delivered"], true);
    assert_eq!(
        receiver.wait_for(2).await[1].json()["data"]["invoice_id"],
        "in_1"
    );

    let (status, _) = app.delete("/v1/event-types/invoice.paid").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app
        .post("/v1/events", &json!({"type": "invoice.paid"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "unknown_event_type");
    let (status, _) = app.delete("/v1/event-types/invoice.paid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn custom_types_belong_to_their_tenant_and_are_checked() {
    let app = spawn_app().await;
    app.post("/v1/event-types", &invoice_type()).await;
    let (status, _) = app.post("/v1/event-types", &invoice_type()).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let cases = [
        (json!({"name": "user.created"}), StatusCode::CONFLICT),
        (json!({"name": "herald.custom"}), StatusCode::BAD_REQUEST),
        (json!({"name": "Bad Name"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "a.b", "schema": {"type": "nonsense"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "a.b", "schema": {"type": "object", "required": ["x"]}, "sample_data": {}}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"name": "a.b", "extra": 1}), StatusCode::BAD_REQUEST),
    ];
    for (body, expected) in cases {
        let (status, response) = app.post("/v1/event-types", &body).await;
        assert_eq!(status, expected, "{body}: {response}");
    }

    app.post("/v1/tenants", &json!({"name": "other", "id": "ten_other"}))
        .await;
    let other = app
        .tenant_token("ten_other", &["publish:events", "create:event_streams"])
        .await;
    let (status, body) = app
        .request_as(
            &other,
            reqwest::Method::POST,
            "/v1/events",
            Some((
                "application/json",
                serde_json::to_vec(&json!({"type": "invoice.paid"})).unwrap(),
            )),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "another tenant's types are unknown: {body}"
    );
    assert_eq!(body["error"]["code"], "unknown_event_type");
}
