//! Event streams: create, list, read, change and delete them; read or rotate a stream's
//! secret (a webhook's signing secret); send a test event to a stream's destination; check a
//! candidate destination against the stored one. Names are unique per tenant; credentials
//! are write-only; a change of status, subscriptions or destination reaches the dispatcher
//! at once.

use serde::Deserialize;
use serde_json::{Value, json};

use super::limits::Quotas;
use super::{Caller, Error, Scope, Service};
use crate::clock::Millis;
use crate::destinations::{Destination, Message, Report};
use crate::ids;
use crate::notices;
use crate::secret::{Secret, StreamSecret};
use crate::store::StreamUpdate;
use crate::stream::{
    self, ContentMode, PayloadFormat, RetryPolicy, Stream, StreamStatus, Subscription,
};

const MAX_CONSECUTIVE_FAILURES_LIMIT: u32 = 1_000_000;
const MAX_DISABLE_AFTER_FAILING_SECONDS: u64 = 365 * 86_400;
/// The longest a rotated-out secret keeps signing.
const MAX_GRACE_SECONDS: u64 = 7 * 86_400;

/// A stream to create. What is left out takes its default.
pub struct NewStream {
    pub name: String,
    pub subscriptions: Vec<Subscription>,
    /// May carry the stream's signing secret, which is kept apart from the configuration.
    pub destination: Destination,
    /// Enabled when absent.
    pub status: Option<StreamStatus>,
    pub payload_format: PayloadFormat,
    pub content_mode: Option<ContentMode>,
    pub retry_policy: RetryPolicy,
    pub max_consecutive_failures: Option<u32>,
    pub disable_after_failing_seconds: Option<u64>,
}

/// Changes to a stream; what is `None` stays.
#[derive(Default)]
pub struct StreamChanges {
    pub name: Option<String>,
    pub subscriptions: Option<Vec<Subscription>>,
    pub destination: Option<Destination>,
    pub status: Option<StreamStatus>,
    pub payload_format: Option<PayloadFormat>,
    pub content_mode: Option<ContentMode>,
    pub retry_policy: Option<RetryPolicy>,
    pub max_consecutive_failures: Option<u32>,
    pub disable_after_failing_seconds: Option<u64>,
    /// On enabling a stream: deliver its pending deliveries (the default) or skip them.
    pub backlog: Option<BacklogChoice>,
}

/// What becomes of a stream's pending deliveries when it is enabled again.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BacklogChoice {
    Deliver,
    /// They are cancelled.
    Skip,
}

/// A stream's signing secrets: the one it signs with, and those rotated out that still sign
/// beside it until they expire.
pub struct SigningSecrets {
    pub current: StreamSecret,
    pub previous: Vec<StreamSecret>,
}

/// A rotation: the new secret to sign with, if chosen, and for how long the current one
/// keeps signing beside it.
#[derive(Default)]
pub struct Rotation {
    /// A `whsec_` secret to use instead of a generated one.
    pub secret: Option<Secret>,
    pub grace_period_seconds: Option<u64>,
}

pub struct Rotated {
    pub secret: Secret,
    pub created_at: Millis,
    /// When the secret it replaced stops signing.
    pub previous_expires_at: Millis,
}

/// A test event to send: the catalog's sample data unless `data` is given.
pub struct TestEvent {
    pub event_type: String,
    pub data: Option<Value>,
}

/// A destination to try before it is saved, with the content settings the stream will have.
pub struct UnsavedTest {
    /// May carry a signing secret to sign with; a fresh one is used otherwise.
    pub destination: Destination,
    pub payload_format: PayloadFormat,
    pub content_mode: Option<ContentMode>,
    pub event: TestEvent,
}

/// What a test send did: the event and delivery ids it carried, and its attempt.
pub struct TestSent {
    pub event_id: String,
    pub delivery_id: String,
    pub report: Report,
}

/// The checks a stream must pass before it is stored, new or changed.
async fn check(service: &Service, stream: &Stream) -> Result<(), Error> {
    if stream.max_consecutive_failures > MAX_CONSECUTIVE_FAILURES_LIMIT {
        return Err(Error::Invalid(format!(
            "`max_consecutive_failures` must be at most {MAX_CONSECUTIVE_FAILURES_LIMIT} (0 never disables)"
        )));
    }
    if stream.disable_after_failing_seconds > MAX_DISABLE_AFTER_FAILING_SECONDS {
        return Err(Error::Invalid(format!(
            "`disable_after_failing_seconds` must be at most {MAX_DISABLE_AFTER_FAILING_SECONDS} (a year; 0 lets `max_consecutive_failures` alone decide)"
        )));
    }
    let catalog = service
        .catalogs
        .for_tenant(&*service.store, &stream.tenant_id)
        .await?;
    stream::validate(stream, &catalog, &service.destination_policy).map_err(Error::Invalid)
}

/// A `herald listen` session's stream is its command's: changed by nobody else (its
/// printed secret, its expiry and its kind would no longer hold).
fn not_a_session(stream: &Stream) -> Result<(), Error> {
    if matches!(stream.destination, Destination::Listen(_)) {
        return Err(Error::Conflict(format!(
            "`{}` is a `herald listen` session's stream, which only its command changes; end \
             it with Ctrl-C in that command or DELETE /v1/listen-sessions/{}",
            stream.id, stream.id
        )));
    }
    Ok(())
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: "event stream",
        id: id.to_string(),
    }
}

/// The caller's tenant's stream `id`, for any operation on it. Callers check their scope
/// first.
pub(super) async fn load(service: &Service, caller: &Caller, id: &str) -> Result<Stream, Error> {
    service
        .store
        .get_stream(&caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn create(service: &Service, caller: &Caller, new: NewStream) -> Result<Stream, Error> {
    caller.require(Scope::CreateEventStreams)?;
    let now = service.clock.now_ms();
    let mut destination = new.destination;
    let given_secret = destination.take_stream_secret().map_err(Error::Invalid)?;
    let stream = Stream {
        tenant_id: caller.tenant_id.clone(),
        id: ids::stream_id(),
        name: new.name,
        status: new.status.unwrap_or(StreamStatus::Enabled),
        status_reason: None,
        subscriptions: new.subscriptions,
        destination,
        payload_format: new.payload_format,
        content_mode: new.content_mode,
        retry_policy: new.retry_policy,
        max_consecutive_failures: new
            .max_consecutive_failures
            .unwrap_or(stream::DEFAULT_MAX_CONSECUTIVE_FAILURES),
        disable_after_failing_seconds: new
            .disable_after_failing_seconds
            .unwrap_or(stream::DEFAULT_DISABLE_AFTER_FAILING_SECONDS),
        created_at: now,
        updated_at: now,
        expires_at: None,
    };
    check(service, &stream).await?;
    let count = service.store.list_streams(&caller.tenant_id).await?.len();
    Quotas::check(
        service.quotas.streams,
        count,
        "event streams",
        "max_streams_per_tenant",
    )?;
    let secret = stream
        .destination
        .uses_stream_secret()
        .then(|| StreamSecret {
            secret: given_secret.unwrap_or_else(|| stream.destination.new_stream_secret()),
            created_at: now,
            expires_at: None,
        });
    service.store.create_stream(stream.clone(), secret).await?;
    service.signal.streams_changed();
    tracing::info!(stream = %stream.id, tenant = %stream.tenant_id, "stream created");
    Ok(stream)
}

pub async fn list(service: &Service, caller: &Caller) -> Result<Vec<Stream>, Error> {
    caller.require(Scope::ReadEventStreams)?;
    Ok(service.store.list_streams(&caller.tenant_id).await?)
}

pub async fn get(service: &Service, caller: &Caller, id: &str) -> Result<Stream, Error> {
    caller.require(Scope::ReadEventStreams)?;
    load(service, caller, id).await
}

/// Applies `changes`. Enabling a stream again delivers or skips its backlog, as chosen; a
/// status change by hand is recorded as Herald's own event; a stream that becomes a kind
/// keeping a stream secret gets one.
pub async fn update(
    service: &Service,
    caller: &Caller,
    id: &str,
    changes: StreamChanges,
) -> Result<Stream, Error> {
    caller.require(Scope::UpdateEventStreams)?;
    let mut stream = load(service, caller, id).await?;
    not_a_session(&stream)?;
    if let Some(name) = changes.name {
        stream.name = name;
    }
    if let Some(subscriptions) = changes.subscriptions {
        stream.subscriptions = subscriptions;
    }
    let kind_before = stream.destination.kind();
    if let Some(mut destination) = changes.destination {
        if destination
            .take_stream_secret()
            .map_err(Error::Invalid)?
            .is_some()
        {
            return Err(Error::Invalid(
                "a stream's signing secret changes through POST /v1/event-streams/{id}/secret/rotate"
                    .into(),
            ));
        }
        stream.destination = destination;
    }
    let kind_changed = stream.destination.kind() != kind_before;
    if kind_changed {
        // Another kind has its own default mode; one given with the change still applies.
        stream.content_mode = None;
    }
    let now = service.clock.now_ms();
    let before = stream.status;
    let after = changes.status.unwrap_or(before);
    if before != after {
        stream.status_reason = None;
    }
    stream.status = after;
    let enabling = after == StreamStatus::Enabled && before != StreamStatus::Enabled;
    if changes.backlog.is_some() && !enabling {
        return Err(Error::Invalid(
            "`backlog` applies only when a stream is enabled again: send it with `\"status\": \"enabled\"`"
                .into(),
        ));
    }
    let backlog = changes.backlog.unwrap_or(BacklogChoice::Deliver);
    if let Some(format) = changes.payload_format {
        stream.payload_format = format;
    }
    if let Some(mode) = changes.content_mode {
        stream.content_mode = Some(mode);
    }
    if let Some(policy) = changes.retry_policy {
        stream.retry_policy = policy;
    }
    if let Some(limit) = changes.max_consecutive_failures {
        stream.max_consecutive_failures = limit;
    }
    if let Some(period) = changes.disable_after_failing_seconds {
        stream.disable_after_failing_seconds = period;
    }
    stream.updated_at = now;
    check(service, &stream).await?;
    // A stream that becomes a kind keeping a stream secret (a webhook) gets a new one
    // before it changes, so it never runs without; secrets from an earlier time as that kind
    // end now rather than come back.
    if stream.destination.uses_stream_secret()
        && (kind_changed
            || service
                .store
                .stream_secrets(&stream.tenant_id, &stream.id, now)
                .await?
                .is_empty())
    {
        let secret = StreamSecret {
            secret: stream.destination.new_stream_secret(),
            created_at: now,
            expires_at: None,
        };
        if !service
            .store
            .rotate_secret(&stream.tenant_id, &stream.id, secret, now)
            .await?
        {
            return Err(not_found(id));
        }
    }

    let mut notices = Vec::new();
    if enabling {
        let choice = if backlog == BacklogChoice::Skip {
            "skip"
        } else {
            "deliver"
        };
        notices.push(notices::stream_enabled(
            &stream.tenant_id,
            &stream.id,
            &stream.name,
            choice,
            now,
        ));
    } else if after == StreamStatus::Disabled && before != StreamStatus::Disabled {
        notices.push(notices::stream_disabled(
            &stream.tenant_id,
            &stream.id,
            &stream.name,
            "disabled by an admin",
            now,
        ));
    }
    let update = StreamUpdate {
        stream: stream.clone(),
        skip_backlog: enabling && backlog == BacklogChoice::Skip,
        notices,
    };
    let Some(published) = service.store.update_stream(update).await? else {
        return Err(not_found(id));
    };
    service.signal.streams_changed();
    service
        .signal
        .wake(published.iter().flat_map(|p| p.streams.iter()));
    if published.iter().any(|p| p.deferred) {
        service.signal.fan_out_pending();
    }
    Ok(stream)
}

pub async fn delete(service: &Service, caller: &Caller, id: &str) -> Result<(), Error> {
    caller.require(Scope::DeleteEventStreams)?;
    let now = service.clock.now_ms();
    if !service
        .store
        .delete_stream(&caller.tenant_id, id, now)
        .await?
    {
        return Err(not_found(id));
    }
    service.signal.streams_changed();
    // A listen session's connection here closes now rather than at its next touch.
    service.destinations.listeners.end(id);
    tracing::info!(stream = %id, tenant = %caller.tenant_id, "stream deleted");
    Ok(())
}

/// The stream's signing secrets, in the clear: `update:event_streams`, which can replace
/// them anyway.
pub async fn secrets(
    service: &Service,
    caller: &Caller,
    id: &str,
) -> Result<SigningSecrets, Error> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(service, caller, id).await?;
    keeps_secret(&stream)?;
    let now = service.clock.now_ms();
    let mut secrets = service
        .store
        .stream_secrets(&caller.tenant_id, id, now)
        .await?
        .into_iter();
    let current = secrets.next().ok_or_else(|| Error::NotFound {
        what: "signing secret for event stream",
        id: id.to_string(),
    })?;
    Ok(SigningSecrets {
        current,
        previous: secrets.collect(),
    })
}

/// Whether the stream has a signing secret in force, for a view that says so without showing
/// it: `read:event_streams`. False for a kind that keeps none.
pub async fn has_signing_secret(
    service: &Service,
    caller: &Caller,
    id: &str,
) -> Result<bool, Error> {
    caller.require(Scope::ReadEventStreams)?;
    let stream = load(service, caller, id).await?;
    if !stream.destination.uses_stream_secret() {
        return Ok(false);
    }
    let now = service.clock.now_ms();
    Ok(!service
        .store
        .stream_secrets(&caller.tenant_id, id, now)
        .await?
        .is_empty())
}

/// Gives the stream a new signing secret (generated unless chosen); the current one keeps
/// signing beside it for the grace period (the operator's default unless chosen).
pub async fn rotate_secret(
    service: &Service,
    caller: &Caller,
    id: &str,
    rotation: Rotation,
) -> Result<Rotated, Error> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(service, caller, id).await?;
    not_a_session(&stream)?;
    keeps_secret(&stream)?;
    let secret = match rotation.secret {
        Some(secret) => {
            stream
                .destination
                .check_stream_secret(&secret)
                .map_err(|e| Error::Invalid(format!("`secret`: {e}")))?;
            secret
        }
        None => stream.destination.new_stream_secret(),
    };
    let grace_ms = match rotation.grace_period_seconds {
        Some(s) if s > MAX_GRACE_SECONDS => {
            return Err(Error::Invalid(format!(
                "`grace_period_seconds` must be at most {MAX_GRACE_SECONDS}"
            )));
        }
        Some(s) => s as i64 * 1000,
        None => service.secret_rotation_grace_ms,
    };
    let now = service.clock.now_ms();
    let rotated = service
        .store
        .rotate_secret(
            &caller.tenant_id,
            id,
            StreamSecret {
                secret: secret.clone(),
                created_at: now,
                expires_at: None,
            },
            now + grace_ms,
        )
        .await?;
    if !rotated {
        return Err(not_found(id));
    }
    service.signal.streams_changed();
    tracing::info!(stream = %id, tenant = %caller.tenant_id, "signing secret rotated");
    Ok(Rotated {
        secret,
        created_at: now,
        previous_expires_at: now + grace_ms,
    })
}

/// Only destination kinds that keep a stream secret have one to show or rotate.
fn keeps_secret(stream: &Stream) -> Result<(), Error> {
    if stream.destination.uses_stream_secret() {
        Ok(())
    } else {
        Err(Error::NoStreamSecret(stream.destination.kind()))
    }
}

/// Sends a test event to the stream's destination right away, marked with the extension
/// attribute `purpose: "test"`, and reports the attempt. Nothing is stored. A test sends
/// outside the dispatcher's limits and shows the caller the answer, so it is rate limited per
/// stream and per token: it cannot be used to hammer an endpoint. The destination's client
/// connects through the SSRF guard as deliveries do.
pub async fn test(
    service: &Service,
    caller: &Caller,
    id: &str,
    request: TestEvent,
) -> Result<TestSent, Error> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(service, caller, id).await?;
    take_test_allowance(service, caller, &stream.id)?;
    let now = service.clock.now_ms();
    let secrets = service.store.secrets_for(&stream, now).await?;
    send_test(service, caller, &stream, &secrets, request).await
}

/// Sends a test event to a destination that is not saved yet (the console's New destination
/// dialog, a script checking an endpoint before creating its stream), with the same checks,
/// SSRF guard and rate limits as [`test`]: the allowance is per destination target instead
/// of per stream. A webhook is signed with the secret given in the destination, or with a
/// fresh one that is not kept. Nothing is stored.
pub async fn test_unsaved(
    service: &Service,
    caller: &Caller,
    request: UnsavedTest,
) -> Result<TestSent, Error> {
    caller.require(Scope::CreateEventStreams)?;
    let mut destination = request.destination;
    let given_secret = destination.take_stream_secret().map_err(Error::Invalid)?;
    destination
        .validate(&service.destination_policy)
        .map_err(Error::Invalid)?;
    let now = service.clock.now_ms();
    let stream = Stream {
        tenant_id: caller.tenant_id.clone(),
        id: format!("unsaved-{}", ids::stream_id()),
        name: String::new(),
        status: StreamStatus::Enabled,
        status_reason: None,
        subscriptions: Vec::new(),
        payload_format: request.payload_format,
        content_mode: request.content_mode,
        retry_policy: RetryPolicy::default(),
        max_consecutive_failures: stream::DEFAULT_MAX_CONSECUTIVE_FAILURES,
        disable_after_failing_seconds: stream::DEFAULT_DISABLE_AFTER_FAILING_SECONDS,
        created_at: now,
        updated_at: now,
        expires_at: None,
        destination,
    };
    stream
        .encoding()
        .validate(
            stream.destination.kind(),
            stream.destination.content_modes(),
        )
        .map_err(Error::Invalid)?;
    take_test_allowance(
        service,
        caller,
        &unsaved_allowance_key(caller, &stream.destination),
    )?;
    let secrets: Vec<StreamSecret> = if stream.destination.uses_stream_secret() {
        vec![StreamSecret {
            secret: given_secret.unwrap_or_else(|| stream.destination.new_stream_secret()),
            created_at: now,
            expires_at: None,
        }]
    } else {
        Vec::new()
    };
    send_test(service, caller, &stream, &secrets, request.event).await
}

/// The allowance an unsaved destination's tests share: per tenant and per place the tests
/// go (a URL's origin, not its path or query, which a caller could vary freely), hashed to a
/// fixed length.
fn unsaved_allowance_key(caller: &Caller, destination: &Destination) -> String {
    let origin = |url: &str| {
        url::Url::parse(url)
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_else(|_| url.to_string())
    };
    let place = match destination {
        Destination::Webhook(config) => origin(&config.webhook_endpoint),
        Destination::Eventbridge(config) => match &config.endpoint_url {
            Some(endpoint) => origin(endpoint),
            None => format!("{}:{}", config.aws_region, config.aws_account_id),
        },
        Destination::Listen(config) => config.forward_to.clone(),
    };
    let key = format!("{}\0{}\0{place}", caller.tenant_id, destination.kind());
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("unsaved:{hex}")
}

/// Takes one test from the allowances of `target` (a stream, or an unsaved destination) and
/// of the caller's token.
fn take_test_allowance(service: &Service, caller: &Caller, target: &str) -> Result<(), Error> {
    let now = service.clock.now_ms();
    let rates = &service.rates;
    rates
        .stream_tests
        .take(target, now)
        .map_err(|retry_after| Error::RateLimited {
            what: "this destination has been sent as many test events as it may in a minute \
                   (stream_tests_per_minute)",
            retry_after,
        })?;
    if let Err(retry_after) = rates.token_tests.take(&caller.rate_key, now) {
        // Not sent: the destination keeps its allowance.
        rates.stream_tests.give_back(target);
        return Err(Error::RateLimited {
            what: "this token has sent as many test events as it may in a minute \
                   (stream_tests_per_minute_per_token)",
            retry_after,
        });
    }
    Ok(())
}

/// Builds the test event (the catalog's sample unless data is given, checked against the
/// type's schema) and sends it once through the stream's client.
async fn send_test(
    service: &Service,
    caller: &Caller,
    stream: &Stream,
    secrets: &[StreamSecret],
    request: TestEvent,
) -> Result<TestSent, Error> {
    let catalog = service
        .catalogs
        .for_tenant(&*service.store, &caller.tenant_id)
        .await?;
    let event_type = catalog
        .get(&request.event_type)
        .ok_or_else(|| Error::UnknownEventType(request.event_type.clone()))?;
    let data = request
        .data
        .unwrap_or_else(|| event_type.sample_data.clone());
    let data =
        serde_json::value::RawValue::from_string(data.to_string()).expect("a JSON value is JSON");
    catalog
        .check_data(&event_type.name, &data)
        .map_err(|error| Error::InvalidData {
            event_type: event_type.name.clone(),
            error,
        })?;
    let now = service.clock.now_ms();
    let mut extensions = serde_json::Map::new();
    extensions.insert("purpose".into(), json!("test"));
    let event = crate::event::Event {
        id: ids::event_id(now),
        source: format!("urn:herald:{}", caller.tenant_id),
        event_type: event_type.name.clone(),
        time: now,
        subject: None,
        datacontenttype: None,
        dataschema: None,
        data,
        extensions,
    };
    let context = stream.client_context(secrets);
    let client = stream
        .destination
        .build(context, &service.destinations)
        .map_err(Error::DestinationUnavailable)?;
    let delivery_id = ids::delivery_id(now);
    let message = Message {
        id: &delivery_id,
        tenant_id: &caller.tenant_id,
        event: &event,
    };
    let report = client.health_check(message, now).await;
    Ok(TestSent {
        event_id: event.id,
        delivery_id,
        report,
    })
}

/// Whether `candidate`, credentials included, is the destination the stream has, so a client
/// can tell whether write-only values changed without reading them. The answer is one
/// boolean for the whole destination, never a value or a digest of one: both sides are
/// compared as HMAC-SHA256 tags under a random key of the call, in constant time. Checks are
/// rate limited per stream and per token (see
/// [`DESTINATION_CHECKS_PER_MINUTE`](super::limits::DESTINATION_CHECKS_PER_MINUTE)), stop
/// after [`MAX_CONSECUTIVE_MISMATCHES`](super::limits::MAX_CONSECUTIVE_MISMATCHES) mismatches in a row, are logged when they mismatch,
/// and need `update:event_streams`, which can replace those credentials anyway.
pub async fn check_destination(
    service: &Service,
    caller: &Caller,
    id: &str,
    mut candidate: Destination,
) -> Result<bool, Error> {
    caller.require(Scope::UpdateEventStreams)?;
    let stream = load(service, caller, id).await?;
    let now = service.clock.now_ms();
    let rates = &service.rates;
    let encode = |destination: &Destination| {
        serde_json::to_vec(destination).expect("a destination serializes")
    };
    let stored_tag = rates
        .destination_mismatches
        .tag(&encode(&stream.destination));
    if !rates
        .destination_mismatches
        .allowed(&stream.id, &stored_tag)
    {
        return Err(Error::DestinationChecksLocked);
    }
    rates
        .destination_checks
        .take(&stream.id, now)
        .map_err(|retry_after| Error::RateLimited {
            what: "this stream's destination has been checked as many times as it may in a minute",
            retry_after,
        })?;
    if let Err(retry_after) = rates.token_destination_checks.take(&caller.rate_key, now) {
        rates.destination_checks.give_back(&stream.id);
        return Err(Error::RateLimited {
            what: "this token has checked as many destinations as it may in a minute",
            retry_after,
        });
    }
    // A signing secret is not part of the configuration the stream keeps.
    candidate.take_stream_secret().map_err(Error::Invalid)?;
    let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
        .map_err(|_| Error::Internal("no randomness"))?;
    let stored = ring::hmac::sign(&key, &encode(&stream.destination));
    let matches = ring::hmac::verify(&key, &encode(&candidate), stored.as_ref()).is_ok();
    rates
        .destination_mismatches
        .record(&stream.id, &stored_tag, matches);
    if !matches {
        // Never the values: which stream and token, so repeated guessing shows in the logs.
        tracing::info!(
            stream_id = %stream.id,
            token_id = %caller.token.id,
            "a destination check did not match the stream's destination"
        );
    }
    Ok(matches)
}
