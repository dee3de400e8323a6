//! `GET /v1/event-streams/{id}/stats`: delivery outcomes and latency of a stream, in total,
//! per event type and per hour (see `crate::service::stats`).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiQuery, Caller};
use crate::event::format_time;
use crate::service::Service;
use crate::service::stats::{self, Totals};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    date_from: Option<String>,
    date_to: Option<String>,
}

fn view(totals: &Totals) -> Value {
    json!({
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "attempts": totals.attempts,
        "failed_attempts": totals.failed_attempts,
        "success_rate": totals.success_rate(),
        "latency_ms": {
            "p50": totals.latency_ms(0.50),
            "p95": totals.latency_ms(0.95),
            "p99": totals.latency_ms(0.99),
        },
    })
}

pub async fn stream_stats(
    State(service): State<Service>,
    caller: Caller,
    Path(stream_id): Path<String>,
    ApiQuery(range): ApiQuery<Range>,
) -> Result<Json<Value>, ApiError> {
    let stats = stats::stream_stats(
        &service,
        &caller,
        &stream_id,
        range.date_from.as_deref(),
        range.date_to.as_deref(),
    )
    .await?;
    let by_hour: Vec<Value> = stats
        .by_hour
        .iter()
        .map(|(hour, totals)| {
            let mut v = view(totals);
            v["hour"] = json!(format_time(*hour));
            v
        })
        .collect();
    let by_type: serde_json::Map<String, Value> = stats
        .by_event_type
        .iter()
        .map(|(t, totals)| (t.clone(), view(totals)))
        .collect();
    Ok(Json(json!({
        "stream_id": stream_id,
        "date_from": format_time(stats.date_from),
        "date_to": format_time(stats.date_to),
        "total": view(&stats.total),
        "by_event_type": by_type,
        "by_hour": by_hour,
        "pending": stats.backlog.pending,
        "oldest_pending_at": stats.backlog.oldest_created_at.map(format_time),
    })))
}
