//! A stream's signing secret on its page. It is shown only on demand: a POST carrying the
//! session's CSRF token, answered with the stream's page showing the secret on that answer
//! alone (console answers are never cached, and a reload of the page hides it again). It is
//! rotated by a POST too, through `service::streams::rotate_secret`, the API's own operation:
//! the new secret is shown once, and the one it replaces keeps signing beside it for the
//! grace period chosen (Herald's default unless another is picked), so receivers can move
//! over without refusing a delivery.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::Refusal;
use super::paths;
use super::session::{Signed, bad_form};
use super::streams::{Extras, stream_page};
use crate::api::ApiError;
use crate::clock::Millis;
use crate::event::format_time;
use crate::service::streams::{self, Rotation};
use crate::service::{self, Caller, Scope, Service};

/// The grace periods the rotation form offers, in seconds, beside Herald's default.
const GRACE_CHOICES: [(u64, &str); 4] = [
    (0, "Stop signing with it now"),
    (3_600, "1 hour"),
    (86_400, "24 hours"),
    (7 * 86_400, "7 days"),
];

/// A secret shown on this answer.
pub(super) struct Shown {
    pub secret: String,
    /// Whether it was just made by a rotation.
    pub rotated: bool,
    /// When each secret it replaced stops signing.
    pub previous_expire: Vec<Option<Millis>>,
}

/// What the signing section shows beyond its forms.
#[derive(Default)]
pub(super) struct SigningState {
    pub shown: Option<Shown>,
    /// Why the last reveal or rotation was refused, shown beside the forms.
    pub error: Option<String>,
    /// The grace period the rotation form had chosen, kept when it is shown again.
    pub grace: String,
}

/// The signing section of stream `id`'s page.
pub(super) fn section(
    service: &Service,
    caller: &Caller,
    csrf: &str,
    id: &str,
    state: &SigningState,
) -> Markup {
    let may_manage = caller.require(Scope::UpdateEventStreams);
    let default_hours = service.secret_rotation_grace_ms / 3_600_000;
    html! {
        section aria-labelledby="signing-heading" {
            h2 #signing-heading { "Signing secret" }
            p {
                "Herald signs every delivery with this secret (the " code { "webhook-signature" }
                " header), so the receiver can check that it comes from Herald."
            }
            @if let Some(shown) = &state.shown {
                div.secret role="status" {
                    p {
                        @if shown.rotated { "The new signing secret:" } @else { "The signing secret:" }
                    }
                    p { code #signing-secret { (shown.secret) } }
                    p.note { "It is shown on this page only. Reloading the page hides it." }
                    @for expires in &shown.previous_expire {
                        p.note {
                            @match expires {
                                Some(at) => { "The previous secret still signs beside it until " (format_time(*at)) "." }
                                None => { "A previous secret still signs beside it." }
                            }
                        }
                    }
                }
            }
            @if let Some(error) = &state.error {
                p #signing-error .error role="alert" { (error) }
            }
            @match may_manage {
                Err(why) => { p.muted { (why) } }
                Ok(()) => {
                    div.actions {
                        @if state.shown.is_none() {
                            form method="post" action=(paths::stream_secret(&caller.tenant_id, id)) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Reveal signing secret" }
                            }
                        }
                        form.rotate method="post" action=(paths::stream_secret_rotate(&caller.tenant_id, id)) {
                            input type="hidden" name="csrf" value=(csrf);
                            label for="grace" { "Keep the current secret signing for" }
                            select #grace name="grace"
                                aria-describedby=[state.error.as_ref().map(|_| "signing-error")] {
                                option value="" selected[state.grace.is_empty()] {
                                    "Herald's default (" (default_hours) " h)"
                                }
                                @for (seconds, words) in GRACE_CHOICES {
                                    @let value = seconds.to_string();
                                    option value=(value) selected[state.grace == value] { (words) }
                                }
                            }
                            button.danger type="submit" { "Rotate signing secret" }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct SecretForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    grace: String,
}

/// `POST /tenants/{tenant}/streams/{id}/secret`: the stream's page with its signing secret
/// shown.
pub(super) async fn reveal(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    form: Result<Form<SecretForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let (status, signing) = match streams::secrets(&service, &caller, &id).await {
        Ok(secrets) => (
            StatusCode::OK,
            SigningState {
                shown: Some(Shown {
                    secret: secrets.current.secret.expose().to_string(),
                    rotated: false,
                    previous_expire: secrets.previous.iter().map(|s| s.expires_at).collect(),
                }),
                ..SigningState::default()
            },
        ),
        Err(e) => refused(e, String::new())?,
    };
    answer(&service, &signed, &caller, &id, status, signing).await
}

/// `POST /tenants/{tenant}/streams/{id}/secret/rotate`: a new signing secret, shown once on
/// the stream's page.
pub(super) async fn rotate(
    State(service): State<Service>,
    signed: Signed,
    Path((tenant, id)): Path<(String, String)>,
    form: Result<Form<SecretForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    let caller = signed.on_tenant(&service, &tenant).await?;
    let grace = form.grace.trim().to_string();
    let result = match grace_seconds(&grace) {
        Ok(grace_period_seconds) => {
            let rotation = Rotation {
                secret: None,
                grace_period_seconds,
            };
            streams::rotate_secret(&service, &caller, &id, rotation).await
        }
        Err(e) => Err(e),
    };
    let (status, signing) = match result {
        Ok(rotated) => (
            StatusCode::OK,
            SigningState {
                shown: Some(Shown {
                    secret: rotated.secret.expose().to_string(),
                    rotated: true,
                    previous_expire: vec![Some(rotated.previous_expires_at)],
                }),
                grace,
                error: None,
            },
        ),
        Err(e) => refused(e, grace)?,
    };
    answer(&service, &signed, &caller, &id, status, signing).await
}

/// The grace period a rotation form chose: Herald's default when none.
fn grace_seconds(value: &str) -> Result<Option<u64>, service::Error> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        service::Error::Invalid(
            "choose how long the current secret keeps signing from the list".into(),
        )
    })
}

/// A refusal the page shows beside the forms, or one that is a page of its own (a stream
/// that does not exist, a failure inside Herald).
fn refused(e: service::Error, grace: String) -> Result<(StatusCode, SigningState), Refusal> {
    match e {
        e @ (service::Error::NotFound { .. } | service::Error::Store(_)) => Err(e.into()),
        e => {
            let error = Some(e.to_string());
            Ok((
                ApiError::from(e).status,
                SigningState {
                    shown: None,
                    error,
                    grace,
                },
            ))
        }
    }
}

async fn answer(
    service: &Service,
    signed: &Signed,
    caller: &Caller,
    id: &str,
    status: StatusCode,
    signing: SigningState,
) -> Result<Response, Refusal> {
    let extras = Extras {
        signing,
        ..Extras::default()
    };
    stream_page(service, signed, caller, id, status, extras).await
}
