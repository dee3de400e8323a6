//! Authentication and authorization. Every `/v1` route needs a bearer token. A **platform**
//! token acts on any tenant, named by the `Herald-Tenant` header (or the default tenant); a
//! **tenant** token acts on its own tenant only. Each route needs one [`Scope`]; a token
//! without it gets 403.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::limits::rate_limited;
use super::{ApiError, AppState};
use crate::clock::Millis;
use crate::store::{StoreResult, Token, TokenHash, hash_token};

/// Token lookups, remembered briefly so that a busy publisher does not cost a store read per
/// request. Revoking a token or deleting a tenant clears it; another node sharing the store
/// sees a revocation within `TTL_MS`. Unknown tokens are remembered apart from known ones,
/// each set bounded on its own: a flood of made-up tokens can churn only the first.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<CachedTokens>,
}

#[derive(Default)]
struct CachedTokens {
    known: HashMap<TokenHash, (Millis, Token)>,
    unknown: HashMap<TokenHash, Millis>,
}

impl TokenCache {
    /// On the injected clock, so tests decide when entries lapse.
    pub const TTL_MS: Millis = 5_000;
    /// Known tokens are rows in the store, so this is reached only by very many of them.
    const MAX_KNOWN: usize = 100_000;
    const MAX_UNKNOWN: usize = 10_000;

    pub(super) async fn find(
        &self,
        state: &AppState,
        hash: TokenHash,
    ) -> StoreResult<Option<Token>> {
        let now = state.clock.now_ms();
        let fresh = |at: Millis| now.saturating_sub(at) < Self::TTL_MS;
        {
            let entries = self.lock();
            if let Some((at, token)) = entries.known.get(&hash)
                && fresh(*at)
            {
                return Ok(Some(token.clone()));
            }
            if entries.unknown.get(&hash).is_some_and(|at| fresh(*at)) {
                return Ok(None);
            }
        }
        let token = state.store.find_token(hash).await?;
        let mut entries = self.lock();
        match &token {
            Some(token) => {
                entries.unknown.remove(&hash);
                if entries.known.len() >= Self::MAX_KNOWN {
                    entries.known.clear();
                }
                entries.known.insert(hash, (now, token.clone()));
            }
            None => {
                entries.known.remove(&hash);
                if entries.unknown.len() >= Self::MAX_UNKNOWN {
                    entries.unknown.clear();
                }
                entries.unknown.insert(hash, now);
            }
        }
        Ok(token)
    }

    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.known.clear();
        entries.unknown.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedTokens> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The tenant a platform token acts on when the request names none.
pub const DEFAULT_TENANT: &str = "ten_default";
/// Names the tenant a platform token acts on.
pub const TENANT_HEADER: &str = "herald-tenant";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "read:event_streams")]
    ReadEventStreams,
    #[serde(rename = "create:event_streams")]
    CreateEventStreams,
    #[serde(rename = "update:event_streams")]
    UpdateEventStreams,
    #[serde(rename = "delete:event_streams")]
    DeleteEventStreams,
    #[serde(rename = "read:event_deliveries")]
    ReadEventDeliveries,
    #[serde(rename = "update:event_deliveries")]
    UpdateEventDeliveries,
    #[serde(rename = "publish:events")]
    PublishEvents,
    #[serde(rename = "read:events")]
    ReadEvents,
    #[serde(rename = "manage:tokens")]
    ManageTokens,
    /// Platform level only: create, change and delete tenants.
    #[serde(rename = "manage:tenants")]
    ManageTenants,
    /// Platform level only: read `/metrics`, which covers every tenant.
    #[serde(rename = "read:metrics")]
    ReadMetrics,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::ReadEventStreams,
        Scope::CreateEventStreams,
        Scope::UpdateEventStreams,
        Scope::DeleteEventStreams,
        Scope::ReadEventDeliveries,
        Scope::UpdateEventDeliveries,
        Scope::PublishEvents,
        Scope::ReadEvents,
        Scope::ManageTokens,
        Scope::ManageTenants,
        Scope::ReadMetrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadEventStreams => "read:event_streams",
            Scope::CreateEventStreams => "create:event_streams",
            Scope::UpdateEventStreams => "update:event_streams",
            Scope::DeleteEventStreams => "delete:event_streams",
            Scope::ReadEventDeliveries => "read:event_deliveries",
            Scope::UpdateEventDeliveries => "update:event_deliveries",
            Scope::PublishEvents => "publish:events",
            Scope::ReadEvents => "read:events",
            Scope::ManageTokens => "manage:tokens",
            Scope::ManageTenants => "manage:tenants",
            Scope::ReadMetrics => "read:metrics",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// Scopes only a platform token may hold: what they reach spans tenants.
    pub fn platform_only(self) -> bool {
        matches!(self, Scope::ManageTenants | Scope::ReadMetrics)
    }

    pub fn all_names() -> Vec<String> {
        Scope::ALL.iter().map(|s| s.as_str().to_string()).collect()
    }
}

/// An authenticated caller, and the tenant the request acts on.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: Token,
    pub scopes: BTreeSet<Scope>,
    pub tenant_id: String,
}

impl Caller {
    pub fn is_platform(&self) -> bool {
        self.token.tenant_id.is_none()
    }

    /// Fails with 403 unless the token holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this token lacks the `{}` scope", scope.as_str()),
            ))
        }
    }

    /// Re-targets the request at `tenant` (a publish naming its tenant), which only a
    /// platform token may do for a tenant other than its own.
    pub async fn act_on(&mut self, state: &AppState, tenant: &str) -> Result<(), ApiError> {
        if tenant == self.tenant_id {
            return Ok(());
        }
        if !self.is_platform() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_tenant",
                "a tenant token acts only on its own tenant",
            ));
        }
        ensure_tenant_exists(state, tenant).await?;
        self.tenant_id = tenant.to_string();
        Ok(())
    }
}

async fn ensure_tenant_exists(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    if state.store.get_tenant(tenant).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no tenant with id `{tenant}`"),
        ));
    }
    Ok(())
}

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
        let limits = &state.limits;
        if let Some(rate) = &limits.token_rate
            && (token.tenant_id.is_some() || limits.rate_limit_platform_tokens)
        {
            rate.take(&token.id, state.clock.now_ms()).map_err(|wait| {
                rate_limited(
                    "this token has made more requests than it may \
                     (token_rate_limit_per_second, token_rate_limit_burst)",
                    wait,
                )
            })?;
        }
        let mut scopes: BTreeSet<Scope> = token
            .scopes
            .iter()
            .filter_map(|s| Scope::parse(s))
            .collect();
        // A platform token that administers every tenant may read their metrics: the admin
        // token an older Herald generated, before `read:metrics` existed, included.
        if token.tenant_id.is_none() && scopes.contains(&Scope::ManageTenants) {
            scopes.insert(Scope::ReadMetrics);
        }
        let own_tenant = token.tenant_id.clone();
        let mut caller = Caller {
            token,
            scopes,
            tenant_id: own_tenant
                .clone()
                .unwrap_or_else(|| DEFAULT_TENANT.to_string()),
        };
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

/// A long-lived answer's check that its caller may still be served (the event log's
/// readers, `herald listen`'s connection): the token, and for a platform token the tenant it
/// acts on, asked again once per `TokenCache::TTL_MS` on the injected clock, so revoking the
/// token ends the answer as it ends any other request.
pub struct TokenWatch {
    token: Option<TokenHash>,
    tenant_id: String,
    platform: bool,
    checked_at: Millis,
}

impl TokenWatch {
    pub fn new(caller: &Caller, headers: &axum::http::HeaderMap, now: Millis) -> TokenWatch {
        TokenWatch {
            token: bearer(headers).map(hash_token),
            tenant_id: caller.tenant_id.clone(),
            platform: caller.is_platform(),
            checked_at: now,
        }
    }

    /// Whether the caller still stands; a store that cannot answer does not end it.
    pub async fn still_allowed(&mut self, state: &AppState) -> bool {
        let now = state.clock.now_ms();
        if now - self.checked_at < TokenCache::TTL_MS {
            return true;
        }
        self.checked_at = now;
        let Some(hash) = self.token else {
            return false;
        };
        match state.tokens.find(state, hash).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(_) => return true,
        }
        if self.platform {
            return !matches!(state.store.get_tenant(&self.tenant_id).await, Ok(None));
        }
        true
    }
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
