//! Who asks: an authenticated [`Caller`] (its token, the [`Scope`]s it holds, and the tenant
//! it acts on) and the cache of token lookups that authentication reads. A **platform**
//! token acts on any tenant; a **tenant** token on its own only. Each operation needs one
//! scope and checks it first; reading the event type catalog alone needs none.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Error, Service};
use crate::clock::Millis;
use crate::store::{StoreResult, Token, TokenHash};

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

    pub async fn find(&self, service: &Service, hash: TokenHash) -> StoreResult<Option<Token>> {
        let now = service.clock.now_ms();
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
        let token = service.store.find_token(hash).await?;
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
    /// Whose allowance the per-token rate limits take from: the token's id, or for a console
    /// session a sign-in link opened, the issuing token's id and the link's tenant (so that
    /// one customer's session cannot spend another's, or the platform's own).
    pub rate_key: String,
}

impl Caller {
    /// The caller a token makes, acting on its own tenant (a platform token: the default
    /// tenant) until told otherwise.
    pub fn new(token: Token) -> Caller {
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
        let tenant_id = token
            .tenant_id
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string());
        Caller {
            rate_key: token.id.clone(),
            token,
            scopes,
            tenant_id,
        }
    }

    pub fn is_platform(&self) -> bool {
        self.token.tenant_id.is_none()
    }

    /// Refuses unless the token holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(Error::MissingScope(scope))
        }
    }

    /// Re-targets the caller at `tenant` (a request or a publish naming its tenant), which
    /// only a platform token may do for a tenant other than its own.
    pub async fn act_on(&mut self, service: &Service, tenant: &str) -> Result<(), Error> {
        if tenant == self.tenant_id {
            return Ok(());
        }
        if !self.is_platform() {
            return Err(Error::WrongTenant);
        }
        if service.store.get_tenant(tenant).await?.is_none() {
            return Err(Error::UnknownTenant(tenant.to_string()));
        }
        self.tenant_id = tenant.to_string();
        Ok(())
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
    pub fn new(caller: &Caller, token: Option<TokenHash>, now: Millis) -> TokenWatch {
        TokenWatch {
            token,
            tenant_id: caller.tenant_id.clone(),
            platform: caller.is_platform(),
            checked_at: now,
        }
    }

    /// Whether the caller still stands; a store that cannot answer does not end it.
    pub async fn still_allowed(&mut self, service: &Service) -> bool {
        let now = service.clock.now_ms();
        if now - self.checked_at < TokenCache::TTL_MS {
            return true;
        }
        self.checked_at = now;
        let Some(hash) = self.token else {
            return false;
        };
        match service.tokens.find(service, hash).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(_) => return true,
        }
        if self.platform {
            return !matches!(service.store.get_tenant(&self.tenant_id).await, Ok(None));
        }
        true
    }
}

/// The scopes `caller` grants to something it makes (a token, a sign-in link), checked: at
/// least one, each a scope, each held by the caller, and a platform scope only where
/// `platform_refusal` is `None` (else it says why not); duplicates dropped, order kept.
pub(super) fn granted(
    caller: &Caller,
    names: &[String],
    what: &str,
    platform_refusal: Option<&str>,
) -> Result<Vec<String>, Error> {
    if names.is_empty() {
        return Err(Error::Invalid(
            "`scopes` must name at least one scope".into(),
        ));
    }
    let mut scopes: Vec<String> = Vec::new();
    for name in names {
        let scope = Scope::parse(name).ok_or_else(|| {
            Error::Invalid(format!(
                "`{name}` is not a scope; the scopes are {}",
                Scope::all_names().join(", ")
            ))
        })?;
        if let Some(why) = platform_refusal.filter(|_| scope.platform_only()) {
            return Err(Error::Invalid(format!(
                "`{name}` is a platform scope; {why}"
            )));
        }
        if !caller.scopes.contains(&scope) {
            return Err(Error::Forbidden(format!(
                "{what} cannot grant `{name}`, which this token does not hold"
            )));
        }
        if !scopes.contains(name) {
            scopes.push(name.clone());
        }
    }
    Ok(scopes)
}
