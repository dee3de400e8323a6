//! Herald's outbound HTTP, shared by every destination kind that speaks HTTP (webhooks, the
//! AWS APIs): one connection pool, no redirects, and the SSRF guard on every address
//! connected to. Optionally everything goes through the operator's proxy (`egress_proxy`):
//! the proxy then makes the connections, so the guard checks the addresses a destination's
//! host resolves to here before each request (every one must be allowed), and the proxy's
//! own address, which the operator chose, is not checked. Also what such kinds share in
//! reading an answer: a bounded excerpt of the body, `Retry-After`, and naming the kind of a
//! transport failure.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::{AttemptError, ErrorKind, RESPONSE_EXCERPT_BYTES};
use crate::clock::Millis;
use crate::net::ssrf::{AddressPolicy, GuardedResolver, ResolveError};

/// Longest `Retry-After` honoured; a receiver cannot park a delivery for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The guarded HTTP client. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct Egress {
    pub(super) http: reqwest::Client,
    addresses: AddressPolicy,
    /// The longest one request may take.
    pub timeout: Duration,
    /// Requests go through the operator's proxy, which resolves destinations itself.
    proxied: bool,
}

/// The `User-Agent` of every request Herald sends.
pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

impl Egress {
    pub fn new(addresses: AddressPolicy, timeout: Duration) -> Egress {
        Self::build(addresses, timeout, None)
    }

    /// Sends every request through `proxy` (HTTP CONNECT for https destinations; plain http
    /// ones are forwarded to it).
    pub fn through_proxy(addresses: AddressPolicy, timeout: Duration, proxy: &Url) -> Egress {
        Self::build(addresses, timeout, Some(proxy))
    }

    fn build(addresses: AddressPolicy, timeout: Duration, proxy: Option<&Url>) -> Egress {
        let builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60));
        let builder = match proxy {
            // Only the proxy's host is resolved by the client then: the operator's choice.
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy.clone()).expect("a validated proxy URL is a proxy"),
            ),
            None => builder
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver::new(addresses.clone()))),
        };
        let http = builder
            .build()
            .expect("the outbound HTTP client builds from static settings");
        Egress {
            http,
            addresses,
            timeout,
            proxied: proxy.is_some(),
        }
    }

    /// Refuses a destination the guard does not admit before anything is sent: a literal
    /// address here; without a proxy a host name is checked as it is connected to, through
    /// a proxy it is resolved and every address checked now.
    pub async fn check_destination(&self, url: &Url) -> Result<(), AttemptError> {
        self.check_literal(url)?;
        if !self.proxied {
            return Ok(());
        }
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AttemptError {
                kind: ErrorKind::Dns,
                message: format!("DNS lookup of {host} failed: {e}"),
            })?;
        for addr in resolved {
            if let Err(blocked) = self.addresses.check(addr.ip()) {
                tracing::warn!(host = %host, refused = %blocked, "the SSRF guard refused a destination");
                return Err(AttemptError {
                    kind: ErrorKind::Blocked,
                    message: REFUSED_ADDRESS.into(),
                });
            }
        }
        Ok(())
    }

    /// Refuses a URL whose host is a literal address the guard does not admit: a literal never
    /// reaches the resolver, so it is checked here.
    fn check_literal(&self, url: &Url) -> Result<(), AttemptError> {
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            _ => return Ok(()),
        };
        self.addresses.check(literal).map_err(|blocked| {
            tracing::warn!(refused = %blocked, "the SSRF guard refused a destination");
            AttemptError {
                kind: ErrorKind::Blocked,
                message: REFUSED_ADDRESS.into(),
            }
        })
    }
}

/// Checks a destination URL given in a configuration: https (or http when the operator
/// allows it), a host, and no credentials in it. `field` names it in the error.
pub fn validate_url(field: &str, url: &str, allow_http: bool) -> Result<Url, String> {
    const MAX_URL_LEN: usize = 2048;
    if url.len() > MAX_URL_LEN {
        return Err(format!("`{field}` is longer than {MAX_URL_LEN} characters"));
    }
    let parsed =
        Url::parse(url).map_err(|e| format!("`{field}` is not a valid URL ({e}): {url}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "`{field}` must use https (plain http is allowed only when the server runs with --allow-http)"
            ));
        }
        other => return Err(format!("`{field}` must use https, not `{other}`")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{field}` has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{field}` must not carry credentials"));
    }
    Ok(parsed)
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

/// The `Retry-After` of a response, if it has a valid one.
pub fn retry_after(response: &reqwest::Response, now: Millis) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Reads at most [`RESPONSE_EXCERPT_BYTES`] of the body and stops: a huge or endless body
/// costs nothing more.
pub async fn read_excerpt(response: reqwest::Response) -> (String, Option<AttemptError>) {
    read_excerpt_up_to(response, RESPONSE_EXCERPT_BYTES).await
}

/// Reads at most `limit` bytes of the body, as text.
pub async fn read_excerpt_up_to(
    mut response: reqwest::Response,
    limit: usize,
) -> (String, Option<AttemptError>) {
    let mut buf = Vec::new();
    let mut error = None;
    while buf.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - buf.len();
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

/// What a tenant is told when the SSRF guard refuses an address. Which address, and why,
/// goes to the operator's log only: a tenant must not map internal names to addresses.
pub const REFUSED_ADDRESS: &str = "the destination's address is not allowed";

/// Names the kind of a transport failure by walking the error's causes. The message never
/// holds the request's URL (webhook URLs often carry a secret in their path or query) nor a
/// refused address.
pub fn describe(err: &reqwest::Error) -> AttemptError {
    let mut message = err.to_string();
    if let Some(url) = err.url() {
        message = message.replace(&format!(" for url ({url})"), "");
        message = message.replace(url.as_str(), "<url>");
    }
    let mut kind = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cause {
        if let Some(ResolveError::Blocked { host, blocked }) = e.downcast_ref::<ResolveError>() {
            tracing::warn!(host = %host, refused = %blocked, "the SSRF guard refused a destination");
            return AttemptError {
                kind: ErrorKind::Blocked,
                message: REFUSED_ADDRESS.into(),
            };
        }
        message.push_str(": ");
        message.push_str(&e.to_string());
        if e.is::<ResolveError>() {
            kind.get_or_insert(ErrorKind::Dns);
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
    fn urls_must_be_https_unless_allowed() {
        let check = |url: &str, allow_http| validate_url("url", url, allow_http);
        assert!(check("https://example.com/hook", false).is_ok());
        assert!(
            check("http://example.com/hook", false)
                .unwrap_err()
                .contains("https")
        );
        assert!(check("http://example.com/hook", true).is_ok());
        assert!(check("ftp://example.com", true).is_err());
        assert!(check("not a url", true).is_err());
        assert!(check("https://u:p@example.com", true).is_err());
    }
}
