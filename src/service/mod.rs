//! The operations behind the HTTP API, apart from HTTP: what a caller may do to streams,
//! deliveries, events, event types, tenants and tokens, one module per noun. Each function
//! takes an authenticated [`Caller`] and plain input (the values a JSON body or a form was
//! read into), checks the caller's scope and tenant, validates the input into domain types,
//! applies quotas, rate limits and uniqueness, calls the store, and wakes what a write
//! concerns (the dispatcher, the event log's readers, the token cache); it returns domain
//! values or an [`Error`]. `api` reads requests (bodies, query strings, headers, cursors,
//! content types), calls these, maps the errors to its error bodies and shapes the answers;
//! any other front end calls the same functions, so the rules live once.

mod caller;
pub mod console_links;
pub mod console_sessions;
pub mod deliveries;
mod error;
pub mod event_types;
pub mod events;
pub mod limits;
pub mod listen;
pub mod log;
pub mod stats;
pub mod streams;
pub mod tenants;
pub mod tokens;

use std::sync::Arc;

pub use caller::{Caller, DEFAULT_TENANT, Scope, TokenCache, TokenWatch};
pub use error::Error;

use crate::catalog::registry::Registry;
use crate::clock::{Clock, Millis};
use crate::delivery::Signal;
use crate::destinations::{DestinationPolicy, Destinations};
use crate::metrics::Metrics;
use crate::store::Store;

/// What the operations reach: the store and the parts around it. Built once at start.
#[derive(Clone)]
pub struct Service {
    pub store: Arc<dyn Store>,
    pub destinations: Destinations,
    pub tokens: Arc<TokenCache>,
    pub catalogs: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    pub signal: Arc<Signal>,
    pub destination_policy: DestinationPolicy,
    pub secret_rotation_grace_ms: i64,
    /// How long a delivery leased at publish stays leased (the dispatcher's lease); `None`
    /// when publishes leave new deliveries to be claimed (a node that does not deliver).
    pub delivery_lease_ms: Option<i64>,
    /// This node runs a dispatcher (role `all` or `worker`).
    pub delivers: bool,
    pub metrics: Arc<Metrics>,
    /// Wakes the event log's readers (`GET /v1/events/stream`) and counts them.
    pub log_signal: Arc<log::LogSignal>,
    /// What one tenant may create.
    pub quotas: limits::Quotas,
    /// Rates of the operations that reach outside Herald at once: test sends and
    /// destination checks.
    pub rates: Arc<limits::Rates>,
}

/// Runs `work` to its end even if its caller is dropped (the client went away, the request
/// timed out): a bulk write goes to the store in chunks, and it and what must follow it
/// (waking the dispatcher) are not left half-done.
pub(crate) async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        // A panic stays a panic, for whoever answers the caller to handle.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Parses an RFC 3339 time given as `field`.
pub fn parse_time(field: &str, value: &str) -> Result<Millis, Error> {
    crate::event::parse_time(value).ok_or_else(|| {
        Error::Invalid(format!(
            "`{field}` must be an RFC 3339 time such as 2025-01-29T18:08:43Z, got `{value}`"
        ))
    })
}

/// An optional time given as `field`.
fn parse_optional_time(field: &str, value: Option<&str>) -> Result<Option<Millis>, Error> {
    value.map(|v| parse_time(field, v)).transpose()
}
