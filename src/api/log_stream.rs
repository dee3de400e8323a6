//! `GET /v1/events/stream`: the tenant's event log as Server-Sent Events, the pull
//! alternative to a push stream. Each message's `id` is the event's offset in the log, opaque
//! to the client; `Last-Event-ID` (what an `EventSource` sends when it reconnects) or
//! `?from=` resumes right after it, `?from_timestamp=` serves the events received since a
//! time, `?event_type=` (repeatable, patterns as in subscriptions) filters. The store serves
//! only events that nothing committed later can precede (`Store::read_log`), so a reader that
//! resumes after the last offset it saw misses nothing and sees nothing twice.
//!
//! Readers wait on a [`LogSignal`] (this node's publishes and, on PostgreSQL, other nodes'
//! notifications) and poll besides, since a signal is only a hint. A response never ends on
//! its own, so each is bounded apart from requests: a node serves at most half its
//! `max_connections` readers and a tenant `MAX_READERS_PER_TENANT`, each reader re-checks
//! its token as often as the token cache would, and it ends with the server.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::watch;

use super::auth::{Caller, Scope, TokenWatch};
use super::error::ApiError;
use super::{AppState, parse_time_param};
use crate::catalog;
use crate::clock::Millis;
use crate::service::log::ReaderPermit;
pub use crate::service::log::{LogSignal, MAX_READERS_PER_TENANT};
use crate::store::{LogPosition, LogStart, LoggedEvent};

/// Events read from the store at a time: what one reader holds in memory at most.
const READ_BATCH: usize = 50;
/// Readers woken by a publish wait this long before reading, so a busy tenant's publishes
/// cost each reader one query per interval, not one per publish.
const COALESCE: Duration = Duration::from_millis(50);
const DAY_MS: Millis = 86_400_000;
/// How often a reader with nothing new looks again without a signal: on PostgreSQL, an event
/// becomes readable when the oldest open transaction ends, which nothing announces.
const POLL: Duration = Duration::from_secs(1);
/// A comment line this often keeps proxies from closing an idle connection.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Most `event_type` filters one reader may give.
const MAX_FILTERS: usize = 50;

/// `GET /v1/events/stream`.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require(Scope::ReadEvents)?;
    let mut request = StreamRequest::parse(&headers, query.as_deref().unwrap_or(""))?;
    let tenant_id = caller.tenant_id.clone();
    let permit = state.log_signal.admit(&tenant_id, &state.metrics.log)?;
    // Retention removes events received before its cutoff, so an offset older than that may
    // have lost what followed it, even when its own event was kept (a pending delivery keeps
    // an event).
    if let LogStart::After { received_since, .. } = &mut request.start
        && state.event_retention_days > 0
    {
        *received_since =
            Some(state.clock.now_ms() - state.event_retention_days as Millis * DAY_MS);
    }
    let received_since = match request.start {
        LogStart::ReceivedFrom(time) => Some(time),
        _ => None,
    };
    let start = state
        .store
        .log_position(&tenant_id, request.start)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "offset_expired",
                "the offset is no longer in the event log (it is older than the retention \
                 period, or its event was removed, or the offset is not this tenant's): start \
                 again with `from_timestamp`, or with no offset for new events only",
            )
        })?;
    let reader = Reader {
        tenant_id: tenant_id.clone(),
        patterns: request.patterns,
        position: start,
        received_since,
        buffer: VecDeque::new(),
        wake: state.log_signal.subscribe(&tenant_id),
        caller: TokenWatch::new(
            &caller,
            super::auth::token_hash(&headers),
            state.clock.now_ms(),
        ),
        state,
        failing: false,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok(event), reader))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}

struct StreamRequest {
    start: LogStart,
    patterns: Vec<String>,
}

impl StreamRequest {
    fn parse(headers: &HeaderMap, query: &str) -> Result<StreamRequest, ApiError> {
        let mut from = None;
        let mut from_timestamp = None;
        let mut patterns = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "from" => from = Some(value.into_owned()),
                "from_timestamp" => from_timestamp = Some(value.into_owned()),
                "event_type" => {
                    if !catalog::is_valid_pattern(&value) {
                        return Err(ApiError::invalid(format!(
                            "`event_type` must be an event type or a pattern such as `user.*`, \
                             got `{value}`"
                        )));
                    }
                    patterns.push(value.into_owned());
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter `{other}`: this route takes `from`, \
                         `from_timestamp` and `event_type`"
                    )));
                }
            }
        }
        if patterns.len() > MAX_FILTERS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_FILTERS} `event_type` filters"
            )));
        }
        let last_event_id = match headers.get("last-event-id") {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::invalid("`Last-Event-ID` must be an offset"))?
                    .to_string(),
            ),
            None => None,
        };
        let offset = |field: &str, v: &str| {
            LogPosition::parse(v).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_offset",
                    format!(
                        "`{field}` must be an offset this stream sent as a message id, got `{v}`"
                    ),
                )
            })
        };
        // A reconnecting EventSource sends Last-Event-ID and the URL it started with: the
        // header is the newer place.
        let start = match (last_event_id, from, from_timestamp) {
            (Some(id), _, _) => LogStart::After {
                position: offset("Last-Event-ID", &id)?,
                received_since: None,
            },
            (None, Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give `from` or `from_timestamp`, not both",
                ));
            }
            (None, Some(from), None) => LogStart::After {
                position: offset("from", &from)?,
                received_since: None,
            },
            (None, None, Some(time)) => {
                LogStart::ReceivedFrom(parse_time_param("from_timestamp", &time)?)
            }
            (None, None, None) => LogStart::End,
        };
        Ok(StreamRequest { start, patterns })
    }
}

/// One client's place in the log, and what it has read but not yet sent.
struct Reader {
    state: AppState,
    tenant_id: String,
    patterns: Vec<String>,
    position: LogPosition,
    /// Started at a time: events received before it are skipped wherever they fall. On
    /// PostgreSQL the start is the first visible event received since then, and events of
    /// transactions still open at that moment come after it in the log whenever they were
    /// received.
    received_since: Option<Millis>,
    buffer: VecDeque<(LogPosition, LoggedEvent)>,
    wake: watch::Receiver<()>,
    /// Revoking the caller's token (or, for a platform token, deleting the tenant) ends the
    /// stream as it ends any other request.
    caller: TokenWatch,
    /// The last read failed; logged once until one succeeds.
    failing: bool,
    _permit: ReaderPermit,
}

impl Reader {
    /// The next message, waiting for one; `None` ends the response (the server is stopping,
    /// or the caller may no longer read).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.state.shutdown.is_cancelled() || !self.caller.still_allowed(&self.state).await {
                return None;
            }
            while let Some((position, logged)) = self.buffer.pop_front() {
                if self.wanted(&logged) {
                    self.state.metrics.log.served();
                    return Some(
                        SseEvent::default()
                            .id(position.encode())
                            .data(super::events::logged_view(&logged).to_string()),
                    );
                }
            }
            // Marked seen before reading, so a signal during the read is not lost.
            self.wake.borrow_and_update();
            match self
                .state
                .store
                .read_log(&self.tenant_id, self.position, READ_BATCH)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    self.failing = false;
                    self.position = events.last().map(|(p, _)| *p).unwrap_or(self.position);
                    self.buffer.extend(events);
                    continue;
                }
                Ok(_) => self.failing = false,
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(tenant = %self.tenant_id, error = %e, "cannot read the event log for a reader; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                // The sender stays in the map while this reader holds its receiver.
                _ = self.wake.changed() => tokio::time::sleep(COALESCE).await,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn wanted(&self, logged: &LoggedEvent) -> bool {
        let event_type = &logged.event.event_type;
        self.received_since
            .is_none_or(|since| logged.received_at >= since)
            && (self.patterns.is_empty()
                || self
                    .patterns
                    .iter()
                    .any(|p| catalog::pattern_matches(p, event_type)))
    }
}
