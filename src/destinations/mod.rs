//! Destinations: where a stream sends its events. A closed set, added in one place: each kind
//! has a configuration type (pure data, validated when a stream is created or updated) and a
//! runtime client that sends one delivery and says what the outcome means. When to try again
//! is not decided here: see `delivery::retry`.

pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::event::Event;
use crate::stream::{PayloadFormat, Stream};
use webhook::WebhookClient;
use webhook::signing::SigningKey;

/// A stream's destination, in the API's shape:
/// `{"type": "webhook", "configuration": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "type",
    content = "configuration",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Destination {
    Webhook(webhook::WebhookConfig),
}

/// The runtime clients of every destination kind, shared by the dispatcher and the API's
/// test route.
#[derive(Debug, Clone)]
pub struct Destinations {
    webhook: WebhookClient,
}

impl Destinations {
    pub fn new(webhook: WebhookClient) -> Destinations {
        Destinations { webhook }
    }

    /// One attempt: renders the event in the stream's payload format and sends it, signed
    /// with `keys`, as delivery `delivery_id`.
    pub async fn send(
        &self,
        stream: &Stream,
        keys: &[SigningKey],
        delivery_id: &str,
        event: &Event,
        now: Millis,
    ) -> AttemptReport {
        let (body, content_type) = match stream.payload_format {
            PayloadFormat::Cloudevents => (event.to_cloudevent(), "application/cloudevents+json"),
            PayloadFormat::Audit => (event.to_audit(), "application/json"),
        };
        match &stream.destination {
            Destination::Webhook(config) => {
                let message = webhook::Message {
                    id: delivery_id,
                    body,
                    content_type,
                    keys,
                    now,
                };
                self.webhook.send(config, message).await
            }
        }
    }
}

/// Operator rules that a destination's configuration must follow.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// Accept `http://` webhook endpoints (development only).
    pub allow_http: bool,
}

impl Destination {
    pub fn validate(&self, policy: &DestinationPolicy) -> Result<(), String> {
        match self {
            Destination::Webhook(config) => config.validate(policy),
        }
    }

    /// The configuration as the API shows it: every secret left out.
    pub fn public_view(&self) -> serde_json::Value {
        match self {
            Destination::Webhook(config) => serde_json::json!({
                "type": "webhook",
                "configuration": config.public_view(),
            }),
        }
    }
}

/// What one attempt's result means for its delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again; `after` is the receiver's own `Retry-After`, when it gave one.
    Retry {
        after: Option<Duration>,
    },
    /// The receiver refused it for good: no further attempts.
    GiveUp,
    /// The receiver asked never to be sent anything again (`410 Gone`).
    DisableStream,
}

/// The kind of failure when no HTTP answer came back, or a refusal before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Dns,
    Connect,
    Tls,
    Timeout,
    /// The SSRF guard refused the address.
    Blocked,
    /// The request could not be sent or the answer could not be read.
    Io,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Blocked => "blocked",
            ErrorKind::Io => "io",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Everything recorded about one attempt.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: Outcome,
    pub duration: Duration,
    pub response_status: Option<u16>,
    /// The first [`RESPONSE_EXCERPT_BYTES`] of the response body.
    pub response_body: Option<String>,
    pub error: Option<AttemptError>,
}

pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

impl AttemptReport {
    pub fn failed(kind: ErrorKind, message: impl Into<String>, duration: Duration) -> Self {
        Self {
            outcome: Outcome::Retry { after: None },
            duration,
            response_status: None,
            response_body: None,
            error: Some(AttemptError {
                kind,
                message: message.into(),
            }),
        }
    }
}
