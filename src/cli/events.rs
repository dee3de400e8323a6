//! `herald events list|show|erase|tail`: the tenant's audit log, every page or up to
//! `--limit`; one event with the streams it went to; erasing payloads (by ids or subject);
//! following the log as it grows (see [`super::tail`]).

use clap::{Args, Subcommand};
use serde_json::json;

use super::Connection;
use super::client::CliError;
use super::output::{self, Mode};

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// The audit log, newest first, every page (or up to --limit)
    #[command(after_help = "Example:\n  herald events list --type user.created --limit 20")]
    List {
        /// Only events of this type
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Only events with this subject
        #[arg(long)]
        subject: Option<String>,
        /// Only events with this `projectid` extension
        #[arg(long)]
        project_id: Option<String>,
        /// Only events with this `userid` extension
        #[arg(long)]
        user_id: Option<String>,
        /// Only events at or after this RFC 3339 time
        #[arg(long, value_name = "TIME", value_parser = super::rfc3339)]
        date_from: Option<String>,
        /// Only events at or before this RFC 3339 time
        #[arg(long, value_name = "TIME", value_parser = super::rfc3339)]
        date_to: Option<String>,
        /// Stop after this many events
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Erase events' payloads down to `id`, `source`, `type` and `time` (their deliveries stay)
    #[command(
        after_help = "Examples:\n  herald events erase --event-ids evt_1,evt_2\n  herald events erase --subject u_123"
    )]
    #[command(group = clap::ArgGroup::new("which").required(true).args(["event_ids", "subject"]))]
    Erase {
        /// The events to erase, comma-separated
        #[arg(long, value_delimiter = ',')]
        event_ids: Vec<String>,
        /// Every event with this subject (a user's data, on request)
        #[arg(long)]
        subject: Option<String>,
    },
    /// Print events as they are published, until interrupted; resumes after a dropped
    /// connection without skipping or repeating one
    #[command(
        after_help = "Examples:\n  herald events tail\n  herald events tail --type 'user.*' --type flow.run.finished\n  herald events tail --from-timestamp 2026-01-01T00:00:00Z --json\n\nWith --json, each line is {\"offset\": ..., \"event\": {...}}; --from takes an offset to start after."
    )]
    Tail {
        /// Only events of this type or pattern (`user.*`); repeat for several
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Start after this offset (an `offset` printed with --json)
        #[arg(long, value_name = "OFFSET", conflicts_with = "from_timestamp")]
        from: Option<String>,
        /// Start at the first event received at or after this RFC 3339 time
        #[arg(long, value_name = "TIME")]
        from_timestamp: Option<String>,
    },
    /// One event and its deliveries
    #[command(after_help = "Example:\n  herald events show evt_...")]
    Show {
        id: String,
        /// Which event, when several sources used the same id
        #[arg(long)]
        source: Option<String>,
    },
}

pub async fn run(args: EventsArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    match args.command {
        EventsCommand::List {
            kind,
            subject,
            project_id,
            user_id,
            date_from,
            date_to,
            limit,
        } => {
            let query: Vec<(&str, String)> = [
                ("type", kind),
                ("subject", subject),
                ("projectid", project_id),
                ("userid", user_id),
                ("date_from", date_from),
                ("date_to", date_to),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            let (events, next) = client
                .all_pages(&["v1", "events"], &query, "events", limit)
                .await?;
            match mode {
                Mode::Json => output::json(&json!({ "events": events, "next": next })),
                Mode::Quiet => events
                    .iter()
                    .for_each(|e| crate::outln!("{}", output::cell(&e["id"]))),
                Mode::Table => {
                    let rows: Vec<Vec<String>> = events
                        .iter()
                        .map(|e| {
                            vec![
                                output::cell(&e["id"]),
                                output::cell(&e["type"]),
                                output::cell(&e["source"]),
                                output::cell(&e["subject"]),
                                output::cell(&e["time"]),
                            ]
                        })
                        .collect();
                    output::table(&["ID", "TYPE", "SOURCE", "SUBJECT", "TIME"], &rows);
                }
            }
        }
        EventsCommand::Erase { event_ids, subject } => {
            let body = match subject {
                Some(subject) => json!({ "subject": subject }),
                None => json!({ "event_ids": event_ids }),
            };
            let result = client.post(&["v1", "events", "erase"], &body).await?;
            match mode {
                Mode::Json => output::json(&result),
                Mode::Quiet => crate::outln!("{}", output::cell(&result["erased"])),
                Mode::Table => crate::outln!(
                    "erased {} event(s) down to id, source, type and time",
                    output::cell(&result["erased"])
                ),
            }
        }
        EventsCommand::Tail {
            types,
            from,
            from_timestamp,
        } => {
            if let Some(offset) = &from
                && crate::store::LogPosition::parse(offset).is_none()
            {
                return Err(CliError::Usage(format!(
                    "--from `{offset}` is not an offset; give one `herald events tail --json` printed"
                )));
            }
            let start = super::tail::Start {
                from,
                from_timestamp,
            };
            super::tail::run(&client, mode, &types, start).await?;
        }
        EventsCommand::Show { id, source } => {
            let query: Vec<(&str, String)> = source.map(|s| ("source", s)).into_iter().collect();
            let detail = client.get(&["v1", "events", &id], &query).await?;
            match mode {
                Mode::Json => output::json(&detail),
                Mode::Quiet => crate::outln!("{}", output::cell(&detail["event"]["id"])),
                Mode::Table => {
                    let event = &detail["event"];
                    let mut pairs = vec![
                        ("id", output::cell(&event["id"])),
                        ("type", output::cell(&event["type"])),
                        ("source", output::cell(&event["source"])),
                        ("subject", output::cell(&event["subject"])),
                        ("time", output::cell(&event["time"])),
                        ("received", output::cell(&event["received_at"])),
                    ];
                    if !event["erased_at"].is_null() {
                        pairs.push(("erased", output::cell(&event["erased_at"])));
                    }
                    pairs.push(("data", output::cell(&event["data"])));
                    output::fields(&pairs);
                    let deliveries = detail["deliveries"].as_array().cloned().unwrap_or_default();
                    if !deliveries.is_empty() {
                        crate::outln!();
                        let rows: Vec<Vec<String>> = deliveries
                            .iter()
                            .map(|d| {
                                vec![
                                    output::cell(&d["stream_id"]),
                                    output::cell(&d["delivery_id"]),
                                    output::cell(&d["status"]),
                                    output::cell(&d["attempt_count"]),
                                ]
                            })
                            .collect();
                        output::table(&["STREAM", "DELIVERY", "STATUS", "ATTEMPTS"], &rows);
                    }
                }
            }
        }
    }
    Ok(())
}
