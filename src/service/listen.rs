//! `herald listen` sessions: temporary streams of destination kind `listen`, each with its
//! own subscriptions (or a mirrored stream's) and signing secret, so a session gets
//! deliveries of its own and a stream it mirrors keeps its destination and history. A
//! session lives while its connection keeps its expiry `GRACE_MS` ahead (see
//! `api::listen`), and [`reap`] deletes it once that lapses.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::limits::Quotas;
use super::{Caller, Error, Scope, Service};
use crate::clock::{Clock, Millis};
use crate::delivery::Signal;
use crate::destinations::Destination;
use crate::destinations::listen::ListenConfig;
use crate::ids;
use crate::secret::{Secret, StreamSecret};
use crate::store::Store;
use crate::stream::{self, RetryPolicy, Stream, StreamStatus, Subscription};

/// How long a session outlives its connection: time to reconnect after a network blip.
pub const GRACE_MS: Millis = 60_000;
/// Sessions one tenant may have at once.
pub const MAX_SESSIONS_PER_TENANT: usize = 10;
/// How often each node looks for sessions past their expiry.
const REAP_MS: Millis = 15_000;

/// What a new session receives: `event_types`, or what the stream `stream_id` subscribes to.
pub struct NewSession {
    pub event_types: Option<Vec<String>>,
    pub stream_id: Option<String>,
    pub forward_to: String,
}

/// An opened session: its stream, and the secret it signs with.
pub struct Session {
    pub stream: Stream,
    pub signing_secret: Secret,
}

pub async fn open(service: &Service, caller: &Caller, new: NewSession) -> Result<Session, Error> {
    caller.require(Scope::CreateEventStreams)?;
    ListenConfig::validate_forward_to(&new.forward_to).map_err(Error::Invalid)?;
    let (subscriptions, payload_format, content_mode) = match (new.event_types, new.stream_id) {
        (Some(types), None) => (
            types
                .into_iter()
                .map(|event_type| Subscription { event_type })
                .collect::<Vec<_>>(),
            Default::default(),
            None,
        ),
        (None, Some(id)) => {
            caller.require(Scope::ReadEventStreams)?;
            let mirrored = service
                .store
                .get_stream(&caller.tenant_id, &id)
                .await?
                .ok_or(Error::NotFound {
                    what: "event stream",
                    id,
                })?;
            (
                mirrored.subscriptions,
                mirrored.payload_format,
                mirrored.content_mode,
            )
        }
        _ => {
            return Err(Error::Invalid(
                "give `event_types` (a list such as [\"user.*\"]) or `stream_id` (a stream \
                 whose subscriptions to copy), not both"
                    .into(),
            ));
        }
    };
    let catalog = service
        .catalogs
        .for_tenant(&*service.store, &caller.tenant_id)
        .await?;
    stream::validate_subscriptions(&subscriptions, &catalog)
        .map_err(|e| Error::Invalid(e.replace("`subscriptions`", "`event_types`")))?;
    let streams = service.store.list_streams(&caller.tenant_id).await?;
    if streams.iter().filter(|s| is_session(s)).count() >= MAX_SESSIONS_PER_TENANT {
        return Err(Error::ListenSessionLimit);
    }
    Quotas::check(
        service.quotas.streams,
        streams.len(),
        "event streams",
        "max_streams_per_tenant",
    )?;
    let now = service.clock.now_ms();
    let id = ids::stream_id();
    let stream = Stream {
        tenant_id: caller.tenant_id.clone(),
        name: format!("herald listen {id}"),
        id,
        status: StreamStatus::Enabled,
        status_reason: None,
        subscriptions,
        destination: Destination::Listen(ListenConfig {
            forward_to: new.forward_to,
        }),
        payload_format,
        content_mode,
        // A developer's receiver restarts often: retry soon, give up soon.
        retry_policy: RetryPolicy {
            max_attempts: 5,
            initial_interval_seconds: 5.0,
            multiplier: 2.0,
            max_interval_seconds: 60.0,
            jitter: 0.2,
        },
        // Never disabled: it ends with its command.
        max_consecutive_failures: 0,
        disable_after_failing_seconds: 0,
        created_at: now,
        updated_at: now,
        expires_at: Some(now + GRACE_MS),
    };
    let secret = StreamSecret {
        secret: stream.destination.new_stream_secret(),
        created_at: now,
        expires_at: None,
    };
    service
        .store
        .create_stream(stream.clone(), Some(secret.clone()))
        .await?;
    service.signal.streams_changed();
    tracing::info!(stream = %stream.id, tenant = %stream.tenant_id, "listen session created");
    Ok(Session {
        stream,
        signing_secret: secret.secret,
    })
}

/// The caller's session `id`, for its connection: only on a node that delivers, since the
/// node holding the connection sends the session's deliveries.
pub async fn connectable(service: &Service, caller: &Caller, id: &str) -> Result<Stream, Error> {
    let stream = load(service, caller, id).await?;
    if !service.delivers {
        return Err(Error::ListenUnavailable);
    }
    Ok(stream)
}

/// Ends the session now: its stream goes, and with it what was pending.
pub async fn end(service: &Service, caller: &Caller, id: &str) -> Result<(), Error> {
    load(service, caller, id).await?;
    let now = service.clock.now_ms();
    if service
        .store
        .delete_stream(&caller.tenant_id, id, now)
        .await?
    {
        service.signal.streams_changed();
        tracing::info!(stream = %id, tenant = %caller.tenant_id, "listen session ended");
    }
    // Its connection here closes now; on another node, at its next touch.
    service.destinations.listeners.end(id);
    Ok(())
}

async fn load(service: &Service, caller: &Caller, id: &str) -> Result<Stream, Error> {
    caller.require(Scope::CreateEventStreams)?;
    service
        .store
        .get_stream(&caller.tenant_id, id)
        .await?
        .filter(is_session)
        .ok_or_else(|| Error::NotFound {
            what: "listen session",
            id: id.to_string(),
        })
}

fn is_session(stream: &Stream) -> bool {
    matches!(stream.destination, Destination::Listen(_))
}

/// Deletes sessions past their expiry, every `REAP_MS`, on every node; the store checks the
/// expiry again as it deletes, so a session its listener revived meanwhile stays.
pub async fn reap(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signal: Arc<Signal>,
    shutdown: CancellationToken,
) {
    loop {
        let next = clock.now_ms() + REAP_MS;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = clock.sleep_until(next) => {}
        }
        match store.delete_expired_streams(clock.now_ms()).await {
            Ok(expired) if expired.is_empty() => {}
            Ok(expired) => {
                signal.streams_changed();
                for (tenant_id, id) in expired {
                    tracing::info!(stream = %id, tenant = %tenant_id, "listen session expired");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not end expired listen sessions"),
        }
    }
}
