//! `/v1/event-types`: the catalog (built-in types and the tenant's own), and the tenant's own
//! types with a JSON Schema for their `data` (see `crate::service::event_types`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiQuery, Caller, JsonBody};
use crate::catalog::EventType;
use crate::service::{Service, event_types};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    category: Option<String>,
}

pub async fn list(
    State(service): State<Service>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<Filter>,
) -> Result<Json<Value>, ApiError> {
    let types = event_types::list(&service, &caller, filter.category.as_deref()).await?;
    let types: Vec<Value> = types.iter().map(view).collect();
    Ok(Json(json!({ "event_types": types })))
}

fn view(t: &EventType) -> Value {
    json!({
        "name": t.name,
        "category": t.category,
        "description": t.description,
        "sample_data": t.sample_data,
        "custom": t.custom,
        "schema": t.schema,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateType {
    name: String,
    category: Option<String>,
    description: Option<String>,
    schema: Option<Value>,
    sample_data: Option<Value>,
}

pub async fn create(
    State(service): State<Service>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateType>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = event_types::NewEventType {
        name: request.name,
        category: request.category,
        description: request.description,
        schema: request.schema,
        sample_data: request.sample_data,
    };
    let event_type = event_types::create(&service, &caller, new).await?;
    Ok((StatusCode::CREATED, Json(view(&event_type))))
}

pub async fn delete(
    State(service): State<Service>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    event_types::delete(&service, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
