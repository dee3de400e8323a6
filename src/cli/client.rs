//! The HTTP client the commands share: one connection's server, token and tenant, requests
//! built from path segments (each percent-encoded), and the API's error body turned into a
//! [`CliError`] that knows its exit code and what to tell the user.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

/// Why a command failed, and so how `herald` exits.
#[derive(Debug)]
pub enum CliError {
    /// The API answered with an error body.
    Api {
        status: u16,
        code: String,
        message: String,
        details: Option<Value>,
        request_id: Option<String>,
    },
    /// The server could not be reached, or answered something that is not Herald's API.
    Transport(String),
    /// Arguments clap could not check on its own (a file that does not parse, ...).
    Usage(String),
    /// Something named locally (a profile) does not exist.
    NotFound(String),
    /// Something failed on this machine (a file that cannot be written).
    Local(String),
}

impl CliError {
    /// 1 for an API or transport error, 2 for a usage error, 3 for "not found".
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Api { status: 404, .. } => ExitCode::from(3),
            CliError::Api { .. } | CliError::Transport(_) | CliError::Local(_) => ExitCode::from(1),
            CliError::Usage(_) => ExitCode::from(2),
            CliError::NotFound(_) => ExitCode::from(3),
        }
    }

    /// The lines written to stderr: the API's `code` and `message`, then what to do about it.
    pub fn report(&self) -> String {
        match self {
            CliError::Api {
                status,
                code,
                message,
                details,
                request_id,
            } => {
                let mut out = format!("herald: {code}: {message} (HTTP {status})");
                if let Some(details) = details {
                    out.push_str(&format!("\n  details: {details}"));
                }
                let hint = match *status {
                    401 => "pass a valid token with --token or HERALD_TOKEN".to_string(),
                    403 => "use a token holding the scope this command needs (`herald serve` \
                            prints the platform admin token at first start), or a tenant the \
                            token may act on"
                        .to_string(),
                    404 => "check the id (each `list` command shows them, `herald streams \
                            list` the streams), and --tenant when using a platform token"
                        .to_string(),
                    409 => "the request conflicts with the current state; look at it with \
                            `show`, then retry"
                        .to_string(),
                    429 | 503 => {
                        "the server is busy or limiting this token; retry shortly".to_string()
                    }
                    s if s >= 500 => format!(
                        "the server's log holds the cause under request id {}",
                        request_id.as_deref().unwrap_or("(none)")
                    ),
                    _ => {
                        "fix the request as the message says; `--help` shows each flag".to_string()
                    }
                };
                out.push_str(&format!("\n  hint: {hint}"));
                out
            }
            CliError::Transport(message) => format!(
                "herald: {message}\n  hint: check --server or HERALD_SERVER, and that `herald serve` runs there"
            ),
            CliError::Usage(message) | CliError::NotFound(message) | CliError::Local(message) => {
                format!("herald: {message}")
            }
        }
    }
}

/// A body to send: its content type and bytes.
pub struct Body {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

impl Body {
    pub fn json(value: &Value) -> Body {
        Body {
            content_type: "application/json",
            bytes: serde_json::to_vec(value).expect("a JSON value serializes"),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    server: url::Url,
    token: Option<String>,
    tenant: Option<String>,
}

impl Client {
    pub fn new(
        server: &str,
        token: Option<String>,
        tenant: Option<String>,
    ) -> Result<Client, CliError> {
        let server = url::Url::parse(server).map_err(|e| {
            CliError::Usage(format!(
                "--server `{server}` is not a URL ({e}); for example http://127.0.0.1:8470"
            ))
        })?;
        if server.cannot_be_a_base() || !matches!(server.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "--server `{server}` is not an http(s) URL"
            )));
        }
        let loopback = match server.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        if server.scheme() == "http" && !loopback && token.as_deref().is_some_and(|t| !t.is_empty())
        {
            eprintln!(
                "herald: warning: sending the token to {} over plain http; use https beyond this machine",
                server.host_str().unwrap_or_default()
            );
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
            // A server that accepts and never answers must not hang a command, but a bulk
            // redelivery may take the server a while: bound the connection and each read.
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(120))
            // A redirect would carry the token and the body (credentials, events) elsewhere,
            // or turn a POST into a GET that "succeeds" having stored nothing.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CliError::Transport(format!("starting the HTTP client: {e}")))?;
        Ok(Client {
            http,
            server,
            token: token.filter(|t| !t.is_empty()),
            tenant: tenant.filter(|t| !t.is_empty()),
        })
    }

    /// The URL of `segments` under the server's base URL, each segment percent-encoded.
    /// `.` and `..` would be dropped from the path (`redeliver STREAM .` would become a bulk
    /// redelivery): callers check ids with [`check_ids`] first.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> url::Url {
        let mut url = self.server.clone();
        url.path_segments_mut()
            .expect("checked to be a base URL")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Sends a request; answers the JSON body (`Null` for an empty one) of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Body>,
    ) -> Result<Value, CliError> {
        let (url, response) = self.send(method, segments, query, body, &[]).await?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::Transport(format!("reading the answer of {url}: {e}")))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            CliError::Transport(format!(
                "{url} answered {status} with a body that is not JSON: is --server a Herald server?"
            ))
        })
    }

    /// Sends a request with extra `headers`; answers the response of a 2xx answer, unread
    /// (a stream of events), and turns any other answer into its error.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Body>,
        headers: &[(&str, &str)],
    ) -> Result<(url::Url, reqwest::Response), CliError> {
        if let Some(bad) = segments
            .iter()
            .find(|s| s.is_empty() || **s == "." || **s == "..")
        {
            return Err(CliError::Usage(format!(
                "`{bad}` cannot be used as an id here: the path would change its meaning"
            )));
        }
        let url = self.url(segments, query);
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(tenant) = &self.tenant {
            request = request.header("herald-tenant", tenant);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", body.content_type)
                .body(body.bytes);
        }
        let response = request.send().await.map_err(|e| {
            CliError::Transport(format!(
                "could not reach {}: {}",
                self.server,
                crate::error_chain(&e)
            ))
        })?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere");
            return Err(CliError::Transport(format!(
                "{url} answered {status}, a redirect to {location}; point --server at Herald itself"
            )));
        }
        if (200..300).contains(&status) {
            return Ok((url, response));
        }
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::Transport(format!("reading the answer of {url}: {e}")))?;
        Err(api_error(&url, status, request_id, &bytes))
    }

    /// The opening request of a WebSocket to `segments` (`ws://`, or `wss://` for an https
    /// server), with the token and tenant.
    pub fn websocket_request(
        &self,
        segments: &[&str],
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, CliError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        let mut url = self.url(segments, &[]);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .expect("http(s) and ws(s) are both special schemes");
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| CliError::Usage(format!("--server `{}`: {e}", self.server)))?;
        let header = |value: String| {
            HeaderValue::from_str(&value).map_err(|_| {
                CliError::Usage(
                    "the token or tenant holds characters not allowed in a header".into(),
                )
            })
        };
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert("authorization", header(format!("Bearer {token}"))?);
        }
        if let Some(tenant) = &self.tenant {
            request
                .headers_mut()
                .insert("herald-tenant", header(tenant.clone())?);
        }
        request.headers_mut().insert(
            "user-agent",
            header(concat!("herald-cli/", env!("CARGO_PKG_VERSION")).to_string())?,
        );
        Ok(request)
    }
}

/// The error a non-2xx answer stands for: the API's error body, or a transport error when
/// the answer is not Herald's.
pub fn api_error(
    url: &dyn std::fmt::Display,
    status: u16,
    request_id: Option<String>,
    bytes: &[u8],
) -> CliError {
    let value: Option<Value> = serde_json::from_slice(bytes).ok();
    let error = value.as_ref().map(|v| &v["error"]);
    match error.and_then(|e| e["code"].as_str()) {
        Some(code) => {
            let error = error.expect("checked above");
            CliError::Api {
                status,
                code: code.to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
                details: error.get("details").filter(|d| !d.is_null()).cloned(),
                request_id,
            }
        }
        None => CliError::Transport(format!(
            "{url} answered {status} without Herald's error body: is --server a Herald server?"
        )),
    }
}

impl Client {
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        self.call(Method::GET, segments, query, None).await
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value, CliError> {
        self.call(Method::POST, segments, &[], Some(Body::json(body)))
            .await
    }

    pub async fn patch(&self, segments: &[&str], body: &Value) -> Result<Value, CliError> {
        self.call(Method::PATCH, segments, &[], Some(Body::json(body)))
            .await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, CliError> {
        self.call(Method::DELETE, segments, &[], None).await
    }
}

impl Client {
    /// Every item under `key` of a paged list, following the API's `next` cursor (passed as
    /// `from`) until the last page or `limit` items; answers them and the cursor where it
    /// stopped (`None` once the list is exhausted).
    pub async fn all_pages(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        key: &str,
        limit: Option<usize>,
    ) -> Result<(Vec<Value>, Option<String>), CliError> {
        let mut items: Vec<Value> = Vec::new();
        let mut next: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut page_query = query.to_vec();
            if let Some(cursor) = &next {
                page_query.push(("from", cursor.clone()));
            }
            let page = self.get(segments, &page_query).await?;
            let page_items = page[key].as_array().cloned().unwrap_or_default();
            let empty = page_items.is_empty();
            items.extend(page_items);
            next = page["next"].as_str().map(str::to_owned);
            if let Some(cursor) = &next
                && (empty || !seen.insert(cursor.clone()))
            {
                return Err(CliError::Transport(format!(
                    "the server's paging does not advance (cursor `{cursor}` again, or an empty page with a next one); stopping"
                )));
            }
            if let Some(limit) = limit
                && items.len() >= limit
            {
                items.truncate(limit);
                return Ok((items, next));
            }
            if next.is_none() {
                return Ok((items, None));
            }
        }
    }
}
