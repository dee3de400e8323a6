//! `GET /v1/event-types`: the catalog.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::{AppState, Caller};

#[derive(Deserialize)]
pub struct Filter {
    category: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(filter): Query<Filter>,
) -> Json<serde_json::Value> {
    let types: Vec<_> = state
        .catalog
        .all()
        .iter()
        .filter(|t| filter.category.as_ref().is_none_or(|c| &t.category == c))
        .collect();
    Json(serde_json::json!({ "event_types": types }))
}
