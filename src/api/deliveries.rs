//! Delivery inspection: a delivery with every attempt, and the deliveries of one event.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ApiError, AppState, Caller, Scope};
use crate::event::format_time;
use crate::store::DeliveryView;

pub fn view(d: &DeliveryView) -> Value {
    let attempts: Vec<Value> = d
        .attempts
        .iter()
        .map(|a| {
            let error = a
                .error_kind
                .as_ref()
                .map(|kind| json!({ "kind": kind, "message": a.error_message }));
            json!({
                "attempted_at": format_time(a.attempted_at),
                "duration_ms": a.duration_ms,
                "response_status": a.response_status,
                "response_body": a.response_body,
                "error": error,
            })
        })
        .collect();
    json!({
        "id": d.id,
        "stream_id": d.stream_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status.as_str(),
        "attempt_count": d.attempts.len(),
        "attempts": attempts,
        "next_attempt_at": d.next_attempt_at.map(format_time),
        "created_at": format_time(d.created_at),
        "updated_at": format_time(d.updated_at),
    })
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
