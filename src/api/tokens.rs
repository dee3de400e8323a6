//! `/v1/tokens`: API tokens with scopes (see `crate::service::tokens`). A token's secret is
//! in the answer to its creation only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiQuery, Caller, JsonBody};
use crate::event::format_time;
use crate::service::{Service, tokens};
use crate::store::Token;

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

pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = tokens::NewToken {
        name: request.name,
        scopes: request.scopes,
        platform: request.platform,
    };
    let created = tokens::create(&service, &caller, new).await?;
    let mut body = view(&created.token);
    body["token"] = json!(created.secret);
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    ApiQuery(which): ApiQuery<Which>,
) -> Result<Json<Value>, ApiError> {
    let tokens = tokens::list(&service, &caller, which.platform).await?;
    Ok(Json(Value::Array(tokens.iter().map(view).collect())))
}

pub async fn revoke(
    State(service): State<Service>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> Result<StatusCode, ApiError> {
    tokens::revoke(&service, &caller, &id, which.platform).await?;
    Ok(StatusCode::NO_CONTENT)
}
