//! What surrounds streams: `herald event-types` (the catalog, and the tenant's own types),
//! `herald tenants` and `herald tokens` (administration).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

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
    /// Add one of the tenant's own types, with an optional JSON Schema for its `data`
    #[command(
        after_help = "Example:\n  herald event-types create invoice.paid --description 'An invoice was paid' \\\n    \
        --schema '{\"type\": \"object\", \"required\": [\"invoice_id\"]}'"
    )]
    Create {
        /// Dotted lowercase segments, such as `invoice.paid`
        name: String,
        /// The category [default: the name's first segment]
        #[arg(long)]
        category: Option<String>,
        /// What the event means
        #[arg(long)]
        description: Option<String>,
        /// A JSON Schema published `data` must match
        #[arg(long, value_name = "JSON", value_parser = super::json_object)]
        schema: Option<Value>,
        /// Sample `data`, sent by `herald streams test`
        #[arg(long, value_name = "JSON", value_parser = super::json_value)]
        sample_data: Option<Value>,
    },
    /// Delete one of the tenant's own types
    #[command(after_help = "Example:\n  herald event-types delete invoice.paid")]
    Delete { name: String },
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
    /// Create a tenant
    #[command(after_help = "Example:\n  herald tenants create -n Acme --id ten_acme")]
    Create {
        /// The tenant's name
        #[arg(short = 'n', long)]
        name: String,
        /// A chosen id (`ten_...`) [default: generated]
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete a tenant with all its data (streams, events, deliveries, tokens)
    #[command(after_help = "Example:\n  herald tenants delete ten_acme --yes")]
    Delete {
        id: String,
        /// Confirm: everything the tenant holds is deleted
        #[arg(long)]
        yes: bool,
    },
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
    /// Create a token; its secret is printed only this once
    #[command(
        after_help = "Example:\n  herald tokens create -n ci --scopes publish:events --tenant ten_acme"
    )]
    Create {
        /// What the token is for
        #[arg(short = 'n', long)]
        name: String,
        /// Scopes, comma-separated (only scopes the calling token holds)
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A platform token, acting on every tenant (platform tokens only)
        #[arg(long)]
        platform: bool,
    },
    /// Revoke a token
    #[command(after_help = "Example:\n  herald tokens delete tok_...")]
    Delete {
        id: String,
        /// The token is a platform token
        #[arg(long)]
        platform: bool,
    },
}

pub async fn event_types(args: EventTypesArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    match args.command {
        EventTypesCommand::List { category } => {
            let query: Vec<(&str, String)> =
                category.map(|c| ("category", c)).into_iter().collect();
            let answer = client.get(&["v1", "event-types"], &query).await?;
            let types = answer["event_types"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            print_list(
                mode,
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
        }
        EventTypesCommand::Create {
            name,
            category,
            description,
            schema,
            sample_data,
        } => {
            let mut body = json!({ "name": name });
            if let Some(category) = category {
                body["category"] = json!(category);
            }
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            if let Some(schema) = schema {
                body["schema"] = schema;
            }
            if let Some(sample) = sample_data {
                body["sample_data"] = sample;
            }
            let created = client.post(&["v1", "event-types"], &body).await?;
            match mode {
                Mode::Json => output::json(&created),
                Mode::Quiet => crate::outln!("{}", output::cell(&created["name"])),
                Mode::Table => output::fields(&[
                    ("name", output::cell(&created["name"])),
                    ("category", output::cell(&created["category"])),
                    ("description", output::cell(&created["description"])),
                    ("schema", output::cell(&created["schema"])),
                ]),
            }
        }
        EventTypesCommand::Delete { name } => {
            client.delete(&["v1", "event-types", &name]).await?;
            deleted(mode, "event type", &name);
        }
    }
    Ok(())
}

pub async fn tenants(args: TenantsArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    match args.command {
        TenantsCommand::List => {
            let answer = client.get(&["v1", "tenants"], &[]).await?;
            let tenants = answer.as_array().cloned().unwrap_or_default();
            print_list(
                mode,
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
        }
        TenantsCommand::Create { name, id } => {
            let mut body = json!({ "name": name });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            let tenant = client.post(&["v1", "tenants"], &body).await?;
            match mode {
                Mode::Json => output::json(&tenant),
                Mode::Quiet => crate::outln!("{}", output::cell(&tenant["id"])),
                Mode::Table => output::fields(&[
                    ("id", output::cell(&tenant["id"])),
                    ("name", output::cell(&tenant["name"])),
                    ("created", output::cell(&tenant["created_at"])),
                ]),
            }
        }
        TenantsCommand::Delete { id, yes } => {
            if !yes {
                return Err(CliError::Usage(format!(
                    "deleting {id} deletes all its streams, events, deliveries and tokens; \
                     pass --yes to confirm"
                )));
            }
            client.delete(&["v1", "tenants", &id]).await?;
            deleted(mode, "tenant", &id);
        }
    }
    Ok(())
}

pub async fn tokens(args: TokensArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    match args.command {
        TokensCommand::List { platform } => {
            let answer = client
                .get(&["v1", "tokens"], &platform_query(platform))
                .await?;
            let tokens = answer.as_array().cloned().unwrap_or_default();
            print_list(
                mode,
                &answer,
                &tokens,
                "id",
                |t| {
                    vec![
                        output::cell(&t["id"]),
                        output::cell(&t["name"]),
                        t["tenant_id"].as_str().unwrap_or("(platform)").to_owned(),
                        scopes(t),
                        output::cell(&t["created_at"]),
                    ]
                },
                &["ID", "NAME", "TENANT", "SCOPES", "CREATED"],
            );
        }
        TokensCommand::Create {
            name,
            scopes: wanted,
            platform,
        } => {
            let mut body = json!({ "name": name, "scopes": wanted });
            if platform {
                body["platform"] = json!(true);
            }
            let token = client.post(&["v1", "tokens"], &body).await?;
            match mode {
                Mode::Json => output::json(&token),
                // The secret, shown this once, is what a script needs.
                Mode::Quiet => crate::outln!("{}", output::cell(&token["token"])),
                Mode::Table => {
                    output::fields(&[
                        ("id", output::cell(&token["id"])),
                        ("name", output::cell(&token["name"])),
                        (
                            "tenant",
                            token["tenant_id"]
                                .as_str()
                                .unwrap_or("(platform)")
                                .to_owned(),
                        ),
                        ("scopes", scopes(&token)),
                        ("token", output::cell(&token["token"])),
                    ]);
                    eprintln!("The token is shown only this once; keep it safe.");
                }
            }
        }
        TokensCommand::Delete { id, platform } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &["v1", "tokens", &id],
                    &platform_query(platform),
                    None,
                )
                .await?;
            deleted(mode, "token", &id);
        }
    }
    Ok(())
}

fn platform_query(platform: bool) -> Vec<(&'static str, String)> {
    if platform {
        vec![("platform", "true".into())]
    } else {
        Vec::new()
    }
}

fn scopes(token: &Value) -> String {
    token["scopes"]
        .as_array()
        .map(|s| s.iter().map(output::cell).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// After a delete (the API answers 204, so `--json` prints nothing).
fn deleted(mode: Mode, what: &str, id: &str) {
    match mode {
        Mode::Json => {}
        Mode::Quiet => crate::outln!("{id}"),
        Mode::Table => crate::outln!("deleted {what} {id}"),
    }
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
