//! `herald streams` (alias `event-streams`): event streams with the Auth0 CLI's flags
//! (`-n/--name`, `-t/--type`, `-s/--subscriptions`, `-c/--configuration`), their status
//! (`enable`, `disable`, `pause`), their signing secret (`secret`, `rotate-secret`) and a test
//! event sent now.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::client::CliError;
use super::output::{self, Mode};
use super::{Connection, json_object};

#[derive(Args, Debug)]
pub struct StreamsArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: StreamsCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DestinationType {
    Webhook,
    Eventbridge,
}

impl DestinationType {
    fn as_str(self) -> &'static str {
        match self {
            DestinationType::Webhook => "webhook",
            DestinationType::Eventbridge => "eventbridge",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PayloadFormat {
    Cloudevents,
    Audit,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backlog {
    /// Deliver what is pending
    Deliver,
    /// Cancel what is pending
    Skip,
}

/// The settings `create` and `update` share.
#[derive(Args, Debug)]
pub struct StreamFields {
    /// The stream's name
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// Event types to deliver, comma-separated (`user.created,user.*` or `*`)
    #[arg(short = 's', long, value_delimiter = ',', value_name = "TYPES")]
    subscriptions: Option<Vec<String>>,
    /// The destination's `configuration` object, as JSON
    #[arg(short = 'c', long, value_name = "JSON", value_parser = super::configuration_json)]
    configuration: Option<Value>,
    /// The retry policy, as JSON (`{"max_attempts": 4}`)
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    retry_policy: Option<Value>,
    /// What a delivery carries: a CloudEvent, or the flat audit shape
    #[arg(long, value_enum)]
    payload_format: Option<PayloadFormat>,
}

impl StreamFields {
    /// The fields given, as the API's body (without `destination`).
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some(name) = &self.name {
            body.insert("name".into(), json!(name));
        }
        if let Some(types) = &self.subscriptions {
            let subscriptions: Vec<Value> = types
                .iter()
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map(|t| json!({ "event_type": t }))
                .collect();
            body.insert("subscriptions".into(), Value::Array(subscriptions));
        }
        if let Some(policy) = &self.retry_policy {
            body.insert("retry_policy".into(), policy.clone());
        }
        if let Some(format) = self.payload_format {
            let format = match format {
                PayloadFormat::Cloudevents => "cloudevents",
                PayloadFormat::Audit => "audit",
            };
            body.insert("payload_format".into(), json!(format));
        }
        body
    }
}

#[derive(Subcommand, Debug)]
pub enum StreamsCommand {
    /// Create a stream
    #[command(
        after_help = "Example:\n  herald streams create -n my-event1 -t webhook -s user.created \\\n    \
        -c '{\"webhook_endpoint\": \"https://example.com/hook\", \
        \"webhook_authorization\": {\"method\": \"bearer\", \"token\": \"...\"}}'"
    )]
    Create {
        #[command(flatten)]
        fields: StreamFields,
        /// The destination's kind
        #[arg(short = 't', long = "type", value_enum, default_value_t = DestinationType::Webhook)]
        kind: DestinationType,
    },
    /// List the tenant's streams
    #[command(after_help = "Example:\n  herald streams list --json")]
    List,
    /// Show one stream
    #[command(after_help = "Example:\n  herald streams show est_2bX9kLmQ4rT7vW1yZ3cD5f")]
    Show { id: String },
    /// Change a stream; flags left out keep their values (`-c` replaces the whole configuration)
    #[command(
        after_help = "Example:\n  herald streams update est_... -s user.created,user.deleted"
    )]
    Update {
        id: String,
        #[command(flatten)]
        fields: StreamFields,
        /// The destination's kind (needs -c, the new kind's configuration)
        #[arg(short = 't', long = "type", value_enum, requires = "configuration")]
        kind: Option<DestinationType>,
    },
    /// Delete a stream and its delivery history
    #[command(after_help = "Example:\n  herald streams delete est_...")]
    Delete { id: String },
    /// Enable a stream again, delivering (or skipping) what is pending
    #[command(after_help = "Example:\n  herald streams enable est_... --backlog skip")]
    Enable {
        id: String,
        /// What happens to the deliveries that waited while the stream was not enabled
        #[arg(long, value_enum)]
        backlog: Option<Backlog>,
    },
    /// Disable a stream: nothing is delivered, and new events are not queued for it
    #[command(after_help = "Example:\n  herald streams disable est_...")]
    Disable { id: String },
    /// Pause a stream: events queue up and are delivered once it is enabled
    #[command(after_help = "Example:\n  herald streams pause est_...")]
    Pause { id: String },
    /// Show the stream's `whsec_` signing secret, for the receiver to verify signatures
    #[command(after_help = "Example:\n  herald streams secret est_... -q > receiver.secret")]
    Secret { id: String },
    /// Replace the signing secret; the old one keeps signing beside it for a grace period
    #[command(after_help = "Example:\n  herald streams rotate-secret est_... --grace-period 3600")]
    RotateSecret {
        id: String,
        /// A `whsec_` secret to use [default: a new one]
        #[arg(long)]
        secret: Option<String>,
        /// Seconds the current secret keeps signing [default: the server's setting]
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<u64>,
    },
    /// Send a test event now and show what the destination answered
    #[command(after_help = "Example:\n  herald streams test est_... --event-type user.created")]
    Test {
        id: String,
        /// The event type (its catalog sample is the data unless --data is given)
        #[arg(long)]
        event_type: String,
        /// The event's data, as JSON
        #[arg(long, value_name = "JSON", value_parser = super::json_value)]
        data: Option<Value>,
    },
}

pub async fn run(args: StreamsArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    match args.command {
        StreamsCommand::Create { fields, kind } => {
            let Some(configuration) = fields.configuration.clone() else {
                return Err(CliError::Usage(
                    "streams create needs -c/--configuration, the destination's configuration \
                     as JSON (for a webhook: '{\"webhook_endpoint\": \"https://...\"}')"
                        .into(),
                ));
            };
            let mut body = fields.body();
            for (flag, key) in [
                ("-n/--name", "name"),
                ("-s/--subscriptions", "subscriptions"),
            ] {
                if !body.contains_key(key) {
                    return Err(CliError::Usage(format!("streams create needs {flag}")));
                }
            }
            body.insert(
                "destination".into(),
                json!({ "type": kind.as_str(), "configuration": configuration }),
            );
            let stream = client
                .post(&["v1", "event-streams"], &Value::Object(body))
                .await?;
            print_stream(mode, &stream);
        }
        StreamsCommand::List => {
            let streams = client.get(&["v1", "event-streams"], &[]).await?;
            let list = streams.as_array().cloned().unwrap_or_default();
            match mode {
                Mode::Json => output::json(&streams),
                Mode::Quiet => list
                    .iter()
                    .for_each(|s| crate::outln!("{}", output::cell(&s["id"]))),
                Mode::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|s| {
                            vec![
                                output::cell(&s["id"]),
                                output::cell(&s["name"]),
                                output::cell(&s["status"]),
                                output::cell(&s["destination"]["type"]),
                                subscriptions(s),
                                target(s),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "ID",
                            "NAME",
                            "STATUS",
                            "TYPE",
                            "SUBSCRIPTIONS",
                            "DESTINATION",
                        ],
                        &rows,
                    );
                }
            }
        }
        StreamsCommand::Show { id } => {
            let stream = client.get(&["v1", "event-streams", &id], &[]).await?;
            print_stream(mode, &stream);
        }
        StreamsCommand::Update { id, fields, kind } => {
            let mut body = fields.body();
            if let Some(configuration) = fields.configuration.clone() {
                // A configuration belongs to a kind: the stream's current one unless -t says.
                let kind = match kind {
                    Some(kind) => kind.as_str().to_owned(),
                    None => {
                        let stream = client.get(&["v1", "event-streams", &id], &[]).await?;
                        output::cell(&stream["destination"]["type"])
                    }
                };
                body.insert(
                    "destination".into(),
                    json!({ "type": kind, "configuration": configuration }),
                );
            }
            if body.is_empty() {
                return Err(CliError::Usage(
                    "streams update changes nothing: give at least one of -n, -s, -c, \
                     --retry-policy, --payload-format"
                        .into(),
                ));
            }
            let stream = client
                .patch(&["v1", "event-streams", &id], &Value::Object(body))
                .await?;
            print_stream(mode, &stream);
        }
        StreamsCommand::Delete { id } => {
            client.delete(&["v1", "event-streams", &id]).await?;
            match mode {
                Mode::Json => {}
                Mode::Quiet => crate::outln!("{id}"),
                Mode::Table => crate::outln!("deleted stream {id}"),
            }
        }
        StreamsCommand::Enable { id, backlog } => {
            let mut body = json!({ "status": "enabled" });
            if let Some(backlog) = backlog {
                body["backlog"] = json!(match backlog {
                    Backlog::Deliver => "deliver",
                    Backlog::Skip => "skip",
                });
            }
            let stream = client.patch(&["v1", "event-streams", &id], &body).await?;
            print_stream(mode, &stream);
        }
        StreamsCommand::Disable { id } => {
            let body = json!({ "status": "disabled" });
            let stream = client.patch(&["v1", "event-streams", &id], &body).await?;
            print_stream(mode, &stream);
        }
        StreamsCommand::Pause { id } => {
            let body = json!({ "status": "paused" });
            let stream = client.patch(&["v1", "event-streams", &id], &body).await?;
            print_stream(mode, &stream);
        }
        StreamsCommand::Secret { id } => {
            let secret = client
                .get(&["v1", "event-streams", &id, "secret"], &[])
                .await?;
            match mode {
                Mode::Json => output::json(&secret),
                Mode::Quiet => crate::outln!("{}", output::cell(&secret["secret"])),
                Mode::Table => {
                    let mut pairs = vec![
                        ("secret", output::cell(&secret["secret"])),
                        ("created", output::cell(&secret["created_at"])),
                    ];
                    for previous in secret["previous"].as_array().into_iter().flatten() {
                        pairs.push(("previous until", output::cell(&previous["expires_at"])));
                    }
                    output::fields(&pairs);
                }
            }
        }
        StreamsCommand::RotateSecret {
            id,
            secret,
            grace_period,
        } => {
            let mut body = json!({});
            if let Some(secret) = secret {
                body["secret"] = json!(secret);
            }
            if let Some(seconds) = grace_period {
                body["grace_period_seconds"] = json!(seconds);
            }
            let rotated = client
                .post(&["v1", "event-streams", &id, "secret", "rotate"], &body)
                .await?;
            match mode {
                Mode::Json => output::json(&rotated),
                Mode::Quiet => crate::outln!("{}", output::cell(&rotated["secret"])),
                Mode::Table => output::fields(&[
                    ("secret", output::cell(&rotated["secret"])),
                    ("created", output::cell(&rotated["created_at"])),
                    (
                        "previous until",
                        output::cell(&rotated["previous_expires_at"]),
                    ),
                ]),
            }
        }
        StreamsCommand::Test {
            id,
            event_type,
            data,
        } => {
            let mut body = json!({ "event_type": event_type });
            if let Some(data) = data {
                body["data"] = data;
            }
            let result = client
                .post(&["v1", "event-streams", &id, "test"], &body)
                .await?;
            match mode {
                Mode::Json => output::json(&result),
                Mode::Quiet => crate::outln!("{}", output::cell(&result["event_id"])),
                Mode::Table => {
                    let mut pairs = vec![
                        (
                            "delivered",
                            if result["delivered"] == json!(true) {
                                "yes"
                            } else {
                                "no"
                            }
                            .to_owned(),
                        ),
                        ("status", output::cell(&result["response_status"])),
                        (
                            "round trip",
                            format!("{} ms", output::cell(&result["duration_ms"])),
                        ),
                    ];
                    if !result["error"].is_null() {
                        pairs.push((
                            "error",
                            format!(
                                "{}: {}",
                                output::cell(&result["error"]["kind"]),
                                output::cell(&result["error"]["message"])
                            ),
                        ));
                    }
                    pairs.push((
                        "response",
                        result["response_body"]
                            .as_str()
                            .map_or("-".into(), |b| output::excerpt(b, 200)),
                    ));
                    pairs.push(("event", output::cell(&result["event_id"])));
                    pairs.push(("delivery", output::cell(&result["delivery_id"])));
                    output::fields(&pairs);
                }
            }
        }
    }
    Ok(())
}

/// One stream: its JSON, its id, or a key/value block.
fn print_stream(mode: Mode, stream: &Value) {
    match mode {
        Mode::Json => output::json(stream),
        Mode::Quiet => crate::outln!("{}", output::cell(&stream["id"])),
        Mode::Table => {
            let mut pairs = vec![
                ("id", output::cell(&stream["id"])),
                ("name", output::cell(&stream["name"])),
                ("status", output::cell(&stream["status"])),
            ];
            if let Some(reason) = stream["status_reason"].as_str() {
                pairs.push(("status reason", reason.to_owned()));
            }
            pairs.extend([
                ("type", output::cell(&stream["destination"]["type"])),
                ("destination", target(stream)),
                ("subscriptions", subscriptions(stream)),
                ("payload format", output::cell(&stream["payload_format"])),
                ("content mode", output::cell(&stream["content_mode"])),
                ("retry policy", output::cell(&stream["retry_policy"])),
                ("created", output::cell(&stream["created_at"])),
                ("updated", output::cell(&stream["updated_at"])),
            ]);
            output::fields(&pairs);
        }
    }
}

fn subscriptions(stream: &Value) -> String {
    stream["subscriptions"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .map(|s| output::cell(&s["event_type"]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Where a stream delivers: the webhook's URL, the EventBridge bus, or where a listen
/// session forwards to.
fn target(stream: &Value) -> String {
    let config = &stream["destination"]["configuration"];
    if let Some(url) = config["webhook_endpoint"].as_str() {
        return url.to_owned();
    }
    if let Some(url) = config["forward_to"].as_str() {
        return format!("herald listen -> {url}");
    }
    if config["aws_account_id"].is_string() {
        return format!(
            "{}/{}/{}",
            output::cell(&config["aws_account_id"]),
            output::cell(&config["aws_region"]),
            config["event_bus_name"].as_str().unwrap_or("default")
        );
    }
    "-".into()
}
