//! The one error type of the HTTP API. Every error answers with a status and the body
//! `{"error": {"code": "...", "message": "...", "details": {...}}}`; `code` is stable for
//! machines, `message` is for people, `details` (when present) holds specifics. Internal
//! failures answer an opaque 500 and the cause goes to the log only. The operations' errors
//! (`crate::service::Error`) keep their message; here each case gets its status and code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::event::EventError;
use crate::service;
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
        if let StoreError::NameTaken(id) = err {
            // The caller's mistake, not the store's: no failure to log or count.
            return service::Error::NameTaken(id).into();
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

impl From<service::Error> for ApiError {
    fn from(err: service::Error) -> Self {
        use service::Error as E;
        let message = err.to_string();
        match err {
            E::Store(err) => err.into(),
            E::Event(err) => err.into(),
            E::Invalid(_) => Self::invalid(message),
            E::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            E::MissingScope(_) | E::Forbidden(_) => {
                Self::new(StatusCode::FORBIDDEN, "insufficient_scope", message)
            }
            E::WrongTenant => Self::new(StatusCode::FORBIDDEN, "wrong_tenant", message),
            E::UnknownTenant(_) => Self::new(StatusCode::NOT_FOUND, "unknown_tenant", message),
            E::QuotaExceeded { limit, setting, .. } => {
                Self::new(StatusCode::FORBIDDEN, "quota_exceeded", message)
                    .with_details(serde_json::json!({ "limit": limit, "setting": setting }))
            }
            E::RateLimited { retry_after, .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .with_retry_after(retry_after)
            }
            E::DestinationChecksLocked => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "destination_checks_locked",
                message,
            ),
            E::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            E::NameTaken(id) => Self::new(StatusCode::CONFLICT, "conflict", message)
                .with_details(serde_json::json!({ "stream_id": id })),
            E::StreamDisabled => Self::new(StatusCode::CONFLICT, "stream_disabled", message),
            E::DefaultTenant => Self::new(StatusCode::CONFLICT, "default_tenant", message),
            E::NoStreamSecret(_) => Self::bad_request("no_stream_secret", message),
            E::UnknownEventType(_) => Self::bad_request("unknown_event_type", message),
            E::InvalidData { error, .. } => Self::bad_request("invalid_data", message)
                .with_details(serde_json::json!({ "path": error.path })),
            E::DestinationUnavailable(_) => Self::bad_request("destination_unavailable", message),
            E::ListenSessionLimit => {
                Self::new(StatusCode::CONFLICT, "listen_session_limit", message)
            }
            E::ListenUnavailable => Self::new(StatusCode::CONFLICT, "listen_unavailable", message),
            E::NodeReadersFull => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_readers", message)
                    .with_retry_after(5)
            }
            E::TenantReadersFull => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_readers", message)
                    .with_retry_after(5)
            }
            E::Internal(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
            }
        }
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
