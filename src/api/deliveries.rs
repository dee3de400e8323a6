//! Deliveries: list a stream's deliveries with filters and cursor paging, inspect one with
//! every attempt, and redeliver one event or every delivery matching a filter.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, ApiQuery, AppState, Caller, OptionalJsonBody, Scope, paging, parse_time_param,
};
use crate::event::format_time;
use crate::store::{DeliveryFilter, DeliveryStatus, DeliveryView};
use crate::stream::StreamStatus;

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

/// The filters shared by listing and bulk redelivery, as they arrive.
struct FilterInput {
    statuses: Vec<String>,
    event_types: Vec<String>,
    date_from: Option<String>,
    date_to: Option<String>,
}

/// Most event types one filter may name: each is a bound value of the query.
const MAX_FILTER_TYPES: usize = 100;

impl FilterInput {
    fn parse(mut self) -> Result<DeliveryFilter, ApiError> {
        self.event_types.sort_unstable();
        self.event_types.dedup();
        if self.event_types.len() > MAX_FILTER_TYPES {
            return Err(ApiError::invalid(format!(
                "`event_types` names {} types; a filter may name at most {MAX_FILTER_TYPES}",
                self.event_types.len()
            )));
        }
        let mut statuses: Vec<DeliveryStatus> = self
            .statuses
            .iter()
            .map(|s| {
                DeliveryStatus::parse(s).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "`{s}` is not a delivery status: use pending, succeeded, failed or cancelled"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        // Repeats add nothing but bound values.
        statuses.sort_unstable_by_key(|s| s.as_str());
        statuses.dedup();
        let date_from = self
            .date_from
            .map(|v| parse_time_param("date_from", &v))
            .transpose()?;
        let date_to = self
            .date_to
            .map(|v| parse_time_param("date_to", &v))
            .transpose()?;
        if let (Some(from), Some(to)) = (date_from, date_to)
            && from > to
        {
            return Err(ApiError::invalid("`date_from` is after `date_to`"));
        }
        Ok(DeliveryFilter {
            statuses,
            event_types: self.event_types,
            date_from,
            date_to,
        })
    }
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

async fn load_stream(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<crate::stream::Stream, ApiError> {
    state
        .store
        .get_stream(&caller.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("event stream", id))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream_id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventDeliveries)?;
    let (take, before) = paging(query.take, query.from.as_deref())?;
    let filter = FilterInput {
        statuses: split(query.statuses),
        event_types: split(query.event_types),
        date_from: query.date_from,
        date_to: query.date_to,
    }
    .parse()?;
    load_stream(&state, &caller, &stream_id).await?;
    let page = state
        .store
        .list_deliveries(&caller.tenant_id, &stream_id, filter, before, take)
        .await?;
    Ok(Json(json!({
        "deliveries": page.items.iter().map(view).collect::<Vec<_>>(),
        "next": page.next.map(|n| n.to_string()),
    })))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventDeliveries)?;
    let delivery = state
        .store
        .get_delivery(&caller.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery", &id))?;
    Ok(Json(view(&delivery)))
}

pub async fn for_event(
    State(state): State<AppState>,
    caller: Caller,
    Path((stream_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventDeliveries)?;
    let deliveries = state
        .store
        .event_deliveries(&caller.tenant_id, &event_id)
        .await?;
    let matching: Vec<Value> = deliveries
        .iter()
        .filter(|d| d.stream_id == stream_id)
        .map(view)
        .collect();
    if matching.is_empty() {
        return Err(ApiError::not_found("delivery of event", &event_id));
    }
    Ok(Json(Value::Array(matching)))
}

/// Redelivery needs a stream that sends: a disabled one would only pile the work up.
async fn sending_stream(state: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    let stream = load_stream(state, caller, id).await?;
    if stream.status == StreamStatus::Disabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stream_disabled",
            "the stream is disabled: enable it before redelivering to it",
        ));
    }
    Ok(())
}

pub async fn redeliver_event(
    State(state): State<AppState>,
    caller: Caller,
    Path((stream_id, event_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::UpdateEventDeliveries)?;
    sending_stream(&state, &caller, &stream_id).await?;
    let now = state.clock.now_ms();
    let queued = state
        .store
        .redeliver_event(&caller.tenant_id, &stream_id, &event_id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("event", &event_id))?;
    state.signal.wake([&stream_id]);
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
    State(state): State<AppState>,
    caller: Caller,
    Path(stream_id): Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<BulkRedeliver>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::UpdateEventDeliveries)?;
    let filter = FilterInput {
        statuses: request.statuses,
        event_types: request.event_types,
        date_from: request.date_from,
        date_to: request.date_to,
    }
    .parse()?;
    sending_stream(&state, &caller, &stream_id).await?;
    let now = state.clock.now_ms();
    let dry_run = request.dry_run;
    let (tenant_id, stream) = (caller.tenant_id.clone(), stream_id.clone());
    let count = super::to_completion(async move {
        let count = state
            .store
            .redeliver(&tenant_id, &stream, filter, dry_run, now)
            .await?;
        if !dry_run {
            state.signal.wake([&stream]);
        }
        Ok(count)
    })
    .await?;
    let (status, queued) = if request.dry_run {
        (StatusCode::OK, 0)
    } else {
        (StatusCode::ACCEPTED, count)
    };
    Ok((
        status,
        Json(json!({ "matched": count, "queued": queued, "dry_run": request.dry_run })),
    ))
}

/// `GET /v1/event-streams/{id}/backlog`: how many deliveries wait, and since when.
pub async fn backlog(
    State(state): State<AppState>,
    caller: Caller,
    Path(stream_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEventDeliveries)?;
    load_stream(&state, &caller, &stream_id).await?;
    let backlog = state.store.backlog(&caller.tenant_id, &stream_id).await?;
    let now = state.clock.now_ms();
    Ok(Json(json!({
        "pending": backlog.pending,
        "oldest_pending_at": backlog.oldest_created_at.map(format_time),
        "oldest_age_seconds": backlog.oldest_created_at.map(|at| (now - at).max(0) / 1000),
    })))
}
