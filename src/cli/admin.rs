//! Listing commands for what surrounds streams: `herald event-types list` (the catalog),
//! `herald tenants list` and `herald tokens list` (platform administration).

use clap::{Args, Subcommand};
use serde_json::Value;

use super::Connection;
use super::client::CliError;
use super::output::{self, Mode};

#[derive(Args, Debug)]
pub struct EventTypesArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: EventTypesCommand,
}

#[derive(Subcommand, Debug)]
pub enum EventTypesCommand {
    /// The catalog: built-in types and the tenant's own
    #[command(after_help = "Example:\n  herald event-types list --category flow")]
    List {
        /// Only this category (`user`, `flow`, ...)
        #[arg(long)]
        category: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: TenantsCommand,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Every tenant (needs a platform token with `manage:tenants`)
    #[command(after_help = "Example:\n  herald tenants list")]
    List,
}

#[derive(Args, Debug)]
pub struct TokensArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: TokensCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// The tenant's tokens (their secrets are never shown)
    #[command(after_help = "Example:\n  herald tokens list --tenant ten_acme")]
    List {
        /// List platform tokens instead (platform tokens only)
        #[arg(long)]
        platform: bool,
    },
}

pub async fn event_types(args: EventTypesArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let EventTypesCommand::List { category } = args.command;
    let query: Vec<(&str, String)> = category.map(|c| ("category", c)).into_iter().collect();
    let answer = client.get(&["v1", "event-types"], &query).await?;
    let types = answer["event_types"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    print_list(
        args.connection.mode(),
        &answer,
        &types,
        "name",
        |t| {
            vec![
                output::cell(&t["name"]),
                output::cell(&t["category"]),
                if t["custom"] == Value::Bool(true) {
                    "custom"
                } else {
                    "built-in"
                }
                .into(),
                output::excerpt(t["description"].as_str().unwrap_or("-"), 80),
            ]
        },
        &["NAME", "CATEGORY", "KIND", "DESCRIPTION"],
    );
    Ok(())
}

pub async fn tenants(args: TenantsArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let TenantsCommand::List = args.command;
    let answer = client.get(&["v1", "tenants"], &[]).await?;
    let tenants = answer.as_array().cloned().unwrap_or_default();
    print_list(
        args.connection.mode(),
        &answer,
        &tenants,
        "id",
        |t| {
            vec![
                output::cell(&t["id"]),
                output::cell(&t["name"]),
                output::cell(&t["created_at"]),
            ]
        },
        &["ID", "NAME", "CREATED"],
    );
    Ok(())
}

pub async fn tokens(args: TokensArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let TokensCommand::List { platform } = args.command;
    let query: Vec<(&str, String)> = if platform {
        vec![("platform", "true".into())]
    } else {
        Vec::new()
    };
    let answer = client.get(&["v1", "tokens"], &query).await?;
    let tokens = answer.as_array().cloned().unwrap_or_default();
    print_list(
        args.connection.mode(),
        &answer,
        &tokens,
        "id",
        |t| {
            let scopes: Vec<String> = t["scopes"]
                .as_array()
                .map(|s| s.iter().map(output::cell).collect())
                .unwrap_or_default();
            vec![
                output::cell(&t["id"]),
                output::cell(&t["name"]),
                t["tenant_id"].as_str().unwrap_or("(platform)").to_owned(),
                scopes.join(","),
                output::cell(&t["created_at"]),
            ]
        },
        &["ID", "NAME", "TENANT", "SCOPES", "CREATED"],
    );
    Ok(())
}

/// A list answer: the API's JSON, each item's `id_key`, or a table of `row`s.
fn print_list(
    mode: Mode,
    answer: &Value,
    items: &[Value],
    id_key: &str,
    row: impl Fn(&Value) -> Vec<String>,
    headers: &[&str],
) {
    match mode {
        Mode::Json => output::json(answer),
        Mode::Quiet => items
            .iter()
            .for_each(|item| crate::outln!("{}", output::cell(&item[id_key]))),
        Mode::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            output::table(headers, &rows);
        }
    }
}
