//! The HTTP listener. It owns the connection-level limits: at most `max_connections` open at
//! once (further clients wait in the kernel's accept backlog until one closes, rather than
//! each costing a task and buffers), and a connection whose request head has not fully
//! arrived within the header-read timeout is closed, so idle or half-sent requests cannot pin
//! connections. Request-level limits (concurrent requests, their timeout) live in the API's
//! middleware. On shutdown it stops accepting, lets the requests under way finish, and
//! returns once every connection has closed, or after the drain timeout (a client that never
//! reads its answer must not keep the process from stopping).

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The listener's limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections to finish.
    pub drain_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled and the open connections have
/// finished their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // A slot first, then the connection: at the cap, clients queue in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            // Upgrades: `herald listen`'s WebSocket.
            let mut connection = pin!(
                http.serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
            );
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    // Finishes the request under way, then closes; an idle connection closes now.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout are left to end with the process"
        );
    }
}

/// Aborted handshakes are the client's affair; anything else (out of file descriptors) is
/// the operator's, and retrying at once would spin.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "could not accept a connection; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
