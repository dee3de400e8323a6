//! The one error type of the HTTP API. Every error answers with a status and the body
//! `{"error": {"code": "...", "message": "...", "details": {...}}}`; `code` is stable for
//! machines, `message` is for people, `details` (when present) holds specifics. Internal failures answer an opaque 500 and the cause goes to the log only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::event::EventError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Machine-readable specifics, such as the path where `data` fails its schema.
    pub details: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header (429, 503 answers).
    pub retry_after: Option<u64>,
    /// The kind of store failure behind the error, for the metrics (never in the body).
    pub store_error: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            store_error: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::bad_request("invalid_request", message)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id `{id}`"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if let StoreError::NameTaken(id) = &err {
            // The caller's mistake, not the store's: no failure to log or count.
            return Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "the stream `{id}` has this name; stream names are unique per tenant: \
                     choose another, or rename that stream first"
                ),
            )
            .with_details(serde_json::json!({ "stream_id": id }));
        }
        tracing::error!(error = %err, "store failure while serving a request");
        let kind = crate::metrics::store_error_kind(&err);
        let mut api = match err {
            StoreError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database is unreachable, so the request may not have been applied; retry \
                 it (publishing again with the same event ids is safe)",
            ),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down; try again",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "an internal error occurred; it has been logged",
            ),
        };
        api.store_error = Some(kind);
        api
    }
}

impl From<EventError> for ApiError {
    fn from(err: EventError) -> Self {
        let status = match err.code {
            "event_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let details = err.details.clone();
        let mut api = Self::new(status, err.code, err.message);
        api.details = details;
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let body = serde_json::json!({ "error": error });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        if let Some(kind) = self.store_error {
            response
                .extensions_mut()
                .insert(crate::metrics::StoreFailure(kind));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
