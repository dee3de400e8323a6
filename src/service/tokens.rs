//! API tokens with scopes. A token's secret is shown once, at creation, and stored only as a
//! hash. A caller can grant only scopes it holds itself, and only a platform caller manages
//! platform tokens; revoking one ends it at once on this node.

use super::limits::Quotas;
use super::{Caller, Error, Scope, Service};
use crate::store::{Token, hash_token};

const MAX_NAME_LEN: usize = 128;

/// A token to create.
pub struct NewToken {
    pub name: String,
    pub scopes: Vec<String>,
    /// A platform token (acts on every tenant); only a platform caller may create one.
    pub platform: bool,
}

/// A token just created, with its secret: the only time the secret is known.
pub struct CreatedToken {
    pub token: Token,
    pub secret: String,
}

/// The tokens a request addresses: platform ones (platform callers only) or the tenant's.
fn owner(caller: &Caller, platform: bool) -> Result<Option<&str>, Error> {
    if platform && !caller.is_platform() {
        return Err(Error::Forbidden(
            "only a platform token manages platform tokens".into(),
        ));
    }
    Ok((!platform).then_some(caller.tenant_id.as_str()))
}

pub async fn create(
    service: &Service,
    caller: &Caller,
    new: NewToken,
) -> Result<CreatedToken, Error> {
    caller.require(Scope::ManageTokens)?;
    let tenant = owner(caller, new.platform)?;
    if new.name.trim().is_empty() || new.name.len() > MAX_NAME_LEN {
        return Err(Error::Invalid(format!(
            "`name` must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    let platform_refusal = (!new.platform).then_some("create the token with `\"platform\": true`");
    let scopes = super::caller::granted(caller, &new.scopes, "a token", platform_refusal)?;
    if let Some(tenant) = tenant {
        let count = service.store.list_tokens(Some(tenant)).await?.len();
        Quotas::check(
            service.quotas.tokens,
            count,
            "tokens",
            "max_tokens_per_tenant",
        )?;
    }
    let secret = crate::ids::api_token_secret();
    let token = Token {
        id: crate::ids::token_id(),
        tenant_id: tenant.map(str::to_string),
        name: new.name,
        scopes,
        created_at: service.clock.now_ms(),
    };
    service
        .store
        .put_token(token.clone(), hash_token(&secret))
        .await?;
    tracing::info!(token = %token.id, tenant = ?token.tenant_id, "token created");
    Ok(CreatedToken { token, secret })
}

/// The platform's tokens, or the caller's tenant's.
pub async fn list(service: &Service, caller: &Caller, platform: bool) -> Result<Vec<Token>, Error> {
    caller.require(Scope::ManageTokens)?;
    Ok(service.store.list_tokens(owner(caller, platform)?).await?)
}

pub async fn revoke(
    service: &Service,
    caller: &Caller,
    id: &str,
    platform: bool,
) -> Result<(), Error> {
    caller.require(Scope::ManageTokens)?;
    let owner = owner(caller, platform)?;
    if !service
        .store
        .revoke_token(owner, id, service.clock.now_ms())
        .await?
    {
        return Err(Error::NotFound {
            what: "token",
            id: id.to_string(),
        });
    }
    service.tokens.clear();
    tracing::info!(token = %id, "token revoked");
    Ok(())
}
