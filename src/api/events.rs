//! `/v1/events`: publish one event (CloudEvents structured JSON) or a batch
//! (`application/cloudevents-batch+json`), and read the audit log. A publish is answered,
//! 202, only after the events and their deliveries are committed; a batch with one bad event
//! stores nothing.
//!
//! A platform token names the tenant with the `Herald-Tenant` header or a `tenant` attribute
//! on the events (all events of a batch go to one tenant). Here the body is read by its
//! content type; `crate::service::events` applies the rules.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use axum::extract::Path;

use super::{ApiError, ApiQuery, Caller, JsonBody, Scope, body_error, json_error};
use crate::event::{MAX_BATCH_EVENTS, MAX_EVENT_BYTES, format_time};
use crate::service::{Service, events};
use crate::store::{LoggedEvent, Published};
use crate::trace;

pub async fn publish(
    State(service): State<Service>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Before the body is read: a token without the scope hears so whatever it sent.
    caller.require(Scope::PublishEvents)?;
    let body = body.map_err(body_error)?;
    let batch = is_batch(&headers)?;

    let items: Vec<&RawValue> = if batch {
        let items: Vec<&RawValue> =
            serde_json::from_slice(&body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    ApiError::invalid("a batch must be a JSON array of CloudEvents")
                }
                _ => json_error(e),
            })?;
        if items.is_empty() {
            return Err(ApiError::invalid("the batch is empty"));
        }
        if items.len() > MAX_BATCH_EVENTS {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "the batch holds {} events; the limit is {MAX_BATCH_EVENTS}",
                    items.len()
                ),
            ));
        }
        items
    } else {
        if body.len() > MAX_EVENT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                format!(
                    "the event is {} bytes; the limit is {MAX_EVENT_BYTES} bytes",
                    body.len()
                ),
            ));
        }
        let raw: &RawValue = serde_json::from_slice(&body).map_err(json_error)?;
        if raw.get().starts_with('[') {
            return Err(ApiError::invalid(
                "the body is a JSON array: send a batch with `content-type: application/cloudevents-batch+json`",
            ));
        }
        vec![raw]
    };

    let published =
        events::publish(&service, caller, &items, batch, trace_context(&headers)).await?;
    let body = if batch {
        json!({ "events": published.iter().map(view).collect::<Vec<_>>() })
    } else {
        view(&published[0])
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// The publisher's trace, for the deliveries to continue (see `crate::trace`); with span
/// export on and no trace sent, this request's own span's.
fn trace_context(headers: &HeaderMap) -> Option<events::TraceContext> {
    let sent = header_text(headers, trace::TRACEPARENT)
        .filter(|t| trace::TraceParent::parse(t).is_some())
        .map(str::to_string);
    let traceparent = sent
        .clone()
        .or_else(|| crate::telemetry::current_span_traceparent().map(|own| own.to_string()))?;
    // Repeated `tracestate` lines are one list; it goes with the publisher's trace only.
    let tracestate: Vec<&str> = headers
        .get_all(trace::TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let tracestate = (sent.is_some() && !tracestate.is_empty()).then(|| tracestate.join(","));
    Some(events::TraceContext {
        traceparent,
        tracestate,
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn view(p: &Published) -> Value {
    json!({
        "id": p.id,
        "source": p.source,
        "duplicate": p.duplicate,
        "deliveries": p.streams.len(),
    })
}

/// Structured single events come as `application/cloudevents+json` or `application/json`
/// (also assumed when no content type is given); batches as
/// `application/cloudevents-batch+json`.
fn is_batch(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(false);
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/cloudevents-batch+json" => Ok(true),
        "application/cloudevents+json" | "application/json" => Ok(false),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "`{text}` is not accepted: use application/cloudevents+json or application/json for one event, \
                 application/cloudevents-batch+json for a batch"
            ),
        )),
    }
}

/// An event of the log as the API shows it: the CloudEvent, and when Herald received it. One
/// that cannot be rendered (stored before today's limits) is shown by its attributes alone and
/// flagged, rather than failing the whole listing.
pub(super) fn logged_view(logged: &LoggedEvent) -> Value {
    let mut v: Value = match serde_json::from_slice(&logged.event.to_cloudevent()) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(event = %logged.event.id, error = %e, "a stored event cannot be rendered");
            json!({
                "specversion": "1.0",
                "id": logged.event.id,
                "source": logged.event.source,
                "type": logged.event.event_type,
                "time": format_time(logged.event.time),
                "unreadable": "the stored event cannot be rendered as JSON",
            })
        }
    };
    v["received_at"] = json!(format_time(logged.received_at));
    if let Some(at) = logged.erased_at {
        v["erased_at"] = json!(format_time(at));
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    subject: Option<String>,
    projectid: Option<String>,
    userid: Option<String>,
    date_from: Option<String>,
    date_to: Option<String>,
    from: Option<String>,
    take: Option<usize>,
}

/// `GET /v1/events`: the audit log, newest first.
pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    // Before the cursor is read: a token without the scope hears so whatever it sent.
    caller.require(Scope::ReadEvents)?;
    let (take, before) = super::paging(query.take, query.from.as_deref())?;
    let filter = events::LogFilter {
        event_type: query.event_type,
        subject: query.subject,
        projectid: query.projectid,
        userid: query.userid,
        date_from: query.date_from,
        date_to: query.date_to,
    };
    let page = events::list(&service, &caller, filter, take, before).await?;
    Ok(Json(json!({
        "events": page.items.iter().map(logged_view).collect::<Vec<_>>(),
        "next": page.next.map(|n| n.to_string()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Which event, when several sources used the same id.
    source: Option<String>,
}

/// `GET /v1/events/{id}`: one event and the streams it went to.
pub async fn show(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ShowQuery>,
) -> Result<Json<Value>, ApiError> {
    let record = events::get(&service, &caller, &id, query.source.as_deref()).await?;
    let deliveries: Vec<Value> = record
        .deliveries
        .iter()
        .map(|d| {
            json!({
                "stream_id": d.stream_id,
                "delivery_id": d.id,
                "status": d.status.as_str(),
                "attempt_count": d.attempt_count,
            })
        })
        .collect();
    Ok(Json(
        json!({ "event": logged_view(&record.event), "deliveries": deliveries }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    event_ids: Option<Vec<String>>,
    subject: Option<String>,
}

/// `POST /v1/events/erase`: erases events by id or by subject (a right to be forgotten) down
/// to what identifies them (see `Store::erase`); delivery history stays.
pub async fn erase(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<EraseRequest>,
) -> Result<Json<Value>, ApiError> {
    let erasure = events::Erasure {
        event_ids: request.event_ids,
        subject: request.subject,
    };
    let erased = events::erase(&service, &caller, erasure).await?;
    Ok(Json(json!({ "erased": erased })))
}
