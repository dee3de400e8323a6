//! Configuration as code: a TOML file declares a tenant's own event types and its streams;
//! `herald plan -f herald.toml` shows what would change on the server (create, update with
//! the changed fields, delete only with `--prune`), `herald apply` changes it, and
//! `herald export` writes the server's configuration as such a file.
//!
//! Names are the keys (a stream may also carry its `id`, to be renamed in place). Write-only
//! values (a webhook's token or password, AWS keys) are never in the file: they are
//! `${env:NAME}` references, resolved when they are needed. They cannot be read back, so
//! whether one changed is asked of the server (`POST .../destination/check`, one boolean for
//! the whole destination) or forced with `--force-secrets`. Applying a file twice changes
//! nothing the second time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Connection;
use super::client::{CliError, Client};
use super::output::{self, Mode};
use crate::destinations::Destination;
use crate::stream::{
    ContentMode, DEFAULT_DISABLE_AFTER_FAILING_SECONDS, DEFAULT_MAX_CONSECUTIVE_FAILURES,
    PayloadFormat, RetryPolicy, StreamStatus,
};

/// The file: event types first (streams subscribe to them), then streams.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<EventTypeDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamDecl>,
}

/// A tenant's own event type. Left out: the category is the name's first segment, the
/// description empty, no schema, `{}` as sample data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeDecl {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

/// A stream. Left out, a setting takes the server's default, except `status`, which is only
/// managed when given (Herald itself disables a failing stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDecl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    pub subscriptions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StreamStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format: Option<PayloadFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_mode: Option<ContentMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_after_failing_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// `{type, configuration}` as the API takes it, write-only values as references.
    pub destination: Value,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// The configuration file (TOML)
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "herald.toml"
    )]
    file: PathBuf,
    /// Delete the event types and streams the file does not declare
    #[arg(long)]
    prune: bool,
    /// Send every write-only value again, changed or not
    #[arg(long)]
    force_secrets: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  herald plan -f herald.toml --prune")]
pub struct PlanArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub file: FileArgs,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  BILLING_TOKEN=... herald apply -f herald.toml")]
pub struct ApplyArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub file: FileArgs,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  herald export -o herald.toml")]
pub struct ExportArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Write to this file instead of stdout
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Create,
    Update,
    /// An event type cannot be changed in place: deleted and created again.
    Replace,
    Delete,
}

impl Action {
    fn sign(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
        }
    }
}

/// One changed field: its path, and its value before and after (`None`: absent, or a
/// write-only value that cannot be shown).
#[derive(Debug)]
struct FieldChange {
    path: String,
    before: Option<Value>,
    after: Option<Value>,
    /// Said instead of the values (write-only values).
    note: Option<String>,
}

#[derive(Debug)]
struct Change {
    kind: &'static str,
    action: Action,
    name: String,
    id: Option<String>,
    fields: Vec<FieldChange>,
    /// The API body to send (create, update, replace), write-only values still references.
    body: Option<Value>,
}

#[derive(Debug, Default)]
struct Plan {
    changes: Vec<Change>,
    /// What the reader should know that changes nothing: streams kept without `--prune`,
    /// names shared by several streams, write-only values not checked.
    notes: Vec<String>,
}

/// A `${env:NAME}` reference's name, when `value` is one.
fn reference(value: &str) -> Option<&str> {
    let name = value.strip_prefix("${env:")?.strip_suffix('}')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some(name)
}

/// Every leaf of `value` under `prefix`, by dotted path; arrays are leaves.
fn flatten(prefix: &str, value: &Value, into: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, into);
            }
        }
        other => {
            into.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// Replaces each reference in `value` by what `resolve` gives for its name.
fn map_references(
    value: &mut Value,
    resolve: &mut dyn FnMut(&str) -> Result<String, CliError>,
) -> Result<(), CliError> {
    match value {
        Value::String(s) => {
            if let Some(name) = reference(s) {
                *s = resolve(name)?;
            }
        }
        Value::Object(map) => {
            for value in map.values_mut() {
                map_references(value, resolve)?;
            }
        }
        Value::Array(items) => {
            for value in items {
                map_references(value, resolve)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A stream's destination as declared, understood.
struct DeclaredDestination {
    /// As the file has it: `{type, configuration}`, references unresolved.
    raw: Value,
    /// Parsed, with placeholders for its references.
    parsed: Destination,
    /// As the API would show it.
    public: Value,
    /// The references it holds, by variable name.
    references: BTreeSet<String>,
}

impl DeclaredDestination {
    fn parse(stream: &str, raw: &Value) -> Result<DeclaredDestination, CliError> {
        let usage = |message: String| CliError::Usage(format!("stream `{stream}`: {message}"));
        let mut references = BTreeSet::new();
        let mut placeholder = raw.clone();
        map_references(&mut placeholder, &mut |name| {
            references.insert(name.to_owned());
            Ok("placeholder".to_owned())
        })?;
        let destination: Destination = serde_json::from_value(placeholder)
            .map_err(|e| usage(format!("`destination` is not valid: {e}")))?;
        let public = destination.public_view();
        // What the API does not show is write-only: it must be a reference, and only it may be.
        let (mut declared, mut shown) = (BTreeMap::new(), BTreeMap::new());
        flatten("", &raw["configuration"], &mut declared);
        flatten("", &public["configuration"], &mut shown);
        for (path, value) in &declared {
            let is_reference = value.as_str().and_then(reference).is_some();
            let write_only = !shown.contains_key(path);
            if write_only && !is_reference {
                return Err(usage(format!(
                    "`destination.configuration.{path}` is write-only and is never written in \
                     the file: write \"${{env:NAME}}\" and set NAME when applying"
                )));
            }
            if is_reference && !write_only {
                return Err(usage(format!(
                    "`destination.configuration.{path}` is not write-only: write its value, \
                     not a reference"
                )));
            }
        }
        Ok(DeclaredDestination {
            raw: raw.clone(),
            parsed: destination,
            public,
            references,
        })
    }

    /// The destination with its references resolved from the environment.
    fn resolved(&self, stream: &str) -> Result<Value, CliError> {
        let mut value = self.raw.clone();
        map_references(&mut value, &mut |name| {
            std::env::var(name).map_err(|_| {
                CliError::Usage(format!(
                    "stream `{stream}`: set the environment variable {name}, which its destination refers to"
                ))
            })
        })?;
        Ok(value)
    }

    /// The variables it refers to that are not set.
    fn unset(&self) -> Vec<&str> {
        self.references
            .iter()
            .filter(|name| std::env::var_os(name).is_none())
            .map(String::as_str)
            .collect()
    }
}

/// A declared stream, as the API would show it (the fields the file manages).
fn desired_stream(decl: &StreamDecl, destination: &DeclaredDestination) -> Value {
    let format = decl.payload_format.unwrap_or_default();
    let mut view = json!({
        "name": decl.name,
        "subscriptions": decl.subscriptions,
        "destination": destination.public,
        "payload_format": format,
        "content_mode": destination.parsed.encoding(format, decl.content_mode).mode,
        "retry_policy": decl.retry_policy.clone().unwrap_or_default(),
        "max_consecutive_failures": decl
            .max_consecutive_failures
            .unwrap_or(DEFAULT_MAX_CONSECUTIVE_FAILURES),
        "disable_after_failing_seconds": decl
            .disable_after_failing_seconds
            .unwrap_or(DEFAULT_DISABLE_AFTER_FAILING_SECONDS),
    });
    if let Some(status) = decl.status {
        view["status"] = json!(status);
    }
    view
}

/// A server's stream as the file would declare it, restricted to the keys of `like`.
fn current_stream(stream: &Value, like: &Value) -> Value {
    let mut view = Map::new();
    for key in like.as_object().into_iter().flat_map(|m| m.keys()) {
        let value = if key == "subscriptions" {
            json!(subscription_names(stream))
        } else {
            stream[key].clone()
        };
        view.insert(key.clone(), value);
    }
    Value::Object(view)
}

fn subscription_names(stream: &Value) -> Vec<String> {
    stream["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| output::cell(&s["event_type"]))
        .collect()
}

/// The changed leaves between two views.
fn diff(before: &Value, after: &Value) -> Vec<FieldChange> {
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", before, &mut old);
    flatten("", after, &mut new);
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter(|path| old.get(*path) != new.get(*path))
        .map(|path| FieldChange {
            path: path.clone(),
            before: old.get(path).cloned(),
            after: new.get(path).cloned(),
            note: None,
        })
        .collect()
}

fn read_file(path: &PathBuf) -> Result<File, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "reading {}: {e}; `herald export -o {}` writes the server's configuration there",
            path.display(),
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is not a valid herald configuration: {e}",
            path.display()
        ))
    })
}

/// Compares the file with the server.
async fn make_plan(client: &Client, file: &File, args: &FileArgs) -> Result<Plan, CliError> {
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for decl in &file.event_types {
        if !seen.insert(decl.name.clone()) {
            return Err(CliError::Usage(format!(
                "the event type `{}` is declared twice",
                decl.name
            )));
        }
    }
    let mut seen_names = BTreeSet::new();
    let mut seen_ids = BTreeSet::new();
    for decl in &file.streams {
        if !seen_names.insert(decl.name.clone()) {
            return Err(CliError::Usage(format!(
                "the stream `{}` is declared twice: names are unique",
                decl.name
            )));
        }
        if let Some(id) = &decl.id
            && !seen_ids.insert(id.clone())
        {
            return Err(CliError::Usage(format!(
                "the stream id `{id}` is declared twice"
            )));
        }
    }

    // Event types: the tenant's own only; the built-in catalog is not configuration.
    let catalog = client.get(&["v1", "event-types"], &[]).await?;
    let existing: BTreeMap<String, Value> = catalog["event_types"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["custom"] == json!(true))
        .map(|t| (output::cell(&t["name"]), t.clone()))
        .collect();
    for decl in &file.event_types {
        let desired = json!({
            "category": decl.category.clone().unwrap_or_else(|| decl.name.split('.').next().unwrap_or_default().to_owned()),
            "description": decl.description.clone().unwrap_or_default(),
            "schema": decl.schema.clone().unwrap_or(Value::Null),
            "sample_data": decl.sample_data.clone().unwrap_or_else(|| json!({})),
        });
        let mut body = json!({ "name": decl.name });
        for (key, value) in desired.as_object().expect("an object") {
            if !value.is_null() {
                body[key] = value.clone();
            }
        }
        match existing.get(&decl.name) {
            None => plan.changes.push(Change {
                kind: "event type",
                action: Action::Create,
                name: decl.name.clone(),
                id: None,
                fields: Vec::new(),
                body: Some(body),
            }),
            Some(current) => {
                let current = current_stream(current, &desired);
                let fields = diff(&current, &desired);
                if !fields.is_empty() {
                    plan.changes.push(Change {
                        kind: "event type",
                        action: Action::Replace,
                        name: decl.name.clone(),
                        id: None,
                        fields,
                        body: Some(body),
                    });
                }
            }
        }
    }
    for name in existing.keys().filter(|n| !seen.contains(*n)) {
        if args.prune {
            plan.changes.push(Change {
                kind: "event type",
                action: Action::Delete,
                name: name.clone(),
                id: None,
                fields: Vec::new(),
                body: None,
            });
        } else {
            plan.notes.push(format!(
                "event type `{name}` is not in the file; kept (--prune deletes it)"
            ));
        }
    }

    // Streams.
    let streams = declarable_streams(client.get(&["v1", "event-streams"], &[]).await?);
    let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for stream in &streams {
        by_name
            .entry(output::cell(&stream["name"]))
            .or_default()
            .push(stream);
    }
    for (name, shared) in by_name.iter().filter(|(_, s)| s.len() > 1) {
        let ids: Vec<String> = shared.iter().map(|s| output::cell(&s["id"])).collect();
        plan.notes.push(format!(
            "streams {} share the name `{name}`; names are unique now: rename all but one \
             (for example `herald streams update {} -n {name}-2`), or give the one the file \
             means as its `id`",
            ids.join(", "),
            ids[1]
        ));
    }
    let mut matched = BTreeSet::new();
    for decl in &file.streams {
        let destination = DeclaredDestination::parse(&decl.name, &decl.destination)?;
        let desired = desired_stream(decl, &destination);
        let current = match &decl.id {
            Some(id) => Some(
                streams
                    .iter()
                    .find(|s| s["id"] == json!(id))
                    .ok_or_else(|| {
                        CliError::NotFound(format!(
                            "stream `{}`: the file gives id `{id}`, and the server has no stream with it; remove the id to create the stream",
                            decl.name
                        ))
                    })?,
            ),
            None => match by_name.get(&decl.name).map(Vec::as_slice) {
                None | Some([]) => None,
                Some([one]) => Some(*one),
                Some(several) => {
                    let ids: Vec<String> = several.iter().map(|s| output::cell(&s["id"])).collect();
                    return Err(CliError::Usage(format!(
                        "stream `{}`: the server has {} streams of this name ({}); rename the others \
                         with `herald streams update ID -n NEW`, or give the one meant as `id` in the file",
                        decl.name,
                        several.len(),
                        ids.join(", ")
                    )));
                }
            },
        };
        let unset = destination.unset();
        match current {
            None => {
                let mut body = Map::new();
                body.insert("name".into(), json!(decl.name));
                body.insert(
                    "subscriptions".into(),
                    json!(
                        decl.subscriptions
                            .iter()
                            .map(|t| json!({ "event_type": t }))
                            .collect::<Vec<_>>()
                    ),
                );
                body.insert("destination".into(), destination.raw.clone());
                for key in [
                    "status",
                    "payload_format",
                    "retry_policy",
                    "max_consecutive_failures",
                    "disable_after_failing_seconds",
                ] {
                    if let Some(value) = desired.get(key) {
                        body.insert(key.into(), value.clone());
                    }
                }
                if let Some(mode) = decl.content_mode {
                    body.insert("content_mode".into(), json!(mode));
                }
                if !unset.is_empty() {
                    plan.notes.push(format!(
                        "stream `{}`: set {} before applying",
                        decl.name,
                        unset.join(", ")
                    ));
                }
                plan.changes.push(Change {
                    kind: "stream",
                    action: Action::Create,
                    name: decl.name.clone(),
                    id: None,
                    fields: Vec::new(),
                    body: Some(Value::Object(body)),
                });
            }
            Some(stream) => {
                let id = output::cell(&stream["id"]);
                if !matched.insert(id.clone()) {
                    return Err(CliError::Usage(format!(
                        "stream `{}` and another one in the file both mean {id}",
                        decl.name
                    )));
                }
                let before = current_stream(stream, &desired);
                let mut fields = diff(&before, &desired);
                let mut send_destination =
                    fields.iter().any(|f| f.path.starts_with("destination."));
                if !send_destination && !destination.references.is_empty() {
                    if args.force_secrets {
                        send_destination = true;
                        fields.push(FieldChange {
                            path: "destination".into(),
                            before: None,
                            after: None,
                            note: Some("write-only values sent again (--force-secrets)".into()),
                        });
                    } else if !unset.is_empty() {
                        plan.notes.push(format!(
                            "stream `{}`: write-only values not checked, {} not set",
                            decl.name,
                            unset.join(", ")
                        ));
                    } else {
                        let candidate = update_destination(destination.resolved(&decl.name)?);
                        let answer = client
                            .post(
                                &["v1", "event-streams", &id, "destination", "check"],
                                &candidate,
                            )
                            .await?;
                        if answer["matches"] != json!(true) {
                            send_destination = true;
                            fields.push(FieldChange {
                                path: "destination".into(),
                                before: None,
                                after: None,
                                note: Some("write-only values changed".into()),
                            });
                        }
                    }
                }
                if fields.is_empty() {
                    continue;
                }
                let mut body = Map::new();
                let top: BTreeSet<&str> = fields
                    .iter()
                    .map(|f| f.path.split('.').next().unwrap_or_default())
                    .collect();
                for key in top {
                    match key {
                        "destination" => {}
                        "subscriptions" => {
                            body.insert(
                                key.into(),
                                json!(
                                    decl.subscriptions
                                        .iter()
                                        .map(|t| json!({ "event_type": t }))
                                        .collect::<Vec<_>>()
                                ),
                            );
                        }
                        _ => {
                            body.insert(key.into(), desired[key].clone());
                        }
                    }
                }
                if send_destination {
                    body.insert(
                        "destination".into(),
                        update_destination(destination.raw.clone()),
                    );
                }
                plan.changes.push(Change {
                    kind: "stream",
                    action: Action::Update,
                    name: decl.name.clone(),
                    id: Some(id),
                    fields,
                    body: Some(Value::Object(body)),
                });
            }
        }
    }
    for stream in &streams {
        let id = output::cell(&stream["id"]);
        if matched.contains(&id) {
            continue;
        }
        let name = output::cell(&stream["name"]);
        if file
            .streams
            .iter()
            .any(|d| d.id.is_none() && d.name == name)
        {
            continue; // a name several streams share: reported above
        }
        if args.prune {
            plan.changes.push(Change {
                kind: "stream",
                action: Action::Delete,
                name,
                id: Some(id),
                fields: Vec::new(),
                body: None,
            });
        } else {
            plan.notes.push(format!(
                "stream `{name}` ({id}) is not in the file; kept (--prune deletes it)"
            ));
        }
    }
    Ok(plan)
}

/// A destination as an update sends it: a signing secret is set on create only (and rotated
/// with `herald streams rotate-secret`).
fn update_destination(mut destination: Value) -> Value {
    if let Some(configuration) = destination["configuration"].as_object_mut() {
        configuration.remove("signing_secret");
    }
    destination
}

fn compact(value: &Option<Value>) -> String {
    match value {
        None => "(none)".into(),
        Some(value) => value.to_string(),
    }
}

fn print_plan(mode: Mode, plan: &Plan, file: &std::path::Path) {
    if mode == Mode::Json {
        let changes: Vec<Value> = plan
            .changes
            .iter()
            .map(|c| {
                json!({
                    "action": c.action.as_str(),
                    "kind": c.kind,
                    "name": c.name,
                    "id": c.id,
                    "fields": c.fields.iter().map(|f| json!({
                        "path": f.path,
                        "before": f.before,
                        "after": f.after,
                        "note": f.note,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::json(&json!({ "changes": changes, "notes": plan.notes }));
        return;
    }
    if mode == Mode::Quiet {
        for change in &plan.changes {
            crate::outln!("{} {} {}", change.action.as_str(), change.kind, change.name);
        }
        return;
    }
    for change in &plan.changes {
        let id = change
            .id
            .as_deref()
            .map(|id| format!(" ({id})"))
            .unwrap_or_default();
        crate::outln!(
            "{} {} {}{id}",
            change.action.sign(),
            change.kind,
            change.name
        );
        for field in &change.fields {
            match &field.note {
                Some(note) => crate::outln!("    {}: {note}", field.path),
                None => crate::outln!(
                    "    {}: {} -> {}",
                    field.path,
                    compact(&field.before),
                    compact(&field.after)
                ),
            }
        }
    }
    for note in &plan.notes {
        crate::outln!("note: {note}");
    }
    if plan.changes.is_empty() {
        crate::outln!("No changes: the server matches {}.", file.display());
    } else {
        let count = |a: Action| plan.changes.iter().filter(|c| c.action == a).count();
        crate::outln!(
            "Plan: {} to create, {} to update, {} to replace, {} to delete.",
            count(Action::Create),
            count(Action::Update),
            count(Action::Replace),
            count(Action::Delete)
        );
    }
}

pub async fn plan(args: PlanArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let file = read_file(&args.file.file)?;
    let plan = make_plan(&client, &file, &args.file).await?;
    print_plan(args.connection.mode(), &plan, &args.file.file);
    Ok(())
}

pub async fn apply(args: ApplyArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let mode = args.connection.mode();
    let file = read_file(&args.file.file)?;
    let plan = make_plan(&client, &file, &args.file).await?;
    if plan.changes.is_empty() {
        if mode == Mode::Table {
            for note in &plan.notes {
                crate::outln!("note: {note}");
            }
            crate::outln!(
                "No changes: the server matches {}.",
                args.file.file.display()
            );
        } else if mode == Mode::Json {
            output::json(&json!({ "applied": [] }));
        }
        return Ok(());
    }
    // Every reference must resolve before anything changes: no half-applied file for want
    // of a variable.
    let mut bodies = Vec::new();
    for change in &plan.changes {
        let mut body = change.body.clone();
        if let Some(destination) = body.as_mut().and_then(|b| b.get_mut("destination")) {
            let mut missing = Vec::new();
            map_references(destination, &mut |name| {
                std::env::var(name).or_else(|_| {
                    missing.push(name.to_owned());
                    Ok(String::new())
                })
            })?;
            if !missing.is_empty() {
                return Err(CliError::Usage(format!(
                    "stream `{}`: set {} (its destination refers to them); nothing was changed",
                    change.name,
                    missing.join(", ")
                )));
            }
        }
        bodies.push(body);
    }
    // Types before the streams that subscribe to them; deletions last, streams before the
    // types they subscribed to.
    let rank = |c: &Change| match (c.kind, c.action) {
        ("event type", Action::Create | Action::Replace) => 0,
        ("stream", Action::Update) => 1,
        ("stream", Action::Create) => 2,
        ("stream", Action::Delete) => 3,
        _ => 4,
    };
    let mut order: Vec<usize> = (0..plan.changes.len()).collect();
    order.sort_by_key(|&i| rank(&plan.changes[i]));
    let mut applied = Vec::new();
    for i in order {
        let change = &plan.changes[i];
        let body = bodies[i].as_ref();
        let id = match (change.kind, change.action) {
            ("event type", Action::Create) => {
                client
                    .post(&["v1", "event-types"], body.expect("a body"))
                    .await?;
                None
            }
            ("event type", Action::Replace) => {
                client.delete(&["v1", "event-types", &change.name]).await?;
                client
                    .post(&["v1", "event-types"], body.expect("a body"))
                    .await?;
                None
            }
            ("event type", _) => {
                client.delete(&["v1", "event-types", &change.name]).await?;
                None
            }
            ("stream", Action::Create) => {
                let created = client
                    .post(&["v1", "event-streams"], body.expect("a body"))
                    .await?;
                Some(output::cell(&created["id"]))
            }
            ("stream", Action::Update) => {
                let id = change.id.as_deref().expect("an update has an id");
                client
                    .patch(&["v1", "event-streams", id], body.expect("a body"))
                    .await?;
                Some(id.to_owned())
            }
            _ => {
                let id = change.id.as_deref().expect("a deletion has an id");
                client.delete(&["v1", "event-streams", id]).await?;
                Some(id.to_owned())
            }
        };
        let past = match change.action {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Replace => "replaced",
            Action::Delete => "deleted",
        };
        let suffix = id
            .as_deref()
            .map(|id| format!(" ({id})"))
            .unwrap_or_default();
        match mode {
            Mode::Table => crate::outln!("{past} {} {}{suffix}", change.kind, change.name),
            Mode::Quiet => crate::outln!("{}", id.as_deref().unwrap_or(&change.name)),
            Mode::Json => {}
        }
        applied.push(json!({
            "action": change.action.as_str(),
            "kind": change.kind,
            "name": change.name,
            "id": id,
        }));
    }
    match mode {
        Mode::Json => output::json(&json!({ "applied": applied })),
        Mode::Table => crate::outln!("Applied {} changes.", applied.len()),
        Mode::Quiet => {}
    }
    Ok(())
}

/// An environment variable's name for a stream's write-only value: `BILLING_TOKEN`.
fn variable(stream: &str, field: &str) -> String {
    let mut name: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "STREAM_");
    }
    format!("{name}_{field}")
}

/// A stream's destination as the file declares it: the API's view, with a reference where
/// each write-only value goes.
fn exported_destination(stream: &Value) -> Value {
    let name = output::cell(&stream["name"]);
    let mut destination = stream["destination"].clone();
    let kind = output::cell(&destination["type"]);
    let reference = |field: &str| json!(format!("${{env:{}}}", variable(&name, field)));
    if let Some(configuration) = destination["configuration"].as_object_mut() {
        match kind.as_str() {
            "webhook" => {
                if let Some(auth) = configuration
                    .get_mut("webhook_authorization")
                    .and_then(Value::as_object_mut)
                {
                    let field = match auth.get("method").and_then(Value::as_str) {
                        Some("bearer") => Some("token"),
                        Some("basic") => Some("password"),
                        Some("custom_header") => Some("header_value"),
                        _ => None,
                    };
                    if let Some(field) = field {
                        auth.insert(field.into(), reference(&field.to_ascii_uppercase()));
                    }
                }
            }
            "eventbridge" => {
                let credentials = configuration.remove("credentials");
                if credentials == Some(json!("access_key")) {
                    configuration
                        .insert("aws_access_key_id".into(), reference("AWS_ACCESS_KEY_ID"));
                    configuration.insert(
                        "aws_secret_access_key".into(),
                        reference("AWS_SECRET_ACCESS_KEY"),
                    );
                }
            }
            _ => {}
        }
    }
    destination
}

/// The streams a file declares: all but `herald listen` sessions' own, which come and go
/// with the command.
fn declarable_streams(listed: Value) -> Vec<Value> {
    let Value::Array(streams) = listed else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter(|s| s["destination"]["type"] != json!("listen"))
        .collect()
}

pub async fn export(args: ExportArgs) -> Result<(), CliError> {
    let client = args.connection.client()?;
    let catalog = client.get(&["v1", "event-types"], &[]).await?;
    let mut file = File::default();
    for t in catalog["event_types"].as_array().into_iter().flatten() {
        if t["custom"] != json!(true) {
            continue;
        }
        let name = output::cell(&t["name"]);
        let text = |v: &Value| v.as_str().map(str::to_owned);
        file.event_types.push(EventTypeDecl {
            category: text(&t["category"]),
            description: text(&t["description"]).filter(|d| !d.is_empty()),
            sample_data: Some(t["sample_data"].clone()).filter(|s| s != &json!({})),
            schema: Some(t["schema"].clone()).filter(|s| !s.is_null()),
            name,
        });
    }
    for stream in &declarable_streams(client.get(&["v1", "event-streams"], &[]).await?) {
        file.streams.push(StreamDecl {
            id: None,
            name: output::cell(&stream["name"]),
            subscriptions: subscription_names(stream),
            status: None,
            payload_format: Some(field(stream, "payload_format")?),
            content_mode: Some(field(stream, "content_mode")?),
            max_consecutive_failures: Some(field(stream, "max_consecutive_failures")?),
            disable_after_failing_seconds: Some(field(stream, "disable_after_failing_seconds")?),
            retry_policy: Some(field(stream, "retry_policy")?),
            destination: exported_destination(stream),
        });
    }
    let body = toml::to_string(&file).map_err(|e| {
        CliError::Transport(format!(
            "the server's configuration cannot be written as TOML: {e}"
        ))
    })?;
    let text = format!(
        "# Herald configuration: `herald plan -f FILE` shows what `herald apply -f FILE` changes.\n\
         # Write-only values are ${{env:NAME}} references: set each NAME before applying.\n\n{body}"
    );
    match &args.output {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| CliError::Usage(format!("writing {}: {e}", path.display())))?;
            crate::outln!("wrote {}", path.display());
        }
        None => output::write_all(text.as_bytes()),
    }
    Ok(())
}

/// One setting of a server's stream, typed.
fn field<T: serde::de::DeserializeOwned>(stream: &Value, key: &str) -> Result<T, CliError> {
    serde_json::from_value(stream[key].clone()).map_err(|e| {
        CliError::Transport(format!(
            "the server's stream has an unexpected `{key}`: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_whole_env_names() {
        assert_eq!(reference("${env:BILLING_TOKEN}"), Some("BILLING_TOKEN"));
        assert_eq!(reference("${env:_X1}"), Some("_X1"));
        for not in [
            "${env:}",
            "${env:1X}",
            "${env:A-B}",
            "x${env:A}",
            "${ENV:A}",
            "$A",
        ] {
            assert_eq!(reference(not), None, "{not}");
        }
        assert_eq!(variable("to the bus", "TOKEN"), "TO_THE_BUS_TOKEN");
        assert_eq!(variable("1st", "TOKEN"), "STREAM_1ST_TOKEN");
    }

    /// The README's example is a valid file whose secret is a reference.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n")
            .expect("the README has a TOML example")
            + 8;
        let end = start + readme[start..].find("```").unwrap();
        let file: File = toml::from_str(&readme[start..end]).unwrap();
        assert_eq!(file.event_types.len(), 1);
        let destination =
            DeclaredDestination::parse(&file.streams[0].name, &file.streams[0].destination)
                .unwrap();
        assert_eq!(
            destination.references.iter().collect::<Vec<_>>(),
            ["BILLING_TOKEN"]
        );
    }
}
