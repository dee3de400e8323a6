//! Events as published: parsing and validating CloudEvents structured JSON into a [`Event`],
//! and rendering a stored event back into the payload shapes receivers get.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::catalog::{self, Catalog};
use crate::clock::Millis;

/// Largest accepted event, as JSON on the wire.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Most events in one batch publish.
pub const MAX_BATCH_EVENTS: usize = 1_000;
/// Deepest nesting of arrays and objects an event (or any JSON body) may have. Deeper
/// documents are refused when they arrive, rather than accepted and then unreadable (JSON
/// parsers, serde_json's among them, stop at a depth of their own).
pub const MAX_JSON_DEPTH: usize = 64;
const MAX_ID_LEN: usize = 256;
const MAX_SOURCE_LEN: usize = 1024;
const MAX_SUBJECT_LEN: usize = 1024;
const MAX_EXTENSION_NAME_LEN: usize = 20;
const MAX_EXTENSION_VALUE_LEN: usize = 1024;

/// An event: validated on publish, immutable once stored.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub time: Millis,
    pub subject: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    /// `data` as the exact JSON text received, or `null` when absent.
    pub data: Box<RawValue>,
    /// Context attributes beyond the core ones (`platformid`, `projectid`, `userid`, ...),
    /// each a string, number or boolean, as CloudEvents allows.
    pub extensions: Map<String, Value>,
}

/// Why an event was refused: a stable `code` for machines and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    pub code: &'static str,
    pub message: String,
    /// Specifics for machines: where in `data` a schema failed, which event of a batch.
    pub details: Option<Value>,
}

impl EventError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_event", message)
    }

    /// Prefixes the message with the event's place in a batch.
    pub fn at_index(mut self, index: usize) -> Self {
        self.message = format!("events[{index}]: {}", self.message);
        let details = self
            .details
            .get_or_insert_with(|| Value::Object(Map::new()));
        details["index"] = index.into();
        self
    }
}

/// Parses one event in CloudEvents structured JSON. A missing `id` gets a new sortable one,
/// a missing `source` gets `default_source`, a missing `time` gets `now`.
pub fn parse_event(
    raw: &RawValue,
    catalog: &Catalog,
    now: Millis,
    default_source: &str,
) -> Result<Event, EventError> {
    if raw.get().len() > MAX_EVENT_BYTES {
        return Err(EventError::new(
            "event_too_large",
            format!(
                "the event is {} bytes; the limit is {MAX_EVENT_BYTES} bytes",
                raw.get().len()
            ),
        ));
    }
    let depth = json_depth(raw.get().as_bytes());
    if depth > MAX_JSON_DEPTH {
        return Err(EventError::new(
            "too_deep",
            format!(
                "the event nests arrays and objects {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
            ),
        ));
    }
    let attributes: BTreeMap<&str, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| EventError::invalid("an event must be a JSON object"))?;

    let mut event = Event {
        id: String::new(),
        source: default_source.to_string(),
        event_type: String::new(),
        time: now,
        subject: None,
        datacontenttype: None,
        dataschema: None,
        data: RawValue::from_string("null".into()).expect("null is JSON"),
        extensions: Map::new(),
    };
    let mut id = None;
    let mut event_type = None;
    let mut data_base64 = None;

    for (&name, &value) in &attributes {
        if value.get() == "null" {
            continue;
        }
        match name {
            "specversion" => {
                let v = string_attr(name, value, 8)?;
                if v != "1.0" {
                    return Err(EventError::invalid(format!(
                        "`specversion` must be \"1.0\", got \"{v}\""
                    )));
                }
            }
            "id" => id = Some(non_empty(name, string_attr(name, value, MAX_ID_LEN)?)?),
            "source" => {
                event.source = non_empty(name, string_attr(name, value, MAX_SOURCE_LEN)?)?;
            }
            "type" => {
                event_type = Some(string_attr(name, value, catalog::MAX_TYPE_LEN + 1)?);
            }
            "time" => {
                let text = string_attr(name, value, 64)?;
                event.time = parse_time(&text).ok_or_else(|| {
                    EventError::invalid(format!(
                        "`time` must be an RFC 3339 timestamp such as 2025-01-29T18:08:43.440Z, got \"{text}\""
                    ))
                })?;
            }
            "subject" => event.subject = Some(string_attr(name, value, MAX_SUBJECT_LEN)?),
            "datacontenttype" => event.datacontenttype = Some(string_attr(name, value, 256)?),
            "dataschema" => event.dataschema = Some(string_attr(name, value, 1024)?),
            "data" => event.data = value.to_owned(),
            "data_base64" => data_base64 = Some(string_attr(name, value, MAX_EVENT_BYTES)?),
            // Which tenant the event is for: routing, not part of the event (see `api::events`).
            "tenant" => {}
            _ => {
                let parsed = extension_value(name, value)?;
                event.extensions.insert(name.to_string(), parsed);
            }
        }
    }

    let event_type = event_type.ok_or_else(|| {
        EventError::new("missing_type", "the event has no `type`; it is required")
    })?;
    if catalog.get(&event_type).is_none() {
        return Err(EventError::new(
            "unknown_event_type",
            format!(
                "`{event_type}` is not in the event type catalog (GET /v1/event-types lists them)"
            ),
        ));
    }
    catalog
        .check_data(&event_type, &event.data)
        .map_err(|e| EventError {
            code: "invalid_data",
            message: format!("`data` does not match the schema of `{event_type}`: {e}"),
            details: Some(serde_json::json!({ "path": e.path })),
        })?;
    event.event_type = event_type;
    if let Some(encoded) = data_base64 {
        if event.data.get() != "null" {
            return Err(EventError::invalid(
                "an event carries either `data` or `data_base64`, not both",
            ));
        }
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&encoded)
            .map_err(|_| EventError::invalid("`data_base64` is not valid base64"))?;
        event
            .extensions
            .insert("data_base64".into(), Value::String(encoded));
    }
    event.id = id.unwrap_or_else(|| crate::ids::event_id(now));
    Ok(event)
}

/// How deeply arrays and objects nest in a JSON text (0 for a scalar), counted without
/// parsing it, so a document too deep to parse can still be measured and refused.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn string_attr(name: &str, value: &RawValue, max: usize) -> Result<String, EventError> {
    let s: String = serde_json::from_str(value.get())
        .map_err(|_| EventError::invalid(format!("`{name}` must be a string")))?;
    if s.len() > max {
        return Err(EventError::invalid(format!(
            "`{name}` is longer than {max} bytes"
        )));
    }
    if s.contains('\0') {
        return Err(no_nul(name));
    }
    Ok(s)
}

/// Attributes are text, and text columns (PostgreSQL's among them) refuse NUL characters.
fn no_nul(name: &str) -> EventError {
    EventError::invalid(format!(
        "`{name}` must not contain NUL (\\u0000) characters"
    ))
}

fn non_empty(name: &str, s: String) -> Result<String, EventError> {
    if s.trim().is_empty() {
        return Err(EventError::invalid(format!("`{name}` must not be empty")));
    }
    Ok(s)
}

fn extension_value(name: &str, value: &RawValue) -> Result<Value, EventError> {
    let valid_name = name.len() <= MAX_EXTENSION_NAME_LEN
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_name {
        return Err(EventError::invalid(format!(
            "`{name}` is not a valid CloudEvents attribute: extension names are 1 to \
             {MAX_EXTENSION_NAME_LEN} lowercase letters or digits (e.g. `platformid`)"
        )));
    }
    let parsed: Value = serde_json::from_str(value.get())
        .map_err(|_| EventError::invalid(format!("`{name}` is not valid JSON")))?;
    match &parsed {
        Value::String(s) if s.contains('\0') => Err(no_nul(name)),
        Value::String(s) if s.len() <= MAX_EXTENSION_VALUE_LEN => Ok(parsed),
        Value::Bool(_) | Value::Number(_) => Ok(parsed),
        Value::String(_) => Err(EventError::invalid(format!(
            "`{name}` is longer than {MAX_EXTENSION_VALUE_LEN} bytes"
        ))),
        _ => Err(EventError::invalid(format!(
            "`{name}` must be a string, number or boolean"
        ))),
    }
}

pub fn parse_time(text: &str) -> Option<Millis> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// `2025-01-29T18:08:43.440Z`: RFC 3339 in UTC with milliseconds.
pub fn format_time(ms: Millis) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

impl Event {
    /// CloudEvents 1.0 structured JSON.
    pub fn to_cloudevent(&self) -> Vec<u8> {
        let mut out = Map::new();
        out.insert("specversion".into(), "1.0".into());
        out.insert("id".into(), self.id.clone().into());
        out.insert("source".into(), self.source.clone().into());
        out.insert("type".into(), self.event_type.clone().into());
        out.insert("time".into(), format_time(self.time).into());
        if let Some(subject) = &self.subject {
            out.insert("subject".into(), subject.clone().into());
        }
        if let Some(dataschema) = &self.dataschema {
            out.insert("dataschema".into(), dataschema.clone().into());
        }
        let has_base64 = self.extensions.contains_key("data_base64");
        let content_type = self.datacontenttype.clone().or_else(|| {
            (!has_base64 && self.data.get() != "null").then(|| "application/json".to_string())
        });
        if let Some(ct) = content_type {
            out.insert("datacontenttype".into(), ct.into());
        }
        for (name, value) in &self.extensions {
            out.insert(name.clone(), value.clone());
        }
        if self.data.get() != "null" {
            out.insert("data".into(), Value::Null);
        }
        splice_data(out, &self.data)
    }

    /// The flat audit shape: `id`, `action`, `data`, `created`, `updated`, `platformId`,
    /// `projectId`, `userId` (and `purpose` on a test event).
    pub fn to_audit(&self) -> Vec<u8> {
        let context = |name: &str| self.extensions.get(name).cloned().unwrap_or(Value::Null);
        let time = format_time(self.time);
        let mut out = Map::new();
        out.insert("id".into(), self.id.clone().into());
        out.insert("action".into(), self.event_type.clone().into());
        out.insert("data".into(), Value::Null);
        out.insert("created".into(), time.clone().into());
        out.insert("updated".into(), time.into());
        out.insert("platformId".into(), context("platformid"));
        out.insert("projectId".into(), context("projectid"));
        out.insert("userId".into(), context("userid"));
        if let Some(purpose) = self.extensions.get("purpose") {
            out.insert("purpose".into(), purpose.clone());
        }
        splice_data(out, &self.data)
    }
}

/// Serialises `map` with the `data` member holding the exact stored JSON text, so the bytes a
/// publisher sent are the bytes a receiver gets.
fn splice_data(mut map: Map<String, Value>, data: &RawValue) -> Vec<u8> {
    let Some(_) = map.remove("data") else {
        return serde_json::to_vec(&map).expect("a JSON map serialises");
    };
    let mut out = serde_json::to_vec(&map).expect("a JSON map serialises");
    out.pop(); // the closing brace
    if !map.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Event, EventError> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        parse_event(&raw, &Catalog::builtin(), 1_700_000_000_000, "urn:test")
    }

    #[test]
    fn depth_is_counted_outside_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a": [1, {"b": 2}]}"#), 3);
        assert_eq!(
            json_depth(br#"{"a": "[[[{{{\"]]"}"#),
            1,
            "brackets in strings do not count"
        );
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let err = parse(&format!(r#"{{"type":"user.created","data":{deep}}}"#)).unwrap_err();
        assert_eq!(err.code, "too_deep");
        let fine = format!("{}{}", "[".repeat(63), "]".repeat(63));
        assert!(parse(&format!(r#"{{"type":"user.created","data":{fine}}}"#)).is_ok());
    }

    #[test]
    fn minimal_event_gets_id_source_and_time() {
        let e = parse(r#"{"type":"user.created"}"#).unwrap();
        assert!(e.id.starts_with("evt_"));
        assert_eq!(e.source, "urn:test");
        assert_eq!(e.time, 1_700_000_000_000);
        assert_eq!(e.data.get(), "null");
    }

    #[test]
    fn full_event_keeps_every_attribute() {
        let e = parse(
            r#"{"specversion":"1.0","id":"a1","source":"/auth","type":"user.created",
                "time":"2025-01-29T18:08:43.440Z","subject":"u1","data":{"x": [1, 2]},
                "platformid":"p1","projectid":"pr1","userid":"u1","traceparent":"00-ab"}"#,
        )
        .unwrap();
        assert_eq!((e.id.as_str(), e.source.as_str()), ("a1", "/auth"));
        assert_eq!(e.time, 1_738_174_123_440);
        assert_eq!(e.data.get(), r#"{"x": [1, 2]}"#);
        assert_eq!(e.extensions["platformid"], "p1");
        assert_eq!(e.extensions["traceparent"], "00-ab");
    }

    #[test]
    fn bad_events_get_precise_codes() {
        let code = |json: &str| parse(json).unwrap_err().code;
        assert_eq!(code(r#"{"data":{}}"#), "missing_type");
        assert_eq!(code(r#"{"type":"nope.nothing"}"#), "unknown_event_type");
        assert_eq!(
            code(r#"{"type":"user.created","specversion":"0.3"}"#),
            "invalid_event"
        );
        assert_eq!(
            code(r#"{"type":"user.created","time":"yesterday"}"#),
            "invalid_event"
        );
        assert_eq!(code(r#"{"type":"user.created","id":""}"#), "invalid_event");
        assert_eq!(
            code(r#"{"type":"user.created","Platform-Id":"x"}"#),
            "invalid_event"
        );
        assert_eq!(
            code(r#"{"type":"user.created","userid":{"a":1}}"#),
            "invalid_event"
        );
        assert_eq!(code(r#"[1]"#), "invalid_event");
        let big = format!(
            r#"{{"type":"user.created","data":"{}"}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        assert_eq!(code(&big), "event_too_large");
    }

    #[test]
    fn payloads_embed_data_verbatim() {
        let e = parse(
            r#"{"id":"e1","source":"/s","type":"flow.run.finished","time":"2025-01-29T18:08:43.44Z",
                "data":{"b": 1, "a": 2},"platformid":"p1"}"#,
        )
        .unwrap();
        let ce = String::from_utf8(e.to_cloudevent()).unwrap();
        assert!(ce.ends_with(r#""data":{"b": 1, "a": 2}}"#), "{ce}");
        let ce: Value = serde_json::from_str(&ce).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["time"], "2025-01-29T18:08:43.440Z");
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["platformid"], "p1");

        let audit: Value = serde_json::from_slice(&e.to_audit()).unwrap();
        assert_eq!(audit["action"], "flow.run.finished");
        assert_eq!(audit["platformId"], "p1");
        assert_eq!(audit["projectId"], Value::Null);
        assert_eq!(audit["data"]["a"], 2);
        assert_eq!(audit["created"], audit["updated"]);
    }
}
