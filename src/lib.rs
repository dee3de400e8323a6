//! Herald: a self-hosted event streaming service. A platform publishes its audit and lifecycle
//! events; each tenant's event streams subscribe to event types and get every matching event
//! delivered at least once to their destination, signed, retried and recorded.
//!
//! # Layout
//! - [`app`]: builds the parts from the configuration and runs them until shutdown.
//! - [`cli`]: the client commands (`herald streams`, `publish`, `deliveries`, ...) that drive
//!   a server through its API.
//! - [`config`]: the layered configuration (embedded defaults, file, environment, flags).
//! - [`api`]: the HTTP API, one module per resource, and its error type.
//! - [`console`]: the web console at `/`: sign-in sessions, CSRF-checked forms, pages.
//! - [`service`]: the operations the API (and any other front end) calls, one module per
//!   noun: scope and tenant checks, validation, quotas and the other rules, then the store.
//! - [`event`]: CloudEvents parsing and validation; the payload shapes receivers get.
//! - [`catalog`]: the built-in event types and subscription patterns.
//! - [`stream`]: event streams: subscriptions, retry policy, content settings, validation.
//! - [`destinations`]: where streams deliver (webhook, EventBridge): each kind's config, its
//!   per-stream client, what an outcome means; the encoder they share.
//! - [`delivery`]: the dispatcher that leases due deliveries and hands them to each stream's
//!   client, one or a batch at a time, and the retry schedule.
//! - [`store`]: the storage interface, the embedded SQLite store (group commit) and the
//!   shared PostgreSQL store.
//! - [`server`]: the HTTP listener and its connection limits.
//! - [`net`]: the SSRF guard applied to every outbound connection.
//! - [`notices`]: Herald's own events (`herald.delivery.failed`, ...).
//! - [`retention`]: the hourly sweep of old events and response bodies.
//! - [`metrics`]: what `/metrics` serves, and the counters the other parts keep for it.
//! - [`trace`]: the W3C trace context every attempt carries, continuing its publish's trace.
//! - [`telemetry`]: where logs and spans go: stderr, and optionally an OTLP collector.
//! - [`crashpoint`]: where the crash-injection test makes a debug build die abruptly.
//! - [`secret`], [`ids`], [`clock`]: secrets at rest (and the per-stream secrets a
//!   destination kind keeps), identifiers, injectable time.

pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crashpoint;
pub mod delivery;
pub mod destinations;
pub mod event;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod notices;
pub mod retention;
pub mod secret;
pub mod server;
pub mod service;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod trace;

pub use app::App;
pub use config::Config;

/// An error and its causes on one line: drivers' own messages leave the cause out ("error
/// connecting to server" alone does not say that the connection was refused).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
