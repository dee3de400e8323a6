//! Bearer-token authentication. Every `/v1` route needs a token; the token decides which
//! tenant a request acts on.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::store::{Token, hash_token};

/// The tenant a platform token acts on when the request names none.
pub const DEFAULT_TENANT: &str = "ten_default";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: Token,
    pub tenant_id: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer <token>` header")
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the `Authorization` header must be `Bearer <token>`")
            })?;
        let token = state
            .store
            .find_token(hash_token(secret))
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token is not valid or has been revoked"))?;
        let tenant_id = token
            .tenant_id
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string());
        Ok(Caller { token, tenant_id })
    }
}
