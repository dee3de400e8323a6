//! The event log pages: a tenant's events newest first, filtered by type, subject and time
//! (a GET form, so a filtered page is a link), one event with its data and where it was
//! delivered, and erasing an event's data after a page that says what erasing does. All
//! through `service::events`, the API's own operations.

use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{self, Frame, Section};
use super::session::{CsrfForm, Signed, bad_form};
use super::{Bound, Refusal, html as page, paths, see_other, typed_time};
use crate::api::ApiError;
use crate::event::format_time;
use crate::service::events::{self, Erasure, EventRecord, LogFilter};
use crate::service::{self, Caller, Service, event_types};
use crate::store::LoggedEvent;

/// Events one page lists.
const PAGE_SIZE: usize = 50;

#[derive(Deserialize, Default)]
pub(super) struct Filters {
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    date_from: String,
    #[serde(default)]
    date_to: String,
    before: Option<i64>,
}

impl Filters {
    /// The filters as a query string, for the next page's link.
    fn query(&self) -> String {
        let mut query = String::new();
        for (key, value) in [
            ("event_type", &self.event_type),
            ("subject", &self.subject),
            ("date_from", &self.date_from),
            ("date_to", &self.date_to),
        ] {
            if !value.trim().is_empty() {
                query.push_str(&format!("&{key}={}", paths::query(value.trim())));
            }
        }
        query
    }
}

/// Why the filters were refused, beside the field concerned.
#[derive(Default)]
struct FilterErrors {
    date_from: Option<String>,
    date_to: Option<String>,
    other: Option<String>,
}

/// A time as typed (see [`typed_time`]); as typed when it is not one, for the service to
/// say what is wrong with it.
fn time_filter(value: &str, bound: Bound) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(typed_time(value, bound).unwrap_or_else(|| value.to_string()))
}

/// A query string that is not what the page takes (a link typed by hand).
fn bad_query(rejection: QueryRejection) -> Refusal {
    Refusal::BadForm(rejection.body_text())
}

/// `GET /tenants/{tenant}/events`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
    filters: Result<Query<Filters>, QueryRejection>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let Query(filters) = filters.map_err(bad_query)?;
    let nonempty = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let filter = LogFilter {
        event_type: nonempty(&filters.event_type),
        subject: nonempty(&filters.subject),
        date_from: time_filter(&filters.date_from, Bound::Start),
        date_to: time_filter(&filters.date_to, Bound::End),
        ..LogFilter::default()
    };
    let types = event_types::list(&service, &caller, None).await?;
    let type_names: Vec<String> = types.into_iter().map(|t| t.name).collect();
    let frame = signed.frame(&service, &caller.tenant_id).await;
    match events::list(&service, &caller, filter, PAGE_SIZE, filters.before).await {
        Ok(listed) => {
            let view = LogView {
                filters: &filters,
                errors: FilterErrors::default(),
                types: &type_names,
                events: &listed.items,
                next: listed.next,
            };
            Ok(page(StatusCode::OK, log_page(&frame, &view)))
        }
        Err(e @ service::Error::Invalid(_)) => {
            let message = e.to_string();
            let mut errors = FilterErrors::default();
            if message.starts_with("`date_from` must") {
                errors.date_from = Some(message);
            } else if message.starts_with("`date_to`") || message.contains("after `date_to`") {
                errors.date_to = Some(message);
            } else {
                errors.other = Some(message);
            }
            let view = LogView {
                filters: &filters,
                errors,
                types: &type_names,
                events: &[],
                next: None,
            };
            Ok(page(StatusCode::BAD_REQUEST, log_page(&frame, &view)))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct Source {
    source: Option<String>,
}

/// `GET /tenants/{tenant}/events/{id}`
pub(super) async fn show(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    source: Result<Query<Source>, QueryRejection>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let Query(source) = source.map_err(bad_query)?;
    let record = events::get(&service, &caller, &id, source.source.as_deref()).await?;
    let frame = signed.frame(&service, &caller.tenant_id).await;
    Ok(page(StatusCode::OK, event_page(&frame, &record)))
}

/// `GET /tenants/{tenant}/events/{id}/erase`: what erasing does, and the button that does it.
pub(super) async fn confirm_erase(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    source: Result<Query<Source>, QueryRejection>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let Query(source) = source.map_err(bad_query)?;
    erase_page(
        &service,
        &signed,
        &caller,
        &id,
        source,
        StatusCode::OK,
        None,
    )
    .await
}

/// `POST /tenants/{tenant}/events/{id}/erase`: erases the event's data (every event of that
/// id, as the API's erasure by id does), then shows the event as it is now.
pub(super) async fn erase(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    source: Result<Query<Source>, QueryRejection>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let Query(source) = source.map_err(bad_query)?;
    let erasure = Erasure {
        event_ids: Some(vec![id.clone()]),
        subject: None,
    };
    match events::erase(&service, &caller, erasure).await {
        Ok(_) => Ok(see_other(&paths::event(
            &caller.tenant_id,
            &id,
            source.source.as_deref().unwrap_or_default(),
        ))),
        Err(e @ (service::Error::MissingScope(_) | service::Error::Invalid(_))) => {
            let message = e.to_string();
            let status = ApiError::from(e).status;
            erase_page(
                &service,
                &signed,
                &caller,
                &id,
                source,
                status,
                Some(message),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

async fn erase_page(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    id: &str,
    source: Source,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response, Refusal> {
    let record = events::get(service, caller, id, source.source.as_deref()).await?;
    let frame = signed.frame(service, &caller.tenant_id).await;
    Ok(page(
        status,
        confirm_page(&frame, &record.event, error.as_deref()),
    ))
}

struct LogView<'a> {
    filters: &'a Filters,
    errors: FilterErrors,
    types: &'a [String],
    events: &'a [LoggedEvent],
    next: Option<i64>,
}

fn log_page(frame: &Frame, view: &LogView) -> Markup {
    let filters = view.filters;
    let errors = &view.errors;
    let described = |error: &Option<String>, id: &'static str| error.as_ref().map(|_| id);
    pages::layout(
        "Event log",
        frame,
        Section::Events,
        html! {
            h1 { "Event log" }
            form.filters method="get" action=(paths::events(&frame.tenant_id)) {
                div.field {
                    label for="filter-type" { "Event type" }
                    select #filter-type name="event_type" {
                        option value="" { "Any type" }
                        @for name in view.types {
                            option value=(name) selected[*name == filters.event_type] { (name) }
                        }
                    }
                }
                div.field {
                    label for="filter-subject" { "Subject" }
                    input #filter-subject type="text" name="subject" value=(filters.subject);
                }
                div.field {
                    label for="filter-from" { "From" }
                    input #filter-from type="text" name="date_from" value=(filters.date_from)
                        placeholder="2026-01-31T09:00:00Z"
                        aria-describedby=[described(&errors.date_from, "filter-from-error")];
                    @if let Some(error) = &errors.date_from {
                        p #filter-from-error .error role="alert" { (error) }
                    }
                }
                div.field {
                    label for="filter-to" { "To" }
                    input #filter-to type="text" name="date_to" value=(filters.date_to)
                        placeholder="2026-01-31T18:00:00Z"
                        aria-describedby=[described(&errors.date_to, "filter-to-error")];
                    @if let Some(error) = &errors.date_to {
                        p #filter-to-error .error role="alert" { (error) }
                    }
                }
                button type="submit" { "Filter" }
            }
            p.note { "Times are in UTC, as RFC 3339 (2026-01-31T09:00:00Z) or a date and time." }
            @if let Some(error) = &errors.other {
                p.error role="alert" { (error) }
            }
            @if view.events.is_empty() {
                @if errors.date_from.is_none() && errors.date_to.is_none() && errors.other.is_none() {
                    p.empty { "No events match." }
                }
            } @else {
                div.scroll {
                    table.events {
                        thead {
                            tr {
                                th scope="col" { "Time" }
                                th scope="col" { "Event type" }
                                th scope="col" { "Event" }
                                th.wide scope="col" { "Subject" }
                            }
                        }
                        tbody {
                            @for logged in view.events {
                                @let event = &logged.event;
                                tr {
                                    td { (pages::time(event.time)) }
                                    td.name title=(event.event_type) { (event.event_type) }
                                    td.name {
                                        a href=(paths::event(&frame.tenant_id, &event.id, &event.source)) title=(event.id) {
                                            (event.id)
                                        }
                                        @if logged.erased_at.is_some() {
                                            " " span.badge.erased { "erased" }
                                        }
                                    }
                                    td.wide.name title=[event.subject.as_deref()] {
                                        (event.subject.as_deref().unwrap_or(""))
                                    }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = view.next {
                    p {
                        a href={ (paths::events(&frame.tenant_id)) "?before=" (next) (filters.query()) } {
                            "Older events"
                        }
                    }
                }
            }
        },
    )
}

/// An event's data as indented JSON (its exact text if that fails).
fn pretty_data(logged: &LoggedEvent) -> String {
    let raw = logged.event.data.get();
    serde_json::from_str::<serde_json::Value>(raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| raw.to_string())
}

fn event_page(frame: &Frame, record: &EventRecord) -> Markup {
    let logged = &record.event;
    let event = &logged.event;
    pages::layout(
        &event.id,
        frame,
        Section::Events,
        html! {
            p.crumbs { a href=(paths::events(&frame.tenant_id)) { "Event log" } }
            h1.title {
                span.name { (event.event_type) }
                @if logged.erased_at.is_some() { " " span.badge.erased { "erased" } }
            }
            section aria-labelledby="attributes-heading" {
                h2 #attributes-heading { "Attributes" }
                dl.settings {
                    dt { "ID" } dd { code { (event.id) } }
                    dt { "Source" } dd.target { (event.source) }
                    dt { "Time" } dd { (pages::time(event.time)) }
                    dt { "Received" } dd { (pages::time(logged.received_at)) }
                    @if let Some(subject) = &event.subject {
                        dt { "Subject" } dd.target { (subject) }
                    }
                    @if let Some(content_type) = &event.datacontenttype {
                        dt { "Content type" } dd { (content_type) }
                    }
                    @for (key, value) in &event.extensions {
                        dt { code { (key) } }
                        dd.target {
                            @match value {
                                serde_json::Value::String(s) => { (s) }
                                other => { (other.to_string()) }
                            }
                        }
                    }
                    @if let Some(at) = logged.erased_at {
                        dt { "Erased" } dd { (pages::time(at)) }
                    }
                }
            }
            section aria-labelledby="data-heading" {
                h2 #data-heading { "Data" }
                @if logged.erased_at.is_some() {
                    p.muted { "This event's data was erased; what identifies it stays." }
                } @else {
                    pre.data { code { (pretty_data(logged)) } }
                    p {
                        a href=(paths::event_erase(&frame.tenant_id, &event.id, &event.source)) {
                            "Erase this event's data…"
                        }
                    }
                }
            }
            section aria-labelledby="event-deliveries-heading" {
                h2 #event-deliveries-heading { "Deliveries" }
                @if record.deliveries.is_empty() {
                    p.empty { "No stream was subscribed to it." }
                } @else {
                    div.scroll {
                        table {
                            thead {
                                tr {
                                    th scope="col" { "Stream" }
                                    th scope="col" { "Status" }
                                    th.num scope="col" { "Attempts" }
                                    th scope="col" { "Last answer" }
                                }
                            }
                            tbody {
                                @for d in &record.deliveries {
                                    tr {
                                        td.name {
                                            a href=(paths::stream(&frame.tenant_id, &d.stream_id)) { code { (d.stream_id) } }
                                        }
                                        td { (pages::badge(d.status.as_str())) }
                                        td.num { (d.attempt_count) }
                                        td { (pages::last_answer(d)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn confirm_page(frame: &Frame, logged: &LoggedEvent, error: Option<&str>) -> Markup {
    let event = &logged.event;
    pages::layout(
        "Erase an event",
        frame,
        Section::Events,
        html! {
            p.crumbs {
                a href=(paths::event(&frame.tenant_id, &event.id, &event.source)) { "Back to the event" }
            }
            h1 { "Erase this event's data?" }
            p {
                "The event " code { (event.id) } " (" (event.event_type) ", "
                (format_time(event.time)) ") keeps only what identifies it: its id, source, "
                "type and time. Its data, subject and other attributes go, and so do the "
                "bodies its receivers answered. Every event with this id is erased. This "
                "cannot be undone."
            }
            @if let Some(error) = error {
                p #erase-error .error role="alert" { (error) }
            }
            @if logged.erased_at.is_some() {
                p.muted { "It has been erased already." }
            } @else {
                form method="post" action=(paths::event_erase(&frame.tenant_id, &event.id, &event.source)) {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button.danger type="submit" { "Erase the data" }
                }
            }
        },
    )
}
