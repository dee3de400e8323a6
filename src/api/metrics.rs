//! `GET /metrics`: every metric of this node (see `crate::metrics`), in the Prometheus text
//! format, or OpenMetrics when the scraper's `Accept` asks for it. On the API listener it
//! needs a platform token with `read:metrics` (the metrics name every tenant); on the
//! operator's `metrics_listen` address it needs none, that address being the operator's to
//! keep private.

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, Caller, Scope};
use crate::metrics::{OPENMETRICS_TEXT, PROMETHEUS_TEXT, StoreCaller};

/// On the API listener: a platform token with `read:metrics`.
pub async fn scrape(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Scope::ReadMetrics)?;
    if !caller.is_platform() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the metrics cover every tenant: reading them needs a platform token",
        ));
    }
    Ok(render(&state, &headers).await)
}

/// On the metrics listener: no token.
pub async fn scrape_open(State(state): State<AppState>, headers: HeaderMap) -> Response {
    render(&state, &headers).await
}

async fn render(state: &AppState, headers: &HeaderMap) -> Response {
    let metrics = &state.metrics;
    // Without the store the backlog is left out; everything else is still worth serving.
    if let Err(e) = metrics
        .backlog
        .refresh(&*state.store, state.clock.now_ms())
        .await
    {
        tracing::warn!(error = %e, "reading the backlog for the metrics failed");
        metrics.store_error(StoreCaller::Metrics, &e);
    }
    let openmetrics = headers
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        OPENMETRICS_TEXT
    } else {
        PROMETHEUS_TEXT
    };
    ([(CONTENT_TYPE, content_type)], metrics.encode(openmetrics)).into_response()
}
