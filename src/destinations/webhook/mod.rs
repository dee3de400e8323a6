//! The `webhook` destination: an HTTP POST of the event, signed per Standard Webhooks, with
//! the stream's configured authorization. Any 2xx is success; the receiver's status decides
//! whether to retry, give up, or disable the stream.

pub mod signing;

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{
    AttemptError, AttemptReport, DestinationPolicy, ErrorKind, Outcome, RESPONSE_EXCERPT_BYTES,
};
use crate::clock::Millis;
use crate::net::ssrf::{AddressPolicy, GuardedResolver, ResolveError};
use crate::secret::Secret;
use signing::SigningKey;

const MAX_URL_LEN: usize = 2048;
/// Longest `Retry-After` honoured; a receiver cannot park a delivery for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

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
    /// `webhook_endpoint` parsed, once per loaded stream rather than once per delivery.
    #[serde(skip)]
    parsed: std::sync::OnceLock<Option<Url>>,
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
            parsed: Default::default(),
        }
    }

    fn url(&self) -> Option<&Url> {
        self.parsed
            .get_or_init(|| Url::parse(&self.webhook_endpoint).ok())
            .as_ref()
    }

    pub fn validate(&self, policy: &DestinationPolicy) -> Result<(), String> {
        let url = &self.webhook_endpoint;
        if url.len() > MAX_URL_LEN {
            return Err(format!(
                "`webhook_endpoint` is longer than {MAX_URL_LEN} characters"
            ));
        }
        let parsed = Url::parse(url)
            .map_err(|e| format!("`webhook_endpoint` is not a valid URL ({e}): {url}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if policy.allow_http => {}
            "http" => {
                return Err(
                    "`webhook_endpoint` must use https (plain http is allowed only when the server runs with --allow-http)"
                        .into(),
                );
            }
            other => return Err(format!("`webhook_endpoint` must use https, not `{other}`")),
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("`webhook_endpoint` has no host".into());
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "`webhook_endpoint` must not carry credentials; use `webhook_authorization` with method `basic`"
                    .into(),
            );
        }
        if let Some(auth) = &self.webhook_authorization {
            auth.validate()?;
        }
        if let Some(secret) = &self.signing_secret {
            SigningKey::parse(secret).map_err(|e| format!("`signing_secret`: {e}"))?;
        }
        Ok(())
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
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    return Err(format!(
                        "`webhook_authorization.header_name` `{header_name}` is set by Herald itself"
                    ));
                }
                non_empty("header_value", header_value.expose())
            }
        }
    }

    fn apply(&self, headers: &mut HeaderMap) {
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
            } => match HeaderName::from_bytes(header_name.as_bytes()) {
                Ok(name) => (name, header_value.expose().to_string()),
                Err(_) => return,
            },
        };
        if let Ok(mut value) = HeaderValue::from_str(&value) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
}

/// One signed message ready to send.
pub struct Message<'a> {
    /// The delivery id: `webhook-id`, the same on every retry.
    pub id: &'a str,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub keys: &'a [SigningKey],
    /// When this attempt is made; signed as `webhook-timestamp` in seconds.
    pub now: Millis,
}

/// The HTTP client for webhooks: no proxies, no redirects, the SSRF guard on every address.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    addresses: AddressPolicy,
}

impl WebhookClient {
    pub fn new(addresses: AddressPolicy, timeout: Duration) -> WebhookClient {
        let http = reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(GuardedResolver::new(addresses.clone())))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("the webhook HTTP client builds from static settings");
        WebhookClient { http, addresses }
    }

    pub async fn send(&self, config: &WebhookConfig, message: Message<'_>) -> AttemptReport {
        let started = Instant::now();
        let Some(url) = config.url() else {
            return AttemptReport::failed(ErrorKind::Io, "invalid URL", started.elapsed());
        };
        // A literal address never reaches the resolver, so it is checked here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        if let Some(ip) = literal
            && let Err(blocked) = self.addresses.check(ip)
        {
            return AttemptReport::failed(
                ErrorKind::Blocked,
                blocked.to_string(),
                started.elapsed(),
            );
        }

        let timestamp = message.now.div_euclid(1000);
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(message.content_type));
        if let Ok(id) = HeaderValue::from_str(message.id) {
            headers.insert("webhook-id", id);
        }
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        let signature =
            signing::signature_header(message.keys, message.id, timestamp, &message.body);
        if let Ok(value) = HeaderValue::from_str(&signature) {
            headers.insert("webhook-signature", value);
        }
        if let Some(auth) = &config.webhook_authorization {
            auth.apply(&mut headers);
        }

        let result = self
            .http
            .post(url.clone())
            .headers(headers)
            .body(message.body)
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                let error = describe(&err);
                return AttemptReport::failed(error.kind, error.message, started.elapsed());
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, message.now));
        let (body, body_error) = read_excerpt(response).await;
        AttemptReport {
            outcome: classify(status, retry_after),
            duration: started.elapsed(),
            response_status: Some(status.as_u16()),
            response_body: Some(body),
            error: body_error,
        }
    }
}

/// What a status code means. Any 2xx is success; `410 Gone` disables the stream; 408, 409,
/// 425, 429 and every 5xx are worth retrying; any other 4xx is permanent. A 3xx is a failure
/// (redirects are never followed) and is retried.
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        410 => Outcome::DisableStream,
        429 | 503 => Outcome::Retry { after: retry_after },
        408 | 409 | 425 => Outcome::Retry { after: None },
        400..=499 => Outcome::GiveUp,
        _ => Outcome::Retry { after: None },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as Millis;
        Duration::from_millis((at_ms - now).max(0) as u64)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Reads at most [`RESPONSE_EXCERPT_BYTES`] of the body and stops: a huge or endless body
/// costs nothing more.
async fn read_excerpt(mut response: reqwest::Response) -> (String, Option<AttemptError>) {
    let mut buf = Vec::new();
    let mut error = None;
    while buf.len() < RESPONSE_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_EXCERPT_BYTES - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(err) => {
                error = Some(describe(&err));
                break;
            }
        }
    }
    // NUL bytes (binary bodies) are replaced: text columns, PostgreSQL's among them, refuse
    // them, and an excerpt is for reading anyway.
    let text = String::from_utf8_lossy(&buf).replace('\0', "\u{FFFD}");
    (text, error)
}

/// Names the kind of a transport failure by walking the error's causes.
fn describe(err: &reqwest::Error) -> AttemptError {
    let mut message = err.to_string();
    let mut kind = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        if let Some(resolve) = e.downcast_ref::<ResolveError>() {
            kind.get_or_insert(match resolve {
                ResolveError::Blocked { .. } => ErrorKind::Blocked,
                _ => ErrorKind::Dns,
            });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            kind.get_or_insert(ErrorKind::Tls);
        }
        if e.is::<rustls::Error>() {
            kind.get_or_insert(ErrorKind::Tls);
        }
        cause = e.source();
    }
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else if let Some(kind) = kind {
        kind
    } else if err.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Io
    };
    AttemptError { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_per_the_retry_rules() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), None);
        assert_eq!(c(200), Outcome::Delivered);
        assert_eq!(c(204), Outcome::Delivered);
        assert_eq!(c(410), Outcome::DisableStream);
        for code in [408, 409, 425, 429, 500, 502, 503, 504, 301, 302] {
            assert_eq!(c(code), Outcome::Retry { after: None }, "{code}");
        }
        for code in [400, 401, 403, 404, 405, 413, 422] {
            assert_eq!(c(code), Outcome::GiveUp, "{code}");
        }
        let after = Some(Duration::from_secs(30));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, after),
            Outcome::Retry { after }
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, after),
            Outcome::Retry { after }
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, after),
            Outcome::Retry { after: None }
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("9999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn endpoints_must_be_https_unless_allowed() {
        let config = |url: &str| WebhookConfig::new(url.into(), None);
        let strict = DestinationPolicy { allow_http: false };
        let dev = DestinationPolicy { allow_http: true };
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
    fn custom_headers_may_not_replace_herald_headers() {
        let auth = |name: &str| WebhookAuthorization::CustomHeader {
            header_name: name.into(),
            header_value: Secret::new("v"),
        };
        assert!(auth("x-api-key").validate().is_ok());
        assert!(auth("Webhook-Signature").validate().is_err());
        assert!(auth("bad header").validate().is_err());
    }
}
