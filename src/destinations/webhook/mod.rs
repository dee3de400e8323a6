//! The `webhook` destination: an HTTP POST of the event, signed per Standard Webhooks, with
//! the stream's configured authorization. Any 2xx is success; the receiver's status decides
//! whether to retry, give up, or disable the stream. The signing keys are the webhook's own:
//! its client parses the stream's secrets into keys when it is built.

pub mod signing;

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::http::{self, Egress};
use super::{
    DestinationPolicy, Destinations, Encoding, Message, Outcome, Report, ShownHeader, ShownRequest,
    StreamContext,
};
use crate::clock::Millis;
use crate::event::format_time;
use crate::secret::Secret;
use signing::SigningKey;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub webhook_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_authorization: Option<WebhookAuthorization>,
    /// A `whsec_` signing secret to use instead of a generated one. Accepted on create only;
    /// the stream's secrets are kept apart from its configuration.
    #[serde(default, skip_serializing)]
    pub signing_secret: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookAuthorization {
    Bearer {
        token: Secret,
    },
    Basic {
        username: String,
        password: Secret,
    },
    CustomHeader {
        header_name: String,
        header_value: Secret,
    },
}

/// Headers Herald sets itself; a custom authorization header may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "connection",
];

impl WebhookConfig {
    pub fn new(
        webhook_endpoint: String,
        webhook_authorization: Option<WebhookAuthorization>,
    ) -> Self {
        WebhookConfig {
            webhook_endpoint,
            webhook_authorization,
            signing_secret: None,
        }
    }

    pub fn validate(&self, policy: &DestinationPolicy) -> Result<(), String> {
        http::validate_url(
            "webhook_endpoint",
            &self.webhook_endpoint,
            policy.allow_http,
        )
        .map_err(|e| {
            if e.ends_with("credentials") {
                format!("{e}; use `webhook_authorization` with method `basic`")
            } else {
                e
            }
        })?;
        if let Some(auth) = &self.webhook_authorization {
            auth.validate()?;
        }
        if let Some(secret) = &self.signing_secret {
            SigningKey::parse(secret).map_err(|e| format!("`signing_secret`: {e}"))?;
        }
        Ok(())
    }

    /// The signing secret given on create, checked; the store keeps it apart.
    pub fn take_signing_secret(&mut self) -> Result<Option<Secret>, String> {
        let Some(secret) = self.signing_secret.take() else {
            return Ok(None);
        };
        SigningKey::parse(&secret)
            .map_err(|e| format!("`destination.configuration.signing_secret`: {e}"))?;
        Ok(Some(secret))
    }

    pub fn public_view(&self) -> serde_json::Value {
        let mut view = serde_json::json!({ "webhook_endpoint": self.webhook_endpoint });
        if let Some(auth) = &self.webhook_authorization {
            view["webhook_authorization"] = match auth {
                WebhookAuthorization::Bearer { .. } => serde_json::json!({ "method": "bearer" }),
                WebhookAuthorization::Basic { username, .. } => {
                    serde_json::json!({ "method": "basic", "username": username })
                }
                WebhookAuthorization::CustomHeader { header_name, .. } => {
                    serde_json::json!({ "method": "custom_header", "header_name": header_name })
                }
            };
        }
        view
    }
}

impl WebhookAuthorization {
    fn validate(&self) -> Result<(), String> {
        let non_empty = |field: &str, value: &str| {
            if value.is_empty() || value.len() > 4096 {
                Err(format!(
                    "`webhook_authorization.{field}` must be 1 to 4096 characters"
                ))
            } else if HeaderValue::from_str(value).is_err() {
                Err(format!(
                    "`webhook_authorization.{field}` holds characters not allowed in an HTTP header"
                ))
            } else {
                Ok(())
            }
        };
        match self {
            WebhookAuthorization::Bearer { token } => non_empty("token", token.expose()),
            WebhookAuthorization::Basic { username, password } => {
                if username.contains(':') {
                    return Err("`webhook_authorization.username` must not contain `:`".into());
                }
                non_empty("username", username)?;
                non_empty("password", password.expose())
            }
            WebhookAuthorization::CustomHeader {
                header_name,
                header_value,
            } => {
                let name = HeaderName::from_bytes(header_name.as_bytes()).map_err(|_| {
                    format!("`webhook_authorization.header_name` `{header_name}` is not a valid HTTP header name")
                })?;
                // `ce-` headers carry CloudEvents attributes in binary mode.
                if RESERVED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("ce-") {
                    return Err(format!(
                        "`webhook_authorization.header_name` `{header_name}` is set by Herald itself"
                    ));
                }
                non_empty("header_value", header_value.expose())
            }
        }
    }

    /// The header this authorization sends as a person is shown it: its secret masked (a
    /// basic credential keeps its username).
    fn masked_header(&self) -> ShownHeader {
        let (name, value) = match self {
            WebhookAuthorization::Bearer { .. } => {
                (AUTHORIZATION.to_string(), format!("Bearer {MASK}"))
            }
            WebhookAuthorization::Basic { username, .. } => (
                AUTHORIZATION.to_string(),
                format!("Basic base64({username}:{MASK})"),
            ),
            WebhookAuthorization::CustomHeader { header_name, .. } => {
                (header_name.to_ascii_lowercase(), MASK.to_string())
            }
        };
        ShownHeader {
            name,
            value,
            masked: true,
        }
    }

    /// The header this authorization sends, marked sensitive so it is never logged.
    fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        use base64::Engine as _;
        let (name, value) = match self {
            WebhookAuthorization::Bearer { token } => {
                (AUTHORIZATION, format!("Bearer {}", token.expose()))
            }
            WebhookAuthorization::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                (AUTHORIZATION, format!("Basic {encoded}"))
            }
            WebhookAuthorization::CustomHeader {
                header_name,
                header_value,
            } => (
                HeaderName::from_bytes(header_name.as_bytes()).ok()?,
                header_value.expose().to_string(),
            ),
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }
}

/// A webhook stream's client: its endpoint, authorization and signing keys, ready to send.
#[derive(Debug)]
pub struct WebhookClient {
    egress: Egress,
    url: Url,
    authorization: Option<(HeaderName, HeaderValue)>,
    envelope: Envelope,
}

/// What makes a delivery a Standard Webhooks request whatever carries it: the body in the
/// stream's encoding and the headers (`webhook-id`, `-timestamp`, `-signature`, the
/// CloudEvents and trace headers). `herald listen` forwards the same requests.
#[derive(Debug)]
pub struct Envelope {
    /// Every key still valid when the client was built, with when it stops signing.
    keys: Vec<(SigningKey, Option<Millis>)>,
    encoding: Encoding,
}

impl Envelope {
    pub fn new(stream: &StreamContext<'_>) -> Envelope {
        Envelope {
            keys: stream
                .secrets
                .iter()
                .filter_map(|s| SigningKey::parse(&s.secret).ok().map(|k| (k, s.expires_at)))
                .collect(),
            encoding: stream.encoding,
        }
    }

    /// The request's headers and body for an attempt made at `now`.
    pub fn request(&self, message: &Message<'_>, now: Millis) -> (HeaderMap, Vec<u8>) {
        let encoded = self.encoding.encode(message.event);
        let timestamp = now.div_euclid(1000);
        let mut headers = HeaderMap::with_capacity(8 + encoded.attributes.len());
        if let Ok(content_type) = HeaderValue::from_str(&encoded.content_type) {
            headers.insert(CONTENT_TYPE, content_type);
        }
        if let Ok(id) = HeaderValue::from_str(message.id) {
            headers.insert("webhook-id", id);
        }
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        let signature =
            signing::signature_header(self.keys_at(now), message.id, timestamp, &encoded.body);
        if let Ok(value) = HeaderValue::from_str(&signature) {
            headers.insert("webhook-signature", value);
        }
        // CloudEvents HTTP binary mode: each attribute as a `ce-` header, percent-encoded.
        for (name, value) in &encoded.attributes {
            let name = HeaderName::from_bytes(format!("ce-{name}").as_bytes());
            let value = HeaderValue::from_str(
                &percent_encoding::utf8_percent_encode(value, CE_HEADER).to_string(),
            );
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.insert(name, value);
            }
        }
        // The attempt as a span of the publish's trace (see `crate::trace`): the exported
        // attempt span itself when spans are exported, else a span id of its own.
        let parent = crate::trace::TraceParent::of_event(message.tenant_id, message.event);
        let traceparent = crate::telemetry::current_traceparent(&parent)
            .map_or_else(|| parent.child(), |own| own.to_string());
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            headers.insert(crate::trace::TRACEPARENT, value);
        }
        if let Some(state) = message.event.extensions.get(crate::trace::TRACESTATE)
            && let Some(value) = state.as_str().and_then(|s| HeaderValue::from_str(s).ok())
        {
            headers.insert(crate::trace::TRACESTATE, value);
        }
        (headers, encoded.body)
    }

    /// The request's headers and body for an attempt made at `at`, as a person is shown
    /// them (see [`ShownRequest`]). Built by [`Envelope::request`], so they are what was sent,
    /// but for `traceparent`'s span id, new on each attempt. Without a key valid at `at`
    /// (it has expired since, and only the keys still valid are kept), the signature is
    /// not shown rather than shown wrong.
    pub fn shown(&self, message: &Message<'_>, at: Millis) -> (Vec<ShownHeader>, Vec<u8>) {
        let (headers, body) = self.request(message, at);
        let signed = self.keys_at(at).next().is_some();
        let mut shown: Vec<ShownHeader> = headers
            .iter()
            .map(|(name, value)| {
                let name = name.as_str().to_string();
                if name == "webhook-signature" && !signed {
                    return ShownHeader {
                        name,
                        value: "(signed with a secret that has expired since)".into(),
                        masked: true,
                    };
                }
                ShownHeader {
                    name,
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    masked: false,
                }
            })
            .collect();
        for (name, value) in [
            ("content-length", body.len().to_string()),
            ("user-agent", http::USER_AGENT.to_string()),
        ] {
            shown.push(ShownHeader {
                name: name.into(),
                value,
                masked: false,
            });
        }
        (shown, body)
    }

    fn keys_at(&self, now: Millis) -> impl Iterator<Item = &SigningKey> {
        self.keys
            .iter()
            .filter(move |(_, expires)| expires.is_none_or(|at| at > now))
            .map(|(key, _)| key)
    }
}

/// What stands for a secret in a request shown to a person.
pub const MASK: &str = "••••••••";

/// The request a webhook attempt made at `at` sent, its authorization masked.
pub fn shown_request(
    config: &WebhookConfig,
    stream: &StreamContext<'_>,
    message: &Message<'_>,
    at: Millis,
) -> ShownRequest {
    let (mut headers, body) = Envelope::new(stream).shown(message, at);
    headers.extend(
        config
            .webhook_authorization
            .as_ref()
            .map(WebhookAuthorization::masked_header),
    );
    ShownRequest {
        method: "POST",
        url: config.webhook_endpoint.clone(),
        headers,
        body,
    }
}

impl WebhookClient {
    pub fn build(
        config: &WebhookConfig,
        stream: &StreamContext<'_>,
        shared: &Destinations,
    ) -> Result<WebhookClient, String> {
        let url = Url::parse(&config.webhook_endpoint)
            .map_err(|e| format!("`webhook_endpoint` is not a valid URL: {e}"))?;
        Ok(WebhookClient {
            egress: shared.egress.clone(),
            url,
            authorization: config
                .webhook_authorization
                .as_ref()
                .and_then(WebhookAuthorization::header),
            envelope: Envelope::new(stream),
        })
    }

    /// Webhooks take one event per request: each message is its own POST.
    pub async fn send(&self, batch: &[Message<'_>], now: Millis) -> Vec<Report> {
        let mut reports = Vec::with_capacity(batch.len());
        for message in batch {
            reports.push(self.post(message, now).await);
        }
        reports
    }

    async fn post(&self, message: &Message<'_>, now: Millis) -> Report {
        let started = Instant::now();
        if let Err(blocked) = self.egress.check_destination(&self.url).await {
            return Report::failed(blocked.kind, blocked.message, started.elapsed());
        }
        let (mut headers, body) = self.envelope.request(message, now);
        if let Some((name, value)) = &self.authorization {
            headers.insert(name.clone(), value.clone());
        }

        let result = self
            .egress
            .http
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                let error = http::describe(&err);
                return Report::failed(error.kind, error.message, started.elapsed());
            }
        };
        let status = response.status();
        let retry_after = http::retry_after(&response, now);
        let (body, body_error) = http::read_excerpt(response).await;
        Report {
            outcome: classify(status, retry_after, now),
            duration: started.elapsed(),
            response_status: Some(status.as_u16()),
            response_body: Some(body),
            error: body_error,
            detail: None,
        }
    }
}

/// What the CloudEvents HTTP binding percent-encodes in a header value: space, `"`, `%` and
/// everything outside printable ASCII (`percent-encoding` always encodes the last).
const CE_HEADER: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'%');

/// What a status code means. Any 2xx is success; `410 Gone` disables the stream; 408, 409,
/// 425, 429 and every 5xx are worth retrying; any other 4xx is permanent. A 3xx is a failure
/// (redirects are never followed) and is retried.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, now: Millis) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        410 => Outcome::DisableStream {
            reason: format!(
                "the endpoint answered 410 Gone at {}; re-enable the stream to resume",
                format_time(now)
            ),
        },
        429 | 503 => Outcome::Retry { after: retry_after },
        408 | 409 | 425 => Outcome::Retry { after: None },
        400..=499 => Outcome::GiveUp,
        _ => Outcome::Retry { after: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_per_the_retry_rules() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), None, 0);
        assert_eq!(c(200), Outcome::Delivered);
        assert_eq!(c(204), Outcome::Delivered);
        assert!(matches!(c(410), Outcome::DisableStream { reason } if reason.contains("410 Gone")));
        for code in [408, 409, 425, 429, 500, 502, 503, 504, 301, 302] {
            assert_eq!(c(code), Outcome::Retry { after: None }, "{code}");
        }
        for code in [400, 401, 403, 404, 405, 413, 422] {
            assert_eq!(c(code), Outcome::GiveUp, "{code}");
        }
        let after = Some(Duration::from_secs(30));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, after, 0),
            Outcome::Retry { after }
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, after, 0),
            Outcome::Retry { after }
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, after, 0),
            Outcome::Retry { after: None }
        );
    }

    #[test]
    fn endpoints_must_be_https_unless_allowed() {
        let config = |url: &str| WebhookConfig::new(url.into(), None);
        let strict = DestinationPolicy::default();
        let dev = DestinationPolicy {
            allow_http: true,
            ..DestinationPolicy::default()
        };
        assert!(config("https://example.com/hook").validate(&strict).is_ok());
        assert!(
            config("http://example.com/hook")
                .validate(&strict)
                .unwrap_err()
                .contains("https")
        );
        assert!(config("http://example.com/hook").validate(&dev).is_ok());
        assert!(config("ftp://example.com").validate(&dev).is_err());
        assert!(config("not a url").validate(&dev).is_err());
        assert!(config("https://u:p@example.com").validate(&dev).is_err());
    }

    #[test]
    fn a_shown_request_is_the_sent_one_with_every_credential_masked() {
        use crate::destinations::{ContentMode, PayloadFormat};
        use crate::secret::StreamSecret;
        let secrets = [StreamSecret {
            secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            created_at: 0,
            expires_at: None,
        }];
        let stream = StreamContext {
            tenant_id: "ten_a",
            stream_id: "est_a",
            encoding: Encoding {
                format: PayloadFormat::Cloudevents,
                mode: ContentMode::Binary,
            },
            secrets: &secrets,
        };
        let event = crate::event::Event {
            id: "evt_1".into(),
            source: "urn:test".into(),
            event_type: "user.created".into(),
            time: 1_000,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: serde_json::value::RawValue::from_string(r#"{"a":1}"#.into()).unwrap(),
            extensions: Default::default(),
        };
        let message = Message {
            id: "dlv_1",
            tenant_id: "ten_a",
            event: &event,
        };
        let (sent, sent_body) = Envelope::new(&stream).request(&message, 5_000);
        let cases = [
            (
                WebhookAuthorization::Bearer {
                    token: Secret::new("tok-hidden"),
                },
                "authorization",
                "Bearer ••••••••",
            ),
            (
                WebhookAuthorization::Basic {
                    username: "alice".into(),
                    password: Secret::new("pw-hidden"),
                },
                "authorization",
                "Basic base64(alice:••••••••)",
            ),
            (
                WebhookAuthorization::CustomHeader {
                    header_name: "X-Api-Key".into(),
                    header_value: Secret::new("key-hidden"),
                },
                "x-api-key",
                "••••••••",
            ),
        ];
        for (auth, name, masked) in cases {
            let config = WebhookConfig::new("https://example.com/hook".into(), Some(auth));
            let shown = shown_request(&config, &stream, &message, 5_000);
            assert_eq!(
                (shown.method, shown.url.as_str()),
                ("POST", "https://example.com/hook")
            );
            assert_eq!(shown.body, sent_body);
            let value = |name: &str| {
                shown
                    .headers
                    .iter()
                    .find(|h| h.name == name)
                    .unwrap_or_else(|| panic!("no {name}"))
            };
            assert_eq!(value(name).value, masked);
            assert!(value(name).masked);
            assert!(!format!("{:?}", shown.headers).contains("hidden"));
            // Every header the envelope sends, as sent; the span id aside.
            for (header, sent_value) in &sent {
                if header != crate::trace::TRACEPARENT {
                    assert_eq!(value(header.as_str()).value, sent_value.to_str().unwrap());
                }
            }
            assert_eq!(value("ce-type").value, "user.created");
            assert_eq!(value("content-length").value, sent_body.len().to_string());
        }
    }

    #[test]
    fn custom_headers_may_not_replace_herald_headers() {
        let auth = |name: &str| WebhookAuthorization::CustomHeader {
            header_name: name.into(),
            header_value: Secret::new("v"),
        };
        assert!(auth("x-api-key").validate().is_ok());
        assert!(auth("Webhook-Signature").validate().is_err());
        assert!(auth("ce-type").validate().is_err());
        assert!(auth("bad header").validate().is_err());
    }
}
