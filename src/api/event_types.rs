//! `/v1/event-types`: the catalog (built-in types and the tenant's own), and the tenant's own
//! types with a JSON Schema for their `data`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiQuery, AppState, Caller, JsonBody, Scope};
use crate::catalog::schema::Schema;
use crate::catalog::{EventType, is_valid_type_name};
use crate::service::limits::Quotas;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    category: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<Filter>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state
        .catalogs
        .for_tenant(&*state.store, &caller.tenant_id)
        .await?;
    let types: Vec<Value> = catalog
        .all()
        .iter()
        .filter(|t| filter.category.as_ref().is_none_or(|c| &t.category == c))
        .map(view)
        .collect();
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

const MAX_TEXT: usize = 1024;
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// `sample_data` goes into every test event and catalog listing.
const MAX_SAMPLE_BYTES: usize = 64 * 1024;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateType>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    if !is_valid_type_name(&request.name) {
        return Err(ApiError::invalid(format!(
            "`{}` is not a valid event type name: lowercase dotted segments such as `invoice.paid`",
            request.name
        )));
    }
    if request.name.starts_with("herald.") {
        return Err(ApiError::invalid("names under `herald.` are Herald's own"));
    }
    let catalog = state.catalogs.builtin();
    if catalog.get(&request.name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{}` is a built-in event type", request.name),
        ));
    }
    let category = request.category.unwrap_or_else(|| {
        request
            .name
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let description = request.description.unwrap_or_default();
    if category.is_empty() || category.len() > 64 || description.len() > MAX_TEXT {
        return Err(ApiError::invalid(
            "`category` must be 1 to 64 characters and `description` at most 1024",
        ));
    }
    if request
        .sample_data
        .as_ref()
        .is_some_and(|sample| sample.to_string().len() > MAX_SAMPLE_BYTES)
    {
        return Err(ApiError::invalid("`sample_data` is larger than 64 KiB"));
    }
    if let Some(schema) = &request.schema {
        if schema.to_string().len() > MAX_SCHEMA_BYTES {
            return Err(ApiError::invalid("`schema` is larger than 64 KiB"));
        }
        let compiled = Schema::compile(schema)
            .map_err(|e| ApiError::invalid(format!("`schema` is not a valid JSON Schema: {e}")))?;
        if let Some(sample) = &request.sample_data {
            compiled.validate(sample).map_err(|e| {
                ApiError::invalid(format!("`sample_data` does not match `schema`: {e}"))
            })?;
        }
    }
    let event_type = EventType {
        name: request.name,
        category,
        description,
        sample_data: request.sample_data.unwrap_or_else(|| json!({})),
        custom: true,
        schema: request.schema,
    };
    let count = state.store.list_event_types(&caller.tenant_id).await?.len();
    Quotas::check(
        state.quotas.event_types,
        count,
        "custom event types",
        "max_event_types_per_tenant",
    )?;
    let created = state
        .store
        .create_event_type(&caller.tenant_id, event_type.clone(), state.clock.now_ms())
        .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("the event type `{}` exists", event_type.name),
        ));
    }
    state.catalogs.invalidate(&caller.tenant_id);
    Ok((StatusCode::CREATED, Json(view(&event_type))))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::UpdateEventStreams)?;
    if state.catalogs.builtin().get(&name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{name}` is a built-in event type and cannot be deleted"),
        ));
    }
    if !state
        .store
        .delete_event_type(&caller.tenant_id, &name)
        .await?
    {
        return Err(ApiError::not_found("custom event type", &name));
    }
    state.catalogs.invalidate(&caller.tenant_id);
    Ok(StatusCode::NO_CONTENT)
}
