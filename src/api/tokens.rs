//! `/v1/tokens`: API tokens with scopes. A token's secret is shown once, at creation, and
//! stored only as a hash. A caller can grant only scopes it holds itself.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::limits::Quotas;
use super::{ApiError, ApiQuery, AppState, Caller, JsonBody, Scope};
use crate::event::format_time;
use crate::store::{Token, hash_token};

const MAX_NAME_LEN: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    scopes: Vec<String>,
    /// A platform token (acts on every tenant); only a platform caller may create one.
    #[serde(default)]
    platform: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Which {
    /// List or revoke platform tokens rather than the tenant's.
    #[serde(default)]
    platform: bool,
}

fn view(t: &Token) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "tenant_id": t.tenant_id,
        "scopes": t.scopes,
        "created_at": format_time(t.created_at),
    })
}

/// The tokens a request addresses: platform ones (platform callers only) or the tenant's.
fn owner(caller: &Caller, platform: bool) -> Result<Option<&str>, ApiError> {
    if platform && !caller.is_platform() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "only a platform token manages platform tokens",
        ));
    }
    Ok((!platform).then_some(caller.tenant_id.as_str()))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::ManageTokens)?;
    let tenant = owner(&caller, request.platform)?;
    if request.name.trim().is_empty() || request.name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid(format!(
            "`name` must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    if request.scopes.is_empty() {
        return Err(ApiError::invalid("`scopes` must name at least one scope"));
    }
    let mut scopes = Vec::new();
    for name in &request.scopes {
        let scope = Scope::parse(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "`{name}` is not a scope; the scopes are {}",
                Scope::all_names().join(", ")
            ))
        })?;
        if scope.platform_only() && !request.platform {
            return Err(ApiError::invalid(format!(
                "`{name}` is a platform scope: create the token with `\"platform\": true`"
            )));
        }
        if !caller.scopes.contains(&scope) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("a token cannot grant `{name}`, which it does not hold"),
            ));
        }
        if !scopes.contains(name) {
            scopes.push(name.clone());
        }
    }
    if let Some(tenant) = tenant {
        let count = state.store.list_tokens(Some(tenant)).await?.len();
        Quotas::check(
            state.limits.quotas.tokens,
            count,
            "tokens",
            "max_tokens_per_tenant",
        )?;
    }
    let secret = crate::ids::api_token_secret();
    let token = Token {
        id: crate::ids::token_id(),
        tenant_id: tenant.map(str::to_string),
        name: request.name,
        scopes,
        created_at: state.clock.now_ms(),
    };
    state
        .store
        .put_token(token.clone(), hash_token(&secret))
        .await?;
    tracing::info!(token = %token.id, tenant = ?token.tenant_id, "token created");
    let mut body = view(&token);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(which): ApiQuery<Which>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::ManageTokens)?;
    let tokens = state
        .store
        .list_tokens(owner(&caller, which.platform)?)
        .await?;
    Ok(Json(Value::Array(tokens.iter().map(view).collect())))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::ManageTokens)?;
    let owner = owner(&caller, which.platform)?;
    if !state
        .store
        .revoke_token(owner, &id, state.clock.now_ms())
        .await?
    {
        return Err(ApiError::not_found("token", &id));
    }
    state.tokens.clear();
    tracing::info!(token = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
