//! The HTTP API: routes, shared state and request parsing. Handlers live in one module per
//! resource; they read the request, call the operation in `crate::service` that applies the
//! rules, and shape the response.

mod auth;
mod deliveries;
mod error;
mod event_types;
mod events;
pub mod limits;
pub mod listen;
pub mod log_stream;
mod metrics;
mod stats;
mod streams;
mod tenants;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

pub use auth::{Caller, DEFAULT_TENANT, Scope, TokenCache};
pub use error::ApiError;

use crate::metrics::Metrics;
use crate::service::Service;

/// What every handler can reach: the operations' [`Service`] (which `AppState` derefs to, so
/// `state.store`, `state.clock` read through), and what only HTTP needs.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    pub max_request_bytes: usize,
    /// Admission and per-token request rates; the operations' own limits are the service's.
    pub limits: Arc<limits::ApiLimits>,
    /// Events older than this many days are removed (0: kept forever); an offset older than
    /// that is expired.
    pub event_retention_days: u64,
    /// Cancelled when the server stops, to end responses that would never end on their own.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}

impl axum::extract::FromRef<AppState> for Service {
    fn from_ref(state: &AppState) -> Service {
        state.service.clone()
    }
}

/// Health, readiness and metrics, which every node serves.
fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::scrape))
}

/// The routes of a delivery-only node: health, readiness and metrics alone.
pub fn health_router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    counted(
        guarded(health_routes().fallback(not_found).with_state(state)),
        metrics,
    )
}

/// The metrics listener's one route: `/metrics` without a token.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::scrape_open))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Counts and times every answer, outermost, so the count holds what the client got.
fn counted(router: Router, metrics: Arc<Metrics>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        crate::metrics::http::track,
    ))
}

/// Every answer carries a request id (`x-request-id`: the one a proxy set, else a new one),
/// and a handler that panics, as a last line of defence, answers a 500 with the error body
/// instead of dropping the connection; the panic goes to the log and the server keeps
/// serving.
pub fn guarded(router: Router) -> Router {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    let router = router
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::map_response(name_internal_errors));
    // The request span only where the log filter or the span exporter (both fixed at start)
    // takes it: the layer costs every request, seen or not.
    let router = if tracing::enabled!(
        kind: tracing::metadata::Kind::SPAN,
        target: "herald::api",
        tracing::Level::DEBUG
    ) {
        router.layer(axum::middleware::from_fn(request_span))
    } else {
        router
    };
    router
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, NewRequestId))
}

/// A span per request, so every line logged while answering it names the request (its id,
/// method and path; never the query string, nor a sign-in link's secret). At debug level: an
/// enabled span costs every request a few microseconds of formatting, measurable on
/// single-event publishes. Exported spans continue the caller's `traceparent`.
async fn request_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let id = request
        .extensions()
        .get::<tower_http::request_id::RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    let span = tracing::debug_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %logged_path(request.uri().path()),
        // Recorded when exported.
        http.response.status_code = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    if !crate::telemetry::exporting() {
        return next.run(request).instrument(span).await;
    }
    crate::telemetry::export_request(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    // As a signed integer: an unsigned one is exported as text.
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    response
}

/// A request's path as logged: a sign-in link's path is its secret, which stays out of the log.
fn logged_path(path: &str) -> &str {
    if path.starts_with("/console-link/") {
        "/console-link/{secret}"
    } else {
        path
    }
}

/// Logs every 500 with its request id, so what a caller quotes leads to the log.
async fn name_internal_errors(
    request_id: Option<axum::Extension<tower_http::request_id::RequestId>>,
    response: axum::response::Response,
) -> axum::response::Response {
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        let id = request_id
            .as_ref()
            .and_then(|axum::Extension(id)| id.header_value().to_str().ok())
            .unwrap_or("-");
        tracing::error!(request_id = id, "answered 500");
    }
    response
}

/// Request ids: ULIDs, sortable by time.
#[derive(Clone, Copy)]
struct NewRequestId;

impl tower_http::request_id::MakeRequestId for NewRequestId {
    fn make_request_id<B>(
        &mut self,
        _request: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let id = format!("req_{}", ulid::Ulid::new());
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
    axum::response::IntoResponse::into_response(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "an internal error occurred; the x-request-id header names it for the operator",
    ))
}

pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let body_limit = axum::extract::DefaultBodyLimit::max(state.max_request_bytes);
    let router = health_routes()
        .route("/openapi.json", get(openapi))
        .route(
            "/v1/event-types",
            get(event_types::list).post(event_types::create),
        )
        .route(
            "/v1/event-types/{name}",
            axum::routing::delete(event_types::delete),
        )
        .route("/v1/events", post(events::publish).get(events::list))
        .route("/v1/events/erase", post(events::erase))
        .route("/v1/events/stream", get(log_stream::stream))
        .route("/v1/events/{id}", get(events::show))
        .route("/v1/event-streams/{id}/stats", get(stats::stream_stats))
        .route(
            "/v1/event-streams",
            post(streams::create).get(streams::list),
        )
        .route(
            "/v1/event-streams/{id}",
            get(streams::show)
                .patch(streams::update)
                .delete(streams::delete),
        )
        .route("/v1/event-streams/{id}/secret", get(streams::secret))
        .route(
            "/v1/event-streams/{id}/secret/rotate",
            post(streams::rotate_secret),
        )
        .route("/v1/event-streams/{id}/deliveries", get(deliveries::list))
        .route("/v1/event-streams/{id}/backlog", get(deliveries::backlog))
        .route(
            "/v1/event-streams/{id}/deliveries/{event_id}",
            get(deliveries::for_event),
        )
        .route(
            "/v1/event-streams/{id}/redeliver",
            post(deliveries::redeliver),
        )
        .route(
            "/v1/event-streams/{id}/redeliver/{event_id}",
            post(deliveries::redeliver_event),
        )
        .route("/v1/event-streams/test", post(streams::test_unsaved))
        .route("/v1/event-streams/{id}/test", post(streams::test))
        .route(
            "/v1/event-streams/{id}/destination/check",
            post(streams::check_destination),
        )
        .route("/v1/deliveries/{id}", get(deliveries::show))
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/v1/tenants/{id}",
            get(tenants::show)
                .patch(tenants::update)
                .delete(tenants::delete),
        )
        .route(
            "/v1/tenants/{id}/console-link",
            post(tenants::console_link).delete(tenants::withdraw_console_links),
        )
        .route("/v1/listen-sessions", post(listen::create))
        .route(
            "/v1/listen-sessions/{id}",
            axum::routing::delete(listen::delete),
        )
        .route("/v1/listen-sessions/{id}/connect", get(listen::connect))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(body_limit)
        .layer(axum::middleware::from_fn_with_state(
            state.limits.admission.clone(),
            limits::admit,
        ))
        .with_state(state);
    counted(guarded(router), metrics)
}

/// The OpenAPI document of this API, kept in the repository as `openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    // The cause goes to the log: this route is unauthenticated.
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        state
            .metrics
            .store_error(crate::metrics::StoreCaller::Api, &e);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store cannot serve requests",
        )
    })?;
    Ok(axum::Json(serde_json::json!({ "status": "ready" })))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Reads a JSON body, answering `malformed_json` for bad syntax and `invalid_request` (with
/// serde's description of what was wrong) for the wrong shape.
fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected `content-type: application/json`, got `{ct}`"),
            ));
        }
    }
    let depth = crate::event::json_depth(body);
    if depth > crate::event::MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(
            "too_deep",
            format!(
                "the body nests arrays and objects {depth} levels deep; the limit is {}",
                crate::event::MAX_JSON_DEPTH
            ),
        ));
    }
    serde_json::from_slice(body).map_err(json_error)
}

pub fn json_error(err: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {err}"),
        ),
        Category::Data => ApiError::invalid(err.to_string()),
    }
}

/// A JSON request body, read within the body limit and parsed with the API's errors.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&headers, &body).map(JsonBody)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> axum::extract::FromRequest<S>
    for OptionalJsonBody<T>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(body_error)?;
        if body.is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&headers, &body).map(OptionalJsonBody)
    }
}

/// Query parameters, with the API's error shape when they do not parse.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::invalid(format!("bad query parameters: {}", e.body_text())))
    }
}

/// Most items one page of a listing holds, and how many when the caller does not say.
pub const MAX_TAKE: usize = 100;
pub const DEFAULT_TAKE: usize = 50;

/// `take` within 1..=MAX_TAKE, and the cursor from `from`.
pub fn paging(take: Option<usize>, from: Option<&str>) -> Result<(usize, Option<i64>), ApiError> {
    let take = take.unwrap_or(DEFAULT_TAKE);
    if !(1..=MAX_TAKE).contains(&take) {
        return Err(ApiError::invalid(format!(
            "`take` must be between 1 and {MAX_TAKE}"
        )));
    }
    let cursor = from
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::invalid("`from` is not a cursor returned as `next`"))
        })
        .transpose()?;
    Ok((take, cursor))
}

/// Parses an RFC 3339 time parameter named `field`.
pub fn parse_time_param(field: &str, value: &str) -> Result<crate::clock::Millis, ApiError> {
    Ok(crate::service::parse_time(field, value)?)
}

/// Turns the body-limit rejection into the API's error shape.
pub fn body_error(err: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = err.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "the request body is larger than the server accepts (max_request_bytes)",
        )
    } else {
        ApiError::new(status, "invalid_body", err.body_text())
    }
}
