//! The streams pages: a tenant's streams with their status and backlog, one stream's
//! configuration, backlog and recent deliveries, and the forms that pause, disable and
//! enable it through `service::streams::update`, the API's own operation.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::pages::{self, BacklogView, StreamPage, StreamRow};
use super::session::{Signed, bad_form};
use super::signing::{self, SigningState};
use super::stream_charts::{self, Chosen, RangeQuery};
use super::{Refusal, html, paths, see_other};
use crate::api::ApiError;
use crate::destinations::Destination;
use crate::event::format_time;
use crate::service::streams::{BacklogChoice, StreamChanges};
use crate::service::{self, Caller, Service, deliveries, stats, streams};
use crate::stream::{Stream, StreamStatus};

/// Deliveries a stream's page shows.
const RECENT_DELIVERIES: usize = 20;

/// `GET /tenants/{tenant}/streams`
pub(super) async fn list(
    State(service): State<Service>,
    signed: Signed,
    Path(tenant): Path<String>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let streams = streams::list(&service, &caller).await?;
    // One read for every stream's backlog and outcomes, however many streams there are.
    let activity = match stats::recent_activity(&service, &caller).await {
        Ok(activity) => Ok(activity),
        Err(e @ service::Error::MissingScope(_)) => Err(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let rows = streams
        .into_iter()
        .map(|stream| StreamRow {
            kind: stream.destination.kind(),
            target: stream.destination.target(),
            backlog: activity
                .as_ref()
                .map(|a| a.backlog(&stream.id))
                .map_err(Clone::clone),
            recent: activity
                .as_ref()
                .map(|a| a.by_hour(&stream.id))
                .map_err(Clone::clone),
            id: stream.id,
            name: stream.name,
            status: stream.status,
            status_reason: stream.status_reason,
        })
        .collect::<Vec<_>>();
    let frame = signed.frame(&service, &caller.tenant_id).await;
    Ok(html(StatusCode::OK, pages::streams(&frame, &rows)))
}

/// `GET /tenants/{tenant}/streams/{id}`
pub(super) async fn show(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    Query(query): Query<RangeQuery>,
) -> Result<Response, Refusal> {
    let caller = signed.on_tenant(&service, &tenant).await?;
    let extras = Extras {
        range: query.chosen(),
        ..Extras::default()
    };
    stream_page(&service, &signed, &caller, &id, StatusCode::OK, extras).await
}

#[derive(Deserialize)]
pub(super) struct StatusForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    status: String,
    backlog: Option<String>,
}

/// `POST /tenants/{tenant}/streams/{id}/status`: pause, disable or enable (delivering or
/// skipping the backlog). A refusal shows the stream's page again with the service's
/// message beside the forms.
pub(super) async fn set_status(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    form: Result<Form<StatusForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let changes = status_change(&form).map(|(status, backlog)| StreamChanges {
        status: Some(status),
        backlog,
        ..StreamChanges::default()
    });
    let result = match changes {
        Ok(changes) => streams::update(&service, &caller, &id, changes).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(see_other(&paths::stream(&caller.tenant_id, &id))),
        Err(e @ (service::Error::NotFound { .. } | service::Error::Store(_))) => Err(e.into()),
        Err(e) => {
            let message = e.to_string();
            let status = ApiError::from(e).status;
            let extras = Extras {
                status_error: Some(message),
                ..Extras::default()
            };
            stream_page(&service, &signed, &caller, &id, status, extras).await
        }
    }
}

/// The status and backlog choice a form asks for, in the words of its buttons.
fn status_change(
    form: &StatusForm,
) -> Result<(StreamStatus, Option<BacklogChoice>), service::Error> {
    let status = StreamStatus::parse(&form.status).ok_or_else(|| {
        service::Error::Invalid("choose to pause, disable or enable the stream".into())
    })?;
    let backlog = match form.backlog.as_deref() {
        None | Some("") => None,
        Some("deliver") => Some(BacklogChoice::Deliver),
        Some("skip") => Some(BacklogChoice::Skip),
        Some(_) => {
            return Err(service::Error::Invalid(
                "choose to deliver the backlog or to skip to now".into(),
            ));
        }
    };
    Ok((status, backlog))
}

/// What a stream's page shows beyond the stream itself: the answer to a form, the charts'
/// range.
#[derive(Default)]
pub(super) struct Extras {
    /// Why the last status change was refused.
    pub status_error: Option<String>,
    pub signing: SigningState,
    pub range: Chosen,
}

pub(super) async fn stream_page(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    id: &str,
    status: StatusCode,
    extras: Extras,
) -> Result<Response, Refusal> {
    let stream = streams::get(service, caller, id).await?;
    let csrf = signed.csrf();
    let signing = stream
        .destination
        .uses_stream_secret()
        .then(|| signing::section(service, caller, &csrf, id, &extras.signing));
    let charts = stream_charts::section(
        service,
        caller,
        id,
        &paths::stream(&caller.tenant_id, id),
        &extras.range,
    )
    .await?;
    let mut secrets = destination_secrets(&stream.destination);
    if stream.destination.uses_stream_secret() {
        let set = streams::has_signing_secret(service, caller, id).await?;
        secrets.push(("Signing secret", set));
    }
    let deliveries = match deliveries::list(
        service,
        caller,
        id,
        deliveries::Filter::default(),
        RECENT_DELIVERIES,
        None,
    )
    .await
    {
        Ok(page) => Ok(page.items),
        Err(e @ service::Error::MissingScope(_)) => Err(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let page = StreamPage {
        backlog: backlog(service, caller, id).await?,
        deliveries,
        kind: stream.destination.kind(),
        configuration: configuration(&stream.destination),
        secrets,
        settings: settings(&stream),
        subscriptions: stream
            .subscriptions
            .iter()
            .map(|s| s.event_type.clone())
            .collect(),
        id: stream.id,
        name: stream.name,
        status: stream.status,
        status_reason: stream.status_reason,
        status_error: extras.status_error,
        signing,
        charts,
    };
    let frame = signed.frame(service, &caller.tenant_id).await;
    Ok(html(status, pages::stream(&frame, &page)))
}

/// A stream's backlog, or why the caller cannot see it (its token lacks the scope).
async fn backlog(service: &Service, caller: &Caller, id: &str) -> Result<BacklogView, Refusal> {
    match deliveries::backlog(service, caller, id).await {
        Ok(backlog) => Ok(Ok(backlog)),
        Err(e @ service::Error::MissingScope(_)) => Ok(Err(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The destination's write-only values, and whether each is set: never their values.
fn destination_secrets(destination: &Destination) -> Vec<(&'static str, bool)> {
    use crate::destinations::webhook::WebhookAuthorization as Auth;
    match destination {
        Destination::Webhook(config) => match &config.webhook_authorization {
            None => Vec::new(),
            Some(Auth::Bearer { .. }) => vec![("Bearer token", true)],
            Some(Auth::Basic { .. }) => vec![("Password", true)],
            Some(Auth::CustomHeader { .. }) => vec![("Header value", true)],
        },
        Destination::Eventbridge(config) => vec![
            (
                "AWS secret access key",
                config.aws_secret_access_key.is_some(),
            ),
            ("AWS session token", config.aws_session_token.is_some()),
        ],
        Destination::Listen(_) => Vec::new(),
    }
}

/// The destination's configuration as the API shows it (no secrets), one row per field,
/// nested fields named with dots.
fn configuration(destination: &Destination) -> Vec<(String, String)> {
    fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
        match value {
            Value::Object(fields) => {
                for (key, value) in fields {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&name, value, rows);
                }
            }
            Value::String(s) => rows.push((prefix.to_string(), s.clone())),
            other => rows.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    flatten("", &destination.public_view()["configuration"], &mut rows);
    rows
}

fn settings(stream: &Stream) -> Vec<(&'static str, String)> {
    let policy = &stream.retry_policy;
    let encoding = stream.encoding();
    let disable = match (
        stream.max_consecutive_failures,
        stream.disable_after_failing_seconds,
    ) {
        (0, _) => "never".to_string(),
        (n, 0) => format!("after {n} failed attempts in a row"),
        (n, s) => format!(
            "after {n} failed attempts in a row over at least {}",
            seconds_text(s as f64)
        ),
    };
    vec![
        ("Payload format", encoding.format.as_str().to_string()),
        ("Content mode", encoding.mode.as_str().to_string()),
        (
            "Retries",
            format!(
                "{} attempts in all; {} apart at first, then ×{} each time, at most {} \
                 apart (±{}% jitter)",
                policy.max_attempts,
                seconds_text(policy.initial_interval_seconds),
                policy.multiplier,
                seconds_text(policy.max_interval_seconds),
                policy.jitter * 100.0
            ),
        ),
        ("Disabled when failing", disable),
        ("Created", format_time(stream.created_at)),
        ("Updated", format_time(stream.updated_at)),
    ]
}

/// A setting's duration in the largest unit that states it exactly.
fn seconds_text(seconds: f64) -> String {
    let units = [(86_400.0, "day"), (3_600.0, "hour"), (60.0, "minute")];
    for (size, unit) in units {
        let n = seconds / size;
        if seconds >= size && n.fract() == 0.0 {
            let plural = if n == 1.0 { "" } else { "s" };
            return format!("{n} {unit}{plural}");
        }
    }
    format!("{seconds} s")
}
