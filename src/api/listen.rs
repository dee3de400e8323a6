//! `/v1/listen-sessions`: the HTTP side of `herald listen`. Opening and ending a session are
//! the service's (`service::listen`); this module owns the session's WebSocket. While a
//! connection lasts, this node holds the session (`Store::hold_stream`), sends its
//! deliveries over it (see `destinations::listen`), pings the listener and keeps the
//! session's expiry ahead; a connection that another replaced, on this node or another, is
//! closed with a reason. Stopping the server lets the results of attempts under way come
//! back before the connection closes.

use std::time::Duration;

use axum::Json;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::TokenWatch;
use super::{ApiError, AppState, Caller, JsonBody};
use crate::clock::Millis;
use crate::destinations::listen::{Ended, FromListener, ToListener};
use crate::event::format_time;
use crate::service::listen::{self as sessions, GRACE_MS, NewSession};
use crate::store::Holding;
use crate::stream::Stream;

/// How often a connected session pushes its expiry forward and pings its listener; a
/// listener that answered none of the last two pings is taken to be gone.
const TOUCH_MS: Millis = GRACE_MS / 3;
/// Each touch moves the expiry this far ahead, so a session outlives its connection by at
/// least the grace period.
const AHEAD_MS: Millis = GRACE_MS + TOUCH_MS;
/// The largest message or frame a listener may send (a result carries at most a 4 KiB body
/// excerpt).
const MAX_LISTENER_MESSAGE: usize = 64 * 1024;
/// A listener that does not take a message within this long is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// While the server stops: how often to look whether results are still awaited.
const STOPPING_POLL: Duration = Duration::from_millis(50);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    event_types: Option<Vec<String>>,
    stream_id: Option<String>,
    forward_to: String,
}

/// `POST /v1/listen-sessions`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateSession>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let session = sessions::open(
        &state,
        &caller,
        NewSession {
            event_types: request.event_types,
            stream_id: request.stream_id,
            forward_to: request.forward_to,
        },
    )
    .await?;
    let stream = &session.stream;
    let mut view = super::streams::view(stream);
    view["signing_secret"] = json!(session.signing_secret.expose());
    view["expires_at"] = json!(stream.expires_at.map(format_time));
    view["connect"] = json!(format!("/v1/listen-sessions/{}/connect", stream.id));
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /v1/listen-sessions/{id}`: ends the session now.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    sessions::end(&state, &caller, &id).await?;
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
    let stream = sessions::connectable(&state, &caller, &id).await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(
            "websocket_required",
            format!("this route takes a WebSocket connection, as `herald listen` opens it ({e})"),
        )
    })?;
    let caller = TokenWatch::new(
        &caller,
        super::auth::token_hash(&headers),
        state.clock.now_ms(),
    );
    Ok(upgrade
        .max_message_size(MAX_LISTENER_MESSAGE)
        .max_frame_size(MAX_LISTENER_MESSAGE)
        .on_upgrade(move |socket| serve(state, stream, caller, socket)))
}

/// Why a connection ended, as its close frame says.
struct Closing {
    code: u16,
    reason: &'static str,
}

const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED: u16 = 1003;
const POLICY: u16 = 1008;

const SESSION_ENDED: Closing = Closing {
    code: NORMAL,
    reason: "the session has ended",
};
const REPLACED: Closing = Closing {
    code: POLICY,
    reason: "a newer connection of this session replaced this one",
};

/// One connected listener: deliveries out, results in, the session kept alive meanwhile.
async fn serve(state: AppState, stream: Stream, mut caller: TokenWatch, mut socket: WebSocket) {
    let holder = crate::ids::random_base62(22);
    let (tenant_id, id) = (stream.tenant_id.as_str(), stream.id.as_str());
    let listeners = state.destinations.listeners.clone();
    let taking = listeners.taking().await;
    match state
        .store
        .hold_stream(tenant_id, id, &holder, state.clock.now_ms() + AHEAD_MS)
        .await
    {
        Ok(true) => {}
        Ok(false) => return close(socket, SESSION_ENDED).await,
        Err(e) => {
            tracing::warn!(stream = %id, error = %e, "could not take a listen session's connection");
            return close(
                socket,
                Closing {
                    code: 1011,
                    reason: "the store cannot be reached; reconnect",
                },
            )
            .await;
        }
    }
    let (connection, mut outbox) = listeners.attach(id);
    drop(taking);
    state.signal.streams_changed();
    tracing::info!(stream = %id, tenant = %tenant_id, "herald listen connected");
    // Pings sent since the listener was last heard from. Counted, not timed: a clock that
    // jumps must not end a live connection.
    let mut unanswered = 0;
    let mut touch_at = state.clock.now_ms() + TOUCH_MS;
    let mut stopping = false;
    let closing = loop {
        if stopping && connection.pending_count() == 0 {
            break Some(Closing {
                code: GOING_AWAY,
                reason: "the server is stopping; reconnect",
            });
        }
        if !stopping && state.clock.now_ms() >= touch_at {
            let now = state.clock.now_ms();
            if !caller.still_allowed(&state).await {
                break Some(Closing {
                    code: POLICY,
                    reason: "the token is no longer valid",
                });
            }
            if unanswered >= 2 {
                break None;
            }
            match state
                .store
                .touch_stream(tenant_id, id, &holder, now + AHEAD_MS)
                .await
            {
                Ok(Holding::Held) => {}
                Ok(Holding::Taken) => break Some(REPLACED),
                Ok(Holding::Gone) => break Some(SESSION_ENDED),
                Err(e) => {
                    tracing::warn!(stream = %id, error = %e, "could not extend a listen session; retrying");
                }
            }
            if !send(&mut socket, WsMessage::Ping(Default::default())).await {
                break None;
            }
            unanswered += 1;
            touch_at = now + TOUCH_MS;
        }
        tokio::select! {
            _ = state.shutdown.cancelled(), if !stopping => {
                // No new attempt starts now; those under way get their results back.
                stopping = true;
            }
            () = tokio::time::sleep(STOPPING_POLL), if stopping => {}
            () = connection.ended() => {
                break Some(match connection.why() {
                    Some(Ended::Replaced) => REPLACED,
                    _ => SESSION_ENDED,
                });
            }
            forward = outbox.recv() => {
                let Some(forward) = forward else { break None };
                let text = serde_json::to_string(&ToListener::Delivery(forward))
                    .expect("a forward serialises");
                if !send(&mut socket, WsMessage::Text(text.into())).await {
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
                                tracing::debug!(stream = %id, error = %e, "a listener sent a message Herald cannot read");
                                break Some(Closing {
                                    code: POLICY,
                                    reason: "a message Herald cannot read: send results as `herald listen` does",
                                });
                            }
                        }
                    }
                    Some(Ok(WsMessage::Binary(_))) => break Some(Closing {
                        code: UNSUPPORTED,
                        reason: "messages are JSON text",
                    }),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break None,
                }
            }
            () = state.clock.sleep_until(touch_at), if !stopping => {}
        }
    };
    listeners.detach(id, &connection);
    state.signal.streams_changed();
    if let Some(closing) = closing {
        close(socket, closing).await;
    }
    tracing::info!(
        stream = %id,
        tenant = %tenant_id,
        "herald listen disconnected; the session ends in {} s unless it reconnects",
        GRACE_MS / 1000
    );
}

/// Sends a message, giving up on a listener that does not take it in time.
async fn send(socket: &mut WebSocket, message: WsMessage) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

async fn close(mut socket: WebSocket, closing: Closing) {
    send(
        &mut socket,
        WsMessage::Close(Some(CloseFrame {
            code: closing.code,
            reason: closing.reason.into(),
        })),
    )
    .await;
}
