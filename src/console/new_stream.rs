//! The New destination form: a name, a destination kind and its settings, the events to
//! subscribe to (the tenant's catalog grouped by category), a test of the destination as
//! typed, and Create. It is one page (`/tenants/{tenant}/streams/new`) that `console.js`
//! also opens as a dialog over the streams list. Both the test and Create post the whole
//! form, so whatever happens the page comes back with everything the user typed, and each
//! refusal beside the field it concerns. The test is `service::streams::test_unsaved` and
//! Create is `service::streams::create`: the API's operations, with the API's checks.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::pages::{self, Frame, Section};
use super::session::Signed;
use super::{Refusal, html as page_answer, paths, see_other};
use crate::api::ApiError;
use crate::catalog::EventType;
use crate::destinations::{Destination, Outcome};
use crate::service::streams::{NewStream, TestEvent, UnsavedTest};
use crate::service::{self, Caller, Service, event_types, streams};
use crate::stream::{PayloadFormat, RetryPolicy, Subscription};

/// The longest response excerpt a test shows.
const SHOWN_BODY_CHARS: usize = 2_000;

/// What the form holds, as typed.
#[derive(Default)]
struct DestinationForm {
    csrf: String,
    /// Which button sent the form: `test` or `create`. (Not `action`, which would shadow
    /// the form element's own `action` in scripts.)
    intent: String,
    name: String,
    kind: String,
    webhook_url: String,
    auth_method: String,
    auth_token: String,
    basic_username: String,
    basic_password: String,
    header_name: String,
    header_value: String,
    aws_account_id: String,
    aws_region: String,
    event_bus_name: String,
    aws_access_key_id: String,
    aws_secret_access_key: String,
    endpoint_url: String,
    events: Vec<String>,
    test_event_type: String,
}

impl DestinationForm {
    /// Reads an `application/x-www-form-urlencoded` body; the event checkboxes repeat
    /// their field, which serde's form reader cannot hold.
    fn parse(body: &[u8]) -> DestinationForm {
        let mut form = DestinationForm::default();
        for (key, value) in url::form_urlencoded::parse(body) {
            let value = value.into_owned();
            match key.as_ref() {
                "csrf" => form.csrf = value,
                "intent" => form.intent = value,
                "name" => form.name = value,
                "kind" => form.kind = value,
                "webhook_url" => form.webhook_url = value,
                "auth_method" => form.auth_method = value,
                "auth_token" => form.auth_token = value,
                "basic_username" => form.basic_username = value,
                "basic_password" => form.basic_password = value,
                "header_name" => form.header_name = value,
                "header_value" => form.header_value = value,
                "aws_account_id" => form.aws_account_id = value,
                "aws_region" => form.aws_region = value,
                "event_bus_name" => form.event_bus_name = value,
                "aws_access_key_id" => form.aws_access_key_id = value,
                "aws_secret_access_key" => form.aws_secret_access_key = value,
                "endpoint_url" => form.endpoint_url = value,
                "event" if !form.events.contains(&value) => form.events.push(value),
                "test_event_type" => form.test_event_type = value,
                _ => {}
            }
        }
        form
    }

    fn kind(&self) -> &str {
        match self.kind.as_str() {
            "" => "webhook",
            kind => kind,
        }
    }

    fn auth_method(&self) -> &str {
        match self.auth_method.as_str() {
            "" => "none",
            method => method,
        }
    }

    /// The destination as the API would be sent it, or what to fill in first.
    fn destination(&self) -> Result<Destination, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut require = |value: &str, field: Field, what: &str| {
            if value.trim().is_empty() {
                problems.push(Problem::new(field, format!("Enter {what}.")));
            }
        };
        let value = match self.kind() {
            "webhook" => {
                require(
                    &self.webhook_url,
                    Field::WebhookUrl,
                    "the URL to send events to",
                );
                let authorization = match self.auth_method() {
                    "none" => None,
                    "bearer" => {
                        require(&self.auth_token, Field::Auth, "the Authorization Token");
                        Some(json!({ "method": "bearer", "token": self.auth_token }))
                    }
                    "basic" => {
                        require(&self.basic_username, Field::Auth, "the Username");
                        require(&self.basic_password, Field::Auth, "the Password");
                        Some(json!({
                            "method": "basic",
                            "username": self.basic_username,
                            "password": self.basic_password,
                        }))
                    }
                    "custom_header" => {
                        require(&self.header_name, Field::Auth, "the Header name");
                        require(&self.header_value, Field::Auth, "the Header value");
                        Some(json!({
                            "method": "custom_header",
                            "header_name": self.header_name.trim(),
                            "header_value": self.header_value,
                        }))
                    }
                    _ => {
                        problems.push(Problem::new(
                            Field::Auth,
                            "Choose an Authentication Method.".into(),
                        ));
                        None
                    }
                };
                let mut configuration = json!({ "webhook_endpoint": self.webhook_url.trim() });
                if let Some(authorization) = authorization {
                    configuration["webhook_authorization"] = authorization;
                }
                json!({ "type": "webhook", "configuration": configuration })
            }
            "eventbridge" => {
                require(
                    &self.aws_account_id,
                    Field::Eventbridge,
                    "the AWS account ID",
                );
                require(&self.aws_region, Field::Eventbridge, "the AWS region");
                let key_id = self.aws_access_key_id.trim();
                if key_id.is_empty() != self.aws_secret_access_key.is_empty() {
                    problems.push(Problem::new(
                        Field::Eventbridge,
                        "Enter both the access key ID and its secret access key, or neither."
                            .into(),
                    ));
                }
                let mut configuration = json!({
                    "aws_account_id": self.aws_account_id.trim(),
                    "aws_region": self.aws_region.trim(),
                });
                let optional = [
                    ("event_bus_name", self.event_bus_name.trim()),
                    ("aws_access_key_id", key_id),
                    ("aws_secret_access_key", self.aws_secret_access_key.as_str()),
                    ("endpoint_url", self.endpoint_url.trim()),
                ];
                for (field, value) in optional {
                    if !value.is_empty() {
                        configuration[field] = json!(value);
                    }
                }
                json!({ "type": "eventbridge", "configuration": configuration })
            }
            _ => {
                problems.push(Problem::new(
                    Field::Kind,
                    "Choose a destination type.".into(),
                ));
                Value::Null
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        serde_json::from_value(value).map_err(|e| {
            vec![Problem::new(
                Field::Form,
                format!("This destination cannot be read: {e}."),
            )]
        })
    }
}

/// Where a refusal is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// At the top of the form.
    Form,
    Name,
    Kind,
    WebhookUrl,
    Auth,
    Eventbridge,
    Events,
    /// Beside the Test button.
    Test,
}

impl Field {
    fn id(self) -> &'static str {
        match self {
            Field::Form => "form-error",
            Field::Name => "name-error",
            Field::Kind => "kind-error",
            Field::WebhookUrl => "webhook-url-error",
            Field::Auth => "auth-error",
            Field::Eventbridge => "eventbridge-error",
            Field::Events => "events-error",
            Field::Test => "test-error",
        }
    }
}

struct Problem {
    field: Field,
    message: String,
}

impl Problem {
    fn new(field: Field, message: String) -> Problem {
        Problem { field, message }
    }

    /// A refusal of the service, beside the field it names, in the form's words rather than
    /// the API's field names.
    fn from_service(err: &service::Error, fallback: Field) -> Problem {
        const LABELS: &[(&str, &str, Field)] = &[
            ("`name`", "the Name", Field::Name),
            ("`webhook_endpoint`", "the Webhook URL", Field::WebhookUrl),
            (
                "`webhook_authorization.token`",
                "the Authorization Token",
                Field::Auth,
            ),
            (
                "`webhook_authorization.username`",
                "the Username",
                Field::Auth,
            ),
            (
                "`webhook_authorization.password`",
                "the Password",
                Field::Auth,
            ),
            (
                "`webhook_authorization.header_name`",
                "the Header name",
                Field::Auth,
            ),
            (
                "`webhook_authorization.header_value`",
                "the Header value",
                Field::Auth,
            ),
            ("`webhook_authorization`", "the authentication", Field::Auth),
            ("`aws_account_id`", "the AWS account ID", Field::Eventbridge),
            ("`aws_region`", "the AWS region", Field::Eventbridge),
            ("`event_bus_name`", "the event bus name", Field::Eventbridge),
            ("`endpoint_url`", "the endpoint URL", Field::Eventbridge),
            (
                "`aws_access_key_id`",
                "the access key ID",
                Field::Eventbridge,
            ),
            ("`subscriptions`", "the events", Field::Events),
            ("subscription ", "the event ", Field::Events),
        ];
        let mut message = err.to_string();
        let mut field = match err {
            service::Error::RateLimited { .. } => Field::Test,
            service::Error::UnknownEventType(_) | service::Error::InvalidData { .. } => {
                Field::Events
            }
            _ => fallback,
        };
        let mut named = false;
        for (api, words, at) in LABELS {
            if message.contains(api) {
                message = message.replace(api, words);
                if !named {
                    field = *at;
                    named = true;
                }
            }
        }
        let mut chars = message.chars();
        let message = match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => message,
        };
        Problem { field, message }
    }
}

/// What a test send did, as the form shows it.
struct TestView {
    event_type: String,
    delivered: bool,
    response_status: Option<u16>,
    duration_ms: u128,
    response_body: Option<String>,
    error: Option<String>,
}

/// `GET /tenants/{tenant}/streams/new`
pub(super) async fn page(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let form = DestinationForm::default();
    render(&service, &signed, &caller, &form, &[], None, StatusCode::OK).await
}

/// `POST /tenants/{tenant}/streams/new`: `intent=test` tries the destination as typed,
/// `intent=create` makes the stream and opens its page.
pub(super) async fn submit(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let form = DestinationForm::parse(&body);
    signed.check_csrf(&form.csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let (rejected, test) = match form.intent.as_str() {
        "test" => match test(&service, &caller, &form).await {
            Ok(test) => (None, Some(test)),
            Err(rejected) => (Some(rejected), None),
        },
        "create" => match create(&service, &caller, &form).await {
            Ok(id) => return Ok(see_other(&paths::stream(&caller.tenant_id, &id))),
            Err(rejected) => (Some(rejected), None),
        },
        _ => {
            return Err(Refusal::BadForm(
                "The form must be sent with its Test or Create button.".into(),
            ));
        }
    };
    let Some(rejected) = rejected else {
        return render(&service, &signed, &caller, &form, &[], test, StatusCode::OK).await;
    };
    let mut response = render(
        &service,
        &signed,
        &caller,
        &form,
        &rejected.problems,
        None,
        rejected.status,
    )
    .await?;
    if let Some(seconds) = rejected.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(kind) = rejected.store_error {
        response
            .extensions_mut()
            .insert(crate::metrics::StoreFailure(kind));
    }
    Ok(response)
}

/// Why the form was not acted on: what to show beside which fields, and the answer's status
/// (the API's for the same refusal; 422 for what the form itself checks).
struct Rejected {
    problems: Vec<Problem>,
    status: StatusCode,
    retry_after: Option<u64>,
    store_error: Option<&'static str>,
}

impl From<Vec<Problem>> for Rejected {
    fn from(problems: Vec<Problem>) -> Rejected {
        Rejected {
            problems,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            retry_after: None,
            store_error: None,
        }
    }
}

/// Sends the sample of the chosen event (or the first one picked) to the destination as
/// typed.
async fn test(
    service: &Service,
    caller: &Caller,
    form: &DestinationForm,
) -> Result<TestView, Rejected> {
    let event_type = match form.test_event_type.trim() {
        "" => form.events.first().cloned(),
        chosen => Some(chosen.to_string()),
    };
    let Some(event_type) = event_type else {
        return Err(vec![Problem::new(
            Field::Test,
            "Pick an event to test with: select it under Events.".into(),
        )]
        .into());
    };
    let destination = form.destination()?;
    let request = UnsavedTest {
        destination,
        payload_format: PayloadFormat::default(),
        content_mode: None,
        event: TestEvent {
            event_type: event_type.clone(),
            data: None,
        },
    };
    let sent = streams::test_unsaved(service, caller, request)
        .await
        .map_err(|e| refused(e, Field::Test))?;
    let report = sent.report;
    Ok(TestView {
        event_type,
        delivered: report.outcome == Outcome::Delivered,
        response_status: report.response_status,
        duration_ms: report.duration.as_millis(),
        response_body: report.response_body,
        error: report
            .error
            .map(|e| format!("{}: {}", e.kind.as_str(), e.message)),
    })
}

async fn create(
    service: &Service,
    caller: &Caller,
    form: &DestinationForm,
) -> Result<String, Rejected> {
    let mut problems = Vec::new();
    if form.name.trim().is_empty() {
        problems.push(Problem::new(
            Field::Name,
            "Enter a name for the stream.".into(),
        ));
    }
    if form.events.is_empty() {
        problems.push(Problem::new(
            Field::Events,
            "Pick at least one event to send.".into(),
        ));
    }
    let destination = match form.destination() {
        Ok(destination) => Some(destination),
        Err(more) => {
            problems.extend(more);
            None
        }
    };
    let Some(destination) = destination.filter(|_| problems.is_empty()) else {
        return Err(problems.into());
    };
    let new = NewStream {
        name: form.name.trim().to_string(),
        subscriptions: form
            .events
            .iter()
            .map(|event_type| Subscription {
                event_type: event_type.clone(),
            })
            .collect(),
        destination,
        status: None,
        payload_format: PayloadFormat::default(),
        content_mode: None,
        retry_policy: RetryPolicy::default(),
        max_consecutive_failures: None,
        disable_after_failing_seconds: None,
    };
    streams::create(service, caller, new)
        .await
        .map(|stream| stream.id)
        .map_err(|e| refused(e, Field::Form))
}

/// A service refusal as the form shows it, with the API's status for it; a failure inside
/// Herald in the API's opaque words (its cause is in the log).
fn refused(err: service::Error, fallback: Field) -> Rejected {
    let problem = match &err {
        service::Error::Store(_) | service::Error::Internal(_) => None,
        _ => Some(Problem::from_service(&err, fallback)),
    };
    let api = ApiError::from(err);
    Rejected {
        problems: vec![problem.unwrap_or_else(|| Problem::new(Field::Form, api.message.clone()))],
        status: api.status,
        retry_after: api.retry_after,
        store_error: api.store_error,
    }
}

async fn render(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    form: &DestinationForm,
    problems: &[Problem],
    test: Option<TestView>,
    status: StatusCode,
) -> Result<Response, Refusal> {
    let catalog = event_types::list(service, caller, None).await?;
    let frame = signed.frame(service, &caller.tenant_id).await;
    let page = pages::layout(
        "New destination",
        &frame,
        Section::Streams,
        content(&frame, form, &catalog, problems, test.as_ref()),
    );
    Ok(page_answer(status, page))
}

fn error_for(problems: &[Problem], field: Field) -> Markup {
    let messages: Vec<&str> = problems
        .iter()
        .filter(|p| p.field == field)
        .map(|p| p.message.as_str())
        .collect();
    html! {
        @if !messages.is_empty() {
            div id=(field.id()) .error role="alert" {
                @for message in messages { p { (message) } }
            }
        }
    }
}

/// `aria-describedby` for a control, when its field has a refusal.
fn described(problems: &[Problem], field: Field) -> Option<&'static str> {
    problems
        .iter()
        .any(|p| p.field == field)
        .then(|| field.id())
}

fn text_input(
    id: &str,
    name: &str,
    label: &str,
    value: &str,
    kind: &str,
    hint: Option<&str>,
    describedby: Option<&str>,
) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            @if let Some(hint) = hint { span.hint { (hint) } }
            input #(id) type=(kind) name=(name) value=(value) autocomplete="off"
                spellcheck="false" aria-describedby=[describedby];
        }
    }
}

fn content(
    frame: &Frame,
    form: &DestinationForm,
    catalog: &[EventType],
    problems: &[Problem],
    test: Option<&TestView>,
) -> Markup {
    let action = paths::new_stream(&frame.tenant_id);
    let kind = form.kind();
    let auth = form.auth_method();
    let mut categories: BTreeMap<&str, Vec<&EventType>> = BTreeMap::new();
    for event_type in catalog {
        categories
            .entry(event_type.category.as_str())
            .or_default()
            .push(event_type);
    }
    let chosen_test = match form.test_event_type.as_str() {
        "" => form.events.first().map(String::as_str).unwrap_or(""),
        chosen => chosen,
    };
    html! {
        p.crumbs { a href=(paths::streams(&frame.tenant_id)) { "Event streams" } }
        h1 #new-destination-title { "New destination" }
        form #new-destination .destination-form method="post" action=(action) novalidate
            aria-labelledby="new-destination-title" {
            input type="hidden" name="csrf" value=(frame.csrf);
            (error_for(problems, Field::Form))

            div.field {
                label for="name" { "Name" }
                input #name type="text" name="name" value=(form.name) maxlength="128"
                    autocomplete="off" aria-describedby=[described(problems, Field::Name)];
                (error_for(problems, Field::Name))
            }

            fieldset.kinds aria-describedby=[described(problems, Field::Kind)] {
                legend { "Destination type" }
                label {
                    input #kind-webhook type="radio" name="kind" value="webhook"
                        checked[kind == "webhook"];
                    " Webhook"
                }
                label {
                    input #kind-eventbridge type="radio" name="kind" value="eventbridge"
                        checked[kind == "eventbridge"];
                    " Amazon EventBridge"
                }
                (error_for(problems, Field::Kind))
            }

            fieldset.for-webhook {
                legend { "Webhook" }
                (text_input("webhook-url", "webhook_url", "Webhook URL", &form.webhook_url, "url",
                    Some("Events are sent here with POST, signed as Standard Webhooks."),
                    described(problems, Field::WebhookUrl)))
                (error_for(problems, Field::WebhookUrl))
                div.field {
                    label for="auth-method" { "Authentication Method" }
                    select #auth-method name="auth_method" aria-describedby=[described(problems, Field::Auth)] {
                        option value="none" selected[auth == "none"] { "None" }
                        option value="bearer" selected[auth == "bearer"] { "Bearer token" }
                        option value="basic" selected[auth == "basic"] { "Basic (username and password)" }
                        option value="custom_header" selected[auth == "custom_header"] { "Custom header" }
                    }
                }
                div.auth.auth-bearer {
                    (text_input("auth-token", "auth_token", "Authorization Token", &form.auth_token,
                        "password", Some("For the Bearer method: sent as Authorization: Bearer …"), None))
                }
                div.auth.auth-basic {
                    (text_input("basic-username", "basic_username", "Username", &form.basic_username,
                        "text", Some("For the Basic method"), None))
                    (text_input("basic-password", "basic_password", "Password", &form.basic_password,
                        "password", None, None))
                }
                div.auth.auth-custom-header {
                    (text_input("header-name", "header_name", "Header name", &form.header_name,
                        "text", Some("For the Custom header method"), None))
                    (text_input("header-value", "header_value", "Header value", &form.header_value,
                        "password", None, None))
                }
                (error_for(problems, Field::Auth))
            }

            fieldset.for-eventbridge {
                legend { "Amazon EventBridge" }
                (text_input("aws-account-id", "aws_account_id", "AWS account ID", &form.aws_account_id,
                    "text", Some("12 digits"), described(problems, Field::Eventbridge)))
                (text_input("aws-region", "aws_region", "AWS region", &form.aws_region, "text",
                    Some("such as us-east-1"), None))
                (text_input("event-bus-name", "event_bus_name", "Event bus name", &form.event_bus_name,
                    "text", Some("default when left empty"), None))
                (text_input("aws-access-key-id", "aws_access_key_id", "Access key ID",
                    &form.aws_access_key_id, "text", Some("optional"), None))
                (text_input("aws-secret-access-key", "aws_secret_access_key", "Secret access key",
                    &form.aws_secret_access_key, "password", Some("optional"), None))
                (text_input("endpoint-url", "endpoint_url", "Endpoint URL", &form.endpoint_url,
                    "url", Some("optional: a VPC endpoint or a local emulator"), None))
                (error_for(problems, Field::Eventbridge))
            }

            fieldset.events aria-describedby=[described(problems, Field::Events)] {
                legend { "Events" }
                div.field.event-search hidden {
                    label for="event-search" { "Search events" }
                    input #event-search type="search" autocomplete="off" spellcheck="false";
                }
                (error_for(problems, Field::Events))
                @for (category, types) in &categories {
                    div.category data-category=(category) {
                        div.category-head {
                            h3 { (category) }
                            button.select-all type="button" hidden data-category=(category) {
                                "Select all " span.visually-hidden { (category) " events" }
                            }
                        }
                        ul.event-list {
                            @for event_type in types {
                                @let id = format!("event-{}", event_type.name);
                                li data-event=(event_type.name) {
                                    input #(id) type="checkbox" name="event" value=(event_type.name)
                                        checked[form.events.contains(&event_type.name)]
                                        aria-describedby=(format!("{id}-about"));
                                    label for=(id) { (event_type.name) }
                                    span.about id=(format!("{id}-about")) { (event_type.description) }
                                }
                            }
                        }
                    }
                }
            }

            section.test aria-labelledby="test-heading" {
                h2 #test-heading { "Test" }
                p.muted {
                    "Sends the chosen event's sample to the destination as entered above, "
                    "marked as a test. Nothing is saved."
                }
                div.field {
                    label for="test-event-type" { "Event to test with" }
                    select #test-event-type name="test_event_type" {
                        option value="" selected[chosen_test.is_empty()] { "The first event picked" }
                        @for event_type in catalog {
                            option value=(event_type.name) selected[chosen_test == event_type.name] {
                                (event_type.name)
                            }
                        }
                    }
                }
                button.secondary type="submit" name="intent" value="test" {
                    span.for-webhook { "Test webhook" }
                    span.for-eventbridge { "Test destination" }
                }
                (error_for(problems, Field::Test))
                @if let Some(test) = test { (test_result(test)) }
            }

            div.actions {
                button type="submit" name="intent" value="create" { "Create" }
                a href=(paths::streams(&frame.tenant_id)) { "Cancel" }
            }
        }
    }
}

fn test_result(test: &TestView) -> Markup {
    let body = test.response_body.as_deref().map(|body| {
        let mut shown: String = body.chars().take(SHOWN_BODY_CHARS).collect();
        if shown.len() < body.len() {
            shown.push('…');
        }
        shown
    });
    html! {
        div #test-result .test-result role="status" aria-live="polite" {
            h3 {
                "Test of " code { (test.event_type) } ": "
                @if test.delivered {
                    span.badge.succeeded { "delivered" }
                } @else {
                    span.badge.failed { "failed" }
                }
            }
            dl.settings {
                dt { "Status" }
                dd #test-status {
                    @match test.response_status {
                        Some(status) => { "HTTP " (status) }
                        None => { span.muted { "no answer" } }
                    }
                }
                dt { "Round trip" }
                dd #test-duration { (test.duration_ms) " ms" }
                @if let Some(error) = &test.error {
                    dt { "Error" }
                    dd.target { (error) }
                }
                dt { "Response body" }
                dd {
                    @match &body {
                        Some(body) if !body.is_empty() => { pre #test-body { (body) } }
                        _ => { span.muted { "empty" } }
                    }
                }
            }
        }
    }
}
