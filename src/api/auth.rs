//! Authentication. Every `/v1` route needs a bearer token, read here into a [`Caller`]. A
//! **platform** token acts on any tenant, named by the `Herald-Tenant` header (or the default
//! tenant); a **tenant** token acts on its own tenant only. Each operation needs one
//! [`Scope`] (checked in `crate::service`); a token without it gets 403.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::limits::{TOKEN_RATE_REFUSAL, rate_limited};
use super::{ApiError, AppState};
pub use crate::service::{Caller, DEFAULT_TENANT, Scope, TokenCache, TokenWatch};
use crate::store::hash_token;

/// Names the tenant a platform token acts on.
pub const TENANT_HEADER: &str = "herald-tenant";

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header",
            ));
        }
        let secret = bearer(&parts.headers)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the `Authorization` header must be `Bearer <token>`")
            })?;
        let token = state
            .tokens
            .find(state, hash_token(secret))
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token is not valid or has been revoked"))?;
        let mut caller = Caller::new(token);
        state
            .limits
            .take_request(&caller, state.clock.now_ms())
            .map_err(|wait| rate_limited(TOKEN_RATE_REFUSAL, wait))?;
        if let Some(value) = parts.headers.get(TENANT_HEADER) {
            let named = value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_request",
                    "the `Herald-Tenant` header is not valid text",
                )
            })?;
            caller.act_on(state, named.trim()).await?;
        }
        Ok(caller)
    }
}

/// The hash of the request's bearer token, for a long-lived answer's [`TokenWatch`].
pub fn token_hash(headers: &axum::http::HeaderMap) -> Option<crate::store::TokenHash> {
    bearer(headers).map(hash_token)
}

/// The bearer token of a request's `Authorization` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    Some(
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim(),
    )
}
