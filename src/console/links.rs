//! Opening a sign-in link (`service::console_links`). Its URL answers a page with one
//! button, and only pressing it (a form sent from the console's own page) takes the link and
//! opens the session. So a link checker or a mail scanner that fetches the URL does not use
//! the link up; and the session cookie, `SameSite=Strict`, is set by an answer to a request
//! from the console's own site, which a browser arriving from the platform's product then
//! sends with the next page.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use maud::{Markup, html};

use super::session::{self, CsrfForm, bad_form};
use super::{Refusal, html as page, pages};
use crate::api::AppState;
use crate::service::{Service, console_links};

const PREFIX: &str = "/console-link/";

/// The path of the link with this secret (a secret is `hcl_` and base62, one path segment).
pub(crate) fn link_path(secret: &str) -> String {
    format!("{PREFIX}{secret}")
}

/// `GET /console-link/{secret}`: what the link opens, and the button that opens it.
pub(super) async fn show(
    State(service): State<Service>,
    Path(secret): Path<String>,
    parts: Parts,
) -> Result<Response, Refusal> {
    let Some(pending) = console_links::pending(&service, &secret).await? else {
        return Ok(refused());
    };
    let action = link_path(&secret);
    Ok(session::signing_in_page(&parts, StatusCode::OK, |csrf| {
        open_page(&action, csrf, &pending)
    }))
}

/// `POST /console-link/{secret}`: takes the link and signs the browser in.
pub(super) async fn open(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    mut parts: Parts,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    session::check_signing_in(&parts, &form.csrf)?;
    match console_links::open(&state, &secret).await? {
        Some(opened) => session::enter(&state, &mut parts, opened).await,
        None => Ok(refused()),
    }
}

fn open_page(action: &str, csrf: &str, pending: &console_links::Pending) -> Markup {
    pages::document(
        "Open the console",
        html! {
            main.narrow {
                h1 { "Open the Herald console" }
                p {
                    "This link signs you in to the console of the tenant "
                    code { (pending.tenant_id) } "."
                }
                form.card method="post" action=(action) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Open the console" }
                }
                p.note {
                    "The link works once, until " (pages::time(pending.expires_at))
                    ". Ask for a new one where you got it if it stops working."
                }
            }
        },
    )
}

/// The answer to a link that cannot sign anyone in; it says no more than that, whichever
/// the reason (used, ended, revoked, never issued).
fn refused() -> Response {
    page(
        StatusCode::GONE,
        pages::problem(
            "This sign-in link cannot be used",
            "A sign-in link works once and for a few minutes only: this one has been used \
             already, has expired, or was withdrawn.",
            "Ask for a new link where you got this one, or sign in with a token.",
        ),
    )
}
