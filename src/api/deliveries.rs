//! Deliveries: list a stream's deliveries with filters and cursor paging, inspect one with
//! every attempt, and redeliver one event or every delivery matching a filter (see
//! `crate::service::deliveries`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiQuery, Caller, OptionalJsonBody, Scope, paging};
use crate::event::format_time;
use crate::service::{Service, deliveries};
use crate::store::DeliveryView;

pub fn view(d: &DeliveryView) -> Value {
    let mut v = json!({
        "id": d.id,
        "stream_id": d.stream_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status.as_str(),
        "attempt_count": d.attempt_count,
        "last_attempt_at": d.last_attempt_at.map(format_time),
        "last_response_status": d.last_response_status,
        "last_error": d.last_error_kind,
        "next_attempt_at": d.next_attempt_at.map(format_time),
        "created_at": format_time(d.created_at),
        "updated_at": format_time(d.updated_at),
    });
    if !d.attempts.is_empty() {
        v["attempts"] = d
            .attempts
            .iter()
            .map(|a| {
                let error = a
                    .error_kind
                    .as_ref()
                    .map(|kind| json!({ "kind": kind, "message": a.error_message }));
                let mut attempt = json!({
                    "attempted_at": format_time(a.attempted_at),
                    "duration_ms": a.duration_ms,
                    "response_status": a.response_status,
                    "response_body": a.response_body,
                    "error": error,
                });
                // The destination kind's own record; stored as JSON text by Herald itself.
                if let Some(detail) = a
                    .detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                {
                    attempt["detail"] = detail;
                }
                attempt
            })
            .collect();
    }
    v
}

/// List parameters: lists are comma-separated (`statuses=failed,pending`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    statuses: Option<String>,
    event_types: Option<String>,
    date_from: Option<String>,
    date_to: Option<String>,
    /// The `next` cursor of the previous page.
    from: Option<String>,
    take: Option<usize>,
}

fn split(list: Option<String>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    Path(stream_id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    // Before the cursor is read: a token without the scope hears so whatever it sent.
    caller.require(Scope::ReadEventDeliveries)?;
    let (take, before) = paging(query.take, query.from.as_deref())?;
    let filter = deliveries::Filter {
        statuses: split(query.statuses),
        event_types: split(query.event_types),
        date_from: query.date_from,
        date_to: query.date_to,
    };
    let page = deliveries::list(&service, &caller, &stream_id, filter, take, before).await?;
    Ok(Json(json!({
        "deliveries": page.items.iter().map(view).collect::<Vec<_>>(),
        "next": page.next.map(|n| n.to_string()),
    })))
}

pub async fn show(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&deliveries::get(&service, &caller, &id).await?)))
}

pub async fn for_event(
    State(service): State<Service>,
    caller: Caller,
    Path((stream_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let matching = deliveries::for_event(&service, &caller, &stream_id, &event_id).await?;
    Ok(Json(Value::Array(matching.iter().map(view).collect())))
}

pub async fn redeliver_event(
    State(service): State<Service>,
    caller: Caller,
    Path((stream_id, event_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let queued = deliveries::redeliver_event(&service, &caller, &stream_id, &event_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": queued }))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BulkRedeliver {
    #[serde(default)]
    statuses: Vec<String>,
    #[serde(default)]
    event_types: Vec<String>,
    date_from: Option<String>,
    date_to: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

pub async fn redeliver(
    State(service): State<Service>,
    caller: Caller,
    Path(stream_id): Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<BulkRedeliver>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let filter = deliveries::Filter {
        statuses: request.statuses,
        event_types: request.event_types,
        date_from: request.date_from,
        date_to: request.date_to,
    };
    let done =
        deliveries::redeliver(&service, &caller, &stream_id, filter, request.dry_run).await?;
    let status = if done.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({ "matched": done.matched, "queued": done.queued, "dry_run": done.dry_run })),
    ))
}

/// `GET /v1/event-streams/{id}/backlog`: how many deliveries wait, and since when.
pub async fn backlog(
    State(service): State<Service>,
    caller: Caller,
    Path(stream_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let backlog = deliveries::backlog(&service, &caller, &stream_id).await?;
    Ok(Json(json!({
        "pending": backlog.pending,
        "oldest_pending_at": backlog.oldest_pending_at.map(format_time),
        "oldest_age_seconds": backlog.oldest_age_seconds,
    })))
}
