//! The client side of the `herald` binary: commands that drive a running server through its
//! HTTP API (`herald streams`, `publish`, `deliveries`, `redeliver`, ...), for terminals and
//! scripts. This module owns the connection flags (`--server`, `--token`, `--tenant`, each
//! with its environment variable), the output modes (a readable table by default, the API's
//! JSON unchanged with `--json`, ids only with `-q`) and the exit codes, which are stable:
//! 0 ok, 1 an API error (or an unreachable server), 2 a usage error, 3 not found. It never
//! touches a store: everything goes through the same API and tokens as any other client.
//!
//! - [`client`]: requests, and the API's error body turned into an exit code and a hint.
//! - [`output`]: tables, key/value blocks, JSON; [`chart`]: the plain-text chart of `stats`.
//! - [`streams`], [`deliveries`], [`publish`], [`stats`], [`events`] (with [`tail`]),
//!   [`admin`]: the commands.
//! - [`listen`]: deliveries forwarded to a local URL over a connection to the server.
//! - [`profiles`]: `login`/`logout`, and the saved profile a connection falls back on.
//! - [`declare`]: configuration as code (`plan`, `apply`, `export`).
//! - [`scaffold`]: a receiver project on disk; it needs no server.
//!
//! `herald completions` lives in `main.rs`, next to the whole command tree it describes.

pub mod admin;
pub mod chart;
pub mod client;
pub mod declare;
pub mod deliveries;
pub mod events;
pub mod listen;
pub mod output;
pub mod profiles;
pub mod publish;
pub mod scaffold;
pub mod stats;
pub mod streams;
pub mod tail;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use client::{CliError, Client};
use output::Mode;

/// Where the server is and who is asking; accepted by every client command.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// The server's base URL [default: the profile's, else http://127.0.0.1:8470]
    #[arg(long, env = "HERALD_SERVER", global = true)]
    pub server: Option<String>,
    /// The API token (`hrd_...`) sent as `Authorization: Bearer`
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The tenant a platform token acts on, sent as the `Herald-Tenant` header
    #[arg(long, env = "HERALD_TENANT", global = true)]
    pub tenant: Option<String>,
    /// The saved profile (`herald login`) that fills in what the flags and environment leave
    /// out [default: `default`]
    #[arg(long, env = "HERALD_PROFILE", global = true)]
    pub profile: Option<String>,
    /// Print the API's JSON unchanged, for scripts
    #[arg(long, global = true, conflicts_with = "quiet")]
    pub json: bool,
    /// Print ids only, one a line
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Connection {
    fn mode(&self) -> Mode {
        if self.json {
            Mode::Json
        } else if self.quiet {
            Mode::Quiet
        } else {
            Mode::Table
        }
    }

    fn client(&self) -> Result<Client, CliError> {
        let (server, token, tenant) = profiles::resolve(self)?;
        Client::new(&server, token, tenant)
    }
}

/// The client commands, as `herald` subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, show, change, test and delete event streams
    #[command(visible_alias = "event-streams")]
    Streams(streams::StreamsArgs),
    /// Publish events: one from flags or a JSON file, or NDJSON on stdin in batches
    Publish(publish::PublishArgs),
    /// A stream's delivery history, and one delivery with every attempt
    Deliveries(deliveries::DeliveriesArgs),
    /// Queue one event's delivery to a stream again
    Redeliver(deliveries::RedeliverArgs),
    /// Queue a stream's matching deliveries again (or count them with --dry-run)
    RedeliverMany(deliveries::RedeliverManyArgs),
    /// A stream's outcomes, success rate and latency, in total, per event type and per hour
    Stats(stats::StatsArgs),
    /// The audit log: events published to the tenant, where each went; erasure
    Events(events::EventsArgs),
    /// The event type catalog, and the tenant's own types
    EventTypes(admin::EventTypesArgs),
    /// Tenants (platform tokens with `manage:tenants` only)
    Tenants(admin::TenantsArgs),
    /// API tokens
    Tokens(admin::TokensArgs),
    /// Check a server, token and tenant, and save them as a profile (`--token -` reads stdin)
    Login(profiles::LoginArgs),
    /// Forget a saved profile and its token
    Logout(profiles::LogoutArgs),
    /// Show what `apply` would change to make the server match a configuration file
    Plan(declare::PlanArgs),
    /// Make the server's event types and streams match a configuration file
    Apply(declare::ApplyArgs),
    /// Write the server's event types and streams as a configuration file
    Export(declare::ExportArgs),
    /// Write a receiver project (Node, Python or Rust) for chosen event types, with its tests
    Scaffold(scaffold::ScaffoldArgs),
    /// Forward deliveries of chosen event types to a local URL, signed, until Ctrl-C
    Listen(listen::ListenArgs),
}

/// Runs a client command and answers the process's exit code; errors go to stderr.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Streams(args) => streams::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Deliveries(args) => deliveries::run(args).await,
        Command::Redeliver(args) => deliveries::redeliver(args).await,
        Command::RedeliverMany(args) => deliveries::redeliver_many(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Events(args) => events::run(args).await,
        Command::EventTypes(args) => admin::event_types(args).await,
        Command::Tenants(args) => admin::tenants(args).await,
        Command::Tokens(args) => admin::tokens(args).await,
        Command::Login(args) => profiles::login(args).await,
        Command::Logout(args) => profiles::logout(args).await,
        Command::Plan(args) => declare::plan(args).await,
        Command::Apply(args) => declare::apply(args).await,
        Command::Export(args) => declare::export(args).await,
        Command::Scaffold(args) => scaffold::run(args),
        Command::Listen(args) => listen::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error.report());
            error.exit_code()
        }
    }
}

/// Checks a time flag (`--date-from`...) here, as the server would, so a typo is a usage
/// error (exit 2) rather than the API's 400; the text goes on unchanged.
pub fn rfc3339(text: &str) -> Result<String, String> {
    match crate::event::parse_time(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err("not an RFC 3339 time; for example 2026-11-29T18:00:00Z".into()),
    }
}

/// Parses a flag's JSON value (clap names the flag in its error, and exits with 2).
pub fn json_value(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

/// Parses `-c/--configuration`: a destination's configuration, a JSON object.
pub fn configuration_json(text: &str) -> Result<Value, String> {
    json_object(text).map_err(|e| {
        format!("-c expects the destination's configuration as a JSON object, and this is {e}")
    })
}

/// Parses a flag's JSON value that must be an object.
pub fn json_object(text: &str) -> Result<Value, String> {
    match json_value(text)? {
        value @ Value::Object(_) => Ok(value),
        _ => Err("not a JSON object (`{...}`)".into()),
    }
}
