//! `/v1/tenants`: platform administration (see `crate::service::tenants`). Only a platform
//! token with `manage:tenants` may create, list, rename or delete tenants, or issue a
//! sign-in link to a tenant's console (`crate::service::console_links`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, JsonBody};
use crate::event::format_time;
use crate::service::{Service, console_links, tenants};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConsoleLink {
    scopes: Vec<String>,
    expires_in_seconds: Option<i64>,
    session_name: Option<String>,
}

/// `POST /v1/tenants/{id}/console-link`: a single-use URL that signs its holder into the
/// tenant's console. Herald has no setting for its public address, so the URL is built from
/// the request's `Host` header, with `https` when the request came over TLS or through a
/// proxy saying so with `X-Forwarded-Proto`: the address the platform reached Herald at.
pub async fn console_link(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateConsoleLink>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let issuer = super::auth::token_hash(&headers)
        .ok_or_else(|| ApiError::unauthorized("the token is not valid or has been revoked"))?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                "the request has no usable `Host` header to build the link's URL from",
            )
        })?;
    let scheme = if crate::console::over_tls(&headers, &uri) {
        "https"
    } else {
        "http"
    };
    let new = console_links::NewLink {
        scopes: request.scopes,
        expires_in_seconds: request.expires_in_seconds,
        session_name: request.session_name,
    };
    let issued = console_links::issue(&service, &caller, issuer, &id, new).await?;
    let url = format!(
        "{scheme}://{host}{}",
        crate::console::link_path(&issued.secret)
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "url": url,
            "tenant_id": issued.tenant_id,
            "scopes": issued.scopes,
            "expires_at": format_time(issued.expires_at),
        })),
    ))
}

/// `DELETE /v1/tenants/{id}/console-link`: withdraws every unused sign-in link to the tenant
/// and ends every console session a link opened there.
pub async fn withdraw_console_links(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let withdrawn = console_links::withdraw(&service, &caller, &id).await?;
    Ok(Json(json!({
        "withdrawn_links": withdrawn.links,
        "ended_sessions": withdrawn.sessions,
    })))
}
