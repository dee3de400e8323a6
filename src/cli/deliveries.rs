//! `herald deliveries list|show`, `herald redeliver` and `herald redeliver-many`: a stream's
//! delivery history (following the API's cursor page by page) and sending deliveries again.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::Connection;
use std::io::IsTerminal;

use super::client::{CliError, Client};
use super::output::{self, Mode};

#[derive(Args, Debug)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: DeliveriesCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// The filters the API's delivery routes take.
#[derive(Args, Debug)]
pub struct Filters {
    /// Only deliveries in these statuses, comma-separated
    #[arg(long, value_enum, value_delimiter = ',')]
    status: Vec<Status>,
    /// Only deliveries of these event types, comma-separated
    #[arg(long, value_delimiter = ',')]
    event_type: Vec<String>,
    /// Only deliveries at or after this RFC 3339 time
    #[arg(long, value_name = "TIME", value_parser = super::rfc3339)]
    date_from: Option<String>,
    /// Only deliveries at or before this RFC 3339 time
    #[arg(long, value_name = "TIME", value_parser = super::rfc3339)]
    date_to: Option<String>,
}

impl Filters {
    fn statuses(&self) -> Vec<&'static str> {
        self.status.iter().map(|s| s.as_str()).collect()
    }
}

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// A stream's deliveries, newest first, every page (or up to --limit)
    #[command(after_help = "Example:\n  herald deliveries list est_... --status failed,pending")]
    List {
        stream: String,
        #[command(flatten)]
        filters: Filters,
        /// Stop after this many deliveries
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One event's delivery to a stream, with every attempt
    #[command(after_help = "Example:\n  herald deliveries show est_... evt_...")]
    Show { stream: String, event_id: String },
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  herald redeliver est_... evt_...")]
pub struct RedeliverArgs {
    #[command(flatten)]
    pub connection: Connection,
    stream: String,
    event_id: String,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  herald redeliver-many est_... --status failed --dry-run")]
pub struct RedeliverManyArgs {
    #[command(flatten)]
    pub connection: Connection,
    stream: String,
    #[command(flatten)]
    filters: Filters,
    /// Count the matching deliveries without queueing them
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Then show the stream's backlog until it has drained (Ctrl-C stops waiting, not the
    /// deliveries)
    #[arg(long)]
    wait: bool,
}

/// How often `--wait` reads the stream's backlog.
const POLL: std::time::Duration = std::time::Duration::from_millis(500);

pub async fn run(args: DeliveriesArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    match args.command {
        DeliveriesCommand::List {
            stream,
            filters,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if !filters.status.is_empty() {
                query.push(("statuses", filters.statuses().join(",")));
            }
            if !filters.event_type.is_empty() {
                query.push(("event_types", filters.event_type.join(",")));
            }
            if let Some(from) = &filters.date_from {
                query.push(("date_from", from.clone()));
            }
            if let Some(to) = &filters.date_to {
                query.push(("date_to", to.clone()));
            }
            let (deliveries, next) = client
                .all_pages(
                    &["v1", "event-streams", &stream, "deliveries"],
                    &query,
                    "deliveries",
                    limit,
                )
                .await?;
            match mode {
                // The API's shape, every page's deliveries in one list.
                Mode::Json => output::json(&json!({ "deliveries": deliveries, "next": next })),
                Mode::Quiet => deliveries
                    .iter()
                    .for_each(|d| crate::outln!("{}", output::cell(&d["event_id"]))),
                Mode::Table => {
                    let rows: Vec<Vec<String>> = deliveries
                        .iter()
                        .map(|d| {
                            vec![
                                output::cell(&d["event_id"]),
                                output::cell(&d["event_type"]),
                                output::cell(&d["status"]),
                                output::cell(&d["attempt_count"]),
                                output::cell(&d["last_response_status"]),
                                output::cell(&d["updated_at"]),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "EVENT",
                            "TYPE",
                            "STATUS",
                            "ATTEMPTS",
                            "LAST STATUS",
                            "UPDATED",
                        ],
                        &rows,
                    );
                }
            }
        }
        DeliveriesCommand::Show { stream, event_id } => {
            let deliveries = client
                .get(
                    &["v1", "event-streams", &stream, "deliveries", &event_id],
                    &[],
                )
                .await?;
            let list = deliveries.as_array().cloned().unwrap_or_default();
            match mode {
                Mode::Json => output::json(&deliveries),
                Mode::Quiet => list
                    .iter()
                    .for_each(|d| crate::outln!("{}", output::cell(&d["id"]))),
                Mode::Table => {
                    for (i, delivery) in list.iter().enumerate() {
                        if i > 0 {
                            crate::outln!();
                        }
                        print_delivery(delivery);
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_delivery(d: &Value) {
    output::fields(&[
        ("delivery", output::cell(&d["id"])),
        ("event", output::cell(&d["event_id"])),
        ("type", output::cell(&d["event_type"])),
        ("status", output::cell(&d["status"])),
        ("attempts", output::cell(&d["attempt_count"])),
        ("next attempt", output::cell(&d["next_attempt_at"])),
        ("created", output::cell(&d["created_at"])),
        ("updated", output::cell(&d["updated_at"])),
    ]);
    let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
    if attempts.is_empty() {
        return;
    }
    crate::outln!();
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let outcome = if a["error"].is_null() {
                a["response_body"]
                    .as_str()
                    .map_or("-".into(), |b| output::excerpt(b, 60))
            } else {
                format!(
                    "{}: {}",
                    output::cell(&a["error"]["kind"]),
                    output::excerpt(&output::cell(&a["error"]["message"]), 60)
                )
            };
            vec![
                (i + 1).to_string(),
                output::cell(&a["attempted_at"]),
                output::cell(&a["response_status"]),
                format!("{} ms", output::cell(&a["duration_ms"])),
                outcome,
            ]
        })
        .collect();
    output::table(
        &["#", "AT", "STATUS", "DURATION", "RESPONSE / ERROR"],
        &rows,
    );
}

pub async fn redeliver(args: RedeliverArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let result = client
        .post(
            &[
                "v1",
                "event-streams",
                &args.stream,
                "redeliver",
                &args.event_id,
            ],
            &json!({}),
        )
        .await?;
    match args.connection.mode() {
        Mode::Json => output::json(&result),
        Mode::Quiet => crate::outln!("{}", args.event_id),
        Mode::Table => crate::outln!(
            "queued {} delivery(ies) of {} to {} again",
            output::cell(&result["queued"]),
            args.event_id,
            args.stream
        ),
    }
    Ok(())
}

pub async fn redeliver_many(args: RedeliverManyArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let filters = &args.filters;
    let mut body = Map::new();
    if !filters.status.is_empty() {
        body.insert("statuses".into(), json!(filters.statuses()));
    }
    if !filters.event_type.is_empty() {
        body.insert("event_types".into(), json!(filters.event_type));
    }
    if let Some(from) = &filters.date_from {
        body.insert("date_from".into(), json!(from));
    }
    if let Some(to) = &filters.date_to {
        body.insert("date_to".into(), json!(to));
    }
    body.insert("dry_run".into(), json!(args.dry_run));
    let result = client
        .post(
            &["v1", "event-streams", &args.stream, "redeliver"],
            &Value::Object(body),
        )
        .await?;
    match args.connection.mode() {
        Mode::Json => output::json(&result),
        Mode::Quiet if args.dry_run => crate::outln!("{}", output::cell(&result["matched"])),
        Mode::Quiet => crate::outln!("{}", output::cell(&result["queued"])),
        Mode::Table if args.dry_run => crate::outln!(
            "{} delivery(ies) match; nothing was queued (dry run)",
            output::cell(&result["matched"])
        ),
        Mode::Table => crate::outln!(
            "{} delivery(ies) matched, {} queued again",
            output::cell(&result["matched"]),
            output::cell(&result["queued"])
        ),
    }
    if args.wait {
        wait_until_drained(&client, &args.stream).await?;
    }
    Ok(())
}

/// Shows the stream's pending deliveries on stderr (one line rewritten in place on a
/// terminal) until none is left.
async fn wait_until_drained(client: &Client, stream: &str) -> Result<(), CliError> {
    let terminal = std::io::stderr().is_terminal();
    let mut last: Option<String> = None;
    loop {
        let backlog = client
            .get(&["v1", "event-streams", stream, "backlog"], &[])
            .await?;
        let pending = backlog["pending"].as_u64().unwrap_or(0);
        let line = match backlog["oldest_age_seconds"].as_u64() {
            Some(age) if pending > 0 => format!("{pending} pending, the oldest due for {age} s"),
            _ => format!("{pending} pending"),
        };
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else if last.as_deref() != Some(line.as_str()) {
            eprintln!("{line}");
        }
        last = Some(line);
        if pending == 0 {
            if terminal {
                eprintln!();
            }
            eprintln!("the backlog of {stream} has drained");
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
