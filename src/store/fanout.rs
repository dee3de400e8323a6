//! Which streams an event goes to, the rules both stores share: what a publish writes
//! ([`plan`]: each event's deliveries, which of them are leased to the publishing node, or a
//! pending fan-out when they are more than [`MAX_INLINE_DELIVERIES`]), how a pending
//! fan-out's streams are written in its row, and what each of its chunks creates.
//!
//! A deferred publish commits its events together with a `fanouts` row, so the deliveries
//! are as durable as if they had been written at once; each later chunk creates the
//! deliveries of the next few events and moves the row's `next` forward in the same commit.
//! The streams are those subscribed at the publish, with their patterns as they were then:
//! a stream changed meanwhile gets what it would have got had the deliveries been written at
//! once, and a stream deleted meanwhile gets nothing.

use std::sync::Arc;

use super::{Claimed, MAX_INLINE_DELIVERIES, Published, StoreError, StoreResult};
use crate::catalog::pattern_matches;
use crate::clock::Millis;
use crate::event::Event;

/// A stream that can receive a publish's deliveries (enabled or paused).
pub struct Subscriber {
    pub id: String,
    pub patterns: Vec<String>,
    /// Enabled, and sent by the dispatchers: its new deliveries may be leased at publish to
    /// the publishing node. A `herald listen` stream's connection may be on another node,
    /// which hears of due work by notification instead.
    pub leasable: bool,
}

/// The SQL test (on a `streams` row) of [`Subscriber::leasable`], the same on both stores.
pub const LEASABLE: &str = "status = 'enabled' AND destination_type <> 'listen'";

/// Whether a stream subscribed with `patterns` receives events of `event_type`.
pub fn subscribed(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, event_type))
}

/// What a deferred publish writes in its `fanouts` row.
pub struct Pending {
    /// The new events, in publish order.
    pub event_seqs: Vec<i64>,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The `streams` column (see [`encode_streams`]).
    pub streams: String,
}

/// The pending fan-out of a publish whose new events (type and seq, in order) would create
/// more deliveries than one commit takes; `None` when their deliveries are written at once.
fn deferred<'a>(
    streams: &[Subscriber],
    new_events: impl Iterator<Item = (&'a str, i64)> + Clone,
) -> Option<Pending> {
    let types = new_events.clone().map(|(event_type, _)| event_type);
    if !too_large(streams, types.clone()) {
        return None;
    }
    let event_seqs: Vec<i64> = new_events.map(|(_, seq)| seq).collect();
    Some(Pending {
        first_seq: *event_seqs.iter().min()?,
        last_seq: *event_seqs.iter().max()?,
        event_seqs,
        streams: encode_streams(streams, types),
    })
}

/// A delivery a publish or a fan-out's chunk creates.
pub struct NewDelivery<'a> {
    pub id: String,
    pub stream_id: &'a str,
    pub event_seq: i64,
    pub event_type: &'a str,
    /// Leased to the publishing node: which of the plan's results holds its [`Claimed`]
    /// (the event's index, then the lease's), whose key and lease the store fills in once
    /// the row exists.
    pub leased: Option<(usize, usize)>,
}

/// What a publish writes, decided before any delivery row: each event's result, the
/// deliveries, and the pending fan-out that takes their place when they are too many.
pub struct PublishPlan<'a> {
    pub published: Vec<Published>,
    pub deliveries: Vec<NewDelivery<'a>>,
    pub pending: Option<Pending>,
}

/// Plans a publish of `events` (each with its new row's seq; `None` for a duplicate, which
/// creates nothing) to a tenant's `streams`. With `lease_until`, the deliveries to leasable
/// streams are leased to the publishing node and returned in the results, their key and
/// lease left for the store to set.
pub fn plan<'a>(
    tenant_id: &str,
    streams: &'a [Subscriber],
    events: &'a [Event],
    seqs: &[Option<i64>],
    lease_until: Option<Millis>,
    now: Millis,
) -> PublishPlan<'a> {
    let new_events = events
        .iter()
        .zip(seqs)
        .filter_map(|(e, seq)| Some((e.event_type.as_str(), (*seq)?)));
    let pending = deferred(streams, new_events);
    let deferred = pending.is_some();
    let mut plan = PublishPlan {
        published: Vec::with_capacity(events.len()),
        deliveries: Vec::new(),
        pending,
    };
    for (index, (event, seq)) in events.iter().zip(seqs).enumerate() {
        let mut result = Published {
            id: event.id.clone(),
            source: event.source.clone(),
            duplicate: seq.is_none(),
            streams: Vec::new(),
            leased: Vec::new(),
            deferred: deferred && seq.is_some(),
        };
        if let Some(&event_seq) = seq.as_ref() {
            // One copy of the event, however many streams it is leased to.
            let mut shared: Option<Arc<Event>> = None;
            for stream in streams {
                if !subscribed(&stream.patterns, &event.event_type) {
                    continue;
                }
                result.streams.push(stream.id.clone());
                if deferred {
                    continue;
                }
                let id = crate::ids::delivery_id(now);
                let mut leased = None;
                if let Some(lease_until) = lease_until.filter(|_| stream.leasable) {
                    leased = Some((index, result.leased.len()));
                    result.leased.push(Claimed {
                        key: 0,
                        lease: 0,
                        lease_until,
                        id: id.clone(),
                        tenant_id: tenant_id.to_string(),
                        stream_id: stream.id.clone(),
                        attempts: 0,
                        event: shared
                            .get_or_insert_with(|| Arc::new(event.clone()))
                            .clone(),
                    });
                }
                plan.deliveries.push(NewDelivery {
                    id,
                    stream_id: &stream.id,
                    event_seq,
                    event_type: &event.event_type,
                    leased,
                });
            }
        }
        plan.published.push(result);
    }
    plan
}

/// The deliveries a fan-out's chunk creates: to each of the tile's `streams` still there
/// (`exists`), one for each of its events still there (seq and type) that it subscribed to.
pub fn chunk_deliveries<'a>(
    streams: &'a [(String, Vec<String>)],
    exists: impl Fn(&str) -> bool,
    events: &'a [(i64, String)],
    now: Millis,
) -> Vec<NewDelivery<'a>> {
    let targets: Vec<&(String, Vec<String>)> =
        streams.iter().filter(|(id, _)| exists(id)).collect();
    let mut deliveries = Vec::new();
    for (event_seq, event_type) in events {
        for (stream_id, patterns) in &targets {
            if subscribed(patterns, event_type) {
                deliveries.push(NewDelivery {
                    id: crate::ids::delivery_id(now),
                    stream_id,
                    event_seq: *event_seq,
                    event_type,
                    leased: None,
                });
            }
        }
    }
    deliveries
}

/// The embedded store's `event_seqs` column (a JSON array).
pub fn decode_event_seqs(column: &str) -> StoreResult<Vec<i64>> {
    serde_json::from_str(column)
        .map_err(|_| StoreError::Corrupt("fan-out column `event_seqs`".into()))
}

/// Whether publishing events of these types to `streams` creates more deliveries than one
/// publish writes in its own commit.
fn too_large<'a>(streams: &[Subscriber], event_types: impl Iterator<Item = &'a str>) -> bool {
    let mut deliveries = 0;
    for event_type in event_types {
        deliveries += streams
            .iter()
            .filter(|s| subscribed(&s.patterns, event_type))
            .count();
        if deliveries > MAX_INLINE_DELIVERIES {
            return true;
        }
    }
    false
}

/// The `streams` column of a fan-out: the streams any of `event_types` goes to, as
/// `[[id, [pattern, ...]], ...]`.
fn encode_streams<'a>(
    streams: &[Subscriber],
    event_types: impl Iterator<Item = &'a str> + Clone,
) -> String {
    let used: Vec<(&str, &[String])> = streams
        .iter()
        .filter(|s| {
            event_types
                .clone()
                .any(|event_type| subscribed(&s.patterns, event_type))
        })
        .map(|s| (s.id.as_str(), s.patterns.as_slice()))
        .collect();
    serde_json::to_string(&used).expect("strings always serialize")
}

pub fn decode_streams(column: &str) -> StoreResult<Vec<(String, Vec<String>)>> {
    serde_json::from_str(column).map_err(|_| StoreError::Corrupt("fan-out column `streams`".into()))
}

/// Where a fan-out stands: the next chunk begins at event `next` and stream `next_stream`,
/// in the row of tiles that ends before event `row_end` (set when a row begins, so that a row
/// is finished with the height it began with, whatever chunk size the caller asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub next: usize,
    pub next_stream: usize,
    pub row_end: usize,
}

/// One chunk of a fan-out: the events `events` (indexes in the fan-out's list) to the streams
/// `streams` (indexes in its snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub events: std::ops::Range<usize>,
    pub streams: std::ops::Range<usize>,
}

impl Tile {
    /// The chunk at `cursor` of a fan-out of `events` events to `streams` streams, about
    /// `limit` deliveries; and the cursor after it, `None` once the fan-out is done.
    ///
    /// A chunk is a square-ish tile, a few events to a few streams, rather than one event to
    /// every stream: each stream has its own region of the deliveries' per-stream indexes,
    /// so a chunk touching every stream rewrites a page of each for a handful of rows, and on
    /// the embedded store every page a commit changes is written to the WAL again.
    pub fn at(
        cursor: Cursor,
        events: usize,
        streams: usize,
        limit: usize,
    ) -> (Tile, Option<Cursor>) {
        let first = cursor.next.min(events);
        if streams == 0 || first == events {
            let empty = Tile {
                events: first..first,
                streams: 0..0,
            };
            return (empty, None);
        }
        let limit = limit.max(1);
        let row_end =
            if cursor.next_stream > 0 && first < cursor.row_end && cursor.row_end <= events {
                cursor.row_end
            } else {
                let square = ((limit / 2).max(1) as f64).sqrt().ceil() as usize;
                (first + (limit / square.min(streams)).max(1)).min(events)
            };
        // Wider when few events are left in the row, so that a chunk still carries about
        // `limit`.
        let width = (limit / (row_end - first)).clamp(1, streams);
        let start = cursor.next_stream.min(streams - 1);
        let tile = Tile {
            events: first..row_end,
            streams: start..(start + width).min(streams),
        };
        let after = if tile.streams.end < streams {
            Some(Cursor {
                next: first,
                next_stream: tile.streams.end,
                row_end,
            })
        } else if row_end < events {
            Some(Cursor {
                next: row_end,
                next_stream: 0,
                row_end: 0,
            })
        } else {
            None
        };
        (tile, after)
    }
}

/// The `streams` column with `stream_id` taking no more events (its patterns emptied, its
/// place kept: cursors index the list), or `None` when it is not there. A stream whose
/// backlog is skipped must not get the rest of a pending fan-out either.
pub fn without_stream(column: &str, stream_id: &str) -> StoreResult<Option<String>> {
    let mut streams = decode_streams(column)?;
    let mut changed = false;
    for (id, patterns) in &mut streams {
        if id == stream_id && !patterns.is_empty() {
            patterns.clear();
            changed = true;
        }
    }
    Ok(changed.then(|| serde_json::to_string(&streams).expect("strings always serialize")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(id: &str, pattern: &str) -> Subscriber {
        Subscriber {
            id: id.into(),
            patterns: vec![pattern.into()],
            leasable: true,
        }
    }

    fn event(id: &str, event_type: &str) -> Event {
        Event {
            id: id.into(),
            source: "urn:test".into(),
            event_type: event_type.into(),
            time: 0,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: serde_json::value::RawValue::from_string("null".into()).unwrap(),
            extensions: Default::default(),
        }
    }

    #[test]
    fn a_plan_leases_only_leasable_streams_and_points_at_each_lease() {
        let mut listen = subscriber("est_listen", "*");
        listen.leasable = false;
        let streams = [
            subscriber("est_users", "user.*"),
            listen,
            subscriber("est_all", "*"),
        ];
        let events = [
            event("a", "user.created"),
            event("b", "user.created"),
            event("c", "flow.run.finished"),
        ];
        // `b` is a duplicate: it creates nothing.
        let plan = plan(
            "ten_a",
            &streams,
            &events,
            &[Some(1), None, Some(3)],
            Some(99),
            5,
        );
        assert!(plan.pending.is_none());
        let made: Vec<(&str, i64, bool)> = plan
            .deliveries
            .iter()
            .map(|d| (d.stream_id, d.event_seq, d.leased.is_some()))
            .collect();
        assert_eq!(
            made,
            [
                ("est_users", 1, true),
                ("est_listen", 1, false),
                ("est_all", 1, true),
                ("est_listen", 3, false),
                ("est_all", 3, true),
            ]
        );
        assert!(plan.published[1].duplicate && plan.published[1].streams.is_empty());
        assert_eq!(plan.published[2].streams, ["est_listen", "est_all"]);
        let leased: Vec<Vec<&str>> = plan
            .published
            .iter()
            .map(|p| p.leased.iter().map(|c| c.stream_id.as_str()).collect())
            .collect();
        let none: Vec<&str> = Vec::new();
        assert_eq!(
            leased,
            [vec!["est_users", "est_all"], none, vec!["est_all"]]
        );
        for d in &plan.deliveries {
            if let Some((event, at)) = d.leased {
                let claimed = &plan.published[event].leased[at];
                assert_eq!(
                    (claimed.id.as_str(), claimed.lease_until),
                    (d.id.as_str(), 99)
                );
                assert_eq!(claimed.stream_id, d.stream_id);
            }
        }
        // Without a lease, nothing is leased.
        let plan = plan_unleased(&streams, &events);
        assert!(plan.deliveries.iter().all(|d| d.leased.is_none()));
        assert!(plan.published.iter().all(|p| p.leased.is_empty()));
    }

    fn plan_unleased<'a>(streams: &'a [Subscriber], events: &'a [Event]) -> PublishPlan<'a> {
        plan(
            "ten_a",
            streams,
            events,
            &[Some(1), Some(2), Some(3)],
            None,
            5,
        )
    }

    #[test]
    fn a_deferred_plan_names_the_streams_but_creates_no_delivery() {
        let streams: Vec<Subscriber> = (0..MAX_INLINE_DELIVERIES + 1)
            .map(|i| subscriber(&format!("est_{i}"), "*"))
            .collect();
        let events = [event("a", "user.created")];
        let plan = plan("ten_a", &streams, &events, &[Some(7)], Some(99), 5);
        assert!(plan.deliveries.is_empty());
        assert_eq!(
            plan.pending.as_ref().map(|p| p.event_seqs.clone()),
            Some(vec![7])
        );
        assert!(plan.published[0].deferred);
        assert_eq!(plan.published[0].streams.len(), MAX_INLINE_DELIVERIES + 1);
        assert!(plan.published[0].leased.is_empty());
    }

    #[test]
    fn a_chunk_goes_event_by_event_to_the_streams_still_there_and_not_skipped() {
        let column =
            r#"[["est_a",["user.*"]],["est_gone",["*"]],["est_skipped",["*"]],["est_b",["*"]]]"#;
        let skipped = without_stream(column, "est_skipped").unwrap().unwrap();
        let streams = decode_streams(&skipped).unwrap();
        let events = vec![
            (1, "user.created".to_string()),
            (2, "flow.x".to_string()),
            (3, "user.deleted".to_string()),
        ];
        let made: Vec<(&str, i64)> = chunk_deliveries(&streams, |id| id != "est_gone", &events, 5)
            .iter()
            .map(|d| (d.stream_id, d.event_seq))
            .collect();
        // Event by event, as the publish would have written them: each stream's deliveries
        // take seqs in its events' order.
        let expected = [
            ("est_a", 1),
            ("est_b", 1),
            ("est_b", 2),
            ("est_a", 3),
            ("est_b", 3),
        ];
        assert_eq!(made, expected);
    }

    #[test]
    fn a_publish_defers_only_beyond_the_inline_limit() {
        let streams: Vec<_> = (0..10)
            .map(|i| subscriber(&format!("s{i}"), "user.*"))
            .collect();
        let users = |n| std::iter::repeat_n("user.created", n);
        assert!(!too_large(&streams, users(MAX_INLINE_DELIVERIES / 10)));
        assert!(too_large(&streams, users(MAX_INLINE_DELIVERIES / 10 + 1)));
        // Events no stream takes cost nothing.
        assert!(!too_large(&streams, std::iter::repeat_n("flow.run", 5_000)));
    }

    #[test]
    fn the_row_names_only_the_streams_the_events_go_to() {
        let streams = [subscriber("a", "user.*"), subscriber("b", "flow.*")];
        let column = encode_streams(&streams, ["user.created"].into_iter());
        assert_eq!(
            decode_streams(&column).unwrap(),
            vec![("a".to_string(), vec!["user.*".to_string()])]
        );
        assert!(decode_streams("{").is_err());
    }

    /// Walks a fan-out to its end, chunk size changing as `limit_at` says, and checks each
    /// (event, stream) pair is covered exactly once.
    fn walk(events: usize, streams: usize, limit_at: impl Fn(usize) -> usize) -> usize {
        let mut covered = vec![0u8; events * streams];
        let mut cursor = Some(Cursor::default());
        let mut chunks = 0;
        while let Some(at) = cursor {
            let limit = limit_at(chunks);
            let (tile, after) = Tile::at(at, events, streams, limit);
            if streams > 0 && events > 0 {
                assert!(!tile.events.is_empty() && !tile.streams.is_empty());
            }
            for e in tile.events.clone() {
                for s in tile.streams.clone() {
                    covered[e * streams + s] += 1;
                }
            }
            cursor = after;
            chunks += 1;
            assert!(
                chunks <= events * streams + 1,
                "the cursor does not advance"
            );
        }
        assert!(covered.iter().all(|&n| n == 1), "{events}x{streams}");
        chunks
    }

    #[test]
    fn chunks_cover_every_event_and_stream_once() {
        for (events, streams, limit) in [
            (1_000, 200, 250),
            (7, 3, 250),
            (1, 5_000, 250),
            (300, 1, 250),
            (41, 40, 250),
            (10, 10, 1),
            (10, 10, 0),
            (0, 10, 250),
            (10, 0, 250),
        ] {
            let chunks = walk(events, streams, |_| limit);
            let deliveries = events * streams;
            assert!(
                chunks <= deliveries.div_ceil(limit.max(1)) * 2 + 1,
                "{chunks} chunks"
            );
        }
        // A square-ish tile: a few events to a few streams.
        let (tile, _) = Tile::at(Cursor::default(), 1_000, 200, 250);
        assert_eq!((tile.events.len(), tile.streams.len()), (20, 12));
    }

    #[test]
    fn a_row_resumed_with_another_chunk_size_keeps_its_height() {
        // As after an upgrade that changed the chunk size, or a node of another version.
        walk(1_000, 200, |chunk| if chunk % 3 == 0 { 250 } else { 1_000 });
        walk(97, 31, |chunk| 1 + chunk * 7 % 300);
    }

    #[test]
    fn a_skipped_stream_keeps_its_place_but_takes_nothing() {
        let streams = [subscriber("a", "user.*"), subscriber("b", "*")];
        let column = encode_streams(&streams, ["user.created"].into_iter());
        let changed = without_stream(&column, "a").unwrap().unwrap();
        let decoded = decode_streams(&changed).unwrap();
        assert_eq!(decoded[0], ("a".to_string(), vec![]));
        assert_eq!(decoded[1].0, "b");
        assert_eq!(without_stream(&changed, "a").unwrap(), None);
        assert_eq!(without_stream(&column, "zzz").unwrap(), None);
    }
}
