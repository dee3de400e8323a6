//! `/v1/event-streams`: create, list, show, update and delete streams, read or rotate a
//! stream's secret (a webhook's signing secret), test a stream's destination, and check a
//! candidate destination against the stored one. Shapes follow Auth0's Management API;
//! credentials are write-only. Names are unique per tenant (409 `conflict`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::limits::rate_limited;
use super::{ApiError, AppState, Caller, JsonBody, OptionalJsonBody, Scope};
use crate::destinations::{Destination, Message, Outcome};
use crate::event::format_time;
use crate::ids;
use crate::notices;
use crate::secret::{Secret, StreamSecret};
use crate::service::limits::Quotas;
use crate::store::StreamUpdate;
use crate::stream::{
    self, ContentMode, PayloadFormat, RetryPolicy, Stream, StreamStatus, Subscription,
};

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

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BacklogChoice {
    Deliver,
    Skip,
}

const MAX_CONSECUTIVE_FAILURES_LIMIT: u32 = 1_000_000;
const MAX_DISABLE_AFTER_FAILING_SECONDS: u64 = 365 * 86_400;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// A `whsec_` secret to use instead of a generated one.
    secret: Option<Secret>,
    /// How long the current secret keeps signing beside the new one.
    grace_period_seconds: Option<u64>,
}

const MAX_GRACE_SECONDS: u64 = 7 * 86_400;

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

async fn check(state: &AppState, stream: &Stream) -> Result<(), ApiError> {
    if stream.max_consecutive_failures > MAX_CONSECUTIVE_FAILURES_LIMIT {
        return Err(ApiError::invalid(format!(
            "`max_consecutive_failures` must be at most {MAX_CONSECUTIVE_FAILURES_LIMIT} (0 never disables)"
        )));
    }
    if stream.disable_after_failing_seconds > MAX_DISABLE_AFTER_FAILING_SECONDS {
        return Err(ApiError::invalid(format!(
            "`disable_after_failing_seconds` must be at most {MAX_DISABLE_AFTER_FAILING_SECONDS} (a year; 0 lets `max_consecutive_failures` alone decide)"
        )));
    }
    let catalog = state
        .catalogs
        .for_tenant(&*state.store, &stream.tenant_id)
        .await?;
    stream::validate(stream, &catalog, &state.destination_policy).map_err(ApiError::invalid)
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateStream>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::CreateEventStreams)?;
    let now = state.clock.now_ms();
    let mut destination = request.destination;
    let given_secret = destination
        .take_stream_secret()
        .map_err(ApiError::invalid)?;
    let stream = Stream {
        tenant_id: caller.tenant_id.clone(),
        id: ids::stream_id(),
        name: request.name,
        status: request.status.unwrap_or(StreamStatus::Enabled),
        status_reason: None,
        subscriptions: request.subscriptions,
        destination,
        payload_format: request.payload_format,
        content_mode: request.content_mode,
        retry_policy: request.retry_policy,
        max_consecutive_failures: request
            .max_consecutive_failures
            .unwrap_or(stream::DEFAULT_MAX_CONSECUTIVE_FAILURES),
        disable_after_failing_seconds: request
            .disable_after_failing_seconds
            .unwrap_or(stream::DEFAULT_DISABLE_AFTER_FAILING_SECONDS),
        created_at: now,
        updated_at: now,
    };
    check(&state, &stream).await?;
    let count = state.store.list_streams(&caller.tenant_id).await?.len();
    Quotas::check(
        state.quotas.streams,
        count,
        "event streams",
        "max_streams_per_tenant",
    )?;
    let secret = stream
        .destination
        .uses_stream_secret()
        .then(|| StreamSecret {
            secret: given_secret.unwrap_or_else(|| stream.destination.new_stream_secret()),
            created_at: now,
            expires_at: None,
        });
    state.store.create_stream(stream.clone(), secret).await?;
    state.signal.streams_changed();
    tracing::info!(stream = %stream.id, tenant = %stream.tenant_id, "stream created");
    Ok((StatusCode::CREATED, Json(view(&stream))))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventStreams)?;
    let streams = state.store.list_streams(&caller.tenant_id).await?;
    Ok(Json(Value::Array(streams.iter().map(view).collect())))
}

async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Stream, ApiError> {
    state
        .store
        .get_stream(&caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("event stream", id))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventStreams)?;
    Ok(Json(view(&load(&state, &caller, &id).await?)))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(changes): JsonBody<UpdateStream>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    let mut stream = load(&state, &caller, &id).await?;
    if let Some(name) = changes.name {
        stream.name = name;
    }
    if let Some(subscriptions) = changes.subscriptions {
        stream.subscriptions = subscriptions;
    }
    let kind_before = stream.destination.kind();
    if let Some(mut destination) = changes.destination {
        if destination
            .take_stream_secret()
            .map_err(ApiError::invalid)?
            .is_some()
        {
            return Err(ApiError::invalid(
                "a stream's signing secret changes through POST /v1/event-streams/{id}/secret/rotate",
            ));
        }
        stream.destination = destination;
    }
    let kind_changed = stream.destination.kind() != kind_before;
    if kind_changed {
        // Another kind has its own default mode; one given with the change still applies.
        stream.content_mode = None;
    }
    let now = state.clock.now_ms();
    let before = stream.status;
    let after = changes.status.unwrap_or(before);
    if before != after {
        stream.status_reason = None;
    }
    stream.status = after;
    let enabling = after == StreamStatus::Enabled && before != StreamStatus::Enabled;
    if changes.backlog.is_some() && !enabling {
        return Err(ApiError::invalid(
            "`backlog` applies only when a stream is enabled again: send it with `\"status\": \"enabled\"`",
        ));
    }
    let backlog = changes.backlog.unwrap_or(BacklogChoice::Deliver);
    if let Some(format) = changes.payload_format {
        stream.payload_format = format;
    }
    if let Some(mode) = changes.content_mode {
        stream.content_mode = Some(mode);
    }
    if let Some(policy) = changes.retry_policy {
        stream.retry_policy = policy;
    }
    if let Some(limit) = changes.max_consecutive_failures {
        stream.max_consecutive_failures = limit;
    }
    if let Some(period) = changes.disable_after_failing_seconds {
        stream.disable_after_failing_seconds = period;
    }
    stream.updated_at = now;
    check(&state, &stream).await?;
    // A stream that becomes a kind keeping a stream secret (a webhook) gets a new one
    // before it changes, so it never runs without; secrets from an earlier time as that kind
    // end now rather than come back.
    if stream.destination.uses_stream_secret()
        && (kind_changed
            || state
                .store
                .stream_secrets(&stream.tenant_id, &stream.id, now)
                .await?
                .is_empty())
    {
        let secret = StreamSecret {
            secret: stream.destination.new_stream_secret(),
            created_at: now,
            expires_at: None,
        };
        if !state
            .store
            .rotate_secret(&stream.tenant_id, &stream.id, secret, now)
            .await?
        {
            return Err(ApiError::not_found("event stream", &id));
        }
    }

    let mut notices = Vec::new();
    if enabling {
        let choice = if backlog == BacklogChoice::Skip {
            "skip"
        } else {
            "deliver"
        };
        notices.push(notices::stream_enabled(
            &stream.tenant_id,
            &stream.id,
            &stream.name,
            choice,
            now,
        ));
    } else if after == StreamStatus::Disabled && before != StreamStatus::Disabled {
        notices.push(notices::stream_disabled(
            &stream.tenant_id,
            &stream.id,
            &stream.name,
            "disabled by an admin",
            now,
        ));
    }
    let update = StreamUpdate {
        stream: stream.clone(),
        skip_backlog: enabling && backlog == BacklogChoice::Skip,
        notices,
    };
    let Some(published) = state.store.update_stream(update).await? else {
        return Err(ApiError::not_found("event stream", &id));
    };
    state.signal.streams_changed();
    state
        .signal
        .wake(published.iter().flat_map(|p| p.streams.iter()));
    if published.iter().any(|p| p.deferred) {
        state.signal.fan_out_pending();
    }
    Ok(Json(view(&stream)))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::DeleteEventStreams)?;
    let now = state.clock.now_ms();
    if !state
        .store
        .delete_stream(&caller.tenant_id, &id, now)
        .await?
    {
        return Err(ApiError::not_found("event stream", &id));
    }
    state.signal.streams_changed();
    tracing::info!(stream = %id, tenant = %caller.tenant_id, "stream deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(&state, &caller, &id).await?;
    keeps_secret(&stream)?;
    let now = state.clock.now_ms();
    let secrets = state
        .store
        .stream_secrets(&caller.tenant_id, &id, now)
        .await?;
    let current = secrets
        .first()
        .ok_or_else(|| ApiError::not_found("signing secret for event stream", &id))?;
    let previous: Vec<Value> = secrets[1..]
        .iter()
        .map(|s| json!({ "expires_at": s.expires_at.map(format_time) }))
        .collect();
    Ok(Json(json!({
        "secret": current.secret.expose(),
        "created_at": format_time(current.created_at),
        "previous": previous,
    })))
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<Rotate>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(&state, &caller, &id).await?;
    keeps_secret(&stream)?;
    let secret = match request.secret {
        Some(secret) => {
            stream
                .destination
                .check_stream_secret(&secret)
                .map_err(|e| ApiError::invalid(format!("`secret`: {e}")))?;
            secret
        }
        None => stream.destination.new_stream_secret(),
    };
    let grace_ms = match request.grace_period_seconds {
        Some(s) if s > MAX_GRACE_SECONDS => {
            return Err(ApiError::invalid(format!(
                "`grace_period_seconds` must be at most {MAX_GRACE_SECONDS}"
            )));
        }
        Some(s) => s as i64 * 1000,
        None => state.secret_rotation_grace_ms,
    };
    let now = state.clock.now_ms();
    let rotated = state
        .store
        .rotate_secret(
            &caller.tenant_id,
            &id,
            StreamSecret {
                secret: secret.clone(),
                created_at: now,
                expires_at: None,
            },
            now + grace_ms,
        )
        .await?;
    if !rotated {
        return Err(ApiError::not_found("event stream", &id));
    }
    state.signal.streams_changed();
    tracing::info!(stream = %id, tenant = %caller.tenant_id, "signing secret rotated");
    Ok(Json(json!({
        "secret": secret.expose(),
        "created_at": format_time(now),
        "previous_expires_at": format_time(now + grace_ms),
    })))
}

/// Only destination kinds that keep a stream secret have one to show or rotate.
fn keeps_secret(stream: &Stream) -> Result<(), ApiError> {
    if stream.destination.uses_stream_secret() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "no_stream_secret",
            format!(
                "`{}` destinations are not signed by Herald and keep no secret",
                stream.destination.kind()
            ),
        ))
    }
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
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<TestRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(&state, &caller, &id).await?;
    // A test sends at once, outside the dispatcher's limits, and shows the caller the
    // answer: bounded per token and per stream so it cannot be used to hammer an endpoint.
    let now = state.clock.now_ms();
    let limits = &state.rates;
    limits.stream_tests.take(&stream.id, now).map_err(|wait| {
        rate_limited(
            "this stream has been sent as many test events as it may in a minute \
             (stream_tests_per_minute)",
            wait,
        )
    })?;
    if let Err(wait) = limits.token_tests.take(&caller.token.id, now) {
        // Not sent: the stream keeps its allowance.
        limits.stream_tests.give_back(&stream.id);
        return Err(rate_limited(
            "this token has sent as many test events as it may in a minute \
             (stream_tests_per_minute_per_token)",
            wait,
        ));
    }
    let catalog = state
        .catalogs
        .for_tenant(&*state.store, &caller.tenant_id)
        .await?;
    let event_type = catalog.get(&request.event_type).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_event_type",
            format!("`{}` is not in the event type catalog", request.event_type),
        )
    })?;
    let data = request
        .data
        .unwrap_or_else(|| event_type.sample_data.clone());
    let data =
        serde_json::value::RawValue::from_string(data.to_string()).expect("a JSON value is JSON");
    catalog.check_data(&event_type.name, &data).map_err(|e| {
        ApiError::bad_request(
            "invalid_data",
            format!(
                "`data` does not match the schema of `{}`: {e}",
                event_type.name
            ),
        )
        .with_details(json!({ "path": e.path }))
    })?;
    let now = state.clock.now_ms();
    let mut extensions = serde_json::Map::new();
    extensions.insert("purpose".into(), json!("test"));
    let event = crate::event::Event {
        id: ids::event_id(now),
        source: format!("urn:herald:{}", caller.tenant_id),
        event_type: event_type.name.clone(),
        time: now,
        subject: None,
        datacontenttype: None,
        dataschema: None,
        data,
        extensions,
    };
    let secrets = state.store.secrets_for(&stream, now).await?;
    let context = stream.client_context(&secrets);
    let client = stream
        .destination
        .build(context, &state.destinations)
        .map_err(|e| ApiError::bad_request("destination_unavailable", e))?;
    let delivery_id = ids::delivery_id(now);
    let message = Message {
        id: &delivery_id,
        tenant_id: &caller.tenant_id,
        event: &event,
    };
    let report = client.health_check(message, now).await;
    let error = report
        .error
        .as_ref()
        .map(|e| json!({ "kind": e.kind.as_str(), "message": e.message }));
    let mut body = json!({
        "delivered": report.outcome == Outcome::Delivered,
        "event_id": event.id,
        "delivery_id": delivery_id,
        "response_status": report.response_status,
        "duration_ms": report.duration.as_millis() as u64,
        "response_body": report.response_body,
        "error": error,
    });
    if let Some(detail) = report.detail {
        body["detail"] = Value::Object(detail);
    }
    Ok(Json(body))
}

/// `POST /v1/event-streams/{id}/destination/check`: whether a destination, credentials
/// included, is the one the stream has, so a client can tell whether write-only values changed
/// without reading them. The answer is one boolean for the whole destination, never a value or
/// a digest of one. Both sides are compared as HMAC-SHA256 tags under a random key of the
/// request, in constant time. Checks are rate limited per stream and per token (see
/// [`DESTINATION_CHECKS_PER_MINUTE`](crate::service::limits::DESTINATION_CHECKS_PER_MINUTE)), stop
/// after [`MAX_CONSECUTIVE_MISMATCHES`](crate::service::limits::MAX_CONSECUTIVE_MISMATCHES) mismatches
/// in a row, are logged when they mismatch, and need `update:event_streams`, which can replace
/// those credentials anyway.
pub async fn check_destination(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(mut candidate): JsonBody<Destination>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(&state, &caller, &id).await?;
    let now = state.clock.now_ms();
    let limits = &state.rates;
    let encode = |destination: &Destination| {
        serde_json::to_vec(destination).expect("a destination serializes")
    };
    let stored_tag = limits
        .destination_mismatches
        .tag(&encode(&stream.destination));
    if !limits
        .destination_mismatches
        .allowed(&stream.id, &stored_tag)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "destination_checks_locked",
            format!(
                "this stream's destination did not match {} checks in a row; it is not checked \
                 again until it is updated (PATCH the stream with the destination it should have)",
                crate::service::limits::MAX_CONSECUTIVE_MISMATCHES
            ),
        ));
    }
    limits
        .destination_checks
        .take(&stream.id, now)
        .map_err(|wait| {
            rate_limited(
                "this stream's destination has been checked as many times as it may in a minute",
                wait,
            )
        })?;
    if let Err(wait) = limits.token_destination_checks.take(&caller.token.id, now) {
        limits.destination_checks.give_back(&stream.id);
        return Err(rate_limited(
            "this token has checked as many destinations as it may in a minute",
            wait,
        ));
    }
    // A signing secret is not part of the configuration the stream keeps.
    candidate.take_stream_secret().map_err(ApiError::invalid)?;
    let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "no randomness",
            )
        })?;
    let stored = ring::hmac::sign(&key, &encode(&stream.destination));
    let matches = ring::hmac::verify(&key, &encode(&candidate), stored.as_ref()).is_ok();
    limits
        .destination_mismatches
        .record(&stream.id, &stored_tag, matches);
    if !matches {
        // Never the values: which stream and token, so repeated guessing shows in the logs.
        tracing::info!(
            stream_id = %stream.id,
            token_id = %caller.token.id,
            "a destination check did not match the stream's destination"
        );
    }
    Ok(Json(json!({ "matches": matches })))
}
