//! `herald publish`: one event from flags or a JSON file (an object, or an array for a
//! batch), or NDJSON on stdin sent in batches of up to [`BATCH`] events.

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
    let mut batch: Vec<Value> = Vec::with_capacity(BATCH);
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
        batch.push(event);
        if batch.len() == BATCH {
            sent += publish_batch(&client, mode, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        sent += publish_batch(&client, mode, batch).await?;
    }
    if sent == 0 {
        return Err(CliError::Usage(
            "nothing to publish: give --type, -f FILE, or NDJSON events on stdin".into(),
        ));
    }
    Ok(())
}

async fn publish_batch(client: &Client, mode: Mode, batch: Vec<Value>) -> Result<usize, CliError> {
    let n = batch.len();
    let result = send(client, &Value::Array(batch)).await?;
    print(mode, &result);
    Ok(n)
}

/// Sends one event (an object) or a batch (an array) with the matching content type.
async fn send(client: &Client, body: &Value) -> Result<Value, CliError> {
    let content_type = if body.is_array() {
        "application/cloudevents-batch+json"
    } else {
        "application/cloudevents+json"
    };
    let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
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
