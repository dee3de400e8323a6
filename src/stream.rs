//! Event streams as configured by a tenant's admins: subscriptions, the destination, the retry
//! policy and the content settings. The types here can only be built by validating input, so a
//! stream that reaches the store or the dispatcher is known to be well formed. Streams use
//! `destinations`; destinations know nothing of streams.

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Catalog};
pub use crate::destinations::{ContentMode, PayloadFormat};
use crate::destinations::{Destination, DestinationPolicy, Encoding, StreamContext};
use crate::secret::StreamSecret;

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_SUBSCRIPTIONS: usize = 200;
/// Failed attempts in a row after which a stream is disabled, unless it says otherwise.
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 500;
/// How long a stream must fail without a success before it is disabled: three days, longer
/// than the default retry policy tries a delivery.
pub const DEFAULT_DISABLE_AFTER_FAILING_SECONDS: u64 = 3 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    Enabled,
    /// Nothing is sent and no new deliveries are made.
    Disabled,
    /// New deliveries are made and kept, but nothing is sent until the stream is enabled.
    Paused,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Enabled => "enabled",
            StreamStatus::Disabled => "disabled",
            StreamStatus::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(StreamStatus::Enabled),
            "disabled" => Some(StreamStatus::Disabled),
            "paused" => Some(StreamStatus::Paused),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub event_type: String,
}

/// When to try again. The default retries for about a day: 10 s, doubling, capped at 2 h,
/// 22 attempts in all. `{"max_attempts": 4, ...}` is "3 retries with exponential backoff".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub initial_interval_seconds: f64,
    pub multiplier: f64,
    pub max_interval_seconds: f64,
    /// Each delay is spread uniformly over ±`jitter` of itself (0 to 1).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 22,
            initial_interval_seconds: 10.0,
            multiplier: 2.0,
            max_interval_seconds: 7_200.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        let day = 86_400.0;
        if !(1..=100).contains(&self.max_attempts) {
            return Err("`retry_policy.max_attempts` must be between 1 and 100".into());
        }
        if !(0.0..=day).contains(&self.initial_interval_seconds) {
            return Err(
                "`retry_policy.initial_interval_seconds` must be between 0 and 86400".into(),
            );
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err("`retry_policy.multiplier` must be between 1 and 10".into());
        }
        if !(self.initial_interval_seconds..=7.0 * day).contains(&self.max_interval_seconds) {
            return Err(
                "`retry_policy.max_interval_seconds` must be at least the initial interval and at most 604800"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("`retry_policy.jitter` must be between 0 and 1".into());
        }
        Ok(())
    }
}

/// A stream's full definition, secrets included. Never serialised to an API response as is:
/// see `api::streams` for the public view.
#[derive(Debug, Clone)]
pub struct Stream {
    pub tenant_id: String,
    pub id: String,
    pub name: String,
    pub status: StreamStatus,
    /// Why the stream is disabled, when Herald disabled it (for example a `410 Gone`).
    pub status_reason: Option<String>,
    pub subscriptions: Vec<Subscription>,
    pub destination: Destination,
    pub payload_format: PayloadFormat,
    /// `None`: the destination kind's default.
    pub content_mode: Option<ContentMode>,
    pub retry_policy: RetryPolicy,
    /// Disable the stream after this many failed attempts in a row; 0 never does.
    pub max_consecutive_failures: u32,
    /// ... and only once it has failed continuously for this long (0: the count alone
    /// decides), so a receiver's deploy or an outage of hours never needs an operator.
    pub disable_after_failing_seconds: u64,
    pub created_at: i64,
    pub updated_at: i64,
    /// A temporary stream (a `herald listen` session's) is deleted once past this.
    pub expires_at: Option<i64>,
}

impl Stream {
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.subscriptions
            .iter()
            .any(|s| catalog::pattern_matches(&s.event_type, event_type))
    }

    /// What goes on the wire, resolved against the destination kind's default.
    pub fn encoding(&self) -> Encoding {
        self.destination
            .encoding(self.payload_format, self.content_mode)
    }

    /// What its destination's client is built from beside the configuration.
    pub fn client_context<'a>(&'a self, secrets: &'a [StreamSecret]) -> StreamContext<'a> {
        StreamContext {
            tenant_id: &self.tenant_id,
            stream_id: &self.id,
            encoding: self.encoding(),
            secrets,
        }
    }
}

/// Checks everything a caller can set on a stream.
pub fn validate(
    stream: &Stream,
    catalog: &Catalog,
    policy: &DestinationPolicy,
) -> Result<(), String> {
    let name = &stream.name;
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("`name` must be 1 to {MAX_NAME_LEN} characters"));
    }
    validate_subscriptions(&stream.subscriptions, catalog)?;
    stream.destination.validate(policy)?;
    stream.encoding().validate(
        stream.destination.kind(),
        stream.destination.content_modes(),
    )?;
    stream.retry_policy.validate()
}

/// Checks a stream's subscriptions against the tenant's catalog.
pub fn validate_subscriptions(
    subscriptions: &[Subscription],
    catalog: &Catalog,
) -> Result<(), String> {
    if subscriptions.is_empty() || subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(format!(
            "`subscriptions` must hold 1 to {MAX_SUBSCRIPTIONS} entries such as {{\"event_type\": \"user.created\"}}"
        ));
    }
    for s in subscriptions {
        if !catalog::is_valid_pattern(&s.event_type) {
            return Err(format!(
                "subscription `{}` is not an event type, a prefix wildcard such as `user.*`, or `*`",
                s.event_type
            ));
        }
        if !catalog.selects_any(&s.event_type) {
            return Err(format!(
                "subscription `{}` selects no event type in the catalog (GET /v1/event-types lists them)",
                s.event_type
            ));
        }
    }
    Ok(())
}
