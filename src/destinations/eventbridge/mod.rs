//! The `eventbridge` destination: events put on an AWS EventBridge bus with `PutEvents`,
//! signed with SigV4, up to ten entries and 256 KiB a call. Each entry's `DetailType` is the
//! event type, its `Detail` the event as JSON (CloudEvents, or the audit shape), its `Time`
//! the event's time. A 200 can refuse some entries: each delivery gets its own entry's
//! outcome, so only the refused ones are tried again.

use std::time::Instant;

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::aws::{self, AwsError, CredentialError, Credentials, Provider, Signing, Source};
use super::http::{self, Egress};
use super::{
    AttemptError, DestinationPolicy, Destinations, Encoding, ErrorKind, Message, Outcome, Report,
    StreamContext,
};
use crate::clock::Millis;
use crate::secret::Secret;

/// Most entries in one `PutEvents` call.
pub const MAX_ENTRIES: usize = 10;
/// EventBridge takes entries, and calls, smaller than this.
pub const MAX_BYTES: usize = 256 * 1024;

fn default_bus() -> String {
    "default".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBridgeConfig {
    /// The AWS account that owns the bus (12 digits).
    pub aws_account_id: String,
    pub aws_region: String,
    /// The bus's name; it is addressed by the ARN built from the account, region and name.
    #[serde(default = "default_bus")]
    pub event_bus_name: String,
    /// Each entry's `Source`; the event's own `source` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Another endpoint than `https://events.<region>.amazonaws.com` (a VPC endpoint,
    /// LocalStack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Another STS endpoint than `https://sts.<region>.amazonaws.com`, for `role_arn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_session_token: Option<Secret>,
    /// A role to assume with STS (with the tenant id as `ExternalId`) before putting events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

impl EventBridgeConfig {
    pub fn validate(&self, policy: &DestinationPolicy) -> Result<(), String> {
        let id = &self.aws_account_id;
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`aws_account_id` must be the 12 digits of an AWS account, got `{id}`"
            ));
        }
        let region = &self.aws_region;
        let region_ok = (4..=32).contains(&region.len())
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && region.bytes().any(|b| b.is_ascii_digit())
            && region.contains('-');
        if !region_ok {
            return Err(format!(
                "`aws_region` must be an AWS region such as `us-east-1`, got `{region}`"
            ));
        }
        let bus = &self.event_bus_name;
        if bus.starts_with("arn:") {
            return Err(
                "`event_bus_name` is the bus's name, not its ARN: the ARN is built from `aws_account_id`, `aws_region` and the name"
                    .into(),
            );
        }
        if bus.is_empty()
            || bus.len() > 256
            || !bus
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        {
            return Err(
                "`event_bus_name` must be 1 to 256 letters, digits or `/._-` characters".into(),
            );
        }
        if let Some(source) = &self.source {
            if source.is_empty() || source.len() > 256 {
                return Err("`source` must be 1 to 256 characters".into());
            }
            if source.starts_with("aws.") {
                return Err(
                    "`source` must not start with `aws.` (reserved for AWS services)".into(),
                );
            }
        }
        for (field, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("sts_endpoint_url", &self.sts_endpoint_url),
        ] {
            if let Some(url) = url {
                http::validate_url(field, url, policy.allow_http)?;
                // The server's own credentials sign only for AWS's own endpoints: a tenant's
                // endpoint would receive the server's signed requests and session token.
                if self.aws_access_key_id.is_none() {
                    return Err(format!(
                        "`{field}` needs the stream's own `aws_access_key_id` and `aws_secret_access_key`: the server's credentials are used only with AWS's own endpoints"
                    ));
                }
            }
        }
        match (&self.aws_access_key_id, &self.aws_secret_access_key) {
            (Some(id), Some(secret)) => {
                let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
                if id.is_empty() || id.len() > 128 || !printable(id) {
                    return Err("`aws_access_key_id` must be 1 to 128 printable characters".into());
                }
                if secret.expose().is_empty()
                    || secret.expose().len() > 256
                    || !printable(secret.expose())
                {
                    return Err(
                        "`aws_secret_access_key` must be 1 to 256 printable characters".into(),
                    );
                }
            }
            (None, None) => {
                if self.aws_session_token.is_some() {
                    return Err(
                        "`aws_session_token` goes with `aws_access_key_id` and `aws_secret_access_key`"
                            .into(),
                    );
                }
                if !policy.aws_server_credentials {
                    return Err(
                        "give `aws_access_key_id` and `aws_secret_access_key` (and `role_arn` to assume a role with them): this server does not lend its own AWS credentials to streams"
                            .into(),
                    );
                }
            }
            _ => {
                return Err(
                    "`aws_access_key_id` and `aws_secret_access_key` go together: give both or neither"
                        .into(),
                );
            }
        }
        if let Some(token) = &self.aws_session_token
            && (token.expose().is_empty() || token.expose().len() > 4096)
        {
            return Err("`aws_session_token` must be 1 to 4096 characters".into());
        }
        if let Some(role) = &self.role_arn {
            let valid = role.len() <= 2048
                && role.split(':').count() == 6
                && role.starts_with("arn:aws")
                && role.split(':').nth(2) == Some("iam")
                && role
                    .split(':')
                    .nth(5)
                    .is_some_and(|r| r.starts_with("role/"));
            if !valid {
                return Err(format!(
                    "`role_arn` must be an IAM role ARN such as arn:aws:iam::123456789012:role/herald, got `{role}`"
                ));
            }
        }
        Ok(())
    }

    pub fn public_view(&self) -> Value {
        let credentials = match (&self.aws_access_key_id, &self.role_arn) {
            (_, Some(_)) => "assume_role",
            (Some(_), None) => "access_key",
            (None, None) => "server",
        };
        let mut view = json!({
            "aws_account_id": self.aws_account_id,
            "aws_region": self.aws_region,
            "event_bus_name": self.event_bus_name,
            "credentials": credentials,
        });
        if let Some(source) = &self.source {
            view["source"] = json!(source);
        }
        if let Some(url) = &self.endpoint_url {
            view["endpoint_url"] = json!(url);
        }
        if let Some(url) = &self.sts_endpoint_url {
            view["sts_endpoint_url"] = json!(url);
        }
        if let Some(role) = &self.role_arn {
            view["role_arn"] = json!(role);
        }
        view
    }

    /// The AWS partition of the region, and its endpoints' domain.
    fn partition(&self) -> (&'static str, &'static str) {
        match self.aws_region.as_str() {
            r if r.starts_with("cn-") => ("aws-cn", "amazonaws.com.cn"),
            r if r.starts_with("us-gov-") => ("aws-us-gov", "amazonaws.com"),
            _ => ("aws", "amazonaws.com"),
        }
    }

    fn bus_arn(&self) -> String {
        let (partition, _) = self.partition();
        format!(
            "arn:{partition}:events:{}:{}:event-bus/{}",
            self.aws_region, self.aws_account_id, self.event_bus_name
        )
    }
}

/// An EventBridge stream's client: the bus, the signer's credentials, the encoder.
#[derive(Debug)]
pub struct EventBridgeClient {
    egress: Egress,
    endpoint: Url,
    region: String,
    bus_arn: String,
    source: Option<String>,
    credentials: Provider,
    encoding: Encoding,
}

impl EventBridgeClient {
    pub fn build(
        config: &EventBridgeConfig,
        stream: &StreamContext<'_>,
        shared: &Destinations,
    ) -> Result<EventBridgeClient, String> {
        let region = config.aws_region.clone();
        let (_, domain) = config.partition();
        let url = |field: &str, given: &Option<String>, service: &str| match given {
            Some(url) => Url::parse(url).map_err(|e| format!("`{field}`: {e}")),
            None => Url::parse(&format!("https://{service}.{region}.{domain}/"))
                .map_err(|e| format!("`aws_region`: {e}")),
        };
        let endpoint = url("endpoint_url", &config.endpoint_url, "events")?;
        let sts_endpoint = url("sts_endpoint_url", &config.sts_endpoint_url, "sts")?;
        let base = match (&config.aws_access_key_id, &config.aws_secret_access_key) {
            (Some(id), Some(secret)) => Source::Static(Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: config.aws_session_token.clone(),
                expires_at: None,
            }),
            _ if shared.policy.aws_server_credentials && config.endpoint_url.is_none() => {
                Source::Server {
                    cached: Default::default(),
                }
            }
            // The operator stopped lending the server's credentials after the stream was
            // made: each attempt fails, visibly, rather than the stream stalling.
            _ => Source::Unavailable(
                "the stream has no AWS credentials of its own and this server does not lend its own (`aws_server_credentials`); give the stream `aws_access_key_id` and `aws_secret_access_key`"
                    .into(),
            ),
        };
        let source = match &config.role_arn {
            Some(role_arn) => Source::AssumeRole {
                base: Box::new(base),
                role_arn: role_arn.clone(),
                external_id: stream.tenant_id.to_string(),
                session_name: format!("herald-{}", stream.stream_id)
                    .chars()
                    .take(64)
                    .collect(),
                cached: Default::default(),
            },
            None => base,
        };
        Ok(EventBridgeClient {
            egress: shared.egress.clone(),
            endpoint,
            region: region.clone(),
            bus_arn: config.bus_arn(),
            source: config.source.clone(),
            credentials: Provider {
                source,
                region,
                sts_endpoint,
                egress: shared.egress.clone(),
            },
            encoding: stream.encoding,
        })
    }

    pub async fn send(&self, batch: &[Message<'_>], now: Millis) -> Vec<Report> {
        let mut reports: Vec<Option<Report>> = vec![None; batch.len()];
        // Entries over the limit are refused for good before anything is sent; the rest go in
        // calls of at most ten entries and 256 KiB.
        let mut calls: Vec<Vec<(usize, Value)>> = Vec::new();
        let mut call_bytes = 0;
        for (i, message) in batch.iter().enumerate() {
            let (entry, size) = self.entry(message);
            if size >= MAX_BYTES {
                reports[i] = Some(Report::error(
                    Outcome::GiveUp,
                    ErrorKind::TooLarge,
                    format!(
                        "the entry is {size} bytes; EventBridge takes at most {MAX_BYTES} bytes an entry"
                    ),
                    std::time::Duration::ZERO,
                ));
                continue;
            }
            let fits = calls
                .last()
                .is_some_and(|c| c.len() < MAX_ENTRIES && call_bytes + size < MAX_BYTES);
            if !fits {
                calls.push(Vec::new());
                call_bytes = 0;
            }
            call_bytes += size;
            calls
                .last_mut()
                .expect("a call was just pushed")
                .push((i, entry));
        }
        // All calls together take no longer than one request may: the dispatcher starts a
        // batch only with that much of its leases left.
        let deadline = tokio::time::Instant::now() + self.egress.timeout;
        let started = Instant::now();
        for call in calls {
            let (indices, entries): (Vec<usize>, Vec<Value>) = call.into_iter().unzip();
            let count = entries.len();
            let results = tokio::time::timeout_at(deadline, self.put_events(entries, now))
                .await
                .unwrap_or_else(|_| {
                    let timeout = Report::failed(
                        ErrorKind::Timeout,
                        "the batch's calls ran past the delivery timeout before this entry's call was answered",
                        started.elapsed(),
                    );
                    vec![timeout; count]
                });
            for (i, report) in indices.into_iter().zip(results) {
                reports[i] = Some(report);
            }
        }
        reports
            .into_iter()
            .map(|r| r.expect("every message has a report"))
            .collect()
    }

    /// One `PutEvents` entry, and its size as EventBridge counts it.
    fn entry(&self, message: &Message<'_>) -> (Value, usize) {
        let event = message.event;
        let encoded = self.encoding.encode(event);
        let detail = String::from_utf8_lossy(&encoded.body).into_owned();
        let source = self.source.as_deref().unwrap_or(&event.source);
        // EventBridge counts 14 bytes for the time, plus the UTF-8 bytes of each text field.
        let size = 14 + source.len() + event.event_type.len() + detail.len();
        let entry = json!({
            "Source": source,
            "DetailType": event.event_type,
            "Detail": detail,
            "EventBusName": self.bus_arn,
            "Time": event.time as f64 / 1000.0,
            "Resources": [],
        });
        (entry, size)
    }

    /// One call; a report per entry, in order.
    async fn put_events(&self, entries: Vec<Value>, now: Millis) -> Vec<Report> {
        let count = entries.len();
        let started = Instant::now();
        let all = |report: Report| vec![report; count];
        let credentials = match self.credentials.credentials(now).await {
            Ok(credentials) => credentials,
            Err(e) => return all(credential_failure(e, started)),
        };
        let body = serde_json::to_vec(&json!({ "Entries": entries }))
            .expect("PutEvents entries serialise");
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("AWSEvents.PutEvents"),
        );
        let signing = Signing {
            region: &self.region,
            service: "events",
        };
        let response = match aws::send_signed(
            &self.egress,
            &self.endpoint,
            headers,
            body,
            &credentials,
            &signing,
            now,
        )
        .await
        {
            Ok(response) => response,
            Err(error) => {
                return all(Report::failed(error.kind, error.message, started.elapsed()));
            }
        };
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let response_headers = response.headers().clone();
        let retry_after = http::retry_after(&response, now);
        let limit = 64 * 1024;
        let (text, read_error) = http::read_excerpt_up_to(response, limit).await;
        let duration = started.elapsed();
        let mut detail = Map::new();
        if let Some(id) = &request_id {
            detail.insert("aws_request_id".into(), json!(id));
        }

        if !status.is_success() {
            let error = AwsError::parse(&response_headers, &text);
            let expired = AwsError::is_expired_credentials(&error.code);
            if expired {
                self.credentials.invalidate().await;
            }
            // Expired credentials are worth another try only where new ones can be had: a
            // session token given with the stream stays expired.
            let transient = status.as_u16() == 429
                || status.is_server_error()
                || (AwsError::is_transient(&error.code)
                    && (!expired || self.credentials.source.renews()));
            let outcome = if transient {
                Outcome::Retry { after: retry_after }
            } else {
                Outcome::GiveUp
            };
            detail.insert("aws_error_code".into(), json!(error.code));
            return all(Report {
                outcome,
                duration,
                response_status: Some(status.as_u16()),
                response_body: Some(excerpt(&text)),
                error: Some(AttemptError {
                    kind: ErrorKind::Rejected,
                    message: format!("{}: {}", error.code, error.message),
                }),
                detail: Some(detail),
            });
        }

        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            entries: Vec<EntryResult>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct EntryResult {
            event_id: Option<String>,
            error_code: Option<String>,
            error_message: Option<String>,
        }
        let answer = serde_json::from_str::<Answer>(&text)
            .ok()
            .filter(|a| a.entries.len() == count);
        let Some(answer) = answer else {
            let message = match read_error {
                Some(e) => e.message,
                None => format!(
                    "PutEvents answered 200 without a result for each of the {count} entries"
                ),
            };
            return all(Report {
                outcome: Outcome::Retry { after: None },
                duration,
                response_status: Some(status.as_u16()),
                response_body: Some(excerpt(&text)),
                error: Some(AttemptError {
                    kind: ErrorKind::Io,
                    message,
                }),
                detail: Some(detail),
            });
        };
        answer
            .entries
            .into_iter()
            .map(|entry| {
                let mut detail = detail.clone();
                match (entry.event_id, entry.error_code) {
                    (Some(id), None) => {
                        detail.insert("aws_event_id".into(), json!(id));
                        Report {
                            outcome: Outcome::Delivered,
                            duration,
                            response_status: Some(status.as_u16()),
                            response_body: None,
                            error: None,
                            detail: Some(detail),
                        }
                    }
                    (None, None) => Report {
                        outcome: Outcome::Retry { after: None },
                        duration,
                        response_status: Some(status.as_u16()),
                        response_body: None,
                        error: Some(AttemptError {
                            kind: ErrorKind::Io,
                            message: "PutEvents gave this entry neither an event id nor an error"
                                .into(),
                        }),
                        detail: Some(detail),
                    },
                    (_, Some(code)) => {
                        let message = entry.error_message.unwrap_or_default();
                        let outcome = if AwsError::is_transient(&code) {
                            Outcome::Retry { after: None }
                        } else {
                            Outcome::GiveUp
                        };
                        detail.insert("aws_error_code".into(), json!(code));
                        Report {
                            outcome,
                            duration,
                            response_status: Some(status.as_u16()),
                            response_body: None,
                            error: Some(AttemptError {
                                kind: ErrorKind::Rejected,
                                message: format!("{code}: {message}"),
                            }),
                            detail: Some(detail),
                        }
                    }
                }
            })
            .collect()
    }
}

/// Credentials that could not be had: STS's refusal is as final as PutEvents' would be; a
/// throttled or unreachable STS is tried again.
fn credential_failure(failure: CredentialError, started: Instant) -> Report {
    let outcome = if failure.transient {
        Outcome::Retry { after: None }
    } else {
        Outcome::GiveUp
    };
    Report::error(
        outcome,
        failure.error.kind,
        failure.error.message,
        started.elapsed(),
    )
}

fn excerpt(text: &str) -> String {
    let mut end = text.len().min(super::RESPONSE_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EventBridgeConfig {
        serde_json::from_value(json!({
            "aws_account_id": "123456789012",
            "aws_region": "us-east-1",
            "aws_access_key_id": "AKIA",
            "aws_secret_access_key": "secret",
        }))
        .unwrap()
    }

    #[test]
    fn the_bus_is_addressed_by_its_arn() {
        assert_eq!(
            config().bus_arn(),
            "arn:aws:events:us-east-1:123456789012:event-bus/default"
        );
    }

    #[test]
    fn configurations_are_checked() {
        let policy = DestinationPolicy::default();
        assert!(config().validate(&policy).is_ok());
        let with = |field: &str, value: Value| {
            let mut v = serde_json::to_value(config()).unwrap();
            v[field] = value;
            let c: EventBridgeConfig = serde_json::from_value(v).unwrap();
            c.validate(&policy)
        };
        assert!(with("aws_account_id", json!("12345")).is_err());
        assert!(with("aws_region", json!("moon")).is_err());
        assert!(with("source", json!("aws.events")).is_err());
        assert!(with("event_bus_name", json!("arn:aws:events:x")).is_err());
        assert!(with("role_arn", json!("arn:aws:iam::123456789012:user/x")).is_err());
        assert!(with("role_arn", json!("arn:aws:iam::123456789012:role/herald")).is_ok());
        assert!(with("endpoint_url", json!("http://127.0.0.1:5000")).is_err());
        let mut keyless = config();
        keyless.aws_access_key_id = None;
        keyless.aws_secret_access_key = None;
        let refused = keyless.validate(&policy).unwrap_err();
        assert!(refused.contains("does not lend"), "{refused}");
        let lent = DestinationPolicy {
            aws_server_credentials: true,
            ..DestinationPolicy::default()
        };
        assert!(keyless.validate(&lent).is_ok());
    }

    /// A keyless stream made while the operator lent the server's credentials, after the
    /// operator stopped: each attempt fails for good, saying why, rather than the stream
    /// stalling. Nothing is sent anywhere.
    #[tokio::test]
    async fn a_stream_left_without_credentials_fails_visibly() {
        let mut keyless = config();
        keyless.aws_access_key_id = None;
        keyless.aws_secret_access_key = None;
        let shared = Destinations::new(
            crate::net::ssrf::AddressPolicy::default(),
            std::time::Duration::from_secs(1),
            DestinationPolicy::default(),
        );
        let encoding = Encoding {
            format: super::super::PayloadFormat::Cloudevents,
            mode: super::super::ContentMode::Structured,
        };
        let context = StreamContext {
            tenant_id: "ten_a",
            stream_id: "est_a",
            encoding,
            secrets: &[],
        };
        let client = EventBridgeClient::build(&keyless, &context, &shared).unwrap();
        let event = crate::event::Event {
            id: "e1".into(),
            source: "/test".into(),
            event_type: "user.created".into(),
            time: 0,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            extensions: Default::default(),
        };
        let message = Message {
            id: "dlv_1",
            tenant_id: "ten_a",
            event: &event,
        };
        let report = client.send(&[message], 0).await.remove(0);
        assert_eq!(report.outcome, Outcome::GiveUp);
        let error = report.error.unwrap();
        assert_eq!(error.kind, ErrorKind::Credentials);
        assert!(error.message.contains("does not lend"), "{}", error.message);
    }

    #[test]
    fn credentials_never_show() {
        let view = config().public_view().to_string();
        assert!(!view.contains("secret") && !view.contains("AKIA"), "{view}");
        assert!(view.contains("access_key"));
    }
}
