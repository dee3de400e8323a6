//! The HTTP layer's limits on callers: how many requests run at once and for how long (load
//! shedding, answered before any work) and the per-token request rate. The operations' own
//! limits (quotas, test sends, destination checks) are in `crate::service::limits`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::ApiError;
use crate::clock::Millis;
use crate::config::Config;
use crate::service::Caller;
pub use crate::service::limits::{Rate, RateLimiter};

/// What the HTTP layer limits, built once from the configuration.
pub struct ApiLimits {
    pub admission: Admission,
    /// Per token id; `None` when off.
    pub token_rate: Option<RateLimiter>,
    pub rate_limit_platform_tokens: bool,
}

impl ApiLimits {
    pub fn from_config(config: &Config) -> ApiLimits {
        ApiLimits {
            admission: Admission {
                slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
                timeout: config.request_timeout(),
            },
            token_rate: (config.token_rate_limit_per_second > 0).then(|| {
                RateLimiter::new(Rate::new(
                    config.token_rate_limit_burst,
                    f64::from(config.token_rate_limit_per_second) / 1000.0,
                ))
            }),
            rate_limit_platform_tokens: config.rate_limit_platform_tokens,
        }
    }

    /// Takes one request from the caller's allowance (its `rate_key`), an API request or a
    /// console page alike; `Err` holds the seconds until one is free. Platform tokens are
    /// exempt unless `rate_limit_platform_tokens` is set.
    pub fn take_request(&self, caller: &Caller, now: Millis) -> Result<(), u64> {
        match &self.token_rate {
            Some(rate) if caller.token.tenant_id.is_some() || self.rate_limit_platform_tokens => {
                rate.take(&caller.rate_key, now)
            }
            _ => Ok(()),
        }
    }
}

/// What a caller over its request allowance is told.
pub const TOKEN_RATE_REFUSAL: &str = "this token has made more requests than it may \
     (token_rate_limit_per_second, token_rate_limit_burst)";

/// How many API requests run at once, and for how long.
#[derive(Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

/// Middleware: refuses a request at once when every slot is taken (queueing would only make
/// every caller wait longer), and answers one that outlives the timeout. Health checks pass
/// unlimited: an orchestrator must not restart a node for being busy.
pub async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let Ok(_slot) = admission.slots.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is serving as many requests as it may at once (max_concurrent_requests); \
             retry after the time in Retry-After",
        )
        .with_retry_after(1)
        .into_response();
    };
    match tokio::time::timeout(admission.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request took longer than {} s (request_timeout_seconds) and was abandoned; \
                 it may have been applied: retry it (publishing again with the same event ids \
                 is safe)",
                admission.timeout.as_secs()
            ),
        )
        .with_retry_after(1)
        .into_response(),
    }
}

/// The 429 for an exhausted bucket; `what` names the limit and the key that sets it.
pub fn rate_limited(what: &'static str, retry_after: u64) -> ApiError {
    crate::service::Error::RateLimited { what, retry_after }.into()
}
