//! Events: publish one event or a batch, read the audit log, and erase payloads. A publish
//! returns only after the events and their deliveries are committed, and wakes the
//! dispatcher and the event log's readers; a batch with one bad event stores nothing. A
//! platform token may name the tenant on the events (`tenant`), all of a batch the same.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Caller, Error, Scope, Service, parse_optional_time};
use crate::event::{Event, parse_event};
use crate::store::{DeliveryView, Erase, EventFilter, LoggedEvent, Page, Published};
use crate::trace;

/// Most events one erasure may name.
const MAX_ERASE_IDS: usize = 1_000;

/// The trace a publish's deliveries continue (see `crate::trace`).
pub struct TraceContext {
    pub traceparent: String,
    /// The publisher's `tracestate`, with its own `traceparent` only.
    pub tracestate: Option<String>,
}

/// Publishes CloudEvents given as JSON, one (`batch` false) or a batch. An event's errors
/// name its place in a batch.
pub async fn publish(
    service: &Service,
    mut caller: Caller,
    items: &[&RawValue],
    batch: bool,
    trace: Option<TraceContext>,
) -> Result<Vec<Published>, Error> {
    caller.require(Scope::PublishEvents)?;
    if let Some(tenant) = named_tenant(items)? {
        caller.act_on(service, &tenant).await?;
    }
    let now = service.clock.now_ms();
    let default_source = format!("urn:herald:{}", caller.tenant_id);
    let catalog = service
        .catalogs
        .for_tenant(&*service.store, &caller.tenant_id)
        .await?;
    let mut events: Vec<Event> = items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_event(raw, &catalog, now, &default_source)
                .map_err(|e| if batch { e.at_index(i) } else { e })
        })
        .collect::<Result<_, _>>()?;
    if let Some(trace) = &trace {
        for event in &mut events {
            trace::adopt(
                &mut event.extensions,
                &trace.traceparent,
                trace.tracestate.as_deref(),
            );
        }
    }
    // Counted by the publish task: a publish whose caller goes away is still stored.
    let counters: Vec<_> = service
        .metrics
        .events
        .counters_for(&catalog, &events)
        .into_iter()
        .cloned()
        .collect();

    // On a node that delivers, the new deliveries come back leased and go straight to its
    // dispatcher, which saves a claim. The publish runs as its own task so
    // that a caller going away cannot stop the hand-over half-way (leases it never received
    // would only lapse, later).
    let (store, signal, log_signal, tenant) = (
        service.store.clone(),
        service.signal.clone(),
        service.log_signal.clone(),
        caller.tenant_id.clone(),
    );
    let lease_until = service.delivery_lease_ms.map(|ms| now + ms);
    let published = tokio::spawn(async move {
        let mut published = store.publish(&tenant, events, now, lease_until).await?;
        crate::metrics::EventMetrics::published(&counters, &published);
        log_signal.notify(&tenant);
        if published.iter().any(|p| p.deferred) {
            signal.fan_out_pending();
        }
        // Deliveries not leased here (all of them on a node that does not deliver; those to a
        // `herald listen` stream otherwise) are due now, for whichever dispatcher claims
        // them first. Usually every delivery of an event was leased, or none was.
        let mut due: Vec<&String> = Vec::new();
        for p in published.iter().filter(|p| !p.deferred) {
            if p.leased.is_empty() {
                due.extend(&p.streams);
            } else if p.leased.len() < p.streams.len() {
                let leased: HashSet<&str> = p.leased.iter().map(|c| c.stream_id.as_str()).collect();
                due.extend(p.streams.iter().filter(|s| !leased.contains(s.as_str())));
            }
        }
        if !due.is_empty() {
            signal.wake(due);
        }
        signal.hand_over(
            published
                .iter_mut()
                .flat_map(|p| std::mem::take(&mut p.leased)),
        );
        Ok::<_, crate::store::StoreError>(published)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a publish task failed");
        Error::Internal("an internal error occurred; it has been logged")
    })??;
    Ok(published)
}

/// The tenant the events name with their `tenant` attribute, if any; all must agree.
fn named_tenant(items: &[&RawValue]) -> Result<Option<String>, Error> {
    #[derive(Deserialize)]
    struct Target<'a> {
        #[serde(borrow, default)]
        tenant: Option<&'a RawValue>,
    }
    let mut named: Option<String> = None;
    for (i, raw) in items.iter().enumerate() {
        let Ok(target) = serde_json::from_str::<Target>(raw.get()) else {
            continue; // Not an object: parse_event says what is wrong.
        };
        let tenant = match target
            .tenant
            .map(|t| serde_json::from_str::<Option<Cow<str>>>(t.get()))
        {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(tenant))) => Some(tenant),
            Some(Err(_)) => {
                return Err(Error::Invalid(format!(
                    "events[{i}]: `tenant` must be a tenant id string"
                )));
            }
        };
        match (&named, tenant) {
            (_, None) => {}
            (None, Some(tenant)) => named = Some(tenant.into_owned()),
            (Some(first), Some(tenant)) if *first != tenant => {
                return Err(Error::Invalid(format!(
                    "events[{i}]: a batch goes to one tenant, but it names both `{first}` and `{tenant}`"
                )));
            }
            _ => {}
        }
    }
    Ok(named)
}

/// Which events of the audit log to list, as given (times in RFC 3339); every given filter
/// must hold.
#[derive(Debug, Default)]
pub struct LogFilter {
    pub event_type: Option<String>,
    pub subject: Option<String>,
    pub projectid: Option<String>,
    pub userid: Option<String>,
    pub date_from: Option<String>,
    pub date_to: Option<String>,
}

/// One page of the audit log, newest first: `take` events, before the cursor `before` (a
/// page's `next`) when given.
pub async fn list(
    service: &Service,
    caller: &Caller,
    filter: LogFilter,
    take: usize,
    before: Option<i64>,
) -> Result<Page<LoggedEvent>, Error> {
    caller.require(Scope::ReadEvents)?;
    let filter = EventFilter {
        event_type: filter.event_type,
        subject: filter.subject,
        projectid: filter.projectid,
        userid: filter.userid,
        date_from: parse_optional_time("date_from", filter.date_from.as_deref())?,
        date_to: parse_optional_time("date_to", filter.date_to.as_deref())?,
    };
    if let (Some(from), Some(to)) = (filter.date_from, filter.date_to)
        && from > to
    {
        return Err(Error::Invalid("`date_from` is after `date_to`".into()));
    }
    Ok(service
        .store
        .list_events(&caller.tenant_id, filter, before, take)
        .await?)
}

/// One event of the log and its deliveries.
pub struct EventRecord {
    pub event: LoggedEvent,
    pub deliveries: Vec<DeliveryView>,
}

/// The event `id` (from `source`, when several sources used the id) and the streams it went
/// to.
pub async fn get(
    service: &Service,
    caller: &Caller,
    id: &str,
    source: Option<&str>,
) -> Result<EventRecord, Error> {
    caller.require(Scope::ReadEvents)?;
    let event = service
        .store
        .get_event(&caller.tenant_id, id, source)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "event",
            id: id.to_string(),
        })?;
    let deliveries = service
        .store
        .event_deliveries(&caller.tenant_id, id)
        .await?;
    Ok(EventRecord { event, deliveries })
}

/// What to erase: events by id, or every event of a subject; one of the two.
#[derive(Debug, Default)]
pub struct Erasure {
    pub event_ids: Option<Vec<String>>,
    pub subject: Option<String>,
}

/// Erases events by id or by subject (a right to be forgotten) down to what identifies them
/// (see `Store::erase`); delivery history stays. Returns how many were erased; runs to its end
/// even if the caller goes away.
pub async fn erase(service: &Service, caller: &Caller, erasure: Erasure) -> Result<u64, Error> {
    caller.require(Scope::UpdateEventDeliveries)?;
    let what = match (erasure.event_ids, erasure.subject) {
        (Some(ids), None) if !ids.is_empty() && ids.len() <= MAX_ERASE_IDS => Erase::Events(ids),
        (None, Some(subject)) if !subject.is_empty() => Erase::Subject(subject),
        _ => {
            return Err(Error::Invalid(
                "give either `event_ids` (1 to 1000 ids) or a non-empty `subject`".into(),
            ));
        }
    };
    let (owned, tenant_id) = (service.clone(), caller.tenant_id.clone());
    let erased = super::to_completion(async move {
        Ok(owned
            .store
            .erase(&tenant_id, what, owned.clock.now_ms())
            .await?)
    })
    .await?;
    tracing::info!(tenant = %caller.tenant_id, erased, "event payloads erased");
    Ok(erased)
}
