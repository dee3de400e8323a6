//! The console's pages, as maud templates: every value interpolated into them is escaped
//! (names, event types and reasons come from tenants and their receivers, so they must only
//! ever render as text), and no page carries a script or an inline style. Each page takes
//! plain values the handlers prepared; none reads the store.

use maud::{DOCTYPE, Markup, html};

use super::{ICON_PATH, SCRIPT_PATH, STYLESHEET_PATH, charts, paths};
use crate::clock::Millis;
use crate::event::format_time;
use crate::store::Tenant;
use crate::stream::StreamStatus;

/// What surrounds every signed-in page.
pub struct Frame {
    pub token_name: String,
    /// The tenant the page is about.
    pub tenant_id: String,
    /// Every tenant, for the picker: a platform token that may list them.
    pub tenants: Option<Vec<Tenant>>,
    /// For the sign-out form.
    pub csrf: String,
    /// Whether the caller may read the event log, and manage tokens: the navigation links
    /// only what opens.
    pub reads_events: bool,
    pub manages_tokens: bool,
}

/// Which navigation entry a page belongs to.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum Section {
    Streams,
    Events,
    EventTypes,
    Tokens,
    Tenants,
}

pub(super) fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Herald" }
                link rel="icon" href=(ICON_PATH) type="image/svg+xml";
                link rel="stylesheet" href=(STYLESHEET_PATH);
                script src=(SCRIPT_PATH) defer {}
            }
            body { (body) }
        }
    }
}

pub(super) fn layout(title: &str, frame: &Frame, section: Section, content: Markup) -> Markup {
    let current = |s: Section| (s == section).then_some("page");
    document(
        title,
        html! {
            header.bar {
                a.brand href="/" { "Herald" }
                nav aria-label="Console" {
                    a href=(paths::streams(&frame.tenant_id)) aria-current=[current(Section::Streams)] {
                        "Streams"
                    }
                    @if frame.reads_events {
                        a href=(paths::events(&frame.tenant_id)) aria-current=[current(Section::Events)] {
                            "Event log"
                        }
                    }
                    a href=(paths::event_types(&frame.tenant_id)) aria-current=[current(Section::EventTypes)] {
                        "Event types"
                    }
                    @if frame.manages_tokens {
                        a href=(paths::tokens(&frame.tenant_id)) aria-current=[current(Section::Tokens)] {
                            "Tokens"
                        }
                    }
                    @if frame.tenants.is_some() {
                        a href="/tenants" aria-current=[current(Section::Tenants)] { "Tenants" }
                    }
                }
                @if let Some(tenants) = &frame.tenants {
                    form.picker method="get" action="/switch-tenant" {
                        label for="tenant-picker" { "Tenant" }
                        select #tenant-picker name="tenant" {
                            @for tenant in tenants {
                                option value=(tenant.id) selected[tenant.id == frame.tenant_id] {
                                    (tenant.name) " (" (tenant.id) ")"
                                }
                            }
                        }
                        button type="submit" { "Switch" }
                    }
                } @else {
                    p.tenant { "Tenant " code { (frame.tenant_id) } }
                }
                form.sign-out method="post" action="/sign-out" {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    span.who title="The token this session signed in with" { (frame.token_name) }
                    button type="submit" { "Sign out" }
                }
            }
            main { (content) }
        },
    )
}

pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    document(
        "Sign in",
        html! {
            main.narrow {
                h1 { "Sign in to Herald" }
                p {
                    "Sign in with an API token: the platform admin token "
                    code { "herald serve" } " printed when it first started, or a token made "
                    "with " code { "POST /v1/tokens" } "."
                }
                form.card method="post" action="/sign-in" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="off" required
                        spellcheck="false" aria-describedby=[error.map(|_| "token-error")];
                    @if let Some(error) = error {
                        p #token-error .error role="alert" { (error) }
                    }
                    button type="submit" { "Sign in" }
                }
                p.note {
                    "A session ends after 30 minutes without use, 12 hours after signing in, "
                    "or when its token is revoked."
                }
            }
        },
    )
}

/// A page that says what went wrong and what to do.
pub fn problem(title: &str, message: &str, next: &str) -> Markup {
    document(
        title,
        html! {
            main.narrow {
                h1 { (title) }
                p { (message) }
                p { a href="/" { (next) } }
            }
        },
    )
}

/// How many deliveries of a stream wait; `Err` says why it cannot be shown.
pub type BacklogView = Result<crate::service::deliveries::Backlog, String>;

pub struct StreamRow {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    pub status: StreamStatus,
    pub status_reason: Option<String>,
    pub backlog: BacklogView,
    pub recent: charts::RecentView,
}

pub fn streams(frame: &Frame, rows: &[StreamRow]) -> Markup {
    layout(
        "Event streams",
        frame,
        Section::Streams,
        html! {
            div.heading {
                h1 { "Event streams" }
                a.button href=(paths::new_stream(&frame.tenant_id)) data-dialog="new-destination" {
                    "New destination"
                }
            }
            @if rows.is_empty() {
                p.empty {
                    "This tenant has no event streams yet. Create one with New destination, "
                    code { "herald streams create" } " or " code { "POST /v1/event-streams" } "."
                }
            } @else {
                div.scroll {
                    table.streams {
                        thead {
                            tr {
                                th scope="col" { "Name" }
                                th.wide scope="col" { "Destination" }
                                th.wide scope="col" { "Target" }
                                th scope="col" { "Status" }
                                th.num scope="col" { "Backlog" }
                                th scope="col" { "Success, 24 h" }
                            }
                        }
                        tbody {
                            @for row in rows {
                                tr {
                                    td.name {
                                        a href=(paths::stream(&frame.tenant_id, &row.id)) title=(row.name) {
                                            (row.name)
                                        }
                                    }
                                    td.wide { (row.kind) }
                                    td.wide.target title=(row.target) { (row.target) }
                                    td {
                                        (badge(row.status.as_str()))
                                        @if let Some(reason) = &row.status_reason {
                                            span.reason { (reason) }
                                        }
                                    }
                                    td.num { (backlog_cell(&row.backlog)) }
                                    td.success { (charts::recent_success(&row.recent)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What a delivery's last attempt got: its HTTP status, or the kind of error.
pub(super) fn last_answer(d: &crate::store::DeliveryView) -> Markup {
    html! {
        @if let Some(status) = d.last_response_status {
            "HTTP " (status)
        } @else if let Some(kind) = &d.last_error_kind {
            (kind)
        } @else {
            span.muted { "–" }
        }
    }
}

/// A status as a badge, coloured by its name (a stream's, a delivery's).
pub(super) fn badge(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status) } }
}

fn backlog_cell(backlog: &BacklogView) -> Markup {
    match backlog {
        Ok(backlog) => html! {
            (backlog.pending)
            @if let Some(age) = backlog.oldest_age_seconds {
                span.reason { "oldest " (age_text(age)) }
            }
        },
        Err(why) => html! { span.muted title=(why) { "–" } },
    }
}

/// A duration as a person reads it at a glance.
fn age_text(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

pub(super) fn time(at: Millis) -> Markup {
    let text = format_time(at);
    html! { time datetime=(text) { (text) } }
}

/// A stream's page: what it is, its backlog and recent deliveries, and the forms that
/// change its status.
pub struct StreamPage {
    pub id: String,
    pub name: String,
    pub status: StreamStatus,
    pub status_reason: Option<String>,
    pub kind: &'static str,
    /// Its destination's configuration without secrets, as (API field name, value).
    pub configuration: Vec<(String, String)>,
    /// Its write-only values: (what, whether set).
    pub secrets: Vec<(&'static str, bool)>,
    /// The rest of its settings, as (label, value).
    pub settings: Vec<(&'static str, String)>,
    pub subscriptions: Vec<String>,
    pub backlog: BacklogView,
    pub deliveries: Result<Vec<crate::store::DeliveryView>, String>,
    /// Why the last status change was refused, shown beside its forms.
    pub status_error: Option<String>,
    /// The signing secret's section, for a destination that is signed with one.
    pub signing: Option<Markup>,
    /// Its charts' section.
    pub charts: Markup,
}

pub fn stream(frame: &Frame, page: &StreamPage) -> Markup {
    let action = paths::stream_status(&frame.tenant_id, &page.id);
    let meaning = match page.status {
        StreamStatus::Enabled => "Events are delivered as they come.",
        StreamStatus::Paused => {
            "New events are kept as pending deliveries, but nothing is sent until the stream is \
             enabled again."
        }
        StreamStatus::Disabled => {
            "Nothing is sent, and new events make no deliveries, until the stream is enabled again."
        }
    };
    let pending = page.backlog.as_ref().map(|b| b.pending).ok();
    layout(
        &page.name,
        frame,
        Section::Streams,
        html! {
            p.crumbs { a href=(paths::streams(&frame.tenant_id)) { "Event streams" } }
            h1.title { span.name { (page.name) } " " (badge(page.status.as_str())) }
            p.muted { code { (page.id) } }

            section aria-labelledby="status-heading" {
                h2 #status-heading { "Status" }
                p { "This stream is " strong { (page.status.as_str()) } ". " (meaning) }
                @if let Some(reason) = &page.status_reason {
                    p.reason { (reason) }
                }
                @if let Some(error) = &page.status_error {
                    p #status-error .error role="alert" { (error) }
                }
                div.actions {
                    @if page.status != StreamStatus::Paused {
                        form method="post" action=(action) {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            input type="hidden" name="status" value="paused";
                            button type="submit" { "Pause" }
                        }
                    }
                    @if page.status != StreamStatus::Disabled {
                        form method="post" action=(action) {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            input type="hidden" name="status" value="disabled";
                            button.danger type="submit" { "Disable" }
                        }
                    }
                    @if page.status != StreamStatus::Enabled {
                        form method="post" action=(action) {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            input type="hidden" name="status" value="enabled";
                            fieldset {
                                legend { "Pending deliveries" }
                                label {
                                    input type="radio" name="backlog" value="deliver" checked;
                                    " Deliver the backlog"
                                    @if let Some(n) = pending { " (" (n) " pending)" }
                                }
                                label {
                                    input type="radio" name="backlog" value="skip";
                                    " Skip to now (cancel them)"
                                }
                            }
                            button type="submit" { "Enable" }
                        }
                    }
                }
            }

            section aria-labelledby="configuration-heading" {
                h2 #configuration-heading { "Configuration" }
                dl.settings {
                    dt { "Destination" } dd { (page.kind) }
                    @for (field, value) in &page.configuration {
                        dt { code { (field) } } dd.target { (value) }
                    }
                    @for (what, set) in &page.secrets {
                        dt { (what) }
                        dd { @if *set { span.set { "set" } } @else { span.muted { "not set" } } }
                    }
                    dt { "Subscriptions" }
                    dd {
                        @for (i, pattern) in page.subscriptions.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (pattern) }
                        }
                    }
                    @for (label, value) in &page.settings {
                        dt { (label) } dd { (value) }
                    }
                }
            }

            @if let Some(signing) = &page.signing { (signing) }

            section aria-labelledby="backlog-heading" {
                h2 #backlog-heading { "Backlog" }
                @match &page.backlog {
                    Ok(backlog) => {
                        p {
                            (backlog.pending) " pending"
                            @if backlog.pending == 1 { " delivery" } @else { " deliveries" }
                            @if let Some(age) = backlog.oldest_age_seconds {
                                "; the oldest has waited " (age_text(age)) "."
                            }
                        }
                    }
                    Err(why) => { p.muted { (why) } }
                }
            }

            (page.charts)

            section aria-labelledby="deliveries-heading" {
                h2 #deliveries-heading { "Recent deliveries" }
                p {
                    a href=(paths::stream_deliveries(&frame.tenant_id, &page.id)) {
                        "All deliveries, with filters and redelivery"
                    }
                }
                @match &page.deliveries {
                    Err(why) => { p.muted { (why) } }
                    Ok(deliveries) if deliveries.is_empty() => {
                        p.empty { "No deliveries yet." }
                    }
                    Ok(deliveries) => { (super::deliveries::table(&frame.tenant_id, deliveries)) }
                }
            }
        },
    )
}

/// The tenants page's forms as submitted, and what was wrong with them.
#[derive(Default)]
pub struct TenantForms {
    pub new_name: String,
    pub new_id: String,
    pub new_name_error: Option<String>,
    pub new_id_error: Option<String>,
    /// A refused rename: (tenant id, the name typed, why).
    pub rename: Option<(String, String, String)>,
}

pub fn tenants(frame: &Frame, tenants: &[Tenant], forms: &TenantForms) -> Markup {
    layout(
        "Tenants",
        frame,
        Section::Tenants,
        html! {
            h1 { "Tenants" }
            div.scroll {
                table.tenants {
                    thead {
                        tr {
                            th scope="col" { "Name" }
                            th scope="col" { "ID" }
                            th.wide scope="col" { "Created" }
                            th scope="col" { span.visually-hidden { "Actions" } }
                        }
                    }
                    tbody {
                        @for (i, tenant) in tenants.iter().enumerate() {
                            @let refused = forms.rename.as_ref().filter(|(id, _, _)| *id == tenant.id);
                            tr {
                                td.name {
                                    a href=(paths::streams(&tenant.id)) title=(tenant.name) { (tenant.name) }
                                }
                                td { code.id { (tenant.id) } }
                                td.wide { (time(tenant.created_at)) }
                                td {
                                    details.confirm open[refused.is_some()] {
                                        summary { "Rename" }
                                        form method="post" action=(paths::tenant_rename(&tenant.id)) {
                                            input type="hidden" name="csrf" value=(frame.csrf);
                                            label for={ "rename-" (i) } { "New name" }
                                            input id={ "rename-" (i) } type="text" name="name" maxlength="128" required
                                                value=(refused.map_or(tenant.name.as_str(), |(_, name, _)| name.as_str()))
                                                aria-describedby=[refused.map(|_| format!("rename-{i}-error"))];
                                            @if let Some((_, _, error)) = refused {
                                                p id={ "rename-" (i) "-error" } .error role="alert" { (error) }
                                            }
                                            button type="submit" { "Save name" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="new-tenant-heading" {
                h2 #new-tenant-heading { "New tenant" }
                form.stack method="post" action="/tenants" {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    label for="tenant-name" { "Name" }
                    input #tenant-name type="text" name="name" value=(forms.new_name) maxlength="128" required
                        aria-describedby=[forms.new_name_error.as_ref().map(|_| "tenant-name-error")];
                    @if let Some(error) = &forms.new_name_error {
                        p #tenant-name-error .error role="alert" { (error) }
                    }
                    label for="tenant-id" { "ID (optional)" }
                    input #tenant-id type="text" name="id" value=(forms.new_id) maxlength="64"
                        placeholder="ten_acme" spellcheck="false"
                        aria-describedby={ "tenant-id-hint" @if forms.new_id_error.is_some() { " tenant-id-error" } };
                    p #tenant-id-hint .note {
                        "Starts with " code { "ten_" } ", for example your own organization's id; "
                        "made up when left empty."
                    }
                    @if let Some(error) = &forms.new_id_error {
                        p #tenant-id-error .error role="alert" { (error) }
                    }
                    button type="submit" { "Create tenant" }
                }
            }
        },
    )
}
