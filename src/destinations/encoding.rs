//! The encoder every destination kind shares: what an event looks like on the wire. Two stream
//! settings choose it, the same for every kind: `payload_format` (CloudEvents or the flat audit
//! shape) and, where a transport has both CloudEvents content modes, `content_mode`
//! (`structured`: the whole event in the body; `binary`: `data` in the body and the attributes
//! in the transport's own headers). A kind that has only one mode refuses the other when the
//! stream is created, and says which it has.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, format_time};

/// What the receiver gets in the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// CloudEvents 1.0 JSON.
    #[default]
    Cloudevents,
    /// The flat audit-log shape: `id`, `action`, `data`, `created`, `updated`, `platformId`,
    /// `projectId`, `userId`.
    Audit,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Cloudevents => "cloudevents",
            PayloadFormat::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cloudevents" => Some(PayloadFormat::Cloudevents),
            "audit" => Some(PayloadFormat::Audit),
            _ => None,
        }
    }
}

/// How a CloudEvent travels on a transport that has both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentMode {
    /// The whole event, attributes and `data`, as one JSON document in the body.
    Structured,
    /// `data` alone in the body; each attribute in a header of the transport (`ce-type`...).
    Binary,
}

impl ContentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentMode::Structured => "structured",
            ContentMode::Binary => "binary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "structured" => Some(ContentMode::Structured),
            "binary" => Some(ContentMode::Binary),
            _ => None,
        }
    }
}

/// A stream's content settings, resolved against its destination kind's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub format: PayloadFormat,
    pub mode: ContentMode,
}

/// One event rendered for a transport.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub content_type: String,
    /// CloudEvents attributes for the transport's headers (binary mode only), each as
    /// `(name without prefix, value as text)`.
    pub attributes: Vec<(String, String)>,
}

impl Encoding {
    /// Checks that the settings can go together on a kind that supports `modes`.
    pub fn validate(&self, kind: &str, modes: &[ContentMode]) -> Result<(), String> {
        if !modes.contains(&self.mode) {
            let supported: Vec<_> = modes.iter().map(|m| format!("`{}`", m.as_str())).collect();
            return Err(format!(
                "`content_mode` `{}` is not available for `{kind}` destinations; they support {}",
                self.mode.as_str(),
                supported.join(", ")
            ));
        }
        if self.mode == ContentMode::Binary && self.format != PayloadFormat::Cloudevents {
            return Err(
                "`content_mode` `binary` carries CloudEvents attributes in headers: it needs `payload_format` `cloudevents`"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn encode(&self, event: &Event) -> Encoded {
        match (self.format, self.mode) {
            (PayloadFormat::Audit, _) => Encoded {
                body: event.to_audit(),
                content_type: "application/json".into(),
                attributes: Vec::new(),
            },
            (PayloadFormat::Cloudevents, ContentMode::Structured) => Encoded {
                body: event.to_cloudevent(),
                content_type: "application/cloudevents+json".into(),
                attributes: Vec::new(),
            },
            (PayloadFormat::Cloudevents, ContentMode::Binary) => binary(event),
        }
    }
}

/// CloudEvents binary mode: `data` as the body (decoded when it came as `data_base64`), every
/// other attribute beside it.
fn binary(event: &Event) -> Encoded {
    use base64::Engine as _;
    let mut attributes = vec![
        ("specversion".to_string(), "1.0".to_string()),
        ("id".to_string(), event.id.clone()),
        ("source".to_string(), event.source.clone()),
        ("type".to_string(), event.event_type.clone()),
        ("time".to_string(), format_time(event.time)),
    ];
    if let Some(subject) = &event.subject {
        attributes.push(("subject".into(), subject.clone()));
    }
    if let Some(dataschema) = &event.dataschema {
        attributes.push(("dataschema".into(), dataschema.clone()));
    }
    let mut body = None;
    for (name, value) in &event.extensions {
        if name == "data_base64" {
            body = value
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        attributes.push((name.clone(), text));
    }
    let is_binary = body.is_some();
    let body = body.unwrap_or_else(|| match event.data.get() {
        "null" => Vec::new(),
        json => json.as_bytes().to_vec(),
    });
    let content_type = event.datacontenttype.clone().unwrap_or_else(|| {
        if is_binary {
            "application/octet-stream".into()
        } else {
            "application/json".into()
        }
    });
    Encoded {
        body,
        content_type,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event() -> Event {
        let mut extensions = serde_json::Map::new();
        extensions.insert("userid".into(), "u 1%".into());
        extensions.insert("attempt".into(), 3.into());
        Event {
            id: "evt_1".into(),
            source: "/auth".into(),
            event_type: "user.created".into(),
            time: 0,
            subject: Some("u_1".into()),
            datacontenttype: None,
            dataschema: None,
            data: RawValue::from_string(r#"{"a": 1}"#.into()).unwrap(),
            extensions,
        }
    }

    #[test]
    fn binary_mode_puts_data_in_the_body_and_attributes_beside_it() {
        let encoding = Encoding {
            format: PayloadFormat::Cloudevents,
            mode: ContentMode::Binary,
        };
        let encoded = encoding.encode(&event());
        assert_eq!(encoded.body, br#"{"a": 1}"#);
        assert_eq!(encoded.content_type, "application/json");
        let get = |name: &str| {
            encoded
                .attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("type"), Some("user.created"));
        assert_eq!(get("subject"), Some("u_1"));
        assert_eq!(get("userid"), Some("u 1%"));
        assert_eq!(get("attempt"), Some("3"));
        assert_eq!(get("specversion"), Some("1.0"));
    }

    #[test]
    fn binary_mode_needs_cloudevents_and_a_kind_that_has_it() {
        let binary_audit = Encoding {
            format: PayloadFormat::Audit,
            mode: ContentMode::Binary,
        };
        let all = [ContentMode::Structured, ContentMode::Binary];
        assert!(binary_audit.validate("webhook", &all).is_err());
        let binary = Encoding {
            format: PayloadFormat::Cloudevents,
            mode: ContentMode::Binary,
        };
        assert!(binary.validate("webhook", &all).is_ok());
        let err = binary
            .validate("eventbridge", &[ContentMode::Structured])
            .unwrap_err();
        assert!(err.contains("`structured`"), "{err}");
    }
}
