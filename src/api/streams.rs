//! `/v1/event-streams`: create, list, show, update and delete streams, read or rotate a
//! stream's secret (a webhook's signing secret), test a stream's destination, and check a
//! candidate destination against the stored one (see `crate::service::streams`). Shapes
//! follow Auth0's Management API; credentials are write-only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, JsonBody, OptionalJsonBody};
use crate::destinations::{Destination, Outcome};
use crate::event::format_time;
use crate::secret::Secret;
use crate::service::Service;
use crate::service::streams::{self, BacklogChoice};
use crate::stream::{ContentMode, PayloadFormat, RetryPolicy, Stream, StreamStatus, Subscription};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    name: String,
    subscriptions: Vec<Subscription>,
    destination: Destination,
    #[serde(default)]
    status: Option<StreamStatus>,
    #[serde(default)]
    payload_format: PayloadFormat,
    content_mode: Option<ContentMode>,
    #[serde(default)]
    retry_policy: RetryPolicy,
    max_consecutive_failures: Option<u32>,
    disable_after_failing_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStream {
    name: Option<String>,
    subscriptions: Option<Vec<Subscription>>,
    destination: Option<Destination>,
    status: Option<StreamStatus>,
    payload_format: Option<PayloadFormat>,
    content_mode: Option<ContentMode>,
    retry_policy: Option<RetryPolicy>,
    max_consecutive_failures: Option<u32>,
    disable_after_failing_seconds: Option<u64>,
    /// On enabling a stream: `deliver` its pending deliveries (the default) or `skip` them
    /// (they are cancelled).
    backlog: Option<BacklogChoice>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// A `whsec_` secret to use instead of a generated one.
    secret: Option<Secret>,
    /// How long the current secret keeps signing beside the new one.
    grace_period_seconds: Option<u64>,
}

pub fn view(stream: &Stream) -> Value {
    let mut v = json!({
        "id": stream.id,
        "name": stream.name,
        "status": stream.status,
        "subscriptions": stream.subscriptions,
        "destination": stream.destination.public_view(),
        "payload_format": stream.payload_format,
        "content_mode": stream.encoding().mode,
        "retry_policy": stream.retry_policy,
        "max_consecutive_failures": stream.max_consecutive_failures,
        "disable_after_failing_seconds": stream.disable_after_failing_seconds,
        "created_at": format_time(stream.created_at),
        "updated_at": format_time(stream.updated_at),
    });
    if let Some(reason) = &stream.status_reason {
        v["status_reason"] = json!(reason);
    }
    v
}

pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateStream>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = streams::NewStream {
        name: request.name,
        subscriptions: request.subscriptions,
        destination: request.destination,
        status: request.status,
        payload_format: request.payload_format,
        content_mode: request.content_mode,
        retry_policy: request.retry_policy,
        max_consecutive_failures: request.max_consecutive_failures,
        disable_after_failing_seconds: request.disable_after_failing_seconds,
    };
    let stream = streams::create(&service, &caller, new).await?;
    Ok((StatusCode::CREATED, Json(view(&stream))))
}

pub async fn list(State(service): State<Service>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let streams = streams::list(&service, &caller).await?;
    Ok(Json(Value::Array(streams.iter().map(view).collect())))
}

pub async fn show(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&streams::get(&service, &caller, &id).await?)))
}

pub async fn update(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<UpdateStream>,
) -> Result<Json<Value>, ApiError> {
    let changes = streams::StreamChanges {
        name: request.name,
        subscriptions: request.subscriptions,
        destination: request.destination,
        status: request.status,
        payload_format: request.payload_format,
        content_mode: request.content_mode,
        retry_policy: request.retry_policy,
        max_consecutive_failures: request.max_consecutive_failures,
        disable_after_failing_seconds: request.disable_after_failing_seconds,
        backlog: request.backlog,
    };
    let stream = streams::update(&service, &caller, &id, changes).await?;
    Ok(Json(view(&stream)))
}

pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    streams::delete(&service, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn secret(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let secrets = streams::secrets(&service, &caller, &id).await?;
    let previous: Vec<Value> = secrets
        .previous
        .iter()
        .map(|s| json!({ "expires_at": s.expires_at.map(format_time) }))
        .collect();
    Ok(Json(json!({
        "secret": secrets.current.secret.expose(),
        "created_at": format_time(secrets.current.created_at),
        "previous": previous,
    })))
}

pub async fn rotate_secret(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<Rotate>,
) -> Result<Json<Value>, ApiError> {
    let rotation = streams::Rotation {
        secret: request.secret,
        grace_period_seconds: request.grace_period_seconds,
    };
    let rotated = streams::rotate_secret(&service, &caller, &id, rotation).await?;
    Ok(Json(json!({
        "secret": rotated.secret.expose(),
        "created_at": format_time(rotated.created_at),
        "previous_expires_at": format_time(rotated.previous_expires_at),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    event_type: String,
    data: Option<Value>,
}

/// `POST /v1/event-streams/{id}/test`: sends a test event right away (the catalog's sample
/// data unless `data` is given), marked with the extension attribute `purpose: "test"`, and
/// answers with the attempt. Nothing is stored.
pub async fn test(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<TestRequest>,
) -> Result<Json<Value>, ApiError> {
    let request = streams::TestEvent {
        event_type: request.event_type,
        data: request.data,
    };
    let sent = streams::test(&service, &caller, &id, request).await?;
    Ok(Json(test_answer(sent)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsavedTestRequest {
    destination: Destination,
    #[serde(default)]
    payload_format: PayloadFormat,
    content_mode: Option<ContentMode>,
    event_type: String,
    data: Option<Value>,
}

/// `POST /v1/event-streams/test`: sends a test event to a destination that is not saved yet,
/// answering as the saved stream's test does. Nothing is stored.
pub async fn test_unsaved(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<UnsavedTestRequest>,
) -> Result<Json<Value>, ApiError> {
    let request = streams::UnsavedTest {
        destination: request.destination,
        payload_format: request.payload_format,
        content_mode: request.content_mode,
        event: streams::TestEvent {
            event_type: request.event_type,
            data: request.data,
        },
    };
    let sent = streams::test_unsaved(&service, &caller, request).await?;
    Ok(Json(test_answer(sent)))
}

/// A test's attempt as the API answers it.
fn test_answer(sent: streams::TestSent) -> Value {
    let report = sent.report;
    let error = report
        .error
        .as_ref()
        .map(|e| json!({ "kind": e.kind.as_str(), "message": e.message }));
    let mut body = json!({
        "delivered": report.outcome == Outcome::Delivered,
        "event_id": sent.event_id,
        "delivery_id": sent.delivery_id,
        "response_status": report.response_status,
        "duration_ms": report.duration.as_millis() as u64,
        "response_body": report.response_body,
        "error": error,
    });
    if let Some(detail) = report.detail {
        body["detail"] = Value::Object(detail);
    }
    body
}

/// `POST /v1/event-streams/{id}/destination/check`: whether a destination, credentials
/// included, is the one the stream has (see [`streams::check_destination`]).
pub async fn check_destination(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(candidate): JsonBody<Destination>,
) -> Result<Json<Value>, ApiError> {
    let matches = streams::check_destination(&service, &caller, &id, candidate).await?;
    Ok(Json(json!({ "matches": matches })))
}
