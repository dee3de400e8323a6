//! Herald's own events, published into a tenant's log like any other: `herald.delivery.failed`
//! when a delivery is given up, `herald.stream.disabled` and `herald.stream.enabled` when a
//! stream changes state. A stream can subscribe to them, so failure alerts are just another
//! stream. Failures of deliveries of `herald.*` events raise no further notice, so a broken
//! alert stream cannot feed itself.

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::clock::Millis;
use crate::event::Event;

pub const DELIVERY_FAILED: &str = "herald.delivery.failed";
pub const STREAM_DISABLED: &str = "herald.stream.disabled";
pub const STREAM_ENABLED: &str = "herald.stream.enabled";

/// Whether a failure of a delivery of `event_type` raises a notice.
pub fn notifies_failure_of(event_type: &str) -> bool {
    !event_type.starts_with("herald.")
}

fn notice(tenant_id: &str, event_type: &str, subject: &str, data: Value, now: Millis) -> Event {
    Event {
        id: crate::ids::event_id(now),
        source: format!("urn:herald:{tenant_id}"),
        event_type: event_type.to_string(),
        time: now,
        subject: Some(subject.to_string()),
        datacontenttype: None,
        dataschema: None,
        data: RawValue::from_string(data.to_string()).expect("a JSON value is JSON"),
        extensions: Map::new(),
    }
}

/// What a failed-delivery notice reports.
pub struct FailedDelivery<'a> {
    pub tenant_id: &'a str,
    pub delivery_id: &'a str,
    pub stream_id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub attempts: u32,
    pub last_response_status: Option<u16>,
    pub last_error: Option<&'a str>,
    pub reason: &'a str,
}

pub fn delivery_failed(f: &FailedDelivery<'_>, now: Millis) -> Event {
    notice(
        f.tenant_id,
        DELIVERY_FAILED,
        f.stream_id,
        json!({
            "delivery_id": f.delivery_id,
            "stream_id": f.stream_id,
            "event_id": f.event_id,
            "event_type": f.event_type,
            "attempts": f.attempts,
            "last_response_status": f.last_response_status,
            "last_error": f.last_error,
            "reason": f.reason,
        }),
        now,
    )
}

pub fn stream_disabled(
    tenant_id: &str,
    stream_id: &str,
    stream_name: &str,
    reason: &str,
    now: Millis,
) -> Event {
    notice(
        tenant_id,
        STREAM_DISABLED,
        stream_id,
        json!({ "stream_id": stream_id, "stream_name": stream_name, "reason": reason }),
        now,
    )
}

pub fn stream_enabled(
    tenant_id: &str,
    stream_id: &str,
    stream_name: &str,
    backlog: &str,
    now: Millis,
) -> Event {
    notice(
        tenant_id,
        STREAM_ENABLED,
        stream_id,
        json!({ "stream_id": stream_id, "stream_name": stream_name, "backlog": backlog }),
        now,
    )
}
