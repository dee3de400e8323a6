//! `herald stats STREAM`: a stream's outcomes, success rate and latency percentiles over a
//! range, in total, per event type and per hour, as tables; on a terminal (or with `--chart`)
//! a chart of each hour's success rate and latency under them (see [`super::chart`]).

use clap::Args;
use serde_json::Value;

use super::Connection;
use super::client::CliError;
use super::output::{self, Mode};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  herald stats est_... --date-from 2026-11-29T00:00:00Z")]
pub struct StatsArgs {
    #[command(flatten)]
    pub connection: Connection,
    stream: String,
    /// Start of the range (RFC 3339) [default: 24 hours before --date-to]
    #[arg(long, value_name = "TIME", value_parser = super::rfc3339)]
    date_from: Option<String>,
    /// End of the range (RFC 3339) [default: now]
    #[arg(long, value_name = "TIME", value_parser = super::rfc3339)]
    date_to: Option<String>,
    /// Draw the per-hour chart even when stdout is not a terminal (never with --json or -q)
    #[arg(long)]
    chart: bool,
}

pub async fn run(args: StatsArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let query: Vec<(&str, String)> = [("date_from", args.date_from), ("date_to", args.date_to)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let stats = client
        .get(&["v1", "event-streams", &args.stream, "stats"], &query)
        .await?;
    match args.connection.mode() {
        Mode::Json => output::json(&stats),
        Mode::Quiet => crate::outln!("{}", output::cell(&stats["stream_id"])),
        Mode::Table => {
            output::fields(&[
                ("stream", output::cell(&stats["stream_id"])),
                (
                    "range",
                    format!(
                        "{} to {}",
                        output::cell(&stats["date_from"]),
                        output::cell(&stats["date_to"])
                    ),
                ),
                ("pending", output::cell(&stats["pending"])),
                ("oldest pending", output::cell(&stats["oldest_pending_at"])),
            ]);
            crate::outln!();
            let mut rows = vec![totals_row("total", &stats["total"])];
            if let Some(types) = stats["by_event_type"].as_object() {
                rows.extend(types.iter().map(|(name, t)| totals_row(name, t)));
            }
            table(&["", "SUCCEEDED", "FAILED"], &rows);
            let hours: Vec<Vec<String>> = stats["by_hour"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| totals_row(&output::cell(&h["hour"]), h))
                .collect();
            if !hours.is_empty() {
                crate::outln!();
                table(&["HOUR", "SUCCEEDED", "FAILED"], &hours);
            }
            let by_hour = stats["by_hour"].as_array().map_or(&[][..], Vec::as_slice);
            if args.chart || std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                let chart = super::chart::hourly(by_hour);
                if !chart.is_empty() {
                    crate::outln!();
                }
                for line in chart {
                    crate::outln!("{line}");
                }
            }
        }
    }
    Ok(())
}

fn table(first: &[&str; 3], rows: &[Vec<String>]) {
    output::table(
        &[
            first[0],
            first[1],
            first[2],
            "ATTEMPTS",
            "FAILED ATTEMPTS",
            "SUCCESS",
            "P50 MS",
            "P95 MS",
            "P99 MS",
        ],
        rows,
    );
}

/// One row of totals: counts, the success rate as a percentage, latency percentiles.
fn totals_row(label: &str, totals: &Value) -> Vec<String> {
    let rate = totals["success_rate"]
        .as_f64()
        .map_or("-".into(), |r| format!("{:.1} %", r * 100.0));
    let ms = |p: &str| {
        totals["latency_ms"][p]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.0}"))
    };
    vec![
        label.to_owned(),
        output::cell(&totals["succeeded"]),
        output::cell(&totals["failed"]),
        output::cell(&totals["attempts"]),
        output::cell(&totals["failed_attempts"]),
        rate,
        ms("p50"),
        ms("p95"),
        ms("p99"),
    ]
}
