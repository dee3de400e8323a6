//! `/v1/tenants`: platform administration. Only a platform token with `manage:tenants` may
//! create, list, rename or delete tenants.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Caller, DEFAULT_TENANT, JsonBody, Scope};
use crate::event::format_time;
use crate::store::Tenant;

const MAX_NAME_LEN: usize = 128;
const MAX_ID_LEN: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    /// A chosen id (`ten_acme`), for example the platform's own organization id; generated
    /// when absent.
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    name: String,
}

fn view(t: &Tenant) -> Value {
    json!({ "id": t.id, "name": t.name, "created_at": format_time(t.created_at) })
}

fn require_platform(caller: &Caller) -> Result<(), ApiError> {
    caller.require(Scope::ManageTenants)?;
    if !caller.is_platform() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "managing tenants needs a platform token",
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid(format!(
            "`name` must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_platform(&caller)?;
    check_name(&request.name)?;
    let id = match request.id {
        Some(id) => {
            let valid = id.starts_with("ten_")
                && id.len() <= MAX_ID_LEN
                && id.len() > 4
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(ApiError::invalid(format!(
                    "`id` must start with `ten_` and hold at most {MAX_ID_LEN} letters, digits, `_` or `-`"
                )));
            }
            id
        }
        None => format!("ten_{}", crate::ids::random_base62(22)),
    };
    let tenant = Tenant {
        id,
        name: request.name,
        created_at: state.clock.now_ms(),
    };
    if !state.store.create_tenant(tenant.clone()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a tenant with id `{}` exists", tenant.id),
        ));
    }
    tracing::info!(tenant = %tenant.id, "tenant created");
    Ok((StatusCode::CREATED, Json(view(&tenant))))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    require_platform(&caller)?;
    let tenants = state.store.list_tenants().await?;
    Ok(Json(Value::Array(tenants.iter().map(view).collect())))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_platform(&caller)?;
    let tenant = state
        .store
        .get_tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    Ok(Json(view(&tenant)))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<UpdateTenant>,
) -> Result<Json<Value>, ApiError> {
    require_platform(&caller)?;
    check_name(&request.name)?;
    let tenant = state
        .store
        .rename_tenant(&id, &request.name)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    Ok(Json(view(&tenant)))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_platform(&caller)?;
    if id == DEFAULT_TENANT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "default_tenant",
            "the default tenant cannot be deleted",
        ));
    }
    let tenant_id = id.clone();
    let deleted = super::to_completion(async move {
        let deleted = state.store.delete_tenant(&tenant_id).await?;
        if deleted {
            state.signal.streams_changed();
            state.tokens.clear();
        }
        Ok(deleted)
    })
    .await?;
    if !deleted {
        return Err(ApiError::not_found("tenant", &id));
    }
    tracing::info!(tenant = %id, "tenant deleted with all its data");
    Ok(StatusCode::NO_CONTENT)
}
