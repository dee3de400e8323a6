//! `herald events tail`: prints the tenant's events as they are published, from
//! `GET /v1/events/stream`, and resumes after a dropped connection from the last offset it
//! printed, so a restart of the server or a network blip neither skips nor repeats an event.
//! Also the Server-Sent Events parser it reads the stream with.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{CliError, Client};
use super::output::{self, Mode};

/// The longest wait between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where `tail` starts, as given on the command line.
pub struct Start {
    pub from: Option<String>,
    pub from_timestamp: Option<String>,
}

pub async fn run(
    client: &Client,
    mode: Mode,
    types: &[String],
    start: Start,
) -> Result<(), CliError> {
    let mut last_offset: Option<String> = start.from.clone();
    // Started at the end, a reconnection before the first event resumes from the time of
    // the first connection (the server's clock, from its `Date`), so nothing published while
    // disconnected is missed.
    let mut from_timestamp = start.from_timestamp.clone();
    let mut backoff = Duration::from_secs(1);
    if mode == Mode::Table {
        crate::outln!("{:<24}  {:<28}  {:<28}  SUBJECT", "RECEIVED", "TYPE", "ID");
    }
    loop {
        let mut query: Vec<(&str, String)> =
            types.iter().map(|t| ("event_type", t.clone())).collect();
        let mut headers = Vec::new();
        match (&last_offset, &from_timestamp) {
            // Resuming: after the last event printed, as an EventSource would.
            (Some(offset), _) => headers.push(("last-event-id", offset.as_str())),
            (None, Some(time)) => query.push(("from_timestamp", time.clone())),
            (None, None) => {}
        }
        let response = match client
            .send(
                Method::GET,
                &["v1", "events", "stream"],
                &query,
                None,
                &headers,
            )
            .await
        {
            Ok((_, response)) => response,
            Err(e) if retryable(&e) => {
                eprintln!("herald: {}; retrying in {} s", brief(&e), backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => return Err(e),
        };
        if from_timestamp.is_none()
            && last_offset.is_none()
            && let Some(date) = response
                .headers()
                .get("date")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
        {
            let ms = date
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            from_timestamp = Some(crate::event::format_time(ms));
        }
        let mut parser = SseParser::default();
        let mut response = response;
        let mut received = false;
        let ended = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    // Backing off again only once a connection has carried something: a
                    // proxy that accepts and closes at once must not make this spin.
                    if !std::mem::replace(&mut received, true) && backoff > Duration::from_secs(1) {
                        eprintln!("herald: connected again; resuming");
                        backoff = Duration::from_secs(1);
                    }
                    for message in parser.feed(&bytes) {
                        print(mode, &message);
                        if let Some(id) = message.id.filter(|id| !id.is_empty()) {
                            last_offset = Some(id);
                        }
                    }
                    if output::stdout_closed() {
                        return Ok(());
                    }
                }
                Ok(None) => break "the server closed the stream".to_string(),
                Err(e) => break format!("the stream broke: {}", crate::error_chain(&e)),
            }
        };
        eprintln!("herald: {ended}; reconnecting in {} s", backoff.as_secs());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn print(mode: Mode, message: &SseMessage) {
    let event: Value = match serde_json::from_str(&message.data) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("herald: skipped a message that is not JSON");
            return;
        }
    };
    match mode {
        Mode::Json => output::json_line(&json!({ "offset": message.id, "event": event })),
        Mode::Quiet => crate::outln!("{}", output::printable(&output::cell(&event["id"]))),
        Mode::Table => {
            let cell = |v: &Value| output::printable(&output::cell(v)).into_owned();
            crate::outln!(
                "{:<24}  {:<28}  {:<28}  {}",
                cell(&event["received_at"]),
                cell(&event["type"]),
                cell(&event["id"]),
                cell(&event["subject"]),
            )
        }
    }
}

/// A dropped connection, an unreachable server, or one too busy: worth trying again. Any
/// other API error (a bad token, an expired offset) stays the same however often it is asked.
fn retryable(error: &CliError) -> bool {
    match error {
        CliError::Transport(_) => true,
        CliError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        CliError::Usage(_) | CliError::NotFound(_) | CliError::Local(_) => false,
    }
}

fn brief(error: &CliError) -> String {
    match error {
        CliError::Api { code, message, .. } => format!("{code}: {message}"),
        CliError::Transport(message)
        | CliError::Usage(message)
        | CliError::NotFound(message)
        | CliError::Local(message) => message.clone(),
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The last `id` field of the message; `None` when it had none.
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Parses a `text/event-stream` body fed in chunks of any size, as the WHATWG HTML standard's
/// "interpreting an event stream" says: lines end in CRLF, LF or CR; `:` starts a comment;
/// a blank line dispatches the message gathered so far (none when it has no data).
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    /// The previous chunk ended in CR: an LF opening this one belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds a chunk; answers the messages it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        let mut messages = Vec::new();
        for &byte in chunk {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.pending);
                    if let Some(message) = self.line(&String::from_utf8_lossy(&line)) {
                        messages.push(message);
                    }
                }
                _ => self.pending.push(byte),
            }
        }
        messages
    }

    fn line(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            let Some(data) = self.data.take() else {
                self.event = None;
                return None;
            };
            return Some(SseMessage {
                id: self.id.clone(),
                event: self.event.take(),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            // The last event id persists across messages, as in a browser.
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_chunks_and_line_endings_parse_whole() {
        let stream = b":heartbeat\r\n\r\nid: 0-1\ndata: {\"a\":\ndata: 1}\n\nid:0-2\revent: x\rdata:2\r\r\n: comment\n\ndata: no id change\n\n";
        for split in 1..stream.len() {
            let mut parser = SseParser::default();
            let mut messages = parser.feed(&stream[..split]);
            messages.extend(parser.feed(&stream[split..]));
            assert_eq!(
                messages,
                vec![
                    SseMessage {
                        id: Some("0-1".into()),
                        event: None,
                        data: "{\"a\":\n1}".into()
                    },
                    SseMessage {
                        id: Some("0-2".into()),
                        event: Some("x".into()),
                        data: "2".into()
                    },
                    SseMessage {
                        id: Some("0-2".into()),
                        event: None,
                        data: "no id change".into()
                    },
                ],
                "split at {split}"
            );
        }
    }
}
