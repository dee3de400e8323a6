//! `/v1/tenants`: platform administration (see `crate::service::tenants`). Only a platform
//! token with `manage:tenants` may create, list, rename or delete tenants.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, JsonBody};
use crate::event::format_time;
use crate::service::{Service, tenants};
use crate::store::Tenant;

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

pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = tenants::NewTenant {
        name: request.name,
        id: request.id,
    };
    let tenant = tenants::create(&service, &caller, new).await?;
    Ok((StatusCode::CREATED, Json(view(&tenant))))
}

pub async fn list(State(service): State<Service>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let tenants = tenants::list(&service, &caller).await?;
    Ok(Json(Value::Array(tenants.iter().map(view).collect())))
}

pub async fn show(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&tenants::get(&service, &caller, &id).await?)))
}

pub async fn update(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<UpdateTenant>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenants::rename(&service, &caller, &id, &request.name).await?;
    Ok(Json(view(&tenant)))
}

pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    tenants::delete(&service, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
