//! W3C Trace Context for deliveries: every attempt carries a `traceparent` header that
//! continues the trace of the publish that caused it, however late the attempt.
//!
//! The trace is kept with the event, as CloudEvents' distributed-tracing extension attribute
//! `traceparent`: the one the publisher put on the event, or else the `traceparent` header of
//! its publish request, copied onto each event that had none (with `tracestate`, if it keeps
//! to the recommendation's limits). An event published with neither gets a trace derived from
//! its identity (tenant, source, id), so all attempts of all its deliveries, retries and
//! redeliveries included, share one trace without anything stored; it is not marked sampled,
//! since nobody asked for it to be recorded. Each attempt is a span of its own: a fresh span id, the stored context as
//! its parent.

use serde_json::{Map, Value};

use crate::event::Event;

/// The extension attribute (and request header) holding the trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent`: version 00's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` as the W3C recommendation says: version 00 exactly; a later
    /// version by its first four fields; ids not all zero; lowercase hex. `None` for anything
    /// else, which callers then ignore (an invalid header is not an error).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let text = text.trim();
        let mut parts = text.splitn(5, '-');
        let version = hex::<1>(parts.next()?)?[0];
        let trace_id = hex::<16>(parts.next()?)?;
        let parent_id = hex::<8>(parts.next()?)?;
        let flags_field = parts.next()?;
        let flags = hex::<1>(flags_field.get(..2)?)?[0];
        let rest = parts.next();
        match version {
            0 if rest.is_none() && flags_field.len() == 2 => {}
            0 | 0xff => return None,
            // A later version may append fields, after a dash.
            _ if flags_field.len() == 2 => {}
            _ => return None,
        }
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The context an attempt of a delivery of `event` continues.
    pub fn of_event(tenant_id: &str, event: &Event) -> TraceParent {
        if let Some(stored) = event
            .extensions
            .get(TRACEPARENT)
            .and_then(Value::as_str)
            .and_then(TraceParent::parse)
        {
            return stored;
        }
        // Derived from what identifies the event: the same for every attempt.
        let mut identity = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [tenant_id, &event.source, &event.id] {
            identity.update(&(part.len() as u64).to_be_bytes());
            identity.update(part.as_bytes());
        }
        let digest = identity.finish();
        let bytes = digest.as_ref();
        let mut trace_id: [u8; 16] = bytes[..16].try_into().expect("a digest has 32 bytes");
        let mut parent_id: [u8; 8] = bytes[16..24].try_into().expect("a digest has 32 bytes");
        // All-zero ids are invalid; a digest of zeros is as good as impossible, but cheap to rule out.
        trace_id[15] |= (trace_id == [0; 16]) as u8;
        parent_id[7] |= (parent_id == [0; 8]) as u8;
        TraceParent {
            trace_id,
            parent_id,
            flags: 0x00,
        }
    }

    /// The `traceparent` of a new span under this one (an attempt).
    pub fn child(&self) -> String {
        let mut parent_id = crate::ids::random_bytes::<8>();
        parent_id[7] |= (parent_id == [0; 8]) as u8;
        TraceParent { parent_id, ..*self }.to_string()
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.parent_id),
            self.flags
        )
    }
}

/// Copies the publish request's trace context onto an event that carries none of its own.
/// An invalid `traceparent` is ignored, as the recommendation asks; `tracestate` goes only
/// with a valid one, and only within the recommendation's limits (it is copied onto every
/// event of a batch and sent with every attempt).
pub fn adopt(extensions: &mut Map<String, Value>, traceparent: &str, tracestate: Option<&str>) {
    if extensions.contains_key(TRACEPARENT) {
        return;
    }
    let Some(parent) = TraceParent::parse(traceparent) else {
        return;
    };
    extensions.insert(TRACEPARENT.into(), Value::String(parent.to_string()));
    if let Some(state) = tracestate.map(str::trim).filter(|s| valid_tracestate(s)) {
        extensions.insert(TRACESTATE.into(), Value::String(state.to_string()));
    }
}

/// The longest `tracestate` kept, and its most list members (the recommendation's limits).
const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A `tracestate` within the limits: printable ASCII, at most 32 `key=value` members.
fn valid_tracestate(state: &str) -> bool {
    let members: Vec<&str> = state
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    !members.is_empty()
        && state.len() <= MAX_TRACESTATE_BYTES
        && members.len() <= MAX_TRACESTATE_MEMBERS
        && state.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && members.iter().all(|m| {
            m.split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
        })
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn event(extensions: Map<String, Value>) -> Event {
        Event {
            id: "e1".into(),
            source: "/s".into(),
            event_type: "user.created".into(),
            time: 0,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: RawValue::from_string("null".into()).unwrap(),
            extensions,
        }
    }

    #[test]
    fn parses_the_recommendations_examples_and_refuses_the_rest() {
        let parsed = TraceParent::parse(SAMPLE).unwrap();
        assert_eq!(parsed.to_string(), SAMPLE);
        assert_eq!(parsed.flags, 1);
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_attempt_continues_the_events_trace_with_a_span_of_its_own() {
        let mut extensions = Map::new();
        adopt(&mut extensions, SAMPLE, Some("congo=t61rcWkgMzE"));
        let stored = event(extensions);
        let parent = TraceParent::of_event("ten_a", &stored);
        assert_eq!(parent.to_string(), SAMPLE);
        let (a, b) = (parent.child(), parent.child());
        let a = TraceParent::parse(&a).unwrap();
        assert_eq!(a.trace_id, parent.trace_id);
        assert_eq!(a.flags, parent.flags);
        assert_ne!(a.parent_id, parent.parent_id);
        assert_ne!(a, TraceParent::parse(&b).unwrap());
        assert_eq!(stored.extensions[TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn the_events_own_context_wins_and_bad_headers_are_ignored() {
        let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let mut extensions = Map::new();
        extensions.insert(TRACEPARENT.into(), Value::String(own.into()));
        adopt(&mut extensions, SAMPLE, None);
        assert_eq!(extensions[TRACEPARENT], own);
        let mut none = Map::new();
        adopt(&mut none, "garbage", Some("a=b"));
        assert!(none.is_empty());
    }

    #[test]
    fn a_tracestate_beyond_the_limits_is_dropped_with_the_traceparent_kept() {
        let long = format!("k={}", "v".repeat(600));
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            long.as_str(),
            many.as_str(),
            "k=v\u{7f}",
            "novalue",
            "=v",
            " , ",
        ] {
            let mut extensions = Map::new();
            adopt(&mut extensions, SAMPLE, Some(bad));
            assert_eq!(extensions[TRACEPARENT], SAMPLE, "{bad}");
            assert!(!extensions.contains_key(TRACESTATE), "{bad}");
        }
        let mut extensions = Map::new();
        adopt(
            &mut extensions,
            SAMPLE,
            Some("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
        );
        assert_eq!(
            extensions[TRACESTATE],
            "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"
        );
    }

    #[test]
    fn an_event_without_a_context_gets_one_from_its_identity() {
        let e = event(Map::new());
        let first = TraceParent::of_event("ten_a", &e);
        assert_eq!(first, TraceParent::of_event("ten_a", &e));
        assert_eq!(first.flags, 0, "not sampled: nobody asked");
        assert_ne!(first.trace_id, TraceParent::of_event("ten_b", &e).trace_id);
        assert!(TraceParent::parse(&first.to_string()).is_some());
    }
}
