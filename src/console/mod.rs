//! The web console, served at `/` on the API's listener: server-rendered pages for a
//! platform's or a tenant's admins, who sign in with an API token. This module owns what is
//! HTTP and HTML about it: the session cookie and the CSRF token of every form (`session`),
//! the pages (`pages`, maud templates, which escape every value they interpolate), the
//! stylesheet embedded in the binary, and the security headers on every answer. The rules
//! (scopes, tenants, what a change does) are `crate::service`'s, called exactly as the API
//! calls them.
//!
//! Pages name their tenant in the path (`/tenants/{tenant}/streams`), so a platform admin
//! switches tenant by following a link, and a tenant token asking for another tenant's page
//! gets a 404.

mod charts;
mod deliveries;
mod event_log;
mod event_types;
mod links;
mod new_stream;
mod pages;
mod session;
mod signing;
mod stream_charts;
mod streams;
mod tenants;
mod tokens;

pub(crate) use links::link_path;
pub(crate) use session::over_tls;

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;

use crate::api::{ApiError, AppState};
use crate::service;

/// The console's routes, for the API's router to merge: they get its request ids, admission
/// control, body limit and metrics.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/{tenant}/rename", post(tenants::rename))
        .route("/console-link/{secret}", get(links::show).post(links::open))
        .route(
            "/tokens",
            get(tokens::platform).post(tokens::create_platform),
        )
        .route("/tokens/{id}/revoke", post(tokens::revoke_platform))
        .route(
            "/tenants/{tenant}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route("/tenants/{tenant}/tokens/{id}/revoke", post(tokens::revoke))
        .route("/tenants/{tenant}/events", get(event_log::list))
        .route("/tenants/{tenant}/events/{id}", get(event_log::show))
        .route(
            "/tenants/{tenant}/events/{id}/erase",
            get(event_log::confirm_erase).post(event_log::erase),
        )
        .route("/tenants/{tenant}/event-types", get(event_types::list))
        .route("/switch-tenant", get(tenants::switch))
        .route("/tenants/{tenant}/streams", get(streams::list))
        .route(
            "/tenants/{tenant}/streams/new",
            get(new_stream::page).post(new_stream::submit),
        )
        .route("/tenants/{tenant}/streams/{id}", get(streams::show))
        .route(
            "/tenants/{tenant}/streams/{id}/status",
            post(streams::set_status),
        )
        .route(
            "/tenants/{tenant}/streams/{id}/secret",
            post(signing::reveal),
        )
        .route(
            "/tenants/{tenant}/streams/{id}/secret/rotate",
            post(signing::rotate),
        )
        .route(
            "/tenants/{tenant}/streams/{id}/deliveries",
            get(deliveries::list),
        )
        .route(
            "/tenants/{tenant}/streams/{id}/deliveries/redeliver",
            post(deliveries::redeliver),
        )
        .route("/tenants/{tenant}/deliveries/{id}", get(deliveries::show))
        .route(
            "/tenants/{tenant}/deliveries/{id}/redeliver",
            post(deliveries::redeliver_one),
        )
        .route(STYLESHEET_PATH, get(stylesheet))
        .route(SCRIPT_PATH, get(script))
        .route(ICON_PATH, get(icon))
        .layer(axum::middleware::map_response(protect))
}

/// `/`: the signed-in caller's streams, or the sign-in page.
async fn home(signed: Option<session::Signed>) -> Response {
    match signed {
        Some(signed) => see_other(&paths::streams(&signed.caller.tenant_id)),
        None => see_other("/sign-in"),
    }
}

/// What the browser may do with a console page: load the console's own stylesheet and
/// script (no inline script or style, no other origin), fetch console pages, submit forms to
/// the console, and nothing else; no framing, no sniffing, no referrer beyond the console.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Sets the security headers on every console answer, errors and redirects included; pages
/// are not cached (they show a tenant's data), unless the handler said otherwise.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The console's own assets, embedded in the binary; their ETags let a browser keep them
/// until Herald is upgraded.
pub(crate) const STYLESHEET_PATH: &str = "/assets/console.css";
pub(crate) const SCRIPT_PATH: &str = "/assets/console.js";
pub(crate) const ICON_PATH: &str = "/assets/favicon.svg";

struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: LazyLock<String>,
}

/// A strong ETag: the first 8 bytes of the content's SHA-256.
fn etag_of(body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

static STYLESHEET: Asset = Asset {
    body: include_str!("console.css"),
    content_type: "text/css; charset=utf-8",
    etag: LazyLock::new(|| etag_of(include_str!("console.css"))),
};

/// Progressive enhancement only: every page works without it.
static SCRIPT: Asset = Asset {
    body: include_str!("console.js"),
    content_type: "text/javascript; charset=utf-8",
    etag: LazyLock::new(|| etag_of(include_str!("console.js"))),
};

static ICON: Asset = Asset {
    body: include_str!("favicon.svg"),
    content_type: "image/svg+xml",
    etag: LazyLock::new(|| etag_of(include_str!("favicon.svg"))),
};

async fn icon(headers: HeaderMap) -> Response {
    serve_asset(&ICON, &headers)
}

async fn stylesheet(headers: HeaderMap) -> Response {
    serve_asset(&STYLESHEET, &headers)
}

async fn script(headers: HeaderMap) -> Response {
    serve_asset(&SCRIPT, &headers)
}

fn serve_asset(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = asset.etag.as_str();
    let cache = [
        (header::ETAG, etag.to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, asset.content_type.to_string())],
        asset.body,
    )
        .into_response()
}

/// A page as an answer.
fn html(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

/// After a form: the page to show next, fetched with GET.
fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// Why a console request was not served, answered as a page a person can act on.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No session, or it ended: to the sign-in page (clearing the cookie, if one was sent).
    SignIn {
        clear_cookie: Option<&'static str>,
    },
    /// Another tenant's page, or one that does not exist: a tenant token learns nothing
    /// about other tenants.
    NotFound,
    /// A form without this session's CSRF token.
    Forgery,
    /// A body that is not the form this route takes.
    BadForm(String),
    Service(service::Error),
}

impl From<service::Error> for Refusal {
    fn from(err: service::Error) -> Self {
        match err {
            service::Error::WrongTenant | service::Error::UnknownTenant(_) => Refusal::NotFound,
            err => Refusal::Service(err),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn { clear_cookie } => {
                let mut response = see_other("/sign-in");
                if let Some(name) = clear_cookie {
                    session::clear_cookie(response.headers_mut(), name);
                }
                response
            }
            Refusal::NotFound => html(
                StatusCode::NOT_FOUND,
                pages::problem(
                    "Not found",
                    "There is no such page, or this token may not see it.",
                    "Go back to your streams.",
                ),
            ),
            Refusal::Forgery => html(
                StatusCode::FORBIDDEN,
                pages::problem(
                    "This form cannot be accepted",
                    "It was not sent from a page of this console session: it may come from an \
                     older session, or from another site. Nothing was changed.",
                    "Reload the page you came from and submit the form again.",
                ),
            ),
            Refusal::BadForm(why) => html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "This form could not be read",
                    &why,
                    "Reload the page and submit the form again.",
                ),
            ),
            Refusal::Service(err) => {
                // The API's status for each refusal, and its words (opaque for a failure
                // inside Herald, whose cause goes to the log).
                let api = ApiError::from(err);
                let status = api.status;
                let title = status.canonical_reason().unwrap_or("Error");
                let mut response = html(
                    status,
                    pages::problem(title, &api.message, "Go back to your streams."),
                );
                if let Some(kind) = api.store_error {
                    response
                        .extensions_mut()
                        .insert(crate::metrics::StoreFailure(kind));
                }
                if let Some(seconds) = api.retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
        }
    }
}

/// Which end of a time range a typed time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    Start,
    /// A date alone means the end of that day (the next day's first instant), so "to
    /// 2026-11-30" includes the 30th.
    End,
}

/// A time typed into a filter, as RFC 3339: a space may stand for the `T`, the seconds may
/// be left out, and a time without an offset is UTC (what a browser's date and time fields
/// give); a date alone is its first or, for an end, its last instant. `None` if it is not a
/// time.
pub(crate) fn typed_time(value: &str, bound: Bound) -> Option<String> {
    let value = value.trim();
    let date_only = value.len() == "2026-11-30".len();
    let mut time = value.replacen(' ', "T", 1);
    if date_only {
        time.push_str("T00:00");
    }
    let (date, clock) = time.split_once(['T', 't'])?;
    let offset_at = clock.find(['Z', 'z', '+', '-']);
    let (hms, offset) = clock.split_at(offset_at.unwrap_or(clock.len()));
    let hms = if hms.len() == "15:00".len() {
        format!("{hms}:00")
    } else {
        hms.to_string()
    };
    let offset = if offset.is_empty() { "Z" } else { offset };
    let normalized = format!("{date}T{hms}{offset}");
    let at = crate::event::parse_time(&normalized)?;
    if date_only && bound == Bound::End {
        return Some(crate::event::format_time(at + 86_400_000));
    }
    Some(normalized)
}

/// The console's paths, with each id encoded as one path segment.
mod paths {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

    /// Everything but unreserved characters.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');

    fn segment(s: &str) -> impl std::fmt::Display + '_ {
        utf8_percent_encode(s, SEGMENT)
    }

    pub fn streams(tenant: &str) -> String {
        format!("/tenants/{}/streams", segment(tenant))
    }

    pub fn new_stream(tenant: &str) -> String {
        format!("{}/new", streams(tenant))
    }

    pub fn stream(tenant: &str, id: &str) -> String {
        format!("/tenants/{}/streams/{}", segment(tenant), segment(id))
    }

    pub fn stream_status(tenant: &str, id: &str) -> String {
        format!("{}/status", stream(tenant, id))
    }

    pub fn stream_secret(tenant: &str, id: &str) -> String {
        format!("{}/secret", stream(tenant, id))
    }

    pub fn stream_secret_rotate(tenant: &str, id: &str) -> String {
        format!("{}/secret/rotate", stream(tenant, id))
    }

    /// A query string's value.
    pub fn query(s: &str) -> impl std::fmt::Display + '_ {
        utf8_percent_encode(s, NON_ALPHANUMERIC)
    }

    pub fn tenant_rename(tenant: &str) -> String {
        format!("/tenants/{}/rename", segment(tenant))
    }

    pub fn tokens(tenant: &str) -> String {
        format!("/tenants/{}/tokens", segment(tenant))
    }

    pub fn token_revoke(tenant: &str, id: &str) -> String {
        format!("{}/{}/revoke", tokens(tenant), segment(id))
    }

    pub const PLATFORM_TOKENS: &str = "/tokens";

    pub fn platform_token_revoke(id: &str) -> String {
        format!("{PLATFORM_TOKENS}/{}/revoke", segment(id))
    }

    pub fn events(tenant: &str) -> String {
        format!("/tenants/{}/events", segment(tenant))
    }

    /// An event of the log; its source (when known) tells it from another source's event
    /// of that id.
    pub fn event(tenant: &str, id: &str, source: &str) -> String {
        format!("{}/{}{}", events(tenant), segment(id), source_query(source))
    }

    pub fn event_erase(tenant: &str, id: &str, source: &str) -> String {
        format!(
            "{}/{}/erase{}",
            events(tenant),
            segment(id),
            source_query(source)
        )
    }

    fn source_query(source: &str) -> String {
        if source.is_empty() {
            String::new()
        } else {
            format!("?source={}", query(source))
        }
    }

    pub fn event_types(tenant: &str) -> String {
        format!("/tenants/{}/event-types", segment(tenant))
    }

    pub fn stream_deliveries(tenant: &str, id: &str) -> String {
        format!("{}/deliveries", stream(tenant, id))
    }

    pub fn stream_redeliver(tenant: &str, id: &str) -> String {
        format!("{}/deliveries/redeliver", stream(tenant, id))
    }

    pub fn delivery(tenant: &str, id: &str) -> String {
        format!("/tenants/{}/deliveries/{}", segment(tenant), segment(id))
    }

    pub fn delivery_redeliver(tenant: &str, id: &str) -> String {
        format!("{}/redeliver", delivery(tenant, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_times_may_leave_out_the_offset_and_the_seconds() {
        for (given, meant) in [
            ("2026-11-30T15:00:00Z", "2026-11-30T15:00:00Z"),
            ("2026-11-30T15:00", "2026-11-30T15:00:00Z"),
            ("2026-11-30 15:00", "2026-11-30T15:00:00Z"),
            ("2026-11-30 15:00:07.5", "2026-11-30T15:00:07.5Z"),
            ("2026-11-30", "2026-11-30T00:00:00Z"),
            ("2026-11-30T16:00+01:00", "2026-11-30T16:00:00+01:00"),
            ("2026-11-30T16:00:00-05:00", "2026-11-30T16:00:00-05:00"),
        ] {
            assert_eq!(
                typed_time(given, Bound::Start).as_deref(),
                Some(meant),
                "{given}"
            );
        }
        // A date alone ends with its day.
        assert_eq!(
            typed_time("2026-11-30", Bound::End).as_deref(),
            Some("2026-12-01T00:00:00.000Z")
        );
        assert_eq!(
            typed_time("2026-11-30 15:00", Bound::End).as_deref(),
            Some("2026-11-30T15:00:00Z")
        );
        for bad in ["yesterday", "2026-13-40 25:00", "", "2026-11-30Tnoon"] {
            assert_eq!(typed_time(bad, Bound::Start), None, "{bad}");
        }
    }
}
