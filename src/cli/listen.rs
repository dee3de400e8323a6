//! `herald listen`: deliveries of chosen event types, forwarded to a local URL. The command
//! opens a listen session (a temporary stream with its own signing secret, printed at start),
//! connects a WebSocket to the server (outbound: no port opened on this machine, no relay),
//! POSTs each delivery it receives to `--forward-to` exactly as a webhook delivery arrives
//! (same body, same Standard Webhooks headers), prints a line per request, and sends the
//! local answer back, where it is recorded as the attempt. A dropped connection is retried
//! within the server's grace period; Ctrl-C ends the session and what it made on the server.

use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, protocol::CloseFrame};

use super::Connection;
use super::client::{CliError, Client, api_error};
use super::output::Mode;
use crate::destinations::RESPONSE_EXCERPT_BYTES;
use crate::destinations::listen::{Forward, ForwardError, ForwardResult, FromListener, ToListener};

/// How long the server keeps a session whose connection dropped (`api::listen::GRACE_MS`):
/// reconnecting is pointless after it.
const GRACE: Duration = Duration::from_millis(crate::service::listen::GRACE_MS as u64);
/// The longest a session outlives its command when the command could not end it: the grace
/// period, the touch interval and the reaper's.
const LEFT_TO_SERVER: Duration = Duration::from_secs(95);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The server pings every 20 s: a connection silent for longer than two pings and a margin
/// is dead (a laptop that slept, a network that changed), however open it looks.
const SILENCE: Duration = Duration::from_secs(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  herald listen --events 'user.*' --forward-to http://localhost:3000/webhook\n  herald listen --events user.created,flow.run.finished -f http://localhost:3000/webhook\n  herald listen --stream est_... --forward-to http://localhost:3000/webhook\n\nVerify signatures with the signing secret printed at start, as for any stream. With --json, the session is printed first, then one line per request."
)]
pub struct ListenArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Event types or patterns to receive, comma-separated or repeated (`user.*`)
    #[arg(
        long,
        short = 'e',
        value_delimiter = ',',
        value_name = "TYPES",
        required_unless_present = "stream",
        conflicts_with = "stream"
    )]
    pub events: Vec<String>,
    /// Receive what this stream subscribes to, in its payload format (the stream's own
    /// deliveries are unaffected)
    #[arg(long, value_name = "STREAM_ID")]
    pub stream: Option<String>,
    /// The local URL each delivery is POSTed to
    #[arg(long, short = 'f', value_name = "URL")]
    pub forward_to: String,
}

pub async fn run(args: ListenArgs) -> Result<(), CliError> {
    let forward_to = url::Url::parse(&args.forward_to)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--forward-to `{}` is not an http(s) URL; for example http://localhost:3000/webhook",
                args.forward_to
            ))
        })?;
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    let mut body = json!({ "forward_to": forward_to.as_str() });
    match &args.stream {
        Some(stream) => body["stream_id"] = json!(stream),
        None => body["event_types"] = json!(args.events),
    }
    let session = client.post(&["v1", "listen-sessions"], &body).await?;
    let id = session["id"]
        .as_str()
        .ok_or_else(|| CliError::Transport("the server's session has no id".into()))?
        .to_owned();
    match mode {
        Mode::Json => crate::outln!("{session}"),
        Mode::Quiet => crate::outln!("{id}"),
        Mode::Table => {
            let types: Vec<&str> = session["subscriptions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["event_type"].as_str())
                .collect();
            crate::outln!("Forwarding {} to {forward_to}", types.join(", "));
            crate::outln!(
                "Signing secret: {}",
                session["signing_secret"].as_str().unwrap_or("(none)")
            );
            crate::outln!("Session {id}: it ends with this command (Ctrl-C)");
        }
    }
    let local = reqwest::Client::builder()
        .user_agent(concat!("herald-listen/", env!("CARGO_PKG_VERSION")))
        // As Herald delivers: a redirect is an answer, not followed.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| CliError::Local(format!("starting the HTTP client: {e}")))?;
    let listener = Listener {
        client: &client,
        id: &id,
        local,
        forward_to,
        mode,
    };
    let ended = tokio::select! {
        ended = listener.run() => ended,
        () = interrupted() => Ok(()),
    };
    // Whatever ended it, the session goes with the command; a second Ctrl-C, or a server
    // that does not answer, leaves it to the server.
    let later = || {
        eprintln!(
            "herald: the session was not ended here; the server ends it within {} s",
            LEFT_TO_SERVER.as_secs()
        )
    };
    let path = ["v1", "listen-sessions", id.as_str()];
    tokio::select! {
        deleted = tokio::time::timeout(CONNECT_TIMEOUT, client.delete(&path)) => match deleted {
            Ok(Ok(_) | Err(CliError::Api { status: 404, .. })) => {}
            Ok(Err(e)) => {
                eprintln!("herald: {}", e.report().lines().next().unwrap_or_default());
                later();
            }
            Err(_) => later(),
        },
        () = interrupted() => later(),
    }
    if mode == Mode::Table && ended.is_ok() {
        crate::outln!("Session {id} ended");
    }
    ended
}

/// Ctrl-C, or a termination signal.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

struct Listener<'a> {
    client: &'a Client,
    id: &'a str,
    local: reqwest::Client,
    forward_to: url::Url,
    mode: Mode,
}

/// How one connection ended.
enum Ended {
    /// The server closed it, saying why.
    Closed(Option<CloseFrame>),
    /// It broke.
    Dropped(String),
}

impl Listener<'_> {
    /// Connects, serves, and reconnects after a drop until the session is gone.
    async fn run(&self) -> Result<(), CliError> {
        let mut backoff = Duration::from_secs(1);
        let mut connected_once = false;
        let mut down_since: Option<Instant> = None;
        loop {
            let request =
                self.client
                    .websocket_request(&["v1", "listen-sessions", self.id, "connect"])?;
            // Named in the error of a refused opening.
            let url = request.uri().clone();
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
                    .await
                    .unwrap_or_else(|_| {
                        Err(tungstenite::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the server did not answer within 10 s",
                        )))
                    });
            let why = match connected {
                Ok((socket, _)) => {
                    if self.mode == Mode::Table {
                        crate::outln!(
                            "{}",
                            if connected_once {
                                "Reconnected"
                            } else {
                                "Ready"
                            }
                        );
                    }
                    connected_once = true;
                    down_since = None;
                    backoff = Duration::from_secs(1);
                    match self.serve(socket).await {
                        Ended::Closed(frame) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            // Going away (the server restarts) or a server error: reconnect.
                            // Anything else is final.
                            if code != 1001 && code != 1011 {
                                return Err(CliError::Local(format!(
                                    "the server ended the connection: {reason} (code {code})"
                                )));
                            }
                            reason
                        }
                        Ended::Dropped(why) => why,
                    }
                }
                Err(tungstenite::Error::Http(response)) => {
                    let status = response.status().as_u16();
                    let error = api_error(
                        &url,
                        status,
                        None,
                        response.body().as_deref().unwrap_or_default(),
                    );
                    match status {
                        404 => {
                            return Err(CliError::Local(format!(
                                "the session {} is gone: it ends {} s after its connection \
                                 drops; run `herald listen` again",
                                self.id,
                                GRACE.as_secs()
                            )));
                        }
                        429 | 500..=599 => error
                            .report()
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                        _ => return Err(error),
                    }
                }
                // Its text already holds its cause.
                Err(e) => e.to_string(),
            };
            let since = *down_since.get_or_insert_with(Instant::now);
            if since.elapsed() > GRACE {
                return Err(CliError::Transport(format!(
                    "the server could not be reached for {} s ({why}); the session has ended",
                    GRACE.as_secs()
                )));
            }
            eprintln!(
                "herald: the connection dropped ({why}); reconnecting in {} s",
                backoff.as_secs()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Forwards what arrives on one connection until it ends. Each delivery is forwarded on
    /// a task of its own, so a slow local handler does not hold up the others.
    async fn serve(
        &self,
        socket: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Ended {
        let (mut sink, mut incoming) = socket.split();
        let (results, mut finished) = mpsc::unbounded_channel::<ForwardResult>();
        loop {
            tokio::select! {
                message = tokio::time::timeout(SILENCE, incoming.next()) => match message {
                    Err(_) => return Ended::Dropped(format!(
                        "nothing heard from the server for {} s",
                        SILENCE.as_secs()
                    )),
                    Ok(message) => match message {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ToListener>(&text) {
                        Ok(ToListener::Delivery(forward)) => {
                            let (local, url, mode, results) =
                                (self.local.clone(), self.forward_to.clone(), self.mode, results.clone());
                            tokio::spawn(async move {
                                let result = forward_one(&local, url, &forward, mode).await;
                                let _ = results.send(result);
                            });
                        }
                        Err(e) => eprintln!(
                            "herald: ignored a message from the server this herald cannot read ({e}); is it a newer version?"
                        ),
                    },
                    Some(Ok(Message::Close(frame))) => return Ended::Closed(frame),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Dropped(e.to_string()),
                    None => return Ended::Dropped("the server closed the connection".into()),
                    },
                },
                Some(result) = finished.recv() => {
                    let text = serde_json::to_string(&FromListener::Result(result))
                        .expect("a result serialises");
                    if let Err(e) = sink.send(Message::Text(text.into())).await {
                        return Ended::Dropped(e.to_string());
                    }
                }
            }
        }
    }
}

/// POSTs one delivery to the local URL, prints its line, and answers what to report.
async fn forward_one(
    local: &reqwest::Client,
    url: url::Url,
    forward: &Forward,
    mode: Mode,
) -> ForwardResult {
    let started = Instant::now();
    // Answer before the server stops waiting, so a slow handler is reported as a timeout
    // rather than lost.
    let timeout = Duration::from_millis(forward.timeout_ms)
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    let outcome = match forward.body() {
        Ok(body) => {
            let mut request = local.post(url).timeout(timeout).body(body);
            for (name, value) in &forward.headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) => Ok(response),
                Err(e) => Err(ForwardError {
                    kind: if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "io"
                    }
                    .into(),
                    message: crate::error_chain(&e.without_url()),
                }),
            }
        }
        Err(e) => Err(ForwardError {
            kind: "io".into(),
            message: format!("the server sent a body that is not base64: {e}"),
        }),
    };
    let mut result = ForwardResult {
        forward_id: forward.forward_id,
        duration_ms: 0,
        status: None,
        retry_after: None,
        body: None,
        error: None,
    };
    match outcome {
        Ok(response) => {
            result.status = Some(response.status().as_u16());
            result.retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            result.body = Some(excerpt(response).await);
        }
        Err(error) => result.error = Some(error),
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    print_line(forward, &result, mode);
    result
}

/// The first [`RESPONSE_EXCERPT_BYTES`] of the body, as text; the rest is never read.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < RESPONSE_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(RESPONSE_EXCERPT_BYTES);
    String::from_utf8_lossy(&buf).into_owned()
}

fn print_line(forward: &Forward, result: &ForwardResult, mode: Mode) {
    let now = crate::event::format_time(crate::clock::system_now_ms());
    match mode {
        Mode::Json => {
            let mut line = json!({
                "time": now,
                "event_type": forward.event_type,
                "event_id": forward.event_id,
                "delivery_id": forward.delivery_id,
                "duration_ms": result.duration_ms,
            });
            match (&result.status, &result.error) {
                (Some(status), _) => line["status"] = json!(status),
                (None, Some(error)) => {
                    line["error"] = json!({"kind": error.kind, "message": error.message})
                }
                (None, None) => {}
            }
            crate::outln!("{line}");
        }
        Mode::Quiet => crate::outln!("{}", forward.delivery_id),
        Mode::Table => {
            let answer: Value = match (&result.status, &result.error) {
                (Some(status), _) => json!(status),
                (None, Some(error)) => json!(format!("{}: {}", error.kind, error.message)),
                (None, None) => json!("-"),
            };
            crate::outln!(
                "{now}  {:<28}  {}  {}  {} ms",
                forward.event_type,
                forward.event_id,
                super::output::cell(&answer),
                result.duration_ms
            );
        }
    }
}
