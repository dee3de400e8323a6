//! Destinations: where a stream sends its events. A closed set, added in one place (the
//! [`Destination`] enum, its [`Client`] twin and the `match`es below); each kind lives in a
//! folder of its own and has:
//!
//! - a **configuration** (pure serde data, validated when a stream is created or updated;
//!   its credentials write-only, sealed at rest by the store with the rest of it);
//! - a **client built once per stream** ([`Destination::build`], again whenever the stream or
//!   its secrets change) that owns what is specific to its kind: a webhook's parsed URL,
//!   authorization header and signing keys; an AWS signer and credentials;
//! - a **send** that takes one or several due deliveries of its stream ([`Client::max_batch`]
//!   says how many at once) and returns one [`Report`] per delivery, in order: an
//!   [`Outcome`] from the shared vocabulary, plus what the attempt record keeps (a status and
//!   body excerpt where the transport has them, an error, a kind-specific `detail`);
//! - a **health check** ([`Client::health_check`]) that `POST /v1/event-streams/{id}/test`
//!   uses: the sample event through the real destination, and what came back.
//!
//! What goes on the wire is chosen by two stream settings shared by every kind (see
//! [`encoding`]). When to try again is not decided here: see `delivery::retry`. This module
//! knows nothing of streams, the store or the dispatcher; they know it.

pub mod aws;
pub mod encoding;
pub mod eventbridge;
pub mod http;
pub mod listen;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Millis;
use crate::event::Event;
use crate::net::ssrf::AddressPolicy;
use crate::secret::{Secret, StreamSecret};
pub use encoding::{ContentMode, Encoding, PayloadFormat};

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
    Eventbridge(eventbridge::EventBridgeConfig),
    /// A `herald listen` session's stream, made by `POST /v1/listen-sessions` only.
    Listen(listen::ListenConfig),
}

/// Operator rules that a destination's configuration must follow.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// Accept `http://` endpoints (development only).
    pub allow_http: bool,
    /// Let AWS destinations without credentials of their own use the server's (environment
    /// variables, the shared credentials file). Off by default: it grants every tenant what
    /// that identity can reach.
    pub aws_server_credentials: bool,
}

impl Destination {
    /// The kind's name, as in `destination.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Webhook(_) => "webhook",
            Destination::Eventbridge(_) => "eventbridge",
            Destination::Listen(_) => "listen",
        }
    }

    pub fn validate(&self, policy: &DestinationPolicy) -> Result<(), String> {
        match self {
            Destination::Webhook(config) => config.validate(policy),
            Destination::Eventbridge(config) => config.validate(policy),
            Destination::Listen(_) => Err(
                "`listen` destinations are made by `herald listen` (`POST /v1/listen-sessions`), not set on a stream"
                    .into(),
            ),
        }
    }

    /// Where the destination sends, in one line: a webhook's URL, an event bus's ARN, the
    /// URL a `herald listen` session forwards to.
    pub fn target(&self) -> String {
        match self {
            Destination::Webhook(config) => config.webhook_endpoint.clone(),
            Destination::Eventbridge(config) => format!(
                "arn:aws:events:{}:{}:event-bus/{}",
                config.aws_region, config.aws_account_id, config.event_bus_name
            ),
            Destination::Listen(config) => config.forward_to.clone(),
        }
    }

    /// The configuration as the API shows it: every secret left out.
    pub fn public_view(&self) -> Value {
        let configuration = match self {
            Destination::Webhook(config) => config.public_view(),
            Destination::Eventbridge(config) => config.public_view(),
            Destination::Listen(config) => config.public_view(),
        };
        serde_json::json!({ "type": self.kind(), "configuration": configuration })
    }

    /// The CloudEvents content modes this kind can send, its default first.
    pub fn content_modes(&self) -> &'static [ContentMode] {
        match self {
            Destination::Webhook(_) | Destination::Listen(_) => {
                &[ContentMode::Structured, ContentMode::Binary]
            }
            Destination::Eventbridge(_) => &[ContentMode::Structured],
        }
    }

    /// The stream's content settings, with this kind's default mode when none is set.
    pub fn encoding(&self, format: PayloadFormat, mode: Option<ContentMode>) -> Encoding {
        Encoding {
            format,
            mode: mode.unwrap_or(self.content_modes()[0]),
        }
    }

    /// Whether this kind keeps a rotating [`StreamSecret`] (a webhook's signing secret).
    pub fn uses_stream_secret(&self) -> bool {
        matches!(self, Destination::Webhook(_) | Destination::Listen(_))
    }

    /// Takes out of the configuration the stream secret a caller chose on create, checked.
    /// The store keeps stream secrets apart from the configuration.
    pub fn take_stream_secret(&mut self) -> Result<Option<Secret>, String> {
        match self {
            Destination::Webhook(config) => config.take_signing_secret(),
            Destination::Eventbridge(_) | Destination::Listen(_) => Ok(None),
        }
    }

    /// Checks a stream secret for this kind (a rotation's chosen secret).
    pub fn check_stream_secret(&self, secret: &Secret) -> Result<(), String> {
        match self {
            Destination::Webhook(_) | Destination::Listen(_) => {
                webhook::signing::SigningKey::parse(secret).map(|_| ())
            }
            Destination::Eventbridge(_) => {
                Err("`eventbridge` destinations keep no stream secret".into())
            }
        }
    }

    /// A new stream secret of this kind's shape.
    pub fn new_stream_secret(&self) -> Secret {
        Secret::new(crate::ids::signing_secret())
    }

    /// The request an attempt made at `at` sent, rebuilt for a person to read (see
    /// [`ShownRequest`]); `None` for a kind that sends no request of one event of its own
    /// (EventBridge batches entries into a signed AWS call).
    pub fn shown_request(
        &self,
        stream: &StreamContext<'_>,
        message: &Message<'_>,
        at: Millis,
    ) -> Option<ShownRequest> {
        match self {
            Destination::Webhook(config) => {
                Some(webhook::shown_request(config, stream, message, at))
            }
            // `herald listen` posts the same request to its `forward_to`.
            Destination::Listen(config) => {
                let (headers, body) = webhook::Envelope::new(stream).shown(message, at);
                Some(ShownRequest {
                    method: "POST",
                    url: config.forward_to.clone(),
                    headers,
                    body,
                })
            }
            Destination::Eventbridge(_) => None,
        }
    }

    /// Builds the stream's runtime client.
    pub fn build(
        &self,
        stream: StreamContext<'_>,
        shared: &Destinations,
    ) -> Result<Client, String> {
        Ok(match self {
            Destination::Webhook(config) => {
                Client::Webhook(webhook::WebhookClient::build(config, &stream, shared)?)
            }
            Destination::Eventbridge(config) => Client::Eventbridge(
                eventbridge::EventBridgeClient::build(config, &stream, shared)?,
            ),
            Destination::Listen(_) => Client::Listen(listen::ListenClient::build(&stream, shared)),
        })
    }
}

/// What a client is built from beside its configuration.
#[derive(Debug, Clone, Copy)]
pub struct StreamContext<'a> {
    pub tenant_id: &'a str,
    pub stream_id: &'a str,
    pub encoding: Encoding,
    /// The stream's secrets still valid, newest first.
    pub secrets: &'a [StreamSecret],
}

/// What every client of every stream shares: the guarded outbound HTTP client, the
/// operator's rules, and the `herald listen` sessions connected to this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Destinations {
    pub egress: http::Egress,
    pub policy: DestinationPolicy,
    pub listeners: std::sync::Arc<listen::Listeners>,
}

impl Destinations {
    pub fn new(addresses: AddressPolicy, timeout: Duration, policy: DestinationPolicy) -> Self {
        Destinations {
            egress: http::Egress::new(addresses, timeout),
            policy,
            listeners: Default::default(),
        }
    }

    /// The same, with every request sent through the operator's proxy.
    pub fn through_proxy(
        addresses: AddressPolicy,
        timeout: Duration,
        policy: DestinationPolicy,
        proxy: &reqwest::Url,
    ) -> Self {
        Destinations {
            egress: http::Egress::through_proxy(addresses, timeout, proxy),
            policy,
            listeners: Default::default(),
        }
    }

    /// Whether this node sends a stream's deliveries: every node does, except for a listen
    /// session, which only the node its `herald listen` is connected to serves.
    pub fn sends_here(&self, stream_id: &str, destination: &Destination) -> bool {
        match destination {
            Destination::Listen(_) => self.listeners.is_connected(stream_id),
            _ => true,
        }
    }
}

/// A stream's runtime client.
#[derive(Debug)]
// Built once per stream and held behind an `Arc`: its size is not worth a box per variant.
#[allow(clippy::large_enum_variant)]
pub enum Client {
    Webhook(webhook::WebhookClient),
    Eventbridge(eventbridge::EventBridgeClient),
    Listen(listen::ListenClient),
}

/// An attempt's request as a person is shown it: rebuilt by the code that sends it, from the
/// event (whose encoding is deterministic) and the stream, so nothing is stored per attempt.
/// Every credential is masked; a signature is shown, as it reveals nothing of its key.
#[derive(Debug, Clone)]
pub struct ShownRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<ShownHeader>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownHeader {
    pub name: String,
    pub value: String,
    /// The value stands in for one that is not shown (a credential).
    pub masked: bool,
}

/// One due delivery handed to a client.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The delivery id: the same on every attempt, the receiver's idempotency key.
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub event: &'a Event,
}

impl Client {
    /// Most deliveries one [`Client::send`] takes; the dispatcher hands it no more.
    pub fn max_batch(&self) -> usize {
        match self {
            Client::Webhook(_) => 1,
            Client::Eventbridge(_) => eventbridge::MAX_ENTRIES,
            Client::Listen(_) => 1,
        }
    }

    /// Sends `batch` (at most [`Client::max_batch`] deliveries) as attempts made at `now`,
    /// and says what became of each: one report per message, in order.
    pub async fn send(&self, batch: &[Message<'_>], now: Millis) -> Vec<Report> {
        let reports = match self {
            Client::Webhook(client) => client.send(batch, now).await,
            Client::Eventbridge(client) => client.send(batch, now).await,
            Client::Listen(client) => client.send(batch, now).await,
        };
        debug_assert_eq!(reports.len(), batch.len());
        reports
    }

    /// Sends one sample event through the real destination now, for the `test` route.
    pub async fn health_check(&self, message: Message<'_>, now: Millis) -> Report {
        self.send(&[message], now).await.pop().unwrap_or_else(|| {
            Report::failed(
                ErrorKind::Io,
                "the destination returned no outcome",
                Duration::ZERO,
            )
        })
    }
}

/// What one attempt's result means for its delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again; `after` is the destination's own wait (`Retry-After`), when it gave one.
    Retry {
        after: Option<Duration>,
    },
    /// The destination refused it for good: no further attempts.
    GiveUp,
    /// The destination asked never to be sent anything again (a webhook's `410 Gone`); the
    /// reason is shown on the disabled stream.
    DisableStream {
        reason: String,
    },
    /// Nothing was sent: the destination could not take it now (a `herald listen` session
    /// whose connection just left). The delivery goes back unattempted, as if never claimed.
    NotSent,
}

/// The kind of failure when no answer came back, or a refusal before or after sending.
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
    /// The destination answered with an error it names (an AWS error code, in `detail`).
    Rejected,
    /// Credentials for the destination could not be had (an STS refusal, none configured).
    Credentials,
    /// The event is larger than the destination takes; it is never sent.
    TooLarge,
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
            ErrorKind::Rejected => "rejected",
            ErrorKind::Credentials => "credentials",
            ErrorKind::TooLarge => "too_large",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Everything recorded about one attempt of one delivery.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    pub duration: Duration,
    /// The status of the answer, where the transport has one (HTTP).
    pub response_status: Option<u16>,
    /// The first [`RESPONSE_EXCERPT_BYTES`] of the answer's body, where it has one.
    pub response_body: Option<String>,
    pub error: Option<AttemptError>,
    /// What only this kind knows, as a JSON object: an AWS error code and event id, a
    /// broker's acknowledgement. Shown as `detail` on the attempt.
    pub detail: Option<serde_json::Map<String, Value>>,
}

pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

impl Report {
    /// A failure worth retrying, with no answer to show.
    pub fn failed(kind: ErrorKind, message: impl Into<String>, duration: Duration) -> Self {
        Self::error(Outcome::Retry { after: None }, kind, message, duration)
    }

    pub fn error(
        outcome: Outcome,
        kind: ErrorKind,
        message: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Self {
            outcome,
            duration,
            response_status: None,
            response_body: None,
            error: Some(AttemptError {
                kind,
                message: message.into(),
            }),
            detail: None,
        }
    }
}
