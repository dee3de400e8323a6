//! Sign-in links to a tenant's console, so a platform can open Herald's console for its own
//! customers from its product without handing them a token. A platform token with
//! `manage:tenants` issues a link for one tenant and a few of the scopes it holds itself
//! (never a platform scope: the link opens a tenant's console). The link's URL carries a
//! random secret; the store keeps only its hash. Opening the link takes it from the store in
//! one statement, so it serves once whatever the number of nodes sharing the store, and only
//! for [`DEFAULT_EXPIRES_SECONDS`] unless the issuer chose otherwise (at most
//! [`MAX_EXPIRES_SECONDS`]).
//!
//! A session a link opened is a console session like one opened with a token (see
//! `console_sessions`: it ends when idle, at its absolute lifetime, or at sign-out), stored
//! with the hash of the token that issued the link, the link's tenant and the scopes it
//! granted. Each request re-checks it as any session: revoking the issuing token (or giving
//! a configured admin token a new secret) ends it at once, and deleting the tenant deletes
//! it. Its caller is a tenant caller of the link's tenant with the granted scopes still held
//! by the issuing token: it acts on that tenant only, as a tenant token would.

use super::{Caller, Error, Scope, Service};
use crate::clock::Millis;
use crate::store::{ConsoleLink, ConsoleSession, Token, TokenHash, hash_token};

/// How long a link stays good to open when the issuer does not say.
pub const DEFAULT_EXPIRES_SECONDS: i64 = 5 * 60;
/// The longest a link may stay good to open: it is a bearer credential in a URL.
pub const MAX_EXPIRES_SECONDS: i64 = 60 * 60;
const MAX_NAME_LEN: usize = 128;
/// What a session opened by a link is shown as when the issuer gave it no name.
pub const DEFAULT_SESSION_NAME: &str = "Sign-in link";

/// A link to issue.
pub struct NewLink {
    pub scopes: Vec<String>,
    pub expires_in_seconds: Option<i64>,
    /// What the console shows as the signed-in user.
    pub session_name: Option<String>,
}

/// A link just issued: its secret (for the URL; the only time it is known) and its end.
pub struct Issued {
    pub secret: String,
    pub tenant_id: String,
    pub scopes: Vec<String>,
    pub expires_at: Millis,
}

/// What withdrawing a tenant's links ended.
pub struct Withdrawn {
    pub links: u64,
    pub sessions: u64,
}

/// Withdraws every unused sign-in link to `tenant` and ends every console session a link
/// opened there, at once: for when a customer's user must lose access now, without revoking
/// the platform token that issued the links (which would end every tenant's). A link being
/// opened at that very moment may still open its session; withdrawing again ends it.
pub async fn withdraw(
    service: &Service,
    caller: &Caller,
    tenant: &str,
) -> Result<Withdrawn, Error> {
    caller.require(Scope::ManageTenants)?;
    if !caller.is_platform() {
        return Err(Error::Forbidden(
            "only a platform token withdraws sign-in links".into(),
        ));
    }
    super::tenants::get(service, caller, tenant).await?;
    let (links, sessions) = service.store.withdraw_console_links(tenant).await?;
    tracing::info!(token = %caller.token.id, tenant = %tenant, links, sessions,
        "console sign-in links withdrawn");
    Ok(Withdrawn { links, sessions })
}

/// Issues a link to `tenant`'s console. `issuer` is the hash of the caller's own token: the
/// link, and the session it opens, serve while that token is valid.
pub async fn issue(
    service: &Service,
    caller: &Caller,
    issuer: TokenHash,
    tenant: &str,
    new: NewLink,
) -> Result<Issued, Error> {
    caller.require(Scope::ManageTenants)?;
    if !caller.is_platform() {
        return Err(Error::Forbidden(
            "only a platform token issues sign-in links".into(),
        ));
    }
    let expires_in = new.expires_in_seconds.unwrap_or(DEFAULT_EXPIRES_SECONDS);
    if !(1..=MAX_EXPIRES_SECONDS).contains(&expires_in) {
        return Err(Error::Invalid(format!(
            "`expires_in_seconds` must be 1 to {MAX_EXPIRES_SECONDS} (an hour)"
        )));
    }
    let name = match new.session_name {
        Some(name) if name.trim().is_empty() || name.len() > MAX_NAME_LEN => {
            return Err(Error::Invalid(format!(
                "`session_name` must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        name => name,
    };
    let scopes = super::caller::granted(
        caller,
        &new.scopes,
        "a sign-in link",
        Some("a sign-in link opens one tenant's console"),
    )?;
    if service.store.get_tenant(tenant).await?.is_none() {
        return Err(Error::NotFound {
            what: "tenant",
            id: tenant.to_string(),
        });
    }
    let now = service.clock.now_ms();
    let secret = format!("hcl_{}", crate::ids::random_base62(32));
    let link = ConsoleLink {
        hash: hash_token(&secret),
        token_hash: issuer,
        tenant_id: tenant.to_string(),
        scopes: scopes.clone(),
        name,
        created_at: now,
        expires_at: now + expires_in * 1000,
    };
    let expires_at = link.expires_at;
    service.store.create_console_link(link).await?;
    tracing::info!(token = %caller.token.id, tenant = %tenant, "console sign-in link issued");
    Ok(Issued {
        secret,
        tenant_id: tenant.to_string(),
        scopes,
        expires_at,
    })
}

/// What an unopened link leads to, for the page that asks its holder to open it.
pub struct Pending {
    pub tenant_id: String,
    pub expires_at: Millis,
}

/// The link with this secret, if it can still be opened (it stays unopened).
pub async fn pending(service: &Service, secret: &str) -> Result<Option<Pending>, Error> {
    let now = service.clock.now_ms();
    Ok(service
        .store
        .find_console_link(hash_token(secret.trim()), now)
        .await?
        .map(|link| Pending {
            tenant_id: link.tenant_id,
            expires_at: link.expires_at,
        }))
}

/// Opens the link with this secret: takes it from the store and opens a session on its
/// tenant with its scopes. `None` when it cannot serve: unknown, opened already (here or on
/// another node, a moment ago or long since), ended, or its issuing token revoked.
pub async fn open(
    service: &Service,
    secret: &str,
) -> Result<Option<super::console_sessions::Opened>, Error> {
    let now = service.clock.now_ms();
    let Some(link) = service
        .store
        .consume_console_link(hash_token(secret.trim()), now)
        .await?
    else {
        return Ok(None);
    };
    // The store, not the token cache: a token revoked on another node a moment ago must not
    // open a session here.
    let Some(token) = service.store.find_token(link.token_hash).await? else {
        return Ok(None);
    };
    let id = format!("hcs_{}", crate::ids::random_base62(32));
    let session = ConsoleSession {
        hash: hash_token(&id),
        token_hash: link.token_hash,
        tenant_id: Some(link.tenant_id.clone()),
        scopes: Some(link.scopes),
        name: link.name,
        created_at: now,
        expires_at: now
            + super::console_sessions::IDLE_MS.min(super::console_sessions::ABSOLUTE_MS),
    };
    let Some(caller) = session_caller(token, &session) else {
        return Ok(None);
    };
    service.store.create_console_session(session).await?;
    tracing::info!(token = %caller.token.id, tenant = %caller.tenant_id,
        "console session opened by a sign-in link");
    Ok(Some(super::console_sessions::Opened { id, caller }))
}

/// The caller of a session a link opened: of the link's tenant only, holding the granted
/// scopes that the issuing token still holds. `None` for a session that names no tenant,
/// which no link opens.
pub(super) fn session_caller(issuer: Token, session: &ConsoleSession) -> Option<Caller> {
    let tenant_id = session.tenant_id.clone()?;
    let granted = session.scopes.as_deref().unwrap_or_default();
    let held = Caller::new(issuer.clone()).scopes;
    let scopes = granted
        .iter()
        .filter(|name| {
            Scope::parse(name).is_some_and(|scope| !scope.platform_only() && held.contains(&scope))
        })
        .cloned()
        .collect();
    let mut caller = Caller::new(Token {
        id: issuer.id,
        tenant_id: Some(tenant_id),
        name: session
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string()),
        scopes,
        created_at: session.created_at,
    });
    caller.rate_key = format!("{}:{}", caller.token.id, caller.tenant_id);
    Some(caller)
}
