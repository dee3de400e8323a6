//! `herald-bench`: Herald's benchmark. Starts Herald (the `herald` binary built beside this
//! one) on a temporary embedded store at full durability (S7, S9: on PostgreSQL, in a schema
//! of its own, with `--nodes` Herald processes), its own receivers on loopback, and its own
//! publishers; runs the scenarios of BENCHMARKS.md; prints a table and, with `--json`, writes
//! the figures for machines.
//!
//! S7 and S9 use the PostgreSQL server at `HERALD_BENCH_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`) and are skipped when it is unreachable.
//! S11 takes a receiver down for a minute under a backlog (a few seconds with `--quick`).
//! S10 puts events on EventBridge as moto serves it (`HERALD_BENCH_MOTO_SERVER`, else
//! `moto_server` on the `PATH`) and is skipped without it.
//!
//! Build and run in release mode: `cargo build --release && target/release/herald-bench`.

mod moto;
mod postgres;
mod receiver;
mod scenarios;
mod target;

use std::path::PathBuf;

use clap::Parser;
use scenarios::{Outcome, Size};

/// The same allocator as `herald`, so the bare rate measures the same client stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    about = "Measure Herald: throughput, latency, CPU and memory."
)]
struct Args {
    /// Scenarios to run, comma-separated (S1..S12).
    #[arg(
        long,
        default_value = "S1,S2,S3,S4,S5,S6,S7,S8,S9,S10,S11,S12",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Herald processes on the same database in S7 and S9, the publishers spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// Past days of history the store keeps in S7 and S9 (their partitions, empty), as under
    /// a retention window of that many days; PostgreSQL's cost per statement grows with them.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=400))]
    history_days: u16,
    /// Concurrent publishers in S9, spread over the nodes. Its target is judged only at the
    /// default, 64; other counts show what a node's share of the publishers costs it.
    #[arg(long, default_value_t = scenarios::SINGLE_PUBLISHERS as u16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    publishers: u16,
    /// A tiny run that checks the harness works; its figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let size = if args.quick { Size::QUICK } else { Size::FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    let wanted = |s: &str| args.scenarios.iter().any(|w| w.eq_ignore_ascii_case(s));
    let outcomes = runtime.block_on(async {
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut s3_p99 = None;
        if wanted("S1") {
            outcomes.push(report(scenarios::s1(size).await));
        }
        if wanted("S2") {
            outcomes.push(report(scenarios::s2(size).await));
        }
        if wanted("S3") || wanted("S5") || wanted("S8") {
            let s3 = report(scenarios::s3(size).await);
            s3_p99 = s3.latency_ms.map(|p| p.p99);
            outcomes.push(s3);
        }
        if wanted("S4") {
            outcomes.push(report(scenarios::s4(size).await));
        }
        if wanted("S5") {
            outcomes.push(report(scenarios::s5(size, s3_p99).await));
        }
        if wanted("S6") {
            outcomes.push(report(scenarios::s6(size).await));
        }
        if wanted("S7") {
            outcomes.push(report(
                postgres::s7(size, args.nodes.into(), args.history_days).await,
            ));
        }
        if wanted("S8") {
            outcomes.push(report(scenarios::s8(size, s3_p99).await));
        }
        if wanted("S9") {
            outcomes.push(report(
                postgres::s9(
                    size,
                    args.nodes.into(),
                    args.publishers.into(),
                    args.history_days,
                )
                .await,
            ));
        }
        if wanted("S10") {
            outcomes.push(report(scenarios::s10(size).await));
        }
        if wanted("S11") {
            outcomes.push(report(scenarios::s11(size).await));
        }
        if wanted("S12") {
            outcomes.push(report(scenarios::s12(size).await));
        }
        outcomes
    });
    print_table(&outcomes, args.quick);
    if let Some(path) = args.json {
        let json = serde_json::json!({
            "quick": args.quick,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "results": outcomes,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Prints one scenario as soon as it is done, so a long run shows progress.
fn report(outcome: Outcome) -> Outcome {
    eprintln!("{} done: {}", outcome.scenario, outcome.description);
    outcome
}

fn print_table(outcomes: &[Outcome], quick: bool) {
    let ms = |p: Option<scenarios::Percentiles>| {
        p.map_or("-".to_string(), |p| {
            format!("{:.2}/{:.2}/{:.2}", p.p50, p.p99, p.p999)
        })
    };
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{:<4} {:>10} {:>12} {:>10} {:>6} {:>22} {:>22} {:>9} {:>9} {:>8} {:>5}",
        "",
        "events/s",
        "deliveries/s",
        "bare/s",
        "ratio",
        "latency p50/p99/p99.9",
        "ack p50/p99/p99.9",
        "cpu us/d",
        "db us/d",
        "rss MiB",
        "met"
    );
    for o in outcomes {
        println!(
            "{:<4} {:>10.0} {:>12.0} {:>10} {:>6} {:>22} {:>22} {:>9.1} {:>9} {:>8.1} {:>5}",
            o.scenario,
            o.events_per_s,
            o.deliveries_per_s,
            opt(o.bare_per_s, 0),
            opt(o.ratio_to_bare, 2),
            ms(o.latency_ms),
            ms(o.ack_latency_ms),
            o.cpu_us_per_delivery,
            opt(o.server_cpu_us_per_delivery, 1),
            o.peak_rss_mib,
            o.met.map_or("-", |m| if m { "yes" } else { "NO" }),
        );
    }
    for o in outcomes {
        println!(
            "{}: {}; target: {}. {}",
            o.scenario, o.description, o.target, o.note
        );
    }
    if quick {
        println!("(quick run: the harness works; these figures are not a measurement)");
    }
}
