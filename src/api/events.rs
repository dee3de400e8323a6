//! `/v1/events`: publish one event (CloudEvents structured JSON) or a batch
//! (`application/cloudevents-batch+json`), and read the audit log. A publish is answered,
//! 202, only after the events and their deliveries are committed; a batch with one bad event
//! stores nothing.
//!
//! A platform token names the tenant with the `Herald-Tenant` header or a `tenant` attribute
//! on the events (all events of a batch go to one tenant).

use std::borrow::Cow;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use axum::extract::Path;

use super::{
    ApiError, ApiQuery, AppState, Caller, JsonBody, Scope, body_error, json_error, parse_time_param,
};
use crate::event::{Event, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, format_time, parse_event};
use crate::store::{Erase, EventFilter, LoggedEvent, Published};
use crate::trace;

pub async fn publish(
    State(state): State<AppState>,
    mut caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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

    if let Some(tenant) = named_tenant(&items)? {
        caller.act_on(&state, &tenant).await?;
    }
    let now = state.clock.now_ms();
    let default_source = format!("urn:herald:{}", caller.tenant_id);
    let catalog = state
        .catalogs
        .for_tenant(&*state.store, &caller.tenant_id)
        .await?;
    let mut events: Vec<Event> = items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_event(raw, &catalog, now, &default_source)
                .map_err(|e| if batch { e.at_index(i) } else { e })
        })
        .collect::<Result<_, _>>()?;
    // The publisher's trace, for the deliveries to continue (see `crate::trace`); with span
    // export on and no trace sent, this request's own span's.
    let sent = header_text(&headers, trace::TRACEPARENT)
        .filter(|t| trace::TraceParent::parse(t).is_some())
        .map(str::to_string);
    let traceparent = sent
        .clone()
        .or_else(|| crate::telemetry::current_span_traceparent().map(|own| own.to_string()));
    if let Some(traceparent) = traceparent {
        // Repeated `tracestate` lines are one list; it goes with the publisher's trace only.
        let tracestate: Vec<&str> = headers
            .get_all(trace::TRACESTATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let tracestate = (sent.is_some() && !tracestate.is_empty()).then(|| tracestate.join(","));
        for event in &mut events {
            trace::adopt(&mut event.extensions, &traceparent, tracestate.as_deref());
        }
    }
    // Counted by the publish task: a publish whose client hangs up is still stored.
    let counters: Vec<_> = state
        .metrics
        .events
        .counters_for(&catalog, &events)
        .into_iter()
        .cloned()
        .collect();

    // On a node that delivers from the embedded store, the new deliveries come back leased and
    // go straight to its dispatcher, which saves a claim. The publish runs as its own task so that a client hanging up cannot stop the
    // hand-over half-way (leases it never received would only lapse, later).
    let (store, signal, log_signal, tenant) = (
        state.store.clone(),
        state.signal.clone(),
        state.log_signal.clone(),
        caller.tenant_id.clone(),
    );
    let lease_until = state.delivery_lease_ms.map(|ms| now + ms);
    let published = tokio::spawn(async move {
        let mut published = store.publish(&tenant, events, now, lease_until).await?;
        crate::metrics::EventMetrics::published(&counters, &published);
        log_signal.notify(&tenant);
        if published.iter().any(|p| p.deferred) {
            signal.fan_out_pending();
        }
        if lease_until.is_none() {
            // Due now, for whichever dispatcher claims them first.
            signal.wake(
                published
                    .iter()
                    .filter(|p| !p.deferred)
                    .flat_map(|p| &p.streams),
            );
        }
        signal.hand_over(
            published
                .iter_mut()
                .flat_map(|p| std::mem::take(&mut p.leased)),
        );
        Ok::<_, crate::store::StoreError>(published)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a publish task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    })??;
    let body = if batch {
        json!({ "events": published.iter().map(view).collect::<Vec<_>>() })
    } else {
        view(&published[0])
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The tenant the events name with their `tenant` attribute, if any; all must agree.
fn named_tenant(items: &[&RawValue]) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Target<'a> {
        #[serde(borrow, default)]
        tenant: Option<&'a RawValue>,
    }
    let mut named: Option<String> = None;
    for (i, raw) in items.iter().enumerate() {
        let Ok(target) = serde_json::from_str::<Target>(raw.get()) else {
            continue; // Not an object: parse_event says what is wrong.
        };
        let tenant = match target
            .tenant
            .map(|t| serde_json::from_str::<Option<Cow<str>>>(t.get()))
        {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(tenant))) => Some(tenant),
            Some(Err(_)) => {
                return Err(ApiError::invalid(format!(
                    "events[{i}]: `tenant` must be a tenant id string"
                )));
            }
        };
        match (&named, tenant) {
            (_, None) => {}
            (None, Some(tenant)) => named = Some(tenant.into_owned()),
            (Some(first), Some(tenant)) if *first != tenant => {
                return Err(ApiError::invalid(format!(
                    "events[{i}]: a batch goes to one tenant, but it names both `{first}` and `{tenant}`"
                )));
            }
            _ => {}
        }
    }
    Ok(named)
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
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEvents)?;
    let (take, before) = super::paging(query.take, query.from.as_deref())?;
    let time = |field: &str, v: &Option<String>| {
        v.as_deref().map(|v| parse_time_param(field, v)).transpose()
    };
    let filter = EventFilter {
        event_type: query.event_type,
        subject: query.subject,
        projectid: query.projectid,
        userid: query.userid,
        date_from: time("date_from", &query.date_from)?,
        date_to: time("date_to", &query.date_to)?,
    };
    if let (Some(from), Some(to)) = (filter.date_from, filter.date_to)
        && from > to
    {
        return Err(ApiError::invalid("`date_from` is after `date_to`"));
    }
    let page = state
        .store
        .list_events(&caller.tenant_id, filter, before, take)
        .await?;
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
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ShowQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ReadEvents)?;
    let logged = state
        .store
        .get_event(&caller.tenant_id, &id, query.source.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    let deliveries: Vec<Value> = state
        .store
        .event_deliveries(&caller.tenant_id, &id)
        .await?
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
        json!({ "event": logged_view(&logged), "deliveries": deliveries }),
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
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<EraseRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::UpdateEventDeliveries)?;
    let what = match (request.event_ids, request.subject) {
        (Some(ids), None) if !ids.is_empty() && ids.len() <= 1_000 => Erase::Events(ids),
        (None, Some(subject)) if !subject.is_empty() => Erase::Subject(subject),
        _ => {
            return Err(ApiError::invalid(
                "give either `event_ids` (1 to 1000 ids) or a non-empty `subject`",
            ));
        }
    };
    let tenant_id = caller.tenant_id.clone();
    let erased = super::to_completion(async move {
        Ok(state
            .store
            .erase(&tenant_id, what, state.clock.now_ms())
            .await?)
    })
    .await?;
    tracing::info!(tenant = %caller.tenant_id, erased, "event payloads erased");
    Ok(Json(json!({ "erased": erased })))
}
