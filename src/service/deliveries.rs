//! Deliveries: list a stream's deliveries with filters, read one with every attempt and the
//! requests its attempts sent, and redeliver one event or every delivery matching a filter.
//! Redelivery needs a stream that is not disabled, and wakes the dispatcher for it.

use super::streams::load as load_stream;
use super::{Caller, Error, Scope, Service, parse_optional_time};
use crate::clock::Millis;
use crate::destinations::{Message, ShownRequest};
use crate::secret::StreamSecret;
use crate::store::{DeliveryFilter, DeliveryStatus, DeliveryView, Page};
use crate::stream::StreamStatus;

/// Most event types one filter may name: each is a bound value of the query.
const MAX_FILTER_TYPES: usize = 100;

/// Which deliveries to list or redeliver, as given: status and event type names, RFC 3339
/// times. Empty lists and absent times filter nothing.
#[derive(Debug, Default)]
pub struct Filter {
    pub statuses: Vec<String>,
    pub event_types: Vec<String>,
    pub date_from: Option<String>,
    pub date_to: Option<String>,
}

impl Filter {
    fn parse(mut self) -> Result<DeliveryFilter, Error> {
        self.event_types.sort_unstable();
        self.event_types.dedup();
        if self.event_types.len() > MAX_FILTER_TYPES {
            return Err(Error::Invalid(format!(
                "`event_types` names {} types; a filter may name at most {MAX_FILTER_TYPES}",
                self.event_types.len()
            )));
        }
        let mut statuses: Vec<DeliveryStatus> = self
            .statuses
            .iter()
            .map(|s| {
                DeliveryStatus::parse(s).ok_or_else(|| {
                    Error::Invalid(format!(
                        "`{s}` is not a delivery status: use pending, succeeded, failed or cancelled"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        // Repeats add nothing but bound values.
        statuses.sort_unstable_by_key(|s| s.as_str());
        statuses.dedup();
        let date_from = parse_optional_time("date_from", self.date_from.as_deref())?;
        let date_to = parse_optional_time("date_to", self.date_to.as_deref())?;
        if let (Some(from), Some(to)) = (date_from, date_to)
            && from > to
        {
            return Err(Error::Invalid("`date_from` is after `date_to`".into()));
        }
        Ok(DeliveryFilter {
            statuses,
            event_types: self.event_types,
            date_from,
            date_to,
        })
    }
}

/// What a bulk redelivery matched and queued (nothing, on a dry run).
#[derive(Debug, Clone, Copy)]
pub struct Redelivery {
    pub matched: u64,
    pub queued: u64,
    pub dry_run: bool,
}

/// How many deliveries of a stream wait, and since when.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    pub pending: u64,
    pub oldest_pending_at: Option<Millis>,
    pub oldest_age_seconds: Option<i64>,
}

/// One page of a stream's deliveries, newest first: `take` of them, before the cursor
/// `before` (a page's `next`) when given.
pub async fn list(
    service: &Service,
    caller: &Caller,
    stream_id: &str,
    filter: Filter,
    take: usize,
    before: Option<i64>,
) -> Result<Page<DeliveryView>, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    let filter = filter.parse()?;
    load_stream(service, caller, stream_id).await?;
    Ok(service
        .store
        .list_deliveries(&caller.tenant_id, stream_id, filter, before, take)
        .await?)
}

/// One delivery with every attempt.
pub async fn get(service: &Service, caller: &Caller, id: &str) -> Result<DeliveryView, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    service
        .store
        .get_delivery(&caller.tenant_id, id)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "delivery",
            id: id.to_string(),
        })
}

/// The deliveries of one event to one stream.
pub async fn for_event(
    service: &Service,
    caller: &Caller,
    stream_id: &str,
    event_id: &str,
) -> Result<Vec<DeliveryView>, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    let deliveries: Vec<DeliveryView> = service
        .store
        .event_deliveries(&caller.tenant_id, event_id)
        .await?
        .into_iter()
        .filter(|d| d.stream_id == stream_id)
        .collect();
    if deliveries.is_empty() {
        return Err(Error::NotFound {
            what: "delivery of event",
            id: event_id.to_string(),
        });
    }
    Ok(deliveries)
}

/// Redelivery needs a stream that sends: a disabled one would only pile the work up.
async fn sending_stream(service: &Service, caller: &Caller, id: &str) -> Result<(), Error> {
    let stream = load_stream(service, caller, id).await?;
    if stream.status == StreamStatus::Disabled {
        return Err(Error::StreamDisabled);
    }
    Ok(())
}

/// Queues the event to the stream again; returns how many deliveries were queued.
pub async fn redeliver_event(
    service: &Service,
    caller: &Caller,
    stream_id: &str,
    event_id: &str,
) -> Result<u64, Error> {
    caller.require(Scope::UpdateEventDeliveries)?;
    sending_stream(service, caller, stream_id).await?;
    let now = service.clock.now_ms();
    let queued = service
        .store
        .redeliver_event(&caller.tenant_id, stream_id, event_id, now)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "event",
            id: event_id.to_string(),
        })?;
    service.signal.wake([&stream_id.to_string()]);
    Ok(queued)
}

/// Queues every delivery of the stream matching `filter` again, or, on a dry run, counts
/// them. Runs to its end even if the caller goes away.
pub async fn redeliver(
    service: &Service,
    caller: &Caller,
    stream_id: &str,
    filter: Filter,
    dry_run: bool,
) -> Result<Redelivery, Error> {
    caller.require(Scope::UpdateEventDeliveries)?;
    let filter = filter.parse()?;
    sending_stream(service, caller, stream_id).await?;
    let now = service.clock.now_ms();
    let (owned, tenant_id, stream) = (
        service.clone(),
        caller.tenant_id.clone(),
        stream_id.to_string(),
    );
    let matched = super::to_completion(async move {
        let count = owned
            .store
            .redeliver(&tenant_id, &stream, filter, dry_run, now)
            .await?;
        if !dry_run {
            owned.signal.wake([&stream]);
        }
        Ok(count)
    })
    .await?;
    Ok(Redelivery {
        matched,
        queued: if dry_run { 0 } else { matched },
        dry_run,
    })
}

/// How many deliveries of the stream wait, and since when.
pub async fn backlog(
    service: &Service,
    caller: &Caller,
    stream_id: &str,
) -> Result<Backlog, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    load_stream(service, caller, stream_id).await?;
    let backlog = service.store.backlog(&caller.tenant_id, stream_id).await?;
    let now = service.clock.now_ms();
    Ok(Backlog {
        pending: backlog.pending,
        oldest_pending_at: backlog.oldest_created_at,
        oldest_age_seconds: backlog.oldest_created_at.map(|at| (now - at).max(0) / 1000),
    })
}

/// What a delivery's attempts sent, rebuilt for a person to read (see
/// [`crate::destinations::ShownRequest`]), or why it cannot be.
#[derive(Debug)]
pub enum SentRequests {
    Rebuilt {
        /// The body every attempt sent: the event in the stream's encoding.
        body: Vec<u8>,
        /// Each attempt's method, URL and headers (its body left empty), in the
        /// delivery's order.
        attempts: Vec<ShownRequest>,
        /// When the event's data was erased: the body is what is left, which attempts made
        /// before then did not send.
        erased_at: Option<Millis>,
    },
    /// In words a person reads.
    Unavailable(&'static str),
}

/// The requests the delivery's attempts sent, rebuilt from its event and its stream as they
/// are now (a setting changed since shows as it is now). Shows the event's data and the
/// stream's endpoint (which may carry a secret of its own, in its path or query), so it also
/// needs `read:events` and `read:event_streams`, as the API's reads of each do.
pub async fn sent_requests(
    service: &Service,
    caller: &Caller,
    delivery: &DeliveryView,
) -> Result<SentRequests, Error> {
    caller.require(Scope::ReadEventDeliveries)?;
    caller.require(Scope::ReadEvents)?;
    caller.require(Scope::ReadEventStreams)?;
    let stream = match load_stream(service, caller, &delivery.stream_id).await {
        Ok(stream) => stream,
        Err(Error::NotFound { .. }) => {
            return Ok(SentRequests::Unavailable(
                "The stream has been deleted, so its requests cannot be rebuilt.",
            ));
        }
        Err(e) => return Err(e),
    };
    // The newest event with the id, as redelivery takes it.
    let Some(logged) = service
        .store
        .get_event(&caller.tenant_id, &delivery.event_id, None)
        .await?
    else {
        return Ok(SentRequests::Unavailable(
            "The event is no longer kept (its retention period has passed), so the request \
             cannot be rebuilt.",
        ));
    };
    let now = service.clock.now_ms();
    let secrets = service.store.secrets_for(&stream, now).await?;
    let message = Message {
        id: &delivery.id,
        tenant_id: &caller.tenant_id,
        event: &logged.event,
    };
    let shown = |at: Millis| {
        // The keys that signed at `at`: not one made since.
        let then: Vec<StreamSecret> = secrets
            .iter()
            .filter(|s| s.created_at <= at)
            .cloned()
            .collect();
        stream
            .destination
            .shown_request(&stream.client_context(&then), &message, at)
    };
    let Some(mut next) = shown(now) else {
        return Ok(SentRequests::Unavailable(
            "Herald shows the requests of webhook and listen streams only: this destination \
             sends its events in batches of another shape.",
        ));
    };
    let body = std::mem::take(&mut next.body);
    let attempts = delivery
        .attempts
        .iter()
        .filter_map(|attempt| {
            let mut request = shown(attempt.attempted_at)?;
            request.body = Vec::new();
            Some(request)
        })
        .collect();
    Ok(SentRequests::Rebuilt {
        body,
        attempts,
        erased_at: logged.erased_at,
    })
}
