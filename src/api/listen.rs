//! `/v1/listen-sessions`: the server side of `herald listen`. A session is a temporary stream
//! of destination kind `listen` with its own subscriptions and signing secret, so it gets
//! deliveries of its own (a stream it mirrors keeps its destination and history). Its
//! command connects a WebSocket to `.../connect`; while connected, the node holding the
//! connection sends the session's deliveries over it (see `destinations::listen`) and keeps
//! the stream's expiry `GRACE_MS` ahead. Ended by `DELETE`, or by [`reap`] once the
//! connection has been gone for the grace period, so a laptop closed mid-session leaves
//! nothing behind.

use axum::Json;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::auth::TokenWatch;
use super::limits::Quotas;
use super::{ApiError, AppState, Caller, JsonBody, Scope};
use crate::clock::{Clock, Millis};
use crate::delivery::Signal;
use crate::destinations::Destination;
use crate::destinations::listen::{FromListener, ListenConfig, ToListener};
use crate::event::format_time;
use crate::ids;
use crate::secret::StreamSecret;
use crate::store::Store;
use crate::stream::{self, RetryPolicy, Stream, StreamStatus, Subscription};

/// How long a session outlives its connection: time to reconnect after a network blip.
pub const GRACE_MS: Millis = 60_000;
/// How often a connected session pushes its expiry forward and pings its listener; a
/// listener that answered none of the last two pings is taken to be gone.
const TOUCH_MS: Millis = GRACE_MS / 3;
/// How often each node looks for sessions past their expiry.
const REAP_MS: Millis = 15_000;
/// Sessions one tenant may have at once.
pub const MAX_SESSIONS_PER_TENANT: usize = 10;
/// The largest message a listener may send (a result carries at most a 4 KiB body excerpt).
const MAX_LISTENER_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Event types or patterns to receive, as in subscriptions.
    event_types: Option<Vec<String>>,
    /// Or a stream whose subscriptions and content settings to copy.
    stream_id: Option<String>,
    forward_to: String,
}

/// `POST /v1/listen-sessions`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateSession>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::CreateEventStreams)?;
    ListenConfig::validate_forward_to(&request.forward_to).map_err(ApiError::invalid)?;
    let (subscriptions, payload_format, content_mode) =
        match (request.event_types, request.stream_id) {
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
                let mirrored = state
                    .store
                    .get_stream(&caller.tenant_id, &id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("event stream", &id))?;
                (
                    mirrored.subscriptions,
                    mirrored.payload_format,
                    mirrored.content_mode,
                )
            }
            _ => {
                return Err(ApiError::invalid(
                    "give `event_types` (a list such as [\"user.*\"]) or `stream_id` (a stream \
                     whose subscriptions to copy), not both",
                ));
            }
        };
    let catalog = state
        .catalogs
        .for_tenant(&*state.store, &caller.tenant_id)
        .await?;
    stream::validate_subscriptions(&subscriptions, &catalog)
        .map_err(|e| ApiError::invalid(e.replace("`subscriptions`", "`event_types`")))?;
    let streams = state.store.list_streams(&caller.tenant_id).await?;
    let sessions = streams.iter().filter(|s| is_session(s)).count();
    if sessions >= MAX_SESSIONS_PER_TENANT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "listen_session_limit",
            format!(
                "the tenant has {MAX_SESSIONS_PER_TENANT} listen sessions, the most it may: end \
                 one (Ctrl-C in its `herald listen`, or DELETE /v1/listen-sessions/{{id}}); a \
                 disconnected one ends by itself {} s after its connection dropped",
                GRACE_MS / 1000
            ),
        ));
    }
    Quotas::check(
        state.limits.quotas.streams,
        streams.len(),
        "event streams",
        "max_streams_per_tenant",
    )?;
    let now = state.clock.now_ms();
    let id = ids::stream_id();
    let stream = Stream {
        tenant_id: caller.tenant_id.clone(),
        name: format!("herald listen {id}"),
        id,
        status: StreamStatus::Enabled,
        status_reason: None,
        subscriptions,
        destination: Destination::Listen(ListenConfig {
            forward_to: request.forward_to,
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
    state
        .store
        .create_stream(stream.clone(), Some(secret.clone()))
        .await?;
    state.signal.streams_changed();
    tracing::info!(stream = %stream.id, tenant = %stream.tenant_id, "listen session created");
    let mut view = super::streams::view(&stream);
    view["signing_secret"] = json!(secret.secret.expose());
    view["expires_at"] = json!(format_time(now + GRACE_MS));
    view["connect"] = json!(format!("/v1/listen-sessions/{}/connect", stream.id));
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /v1/listen-sessions/{id}`: ends the session now.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::CreateEventStreams)?;
    load(&state, &caller, &id).await?;
    let now = state.clock.now_ms();
    if state
        .store
        .delete_stream(&caller.tenant_id, &id, now)
        .await?
    {
        state.signal.streams_changed();
        tracing::info!(stream = %id, tenant = %caller.tenant_id, "listen session ended");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/listen-sessions/{id}/connect`: the session's WebSocket.
pub async fn connect(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::CreateEventStreams)?;
    let stream = load(&state, &caller, &id).await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(
            "websocket_required",
            format!("this route takes a WebSocket connection, as `herald listen` opens it ({e})"),
        )
    })?;
    if !state.delivers {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "listen_unavailable",
            "this node does not deliver (role `api`): connect `herald listen` to a node of \
             role `all`, which sends the session's deliveries over the connection",
        ));
    }
    let caller = TokenWatch::new(&caller, &headers, state.clock.now_ms());
    Ok(upgrade
        .max_message_size(MAX_LISTENER_MESSAGE)
        .on_upgrade(move |socket| serve(state, stream, caller, socket)))
}

async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Stream, ApiError> {
    state
        .store
        .get_stream(&caller.tenant_id, id)
        .await?
        .filter(is_session)
        .ok_or_else(|| ApiError::not_found("listen session", id))
}

fn is_session(stream: &Stream) -> bool {
    matches!(stream.destination, Destination::Listen(_))
}

/// Why a connection ended, as its close frame says.
struct Ending {
    code: u16,
    reason: &'static str,
}

const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const UNSUPPORTED: u16 = 1003;
const NORMAL: u16 = 1000;

/// One connected listener: deliveries out, results in, the session kept alive meanwhile.
async fn serve(state: AppState, stream: Stream, mut caller: TokenWatch, mut socket: WebSocket) {
    let listeners = state.destinations.listeners.clone();
    let (connection, mut outbox) = listeners.attach(&stream.id);
    state.signal.streams_changed();
    tracing::info!(stream = %stream.id, tenant = %stream.tenant_id, "herald listen connected");
    // Pings sent since the listener was last heard from. Counted, not timed: a clock that
    // jumps must not end a live connection.
    let mut unanswered = 0;
    let mut touch_at = state.clock.now_ms();
    let ending = loop {
        if state.clock.now_ms() >= touch_at {
            let now = state.clock.now_ms();
            if !caller.still_allowed(&state).await {
                break Some(Ending {
                    code: POLICY,
                    reason: "the token is no longer valid",
                });
            }
            if unanswered >= 2 {
                break None;
            }
            match state
                .store
                .extend_stream(&stream.tenant_id, &stream.id, now + GRACE_MS)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    break Some(Ending {
                        code: NORMAL,
                        reason: "the session has ended",
                    });
                }
                Err(e) => {
                    tracing::warn!(stream = %stream.id, error = %e, "could not extend a listen session; retrying");
                }
            }
            if socket
                .send(WsMessage::Ping(Default::default()))
                .await
                .is_err()
            {
                break None;
            }
            unanswered += 1;
            touch_at = now + TOUCH_MS;
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => break Some(Ending {
                code: GOING_AWAY,
                reason: "the server is stopping; reconnect",
            }),
            forward = outbox.recv() => {
                let Some(forward) = forward else { break None };
                let text = serde_json::to_string(&ToListener::Delivery(forward))
                    .expect("a forward serialises");
                if socket.send(WsMessage::Text(text.into())).await.is_err() {
                    break None;
                }
            }
            message = socket.recv() => {
                unanswered = 0;
                match message {
                    Some(Ok(WsMessage::Text(text))) => {
                        match serde_json::from_str::<FromListener>(&text) {
                            Ok(FromListener::Result(result)) => {
                                connection.complete(result);
                            }
                            Err(e) => {
                                tracing::debug!(stream = %stream.id, error = %e, "a listener sent a message Herald cannot read");
                                break Some(Ending {
                                    code: POLICY,
                                    reason: "a message Herald cannot read: send results as `herald listen` does",
                                });
                            }
                        }
                    }
                    Some(Ok(WsMessage::Binary(_))) => break Some(Ending {
                        code: UNSUPPORTED,
                        reason: "messages are JSON text",
                    }),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break None,
                }
            }
            () = state.clock.sleep_until(touch_at) => {}
        }
    };
    listeners.detach(&stream.id, &connection);
    state.signal.streams_changed();
    if let Some(ending) = ending {
        let _ = socket
            .send(WsMessage::Close(Some(CloseFrame {
                code: ending.code,
                reason: ending.reason.into(),
            })))
            .await;
    }
    tracing::info!(
        stream = %stream.id,
        tenant = %stream.tenant_id,
        "herald listen disconnected; the session ends in {} s unless it reconnects",
        GRACE_MS / 1000
    );
}

/// Deletes sessions past their expiry, every `REAP_MS`, on every node (deleting one twice is
/// harmless). A session connected to this node is only extended: its connection's own touch
/// may have failed against a store that was briefly down.
pub async fn reap(
    store: std::sync::Arc<dyn Store>,
    clock: std::sync::Arc<dyn Clock>,
    signal: std::sync::Arc<Signal>,
    listeners: std::sync::Arc<crate::destinations::listen::Listeners>,
    shutdown: CancellationToken,
) {
    loop {
        let next = clock.now_ms() + REAP_MS;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = clock.sleep_until(next) => {}
        }
        let now = clock.now_ms();
        let expired = match store.expired_streams(now).await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for expired listen sessions");
                continue;
            }
        };
        for (tenant_id, id) in expired {
            let result = if listeners.is_connected(&id) {
                store.extend_stream(&tenant_id, &id, now + GRACE_MS).await
            } else {
                store.delete_stream(&tenant_id, &id, now).await.inspect(|&deleted| {
                    if deleted {
                        signal.streams_changed();
                        tracing::info!(stream = %id, tenant = %tenant_id, "listen session expired");
                    }
                })
            };
            if let Err(e) = result {
                tracing::warn!(stream = %id, error = %e, "could not end an expired listen session");
            }
        }
    }
}
