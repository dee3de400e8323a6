//! `herald publish`: one event from flags or a JSON file (an object, or an array for a
//! batch), or NDJSON on stdin sent in batches of up to [`BATCH`] events and
//! `--max-batch-bytes` bytes.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Body, CliError, Client};
use super::output::{self, Mode};
use super::{Connection, json_value};

/// Events a stdin batch carries (the API takes up to 1,000 a request).
pub const BATCH: usize = 100;

/// The server's default `max_request_bytes`.
const SERVER_MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    herald publish --type user.created --data '{\"user_id\": \"u_1\"}'\n  \
    herald publish -f event.json\n  \
    cat events.ndjson | herald publish")]
pub struct PublishArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The event's type; without it (and without -f), events are read as NDJSON from stdin
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "file")]
    kind: Option<String>,
    /// The event's id [default: a new `evt_` id]
    #[arg(long, requires = "kind")]
    id: Option<String>,
    /// The event's source [default: `urn:herald:<tenant>`]
    #[arg(long, requires = "kind")]
    source: Option<String>,
    /// The event's subject
    #[arg(long, requires = "kind")]
    subject: Option<String>,
    /// The event's data, as JSON
    #[arg(long, value_name = "JSON", value_parser = json_value, requires = "kind")]
    data: Option<Value>,
    /// A file holding one event (a JSON object) or a batch (an array)
    #[arg(short = 'f', long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Largest stdin batch, in bytes: the server's `max_request_bytes` when it is not the
    /// default (an event larger than this goes alone)
    #[arg(long, value_name = "BYTES", default_value_t = SERVER_MAX_REQUEST_BYTES,
          value_parser = clap::value_parser!(u64).range(2..))]
    max_batch_bytes: u64,
}

pub async fn run(args: PublishArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    if let Some(kind) = &args.kind {
        let mut event = json!({ "type": kind });
        for (key, value) in [
            ("id", &args.id),
            ("source", &args.source),
            ("subject", &args.subject),
        ] {
            if let Some(value) = value {
                event[key] = json!(value);
            }
        }
        if let Some(data) = &args.data {
            event["data"] = data.clone();
        }
        let result = send(&client, &event).await?;
        print(mode, &result);
        return Ok(());
    }
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("-f {}: {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("-f {}: not valid JSON: {e}", path.display())))?;
        let result = send(&client, &value).await?;
        print(mode, &result);
        return Ok(());
    }
    // NDJSON on stdin, a batch at a time: a batch the API refuses stops the run (the API
    // stores nothing of a refused batch; the batches before it are stored).
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::Usage(
            "nothing to publish: give --type, -f FILE, or pipe NDJSON events into stdin".into(),
        ));
    }
    let mut batch = Batch::default();
    let mut sent = 0usize;
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line).map_err(|e| {
            CliError::Usage(format!(
                "stdin line {}: not valid JSON: {e} ({} events were published before it)",
                number + 1,
                sent
            ))
        })?;
        let event = serde_json::to_string(&event).expect("a JSON value serializes");
        if !batch.fits(&event, args.max_batch_bytes) {
            sent += publish_batch(&client, mode, std::mem::take(&mut batch), sent).await?;
        }
        batch.push(event, number + 1);
        if batch.events.len() == BATCH {
            sent += publish_batch(&client, mode, std::mem::take(&mut batch), sent).await?;
        }
    }
    if !batch.events.is_empty() {
        sent += publish_batch(&client, mode, batch, sent).await?;
    }
    if sent == 0 {
        return Err(CliError::Usage(
            "nothing to publish: give --type, -f FILE, or NDJSON events on stdin".into(),
        ));
    }
    Ok(())
}

/// Events read from stdin for one request, kept as the JSON text they are sent as.
#[derive(Default)]
struct Batch {
    events: Vec<String>,
    /// The request body's size so far: `[`, the events, the commas between them, `]`.
    bytes: usize,
    first_line: usize,
    last_line: usize,
}

impl Batch {
    /// Whether `event` can join without the body growing past `max` bytes; an empty batch
    /// takes any event, so one larger than `max` goes alone and the server decides.
    fn fits(&self, event: &str, max: u64) -> bool {
        self.events.is_empty() || (self.bytes + 1 + event.len()) as u64 <= max
    }

    fn push(&mut self, event: String, line: usize) {
        self.bytes += if self.events.is_empty() { 2 } else { 1 } + event.len();
        if self.events.is_empty() {
            self.first_line = line;
        }
        self.last_line = line;
        self.events.push(event);
    }
}

/// Sends a batch; if it fails, says on stderr what was stored before it and what was not,
/// so the rest can be sent again from the right line.
async fn publish_batch(
    client: &Client,
    mode: Mode,
    batch: Batch,
    sent_before: usize,
) -> Result<usize, CliError> {
    let n = batch.events.len();
    let body = format!("[{}]", batch.events.join(","));
    let result = match send_bytes(client, true, body.into_bytes()).await {
        Ok(result) => result,
        Err(error) => {
            let fate = match error {
                CliError::Api { .. } => "none of them was stored",
                _ => {
                    "whether they were stored is unknown (sending them again is safe: an event \
                      id already stored is answered as a duplicate)"
                }
            };
            eprintln!(
                "herald: {sent_before} event{} from stdin {} stored before this batch of {n} \
                 (stdin lines {} to {}); {fate}",
                if sent_before == 1 { "" } else { "s" },
                if sent_before == 1 { "was" } else { "were" },
                batch.first_line,
                batch.last_line,
            );
            return Err(error);
        }
    };
    print(mode, &result);
    Ok(n)
}

/// Sends one event (an object) or a batch (an array) with the matching content type.
async fn send(client: &Client, body: &Value) -> Result<Value, CliError> {
    let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
    send_bytes(client, body.is_array(), bytes).await
}

/// Sends a JSON body already serialized: a batch (an array) or one event.
async fn send_bytes(client: &Client, batch: bool, bytes: Vec<u8>) -> Result<Value, CliError> {
    let content_type = if batch {
        "application/cloudevents-batch+json"
    } else {
        "application/cloudevents+json"
    };
    client
        .call(
            Method::POST,
            &["v1", "events"],
            &[],
            Some(Body {
                content_type,
                bytes,
            }),
        )
        .await
}

/// A publish answer: one result, or a batch's `events`.
fn print(mode: Mode, result: &Value) {
    let results = match result["events"].as_array() {
        Some(events) => events.clone(),
        None => vec![result.clone()],
    };
    match mode {
        Mode::Json => output::json(result),
        Mode::Quiet => results
            .iter()
            .for_each(|r| crate::outln!("{}", output::cell(&r["id"]))),
        Mode::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|r| {
                    vec![
                        output::cell(&r["id"]),
                        output::cell(&r["source"]),
                        if r["duplicate"] == json!(true) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        output::cell(&r["deliveries"]),
                    ]
                })
                .collect();
            output::table(&["ID", "SOURCE", "DUPLICATE", "DELIVERIES"], &rows);
        }
    }
}
