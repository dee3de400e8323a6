//! The deliveries pages, as maud templates: the list with its filter form and bulk
//! redelivery, and one delivery with its attempts, each a `<details>` drawer. Event data,
//! receivers' answers and error messages come from outside Herald: maud escapes them, and
//! they are shown in `<pre>` as the text they are.

use maud::{Markup, html};

use super::super::pages::{Frame, Section, badge, last_answer, layout, time};
use super::super::paths;
use super::{Filters, STATUSES};
use crate::clock::Millis;
use crate::destinations::{RESPONSE_EXCERPT_BYTES, ShownRequest};
use crate::store::{AttemptView, DeliveryView};

/// What is wrong with each filter field, in words a person reads.
#[derive(Debug, Default)]
pub struct FieldErrors {
    pub status: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl FieldErrors {
    pub fn any(&self) -> bool {
        self.status.is_some()
            || self.event_type.is_some()
            || self.from.is_some()
            || self.to.is_some()
    }
}

/// Where a bulk redelivery stands.
#[derive(Debug, Clone)]
pub enum Redelivery {
    /// A dry run counted this many, at this time (RFC 3339): the page asks to confirm, and
    /// confirming queues only deliveries created before that time, the ones counted.
    Matched(u64, String),
    /// Confirmed: this many were queued again.
    Queued(u64),
}

pub struct ListPage<'a> {
    pub stream_id: &'a str,
    pub stream_name: &'a str,
    pub filters: &'a Filters,
    /// Some filter is set.
    pub filtered: bool,
    pub errors: &'a FieldErrors,
    /// Why no list can be shown (the token lacks the scope).
    pub list_error: Option<&'a str>,
    /// `None` when the filters are wrong or the list may not be read.
    pub deliveries: Option<&'a [DeliveryView]>,
    /// The next page's link, and the first page's when this is not it.
    pub older: Option<&'a str>,
    pub newest: Option<&'a str>,
    pub redelivery: Option<Redelivery>,
    pub redeliver_error: Option<&'a str>,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An error shown under the field it concerns, which names it with `aria-describedby`.
fn field_error(id: &str, error: Option<&String>) -> Markup {
    html! {
        @if let Some(error) = error {
            p.error id=(id) role="alert" { (error) }
        }
    }
}

/// The ids an input's `aria-describedby` lists: its hint, and its error when it has one.
fn described_by(hint: Option<&str>, error_id: &str, error: Option<&String>) -> Option<String> {
    let ids: Vec<&str> = hint.into_iter().chain(error.map(|_| error_id)).collect();
    (!ids.is_empty()).then(|| ids.join(" "))
}

/// The filters as hidden fields, so a redelivery form acts on what the list shows.
fn hidden_filters(filters: &Filters) -> Markup {
    html! {
        @for (name, value) in filters.pairs() {
            input type="hidden" name=(name) value=(value);
        }
    }
}

pub fn list(frame: &Frame, page: &ListPage<'_>) -> Markup {
    let tenant = &frame.tenant_id;
    let list_path = paths::stream_deliveries(tenant, page.stream_id);
    let redeliver_path = paths::stream_redeliver(tenant, page.stream_id);
    let errors = page.errors;
    let filters = page.filters;
    layout(
        &format!("Deliveries of {}", page.stream_name),
        frame,
        Section::Streams,
        html! {
            p.crumbs {
                a href=(paths::streams(tenant)) { "Event streams" } " › "
                a.crumb-name href=(paths::stream(tenant, page.stream_id)) title=(page.stream_name) {
                    (page.stream_name)
                }
            }
            h1 { "Deliveries" }

            @if let Some(Redelivery::Queued(n)) = page.redelivery {
                p.notice role="status" {
                    (plural(n, "delivery", "deliveries")) " queued again: they are sent now, "
                    "each with a fresh retry budget."
                }
            }

            form.filters method="get" action=(list_path) aria-label="Filter deliveries" {
                fieldset.statuses aria-describedby=[errors.status.as_ref().map(|_| "status-error")] {
                    legend { "Status" }
                    @for status in STATUSES {
                        label {
                            input type="checkbox" name="status" value=(status.as_str())
                                checked[filters.statuses.iter().any(|s| s == status.as_str())];
                            " " (status.as_str())
                        }
                    }
                    (field_error("status-error", errors.status.as_ref()))
                }
                div.field {
                    label for="event-type" { "Event type" }
                    input #event-type type="text" name="event_type" value=(filters.event_type)
                        spellcheck="false" autocomplete="off"
                        aria-invalid=[errors.event_type.as_ref().map(|_| "true")]
                        aria-describedby=[described_by(Some("event-type-hint"), "event-type-error", errors.event_type.as_ref())];
                    span.hint #event-type-hint { "One type, or several separated by commas." }
                    (field_error("event-type-error", errors.event_type.as_ref()))
                }
                div.field {
                    label for="from" { "From (UTC)" }
                    input #from type="text" name="from" value=(filters.from)
                        spellcheck="false" autocomplete="off" placeholder="2026-11-30 15:00"
                        aria-invalid=[errors.from.as_ref().map(|_| "true")]
                        aria-describedby=[described_by(Some("time-hint"), "from-error", errors.from.as_ref())];
                    (field_error("from-error", errors.from.as_ref()))
                }
                div.field {
                    label for="to" { "To (UTC)" }
                    input #to type="text" name="to" value=(filters.to)
                        spellcheck="false" autocomplete="off" placeholder="2026-11-30 16:00"
                        aria-invalid=[errors.to.as_ref().map(|_| "true")]
                        aria-describedby=[described_by(Some("time-hint"), "to-error", errors.to.as_ref())];
                    (field_error("to-error", errors.to.as_ref()))
                }
                p.hint #time-hint {
                    "When the delivery was created, like 2026-11-30 15:00 (UTC) or "
                    "2026-11-30T16:00:00+01:00."
                }
                div.actions {
                    button type="submit" { "Filter" }
                    @if page.filtered { a href=(list_path) { "Clear filters" } }
                }
            }

            @if let Some(error) = page.list_error {
                p #list-error .error role="alert" { (error) }
            }
            @match page.deliveries {
                None => {
                    @if page.list_error.is_none() {
                        p.empty { "Correct the filters above to see the deliveries." }
                    }
                }
                Some([]) => {
                    p.empty {
                        @if page.filtered || page.newest.is_some() {
                            "No deliveries match these filters."
                        } @else {
                            "No deliveries yet."
                        }
                    }
                }
                Some(deliveries) => { (table(tenant, deliveries)) }
            }
            @if page.older.is_some() || page.newest.is_some() {
                nav.pages aria-label="Pages of deliveries" {
                    @if let Some(newest) = page.newest { a href=(newest) { "Newest deliveries" } }
                    @if let Some(older) = page.older { a href=(older) { "Older deliveries" } }
                }
            }

            @if page.deliveries.is_some() {
                section aria-labelledby="redeliver-heading" {
                    h2 #redeliver-heading { "Redeliver" }
                    p {
                        "Queue again every delivery of this stream"
                        @if page.filtered { " that the filters above match" }
                        " (on every page, not only this one), each with a fresh retry budget. "
                        "Herald counts them first; nothing is sent until you confirm."
                    }
                    @match &page.redelivery {
                        Some(Redelivery::Matched(0, _)) => {
                            p.notice role="status" {
                                "No delivery matches these filters: there is nothing to redeliver."
                            }
                        }
                        Some(Redelivery::Matched(n, counted_before)) => {
                            @let n = *n;
                            p.notice role="status" {
                                strong { (plural(n, "delivery matches", "deliveries match")) }
                                " these filters. Redeliver "
                                @if n == 1 { "it" } @else { "them" } "?"
                            }
                            div.actions.confirm {
                                form method="post" action=(redeliver_path) {
                                    input type="hidden" name="csrf" value=(frame.csrf);
                                    (hidden_filters(filters))
                                    input type="hidden" name="counted_before" value=(counted_before);
                                    input type="hidden" name="confirm" value="yes";
                                    button type="submit"
                                        aria-describedby=[page.redeliver_error.map(|_| "redeliver-error")] {
                                        "Redeliver " (plural(n, "delivery", "deliveries"))
                                    }
                                }
                                a href=(super::with_query(&list_path, &filters.pairs())) { "Cancel" }
                            }
                        }
                        _ => {
                            form method="post" action=(redeliver_path) {
                                input type="hidden" name="csrf" value=(frame.csrf);
                                (hidden_filters(filters))
                                button type="submit"
                                    aria-describedby=[page.redeliver_error.map(|_| "redeliver-error")] {
                                    "Count deliveries to redeliver"
                                }
                            }
                        }
                    }
                    @if let Some(error) = page.redeliver_error {
                        p #redeliver-error .error role="alert" { (error) }
                    }
                }
            }
        },
    )
}

/// A list of deliveries, each linked to its page: the deliveries page's, and a stream page's
/// most recent.
pub(in crate::console) fn table(tenant: &str, deliveries: &[DeliveryView]) -> Markup {
    html! {
        div.scroll.listing {
            table.deliveries.listing {
                thead {
                    tr {
                        th scope="col" { "Created" }
                        th scope="col" { "Event type" }
                        th scope="col" { "Delivery" }
                        th scope="col" { "Status" }
                        th.num scope="col" { "Attempts" }
                        th scope="col" { "Last answer" }
                    }
                }
                tbody {
                    @for d in deliveries {
                        tr {
                            td.c-created { (time(d.created_at)) }
                            td.name.c-type title=(d.event_type) { (d.event_type) }
                            td.name.c-id {
                                a href=(paths::delivery(tenant, &d.id)) title={ "Event " (d.event_id) } {
                                    code { (d.id) }
                                }
                            }
                            td.c-status { (badge(d.status.as_str())) }
                            td.num.c-attempts { (d.attempt_count) }
                            td.c-answer {
                                (last_answer(d))
                                @if let Some(at) = d.next_attempt_at {
                                    span.reason { "next try " (time(at)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The requests of a delivery's attempts, rebuilt; `Err` says why they cannot be shown.
pub struct Requests {
    pub body: Vec<u8>,
    /// One per attempt, in the delivery's order.
    pub attempts: Vec<ShownRequest>,
    pub erased_at: Option<Millis>,
}

pub struct DeliveryPage<'a> {
    pub delivery: &'a DeliveryView,
    /// `None` when the stream is gone or the token may not read it.
    pub stream_name: Option<&'a str>,
    pub requests: Result<Requests, String>,
    /// How many a redelivery just queued.
    pub queued: Option<u64>,
    pub redeliver_error: Option<&'a str>,
}

pub fn delivery(frame: &Frame, page: &DeliveryPage<'_>) -> Markup {
    let tenant = &frame.tenant_id;
    let d = page.delivery;
    let stream_label = page.stream_name.unwrap_or(&d.stream_id);
    let last = d.attempts.len();
    layout(
        &format!("Delivery {}", d.id),
        frame,
        Section::Streams,
        html! {
            p.crumbs {
                a href=(paths::streams(tenant)) { "Event streams" } " › "
                a.crumb-name href=(paths::stream(tenant, &d.stream_id)) title=(stream_label) {
                    (stream_label)
                }
                " › "
                a href=(paths::stream_deliveries(tenant, &d.stream_id)) { "Deliveries" }
            }
            h1.title { "Delivery " code.name { (d.id) } " " (badge(d.status.as_str())) }

            @match page.queued {
                Some(0) => {
                    p.notice role="status" {
                        "An attempt is under way, so nothing was queued: reload to see it."
                    }
                }
                Some(_) => {
                    p.notice role="status" {
                        "Queued again with a fresh retry budget: it is sent now. Reload to see the "
                        "attempt."
                    }
                }
                None => {}
            }

            section aria-labelledby="delivery-heading" {
                h2 #delivery-heading { "What it delivers" }
                dl.settings {
                    dt { "Event type" } dd { code { (d.event_type) } }
                    dt { "Event" } dd { code { (d.event_id) } }
                    dt { "Created" } dd { (time(d.created_at)) }
                    dt { "Attempts" } dd { (d.attempt_count) }
                    @if let Some(at) = d.next_attempt_at {
                        dt { "Next attempt" } dd { (time(at)) }
                    }
                }
                form.inline method="post" action=(paths::delivery_redeliver(tenant, &d.id)) {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button type="submit"
                        aria-describedby=[page.redeliver_error.map(|_| "redeliver-error")] {
                        "Redeliver"
                    }
                    span.hint { "Sends the event to this stream again, with a fresh retry budget." }
                }
                @if let Some(error) = page.redeliver_error {
                    p #redeliver-error .error role="alert" { (error) }
                }
            }

            section aria-labelledby="body-heading" {
                h2 #body-heading { "Request body" }
                @match &page.requests {
                    Err(why) => { p.muted #requests-unavailable { (why) } }
                    Ok(requests) => {
                        p.note {
                            "Every attempt sends the same body: the event in the stream's format, "
                            "rebuilt from the event as Herald keeps it."
                        }
                        @if let Some(at) = requests.erased_at {
                            p.notice {
                                "The event's data was erased " (time(at)) ": this is what is left "
                                "of it, not what attempts made before then sent."
                            }
                        }
                        pre.payload #request-body { (String::from_utf8_lossy(&requests.body)) }
                    }
                }
            }

            section aria-labelledby="attempts-heading" {
                h2 #attempts-heading { "Attempts" }
                @if d.attempts.is_empty() {
                    p.empty { "No attempt yet." }
                } @else {
                    p.note {
                        "Each request is rebuilt from the event and the stream's current settings, "
                        "with credentials masked; the span id in "
                        code { "traceparent" } " is new on every attempt."
                    }
                    @for (i, attempt) in d.attempts.iter().enumerate() {
                        (attempt_drawer(
                            i + 1,
                            attempt,
                            page.requests.as_ref().ok().and_then(|r| r.attempts.get(i)),
                            i + 1 == last,
                        ))
                    }
                }
            }
        },
    )
}

fn attempt_drawer(
    number: usize,
    attempt: &AttemptView,
    request: Option<&ShownRequest>,
    open: bool,
) -> Markup {
    let id = format!("attempt-{number}");
    html! {
        details.attempt #(id) open[open] {
            summary {
                span.attempt-number { "Attempt " (number) }
                " " (time(attempt.attempted_at)) " · "
                @if let Some(status) = attempt.response_status {
                    "HTTP " (status)
                } @else if let Some(kind) = &attempt.error_kind {
                    (kind)
                } @else {
                    "no answer"
                }
                " · " (attempt.duration_ms) " ms"
            }
            div.drawer {
                h3 { "Request" }
                @if let Some(request) = request {
                    p.request-line { code { (request.method) " " (request.url) } }
                    div.scroll {
                        table.headers {
                            caption.visually-hidden { "Request headers of attempt " (number) }
                            thead { tr { th scope="col" { "Header" } th scope="col" { "Value" } } }
                            tbody {
                                @for header in &request.headers {
                                    tr {
                                        th scope="row" { code { (header.name) } }
                                        td {
                                            @if header.masked {
                                                span.masked title="Hidden: a credential is never shown" {
                                                    (header.value)
                                                }
                                            } @else {
                                                code { (header.value) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    p.note { "Body: the request body above." }
                } @else {
                    p.muted { "Not shown: see the request body above." }
                }

                h3 { "Response" }
                dl.settings {
                    dt { "Status" }
                    dd {
                        @if let Some(status) = attempt.response_status { "HTTP " (status) }
                        @else { span.muted { "no answer" } }
                    }
                    dt { "Duration" } dd { (attempt.duration_ms) " ms" }
                    @if let Some(kind) = &attempt.error_kind {
                        dt { "Error" }
                        dd {
                            code { (kind) }
                            @if let Some(message) = &attempt.error_message {
                                ": " (message)
                            }
                        }
                    }
                }
                @match &attempt.response_body {
                    Some(body) if !body.is_empty() => {
                        p.label { "Response body (its first " (RESPONSE_EXCERPT_BYTES / 1024) " KiB)" }
                        pre.payload { (body) }
                    }
                    _ => { p.muted { "No response body." } }
                }
                @if let Some(detail) = &attempt.detail {
                    p.label { "What the destination reported" }
                    pre.payload { (detail) }
                }
            }
        }
    }
}
