//! What every AWS destination kind shares: where its credentials come from (keys given with
//! the stream, a role assumed through STS with the tenant id as `ExternalId`, or, only when
//! the operator allows it, the server's own from its environment or shared credentials file),
//! SigV4 signing of a request (the `aws-sigv4` crate over Herald's own HTTP client), and
//! reading the error an AWS API answers with.

use std::time::{Duration, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::http::{self, Egress};
use super::{AttemptError, ErrorKind};
use crate::clock::Millis;
use crate::event::parse_time;
use crate::secret::Secret;

/// Assumed-role credentials are renewed this long before they expire.
const RENEW_BEFORE_MS: Millis = 5 * 60 * 1000;
/// The server's own credentials are read again this often (a rotated file is seen).
const SERVER_CREDENTIALS_TTL_MS: Millis = 60 * 1000;
const ASSUMED_ROLE_SECONDS: u32 = 3600;

/// A set of AWS credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// When temporary credentials stop working.
    pub expires_at: Option<Millis>,
}

/// Where a client's credentials come from.
#[derive(Debug)]
pub enum Source {
    Static(Credentials),
    /// The server's own: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
    /// else the shared credentials file's profile (`AWS_PROFILE`, default `default`); read
    /// again every minute.
    Server {
        cached: tokio::sync::Mutex<Option<(Credentials, Millis)>>,
    },
    /// A role assumed with STS using `base`, renewed before it expires. The lock is held
    /// while renewing, so concurrent requests wait for one STS call rather than each making
    /// their own.
    AssumeRole {
        base: Box<Source>,
        role_arn: String,
        external_id: String,
        session_name: String,
        cached: tokio::sync::Mutex<Option<Credentials>>,
    },
    /// None can be had; every request fails with this reason (the operator stopped lending
    /// the server's credentials to streams that have none of their own).
    Unavailable(String),
}

impl Source {
    /// Whether expired credentials can be replaced by asking again (an assumed role, the
    /// server's own), unlike a session token given with the stream.
    pub fn renews(&self) -> bool {
        match self {
            Source::Static(_) | Source::Unavailable(_) => false,
            Source::Server { .. } | Source::AssumeRole { .. } => true,
        }
    }
}

/// Why credentials could not be had, and whether asking again later may work (STS throttled
/// or unreachable) or not (STS refused, none configured).
#[derive(Debug, Clone)]
pub struct CredentialError {
    pub error: AttemptError,
    pub transient: bool,
}

/// Gets credentials for requests, assuming a role through STS when the source says so.
#[derive(Debug)]
pub struct Provider {
    pub source: Source,
    pub region: String,
    pub sts_endpoint: Url,
    pub egress: Egress,
}

impl Provider {
    pub async fn credentials(&self, now: Millis) -> Result<Credentials, CredentialError> {
        self.resolve(&self.source, now).await
    }

    /// Forgets cached credentials (AWS said they expired), so the next request gets new ones.
    pub async fn invalidate(&self) {
        let mut source = &self.source;
        loop {
            match source {
                Source::AssumeRole { cached, base, .. } => {
                    *cached.lock().await = None;
                    source = base;
                }
                Source::Server { cached } => {
                    *cached.lock().await = None;
                    return;
                }
                Source::Static(_) | Source::Unavailable(_) => return,
            }
        }
    }

    async fn resolve(&self, source: &Source, now: Millis) -> Result<Credentials, CredentialError> {
        match source {
            Source::Static(credentials) => Ok(credentials.clone()),
            Source::Unavailable(reason) => Err(CredentialError {
                error: AttemptError {
                    kind: ErrorKind::Credentials,
                    message: reason.clone(),
                },
                transient: false,
            }),
            Source::Server { cached } => {
                let mut cached = cached.lock().await;
                if let Some((c, read_at)) = cached.as_ref()
                    && now - read_at < SERVER_CREDENTIALS_TTL_MS
                {
                    return Ok(c.clone());
                }
                let read = tokio::task::spawn_blocking(server_credentials)
                    .await
                    .ok()
                    .flatten();
                let c = read.ok_or_else(|| CredentialError {
                    error: AttemptError {
                        kind: ErrorKind::Credentials,
                        message:
                            "the server has no AWS credentials (environment or shared credentials file)"
                                .into(),
                    },
                    transient: false,
                })?;
                *cached = Some((c.clone(), now));
                Ok(c)
            }
            Source::AssumeRole {
                base,
                role_arn,
                external_id,
                session_name,
                cached,
            } => {
                let mut cached = cached.lock().await;
                if let Some(c) = cached.as_ref()
                    && c.expires_at.is_none_or(|at| at - RENEW_BEFORE_MS > now)
                {
                    return Ok(c.clone());
                }
                let base = Box::pin(self.resolve(base, now)).await?;
                let assumed = self
                    .assume_role(&base, role_arn, external_id, session_name, now)
                    .await?;
                *cached = Some(assumed.clone());
                Ok(assumed)
            }
        }
    }

    async fn assume_role(
        &self,
        base: &Credentials,
        role_arn: &str,
        external_id: &str,
        session_name: &str,
        now: Millis,
    ) -> Result<Credentials, CredentialError> {
        let body = form_body(&[
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", session_name),
            ("ExternalId", external_id),
            ("DurationSeconds", &ASSUMED_ROLE_SECONDS.to_string()),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let refused = |message: String, transient| CredentialError {
            error: AttemptError {
                kind: ErrorKind::Credentials,
                message,
            },
            transient,
        };
        let response = send_signed(
            &self.egress,
            &self.sts_endpoint,
            headers,
            body.into_bytes(),
            base,
            &Signing {
                region: &self.region,
                service: "sts",
            },
            now,
        )
        .await
        .map_err(|error| CredentialError {
            error,
            transient: true,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let (text, _) = http::read_excerpt_up_to(response, 64 * 1024).await;
        if !status.is_success() {
            let error = AwsError::parse(&headers, &text);
            let transient = status.as_u16() == 429
                || status.is_server_error()
                || AwsError::is_transient(&error.code);
            return Err(refused(
                format!(
                    "assuming {role_arn} failed: HTTP {status}: {}: {}",
                    error.code, error.message
                ),
                transient,
            ));
        }
        let parsed: AssumeRoleResponse = quick_xml::de::from_str(&text)
            .map_err(|e| refused(format!("STS answered something unreadable: {e}"), true))?;
        let c = parsed.assume_role_result.credentials;
        Ok(Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: Secret::new(c.secret_access_key),
            session_token: Some(Secret::new(c.session_token)),
            expires_at: parse_time(&c.expiration),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResponse {
    assume_role_result: AssumeRoleResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResult {
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// The server's own credentials, read at each use so a rotated file or environment is seen.
fn server_credentials() -> Option<Credentials> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Some(Credentials {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
            expires_at: None,
        });
    }
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            env("HOME").map(|home| std::path::Path::new(&home).join(".aws").join("credentials"))
        })?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    profile_credentials(&text, &profile)
}

/// The keys of one profile of an AWS shared credentials file (INI).
fn profile_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            in_profile = line[1..line.len() - 1].trim() == profile;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !in_profile {
            continue;
        }
        let value = value.trim().to_string();
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(Secret::new(value)),
            "aws_session_token" => token = Some(Secret::new(value)),
            _ => {}
        }
    }
    Some(Credentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
        expires_at: None,
    })
}

/// A query-protocol body, every byte but RFC 3986's unreserved ones percent-encoded, as the
/// AWS SDKs send it: servers that re-encode the form to check its signature (moto, some
/// compatible services) then hash the same bytes.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Which region and service a request is signed for.
pub struct Signing<'a> {
    pub region: &'a str,
    pub service: &'a str,
}

/// Signs a POST with SigV4 and sends it through the guarded client. The signing time is the
/// attempt's time (`now`).
pub async fn send_signed(
    egress: &Egress,
    url: &Url,
    mut headers: HeaderMap,
    body: Vec<u8>,
    credentials: &Credentials,
    signing: &Signing<'_>,
    now: Millis,
) -> Result<reqwest::Response, AttemptError> {
    egress.check_destination(url).await?;
    sign_headers(url, &mut headers, &body, credentials, signing, now).map_err(|message| {
        AttemptError {
            kind: ErrorKind::Credentials,
            message,
        }
    })?;
    egress
        .http
        .post(url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| http::describe(&e))
}

/// Adds the SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for
/// temporary credentials) for a POST of `body` to `url` with `headers`.
pub fn sign_headers(
    url: &Url,
    headers: &mut HeaderMap,
    body: &[u8],
    credentials: &Credentials,
    signing: &Signing<'_>,
    now: Millis,
) -> Result<(), String> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.expose().to_string(),
        credentials
            .session_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        None,
        "herald",
    )
    .into();
    let time = UNIX_EPOCH + Duration::from_millis(now.max(0) as u64);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(signing.region)
        .name(signing.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("could not sign the request: {e}"))?
        .into();
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => return Err("the URL has no host".into()),
    };
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    signed.push(("host".into(), host));
    let request = SignableRequest::new(
        "POST",
        url.as_str(),
        signed.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("could not sign the request: {e}"))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| format!("could not sign the request: {e}"))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let mut value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(())
}

/// An error as an AWS API names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// Reads the error of a failed call: the JSON protocols' `__type` (or the
    /// `x-amzn-ErrorType` header), or the query protocols' XML `<Code>`.
    pub fn parse(headers: &HeaderMap, body: &str) -> AwsError {
        #[derive(Deserialize)]
        struct Json {
            #[serde(rename = "__type")]
            kind: Option<String>,
            code: Option<String>,
            #[serde(alias = "Message")]
            message: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct XmlError {
            code: String,
            #[serde(default)]
            message: String,
        }
        // The query protocols wrap the error once (`<ErrorResponse><Error>`) or twice
        // (`<ErrorResponse><Errors><Error>`).
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct XmlResponse {
            error: Option<XmlError>,
            errors: Option<XmlErrors>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct XmlErrors {
            error: XmlError,
        }
        // `aws.protocol#Code:http://...` and `prefix#Code` both name `Code`.
        let short = |code: &str| {
            let code = code.split(':').next().unwrap_or(code);
            code.rsplit('#').next().unwrap_or(code).to_string()
        };
        let header = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(short);
        if let Ok(json) = serde_json::from_str::<Json>(body) {
            return AwsError {
                code: header
                    .or(json.kind.as_deref().map(short))
                    .or(json.code.as_deref().map(short))
                    .unwrap_or_else(|| "Unknown".into()),
                message: json.message.unwrap_or_default(),
            };
        }
        if let Ok(xml) = quick_xml::de::from_str::<XmlResponse>(body)
            && let Some(error) = xml.error.or(xml.errors.map(|e| e.error))
        {
            return AwsError {
                code: error.code,
                message: error.message,
            };
        }
        if let Ok(xml) = quick_xml::de::from_str::<XmlError>(body) {
            return AwsError {
                code: xml.code,
                message: xml.message,
            };
        }
        AwsError {
            code: header.unwrap_or_else(|| "Unknown".into()),
            message: body.chars().take(512).collect(),
        }
    }

    /// Whether the same request may succeed later: throttling, AWS's own failures, expired
    /// temporary credentials. Anything else (access denied, no such bus, a malformed entry)
    /// will fail the same way again.
    pub fn is_transient(code: &str) -> bool {
        matches!(
            code,
            "ThrottlingException"
                | "Throttling"
                | "ThrottledException"
                | "TooManyRequestsException"
                | "LimitExceededException"
                | "RequestLimitExceeded"
                | "InternalFailure"
                | "InternalException"
                | "InternalError"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "ServiceUnavailableException"
                | "RequestTimeout"
                | "RequestTimeoutException"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "RequestExpired"
        )
    }

    pub fn is_expired_credentials(code: &str) -> bool {
        matches!(code, "ExpiredToken" | "ExpiredTokenException")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_errors_are_read_from_json_headers_and_xml() {
        let none = HeaderMap::new();
        let json = AwsError::parse(
            &none,
            r#"{"__type": "com.amazon.coral.service#AccessDeniedException", "Message": "no"}"#,
        );
        assert_eq!(json.code, "AccessDeniedException");
        assert_eq!(json.message, "no");
        let xml = AwsError::parse(
            &none,
            "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>\
             <Message>bad</Message></Error><RequestId>1</RequestId></ErrorResponse>",
        );
        assert_eq!(xml.code, "SignatureDoesNotMatch");
        let nested = AwsError::parse(
            &none,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse><Errors><Error>\
             <Code>AccessDenied</Code><Message>no</Message></Error></Errors></ErrorResponse>",
        );
        assert_eq!(nested.code, "AccessDenied");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ResourceNotFoundException:http://internal.amazon.com/"),
        );
        assert_eq!(
            AwsError::parse(&headers, "").code,
            "ResourceNotFoundException"
        );
        assert!(AwsError::is_transient("ThrottlingException"));
        assert!(!AwsError::is_transient("AccessDeniedException"));
    }

    #[test]
    fn a_profile_is_read_from_the_shared_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    [other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n";
        let default = profile_credentials(text, "default").unwrap();
        assert_eq!(default.access_key_id, "A");
        assert!(default.session_token.is_none());
        let other = profile_credentials(text, "other").unwrap();
        assert_eq!(other.secret_access_key.expose(), "D");
        assert_eq!(other.session_token.unwrap().expose(), "E");
        assert!(profile_credentials(text, "missing").is_none());
    }
}
