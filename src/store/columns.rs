//! How Herald's values are encoded in table columns, shared by both backends so that the
//! embedded and the shared store hold the same bytes (and `herald migrate-store` can copy
//! rows verbatim): JSON text for lists and policies, the destination sealed with the
//! installation's secret key.

use serde_json::value::RawValue;

use super::{DeliveryStatus, StoreError, StoreResult, TokenHash};
use crate::clock::Millis;
use crate::destinations::Destination;
use crate::event::Event;
use crate::secret::Cipher;
use crate::stream::{ContentMode, PayloadFormat, RetryPolicy, Stream, StreamStatus, Subscription};

/// A stream's columns as stored, before decoding.
pub struct StreamRow {
    pub tenant_id: String,
    pub id: String,
    pub name: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub subscriptions: String,
    pub destination: Vec<u8>,
    pub payload_format: String,
    pub content_mode: Option<String>,
    pub retry_policy: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub max_consecutive_failures: i64,
    pub disable_after_failing_seconds: i64,
    pub expires_at: Option<Millis>,
}

impl StreamRow {
    pub fn decode(self, cipher: &Cipher) -> StoreResult<Stream> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("stream column `{what}`"));
        let patterns: Vec<String> =
            serde_json::from_str(&self.subscriptions).map_err(|_| corrupt("subscriptions"))?;
        let destination: Destination = serde_json::from_slice(&cipher.decrypt(&self.destination)?)
            .map_err(|_| corrupt("destination"))?;
        Ok(Stream {
            tenant_id: self.tenant_id,
            id: self.id,
            name: self.name,
            status: StreamStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?,
            status_reason: self.status_reason,
            subscriptions: patterns
                .into_iter()
                .map(|event_type| Subscription { event_type })
                .collect(),
            destination,
            payload_format: PayloadFormat::parse(&self.payload_format)
                .ok_or_else(|| corrupt("payload_format"))?,
            content_mode: self
                .content_mode
                .map(|m| ContentMode::parse(&m).ok_or_else(|| corrupt("content_mode")))
                .transpose()?,
            retry_policy: serde_json::from_str::<RetryPolicy>(&self.retry_policy)
                .map_err(|_| corrupt("retry_policy"))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            max_consecutive_failures: u32::try_from(self.max_consecutive_failures)
                .map_err(|_| corrupt("max_consecutive_failures"))?,
            disable_after_failing_seconds: u64::try_from(self.disable_after_failing_seconds)
                .map_err(|_| corrupt("disable_after_failing_seconds"))?,
            expires_at: self.expires_at,
        })
    }
}

/// The encoded columns of a stream: subscriptions, the sealed destination, the retry policy.
pub fn encode_stream(stream: &Stream, cipher: &Cipher) -> (String, Vec<u8>, String) {
    let patterns: Vec<&str> = stream
        .subscriptions
        .iter()
        .map(|s| s.event_type.as_str())
        .collect();
    let destination =
        serde_json::to_vec(&stream.destination).expect("a destination serialises to JSON");
    (
        serde_json::to_string(&patterns).expect("strings serialise"),
        cipher.encrypt(&destination),
        serde_json::to_string(&stream.retry_policy).expect("a retry policy serialises"),
    )
}

/// The subscription patterns of a stream's `subscriptions` column.
pub fn decode_patterns(subscriptions: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(subscriptions)
        .map_err(|_| StoreError::Corrupt("stream column `subscriptions`".into()))
}

pub fn encode_scopes(scopes: &[String]) -> String {
    serde_json::to_string(scopes).expect("strings serialise")
}

pub fn decode_scopes(scopes: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(scopes).map_err(|_| StoreError::Corrupt("token column `scopes`".into()))
}

/// A stored SHA-256 hash (of a token or a console session's id).
pub fn token_hash(bytes: &[u8]) -> StoreResult<TokenHash> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a stored hash is not 32 bytes".into()))
}

/// An event's columns as stored, before decoding.
pub struct EventRow {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub time: Millis,
    pub subject: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub data: String,
    pub extensions: Option<String>,
}

impl EventRow {
    pub fn decode(self) -> StoreResult<Event> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("event column `{what}`"));
        Ok(Event {
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            time: self.time,
            subject: self.subject,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data: RawValue::from_string(self.data).map_err(|_| corrupt("data"))?,
            extensions: match self.extensions {
                Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("extensions"))?,
                None => Default::default(),
            },
        })
    }
}

/// The columns an event adds beside its attributes: its extensions as JSON (`None` when it
/// has none), and the `projectid` and `userid` context the log is searched by.
pub fn event_context(event: &Event) -> (Option<String>, Option<String>, Option<String>) {
    let extensions = (!event.extensions.is_empty())
        .then(|| serde_json::to_string(&event.extensions).expect("JSON values serialise"));
    let context = |name: &str| {
        event
            .extensions
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    (extensions, context("projectid"), context("userid"))
}

pub fn decode_status(status: &str) -> StoreResult<DeliveryStatus> {
    DeliveryStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt("delivery column `status`".into()))
}

pub fn decode_event_type(
    name: String,
    category: String,
    description: String,
    schema: Option<String>,
    sample_data: &str,
) -> StoreResult<crate::catalog::EventType> {
    let corrupt = || StoreError::Corrupt("event type column".into());
    Ok(crate::catalog::EventType {
        name,
        category,
        description,
        schema: schema
            .map(|s| serde_json::from_str(&s).map_err(|_| corrupt()))
            .transpose()?,
        sample_data: serde_json::from_str(sample_data).map_err(|_| corrupt())?,
        custom: true,
    })
}
