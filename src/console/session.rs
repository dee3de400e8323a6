//! Signing in and out, and who a console request comes from. The session cookie holds a
//! random session id (never the token) and is `HttpOnly` and `SameSite=Strict`, `Secure`
//! (and named with the `__Host-` prefix) when the request came over TLS or through a proxy
//! that says so with `X-Forwarded-Proto: https`. Which sessions exist, and when they end, is
//! `service::console_sessions`'.
//!
//! Every form that changes something carries a CSRF token in a hidden field: an HMAC of a
//! fixed label keyed with the session id, so it is per session, needs no storage, and cannot
//! be computed from the store (which keeps only the id's hash). The sign-in form, sent before
//! there is a session, is tied the same way to a random value in a short-lived cookie of its
//! own. Tokens are checked in constant time.

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, OptionalFromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::{Form, RequestPartsExt};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::Deserialize;

use super::{Refusal, html, pages, paths, see_other};
use crate::api::AppState;
use crate::service::{self, Caller, Scope, Service, console_sessions, tenants};

const SESSION_COOKIE: &str = "herald_session";
const SECURE_SESSION_COOKIE: &str = "__Host-herald_session";
const SIGN_IN_COOKIE: &str = "herald_sign_in";
const SECURE_SIGN_IN_COOKIE: &str = "__Host-herald_sign_in";
/// How long a sign-in form stays good to submit.
const SIGN_IN_FORM_SECONDS: i64 = 60 * 60;

/// What a CSRF token is an HMAC of, per kind of secret it is keyed with.
const FORMS_LABEL: &[u8] = b"herald console forms";
const SIGN_IN_LABEL: &[u8] = b"herald console sign-in";

/// Whether the browser reached Herald over TLS: directly, or through a proxy that says so.
pub(crate) fn over_tls(headers: &HeaderMap, uri: &Uri) -> bool {
    uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

fn session_cookie(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

fn sign_in_cookie(secure: bool) -> &'static str {
    if secure {
        SECURE_SIGN_IN_COOKIE
    } else {
        SIGN_IN_COOKIE
    }
}

/// The value of the request's cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

fn set_cookie(headers: &mut HeaderMap, name: &str, value: &str, max_age_seconds: i64) {
    // `__Host-` cookies must be `Secure`, and the name says when a cookie is.
    let secure = if name.starts_with("__Host-") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{name}={value}; Path=/; Max-Age={max_age_seconds}; HttpOnly; SameSite=Strict{secure}"
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, value);
    }
}

pub(super) fn clear_cookie(headers: &mut HeaderMap, name: &str) {
    set_cookie(headers, name, "", 0);
}

fn csrf_token(secret: &str, label: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, label))
}

fn csrf_valid(secret: &str, label: &[u8], given: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(given.trim()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    // `verify` compares in constant time.
    hmac::verify(&key, label, &tag).is_ok()
}

/// A signed-in console request: the caller its session's token makes.
pub(crate) struct Signed {
    /// Acting on the token's own tenant (a platform token: the default tenant).
    pub caller: Caller,
    session_id: String,
}

impl Signed {
    /// The CSRF token the session's forms carry.
    pub fn csrf(&self) -> String {
        csrf_token(&self.session_id, FORMS_LABEL)
    }

    /// Refuses a form without this session's CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), Refusal> {
        if csrf_valid(&self.session_id, FORMS_LABEL, given) {
            Ok(())
        } else {
            Err(Refusal::Forgery)
        }
    }

    /// The caller acting on `tenant`: another tenant's page is not found for a tenant token.
    pub async fn on_tenant(&self, service: &Service, tenant: &str) -> Result<Caller, Refusal> {
        let mut caller = self.caller.clone();
        caller.act_on(service, tenant).await?;
        Ok(caller)
    }

    /// What every page around its content shows: who is signed in, on which tenant, and
    /// for a platform admin the tenants to switch to.
    pub async fn frame(&self, service: &Service, tenant: &str) -> pages::Frame {
        let tenants =
            if self.caller.is_platform() && self.caller.scopes.contains(&Scope::ManageTenants) {
                // The picker is a convenience: a page still renders without it.
                tenants::list(service, &self.caller).await.ok()
            } else {
                None
            };
        pages::Frame {
            // The navigation offers only the pages the caller's scopes can open.
            reads_events: self.caller.scopes.contains(&Scope::ReadEvents),
            manages_tokens: self.caller.scopes.contains(&Scope::ManageTokens),
            token_name: self.caller.token.name.clone(),
            tenant_id: tenant.to_string(),
            tenants,
            csrf: self.csrf(),
        }
    }
}

/// The session the request's cookie names, if it is still open; else a refusal that sends
/// the browser to sign in. A console request spends its token's request allowance as an
/// API request does (a sign-in link's session, its own per tenant), so the console is no
/// way around the per-token rate limit.
async fn signed(parts: &Parts, state: &AppState) -> Result<Signed, Refusal> {
    let name = session_cookie(over_tls(&parts.headers, &parts.uri));
    let Some(id) = cookie(&parts.headers, name) else {
        return Err(Refusal::SignIn { clear_cookie: None });
    };
    let Some(resumed) = console_sessions::resume(&state.service, id).await? else {
        return Err(Refusal::SignIn {
            clear_cookie: Some(name),
        });
    };
    let caller = resumed.caller;
    state
        .limits
        .take_request(&caller, state.clock.now_ms())
        .map_err(|retry_after| {
            Refusal::Service(service::Error::RateLimited {
                what: crate::api::limits::TOKEN_RATE_REFUSAL,
                retry_after,
            })
        })?;
    Ok(Signed {
        caller,
        session_id: id.to_string(),
    })
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        signed(parts, state).await
    }
}

impl OptionalFromRequestParts<AppState> for Signed {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Refusal> {
        match signed(parts, state).await {
            Ok(signed) => Ok(Some(signed)),
            Err(Refusal::SignIn { .. }) => Ok(None),
            Err(refusal) => Err(refusal),
        }
    }
}

/// Whether the request came over TLS, as an extractor.
pub(crate) struct Tls(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for Tls {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Tls(over_tls(&parts.headers, &parts.uri)))
    }
}

/// `GET /sign-in`: the form, tied to a fresh value in its own cookie.
pub(super) async fn sign_in_page(parts: Parts) -> Response {
    sign_in_form(&parts, StatusCode::OK, None)
}

fn sign_in_form(parts: &Parts, status: StatusCode, error: Option<&str>) -> Response {
    signing_in_page(parts, status, |csrf| pages::sign_in(csrf, error))
}

/// The length of a signing-in page's nonce.
const NONCE_LEN: usize = 32;

/// A page whose form signs in (the sign-in form, a sign-in link's), sent before there is a
/// session: `page` gets the CSRF token its form carries, tied to a fresh value in a
/// short-lived cookie of its own.
pub(super) fn signing_in_page(
    parts: &Parts,
    status: StatusCode,
    page: impl FnOnce(&str) -> maud::Markup,
) -> Response {
    let secure = over_tls(&parts.headers, &parts.uri);
    // Over TLS the nonce's `__Host-` cookie cannot be planted by another host, so a page
    // opened beside another (two sign-in links in two tabs) keeps the nonce the browser
    // holds, and both pages' forms stay good. Over plain http, a fresh one every time.
    let held = cookie(&parts.headers, sign_in_cookie(secure)).filter(|held| {
        secure && held.len() == NONCE_LEN && held.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let nonce = match held {
        Some(held) => held.to_string(),
        None => crate::ids::random_base62(NONCE_LEN),
    };
    let mut response = html(status, page(&csrf_token(&nonce, SIGN_IN_LABEL)));
    set_cookie(
        response.headers_mut(),
        sign_in_cookie(secure),
        &nonce,
        SIGN_IN_FORM_SECONDS,
    );
    response
}

/// Refuses a signing-in form without the CSRF token of the page that showed it.
pub(super) fn check_signing_in(parts: &Parts, given: &str) -> Result<(), Refusal> {
    let secure = over_tls(&parts.headers, &parts.uri);
    let nonce = cookie(&parts.headers, sign_in_cookie(secure)).unwrap_or_default();
    if nonce.is_empty() || !csrf_valid(nonce, SIGN_IN_LABEL, given) {
        return Err(Refusal::Forgery);
    }
    Ok(())
}

/// Hands the browser a session just opened: its cookie, and its tenant's streams; a session
/// the browser had before ends.
pub(super) async fn enter(
    state: &AppState,
    parts: &mut Parts,
    opened: console_sessions::Opened,
) -> Result<Response, Refusal> {
    let secure = over_tls(&parts.headers, &parts.uri);
    if let Some(Signed { session_id, .. }) = parts.extract_with_state(state).await? {
        console_sessions::sign_out(state, &session_id).await?;
    }
    let mut response = see_other(&paths::streams(&opened.caller.tenant_id));
    let headers = response.headers_mut();
    set_cookie(
        headers,
        session_cookie(secure),
        &opened.id,
        console_sessions::ABSOLUTE_MS / 1000,
    );
    clear_cookie(headers, sign_in_cookie(secure));
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-in`: opens a session for a valid token and sets its cookie; a session the
/// browser had before ends.
pub(super) async fn sign_in(
    State(state): State<AppState>,
    mut parts: Parts,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    check_signing_in(&parts, &form.csrf)?;
    let Some(opened) = console_sessions::sign_in(&state, &form.token).await? else {
        return Ok(sign_in_form(
            &parts,
            StatusCode::UNAUTHORIZED,
            Some(
                "This token is not valid, or it has been revoked. Check that it was copied whole.",
            ),
        ));
    };
    enter(&state, &mut parts, opened).await
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /sign-out`: ends the session and forgets its cookie.
pub(super) async fn sign_out(
    State(state): State<AppState>,
    Tls(secure): Tls,
    signed: Signed,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Refusal> {
    let Form(form) = form.map_err(bad_form)?;
    signed.check_csrf(&form.csrf)?;
    console_sessions::sign_out(&state, &signed.session_id).await?;
    let mut response = see_other("/sign-in");
    clear_cookie(response.headers_mut(), session_cookie(secure));
    Ok(response)
}

/// A body that is not the form a route takes; the rejection says what is wrong with it.
pub(super) fn bad_form(rejection: FormRejection) -> Refusal {
    Refusal::BadForm(rejection.body_text())
}
