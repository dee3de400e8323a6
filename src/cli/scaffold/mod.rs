//! `herald scaffold`: writes a small receiver project, in Node, Python or Rust, for the event
//! types a user picks from the built-in catalog. The project verifies signatures with that
//! language's Standard Webhooks library, skips a repeated `webhook-id`, dispatches to one
//! handler per type (with a failed-run branch for `flow.run.finished`), and ships tests that
//! feed it the catalog's samples, signed.
//!
//! The templates are files embedded in the binary (`templates/`). Rendering is a single pass
//! that replaces `{{name}}` placeholders with values and never rescans what it inserted; the
//! values are event names (checked against the catalog), identifiers built from them, and
//! one-line descriptions. Sample payloads go to `samples.json`, never into code. The command
//! works offline: it needs no server.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use super::client::CliError;
use crate::catalog::{self, Catalog, EventType};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    herald scaffold --events user.created,flow.run.finished --lang python --out my-receiver")]
pub struct ScaffoldArgs {
    /// Event types to handle, comma-separated; `user.*` takes every catalog type below `user`
    #[arg(long, required = true, value_delimiter = ',', value_name = "TYPES")]
    events: Vec<String>,
    /// The receiver's language
    #[arg(long, value_enum)]
    lang: Lang,
    /// The directory to write the project into (created if missing; must be empty)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a directory that is not empty, replacing the files of the same names
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Node,
    Python,
    Rust,
}

/// One file of a generated project.
#[derive(Debug)]
pub struct File {
    pub path: &'static str,
    pub contents: String,
}

pub fn run(args: ScaffoldArgs) -> Result<(), CliError> {
    let catalog = Catalog::builtin();
    let types = select(&catalog, &args.events).map_err(CliError::Usage)?;
    check_out_dir(&args.out, args.force)?;
    let name = project_name(&args.out);
    let files = render_project(args.lang, &name, &types);
    write(&args.out, &files)?;

    let dir = args.out.display();
    crate::outln!(
        "wrote a {} receiver for {} event type{} to {dir}:",
        match args.lang {
            Lang::Node => "Node",
            Lang::Python => "Python",
            Lang::Rust => "Rust",
        },
        types.len(),
        if types.len() == 1 { "" } else { "s" },
    );
    for file in &files {
        crate::outln!("  {}", file.path);
    }
    let (install, test) = match args.lang {
        Lang::Node => ("npm install", "npm test"),
        Lang::Python => (
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
            ".venv/bin/python -m unittest",
        ),
        Lang::Rust => ("", "cargo test"),
    };
    crate::outln!();
    crate::outln!("next: cd {dir}");
    if !install.is_empty() {
        crate::outln!("      {install}");
    }
    crate::outln!("      {test}");
    crate::outln!("and edit the handlers; its README says how to run it and point a stream at it");
    Ok(())
}

/// The catalog types the `--events` patterns name, in the order given, each once. A pattern
/// that is not a valid name, or that selects no catalog type, is a usage error.
pub fn select<'a>(catalog: &'a Catalog, patterns: &[String]) -> Result<Vec<&'a EventType>, String> {
    let mut selected: Vec<&EventType> = Vec::new();
    let mut seen = HashSet::new();
    for pattern in patterns.iter().map(|p| p.trim()) {
        if pattern.is_empty() {
            return Err("--events has an empty entry; list event types separated by commas".into());
        }
        if !catalog::is_valid_pattern(pattern) {
            return Err(format!(
                "--events: `{pattern}` is not an event type (dotted lowercase names like \
                 `user.created`, or a prefix and `.*` like `user.*`)"
            ));
        }
        let matches: Vec<&EventType> = catalog
            .all()
            .iter()
            .filter(|t| catalog::pattern_matches(pattern, &t.name))
            .collect();
        if matches.is_empty() {
            return Err(unknown(catalog, pattern));
        }
        for t in matches {
            if seen.insert(t.name.as_str()) {
                selected.push(t);
            }
        }
    }
    Ok(selected)
}

/// The error for a pattern that selects nothing, with the catalog's types that share its
/// first segment as suggestions.
fn unknown(catalog: &Catalog, pattern: &str) -> String {
    let first = pattern.split('.').next().unwrap_or_default();
    let near: Vec<&str> = catalog
        .all()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|name| name.split('.').next() == Some(first))
        .collect();
    let mut message = format!("--events: `{pattern}` is not in the event type catalog");
    if near.is_empty() {
        let categories: std::collections::BTreeSet<&str> =
            catalog.all().iter().map(|t| t.category.as_str()).collect();
        message.push_str(&format!(
            "; its categories are {}",
            categories.into_iter().collect::<Vec<_>>().join(", ")
        ));
    } else {
        message.push_str(&format!("; did you mean one of {}?", near.join(", ")));
    }
    message
}

/// Refuses a path that is a file, or a directory with anything in it unless `force`.
fn check_out_dir(out: &Path, force: bool) -> Result<(), CliError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(CliError::Usage(format!(
                    "--out {} is not empty; choose a new directory, or pass --force to \
                     replace the files scaffold writes there",
                    out.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if out.exists() => Err(CliError::Usage(format!(
            "--out {} is not a directory",
            out.display()
        ))),
        Err(e) => Err(CliError::Local(format!("reading {}: {e}", out.display()))),
    }
}

fn write(out: &Path, files: &[File]) -> Result<(), CliError> {
    for file in files {
        let path = out.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CliError::Local(format!("creating {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, &file.contents)
            .map_err(|e| CliError::Local(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

/// A package name every one of the three ecosystems accepts, from the directory's name.
fn project_name(out: &Path) -> String {
    let base = out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut name = String::new();
    for c in base.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    let name = name.trim_end_matches('-');
    match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => name.to_owned(),
        Some(_) => format!("receiver-{name}"),
        None => "herald-receiver".to_owned(),
    }
}

/// An identifier for a type's handler: `on_` + the name's segments in snake_case for Python
/// and Rust, `on` + CamelCase for Node. The prefix keeps it clear of keywords and digits.
pub fn identifier(lang: Lang, event_type: &str) -> String {
    let words = event_type.split(['.', '_']).filter(|w| !w.is_empty());
    match lang {
        Lang::Node => {
            let mut ident = String::from("on");
            for word in words {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    ident.push(first.to_ascii_uppercase());
                    ident.extend(chars);
                }
            }
            ident
        }
        Lang::Python | Lang::Rust => {
            let mut ident = String::from("on");
            for word in words {
                ident.push('_');
                ident.push_str(word);
            }
            ident
        }
    }
}

/// Identifiers for `types`, in order: two names that would collide (`a.b_c` and `a_b.c`)
/// get `_2`, `_3`... Names the templates define themselves are avoided too.
fn identifiers(lang: Lang, types: &[&EventType]) -> Vec<String> {
    let mut taken: HashSet<String> = ["onFailedRun", "on_failed_run"]
        .into_iter()
        .map(String::from)
        .collect();
    types
        .iter()
        .map(|t| {
            let base = identifier(lang, &t.name);
            let mut ident = base.clone();
            let mut n = 2;
            while !taken.insert(ident.clone()) {
                ident = format!("{base}_{n}");
                n += 1;
            }
            ident
        })
        .collect()
}

/// Replaces each `{{key}}` of `template` with its value, in one pass: inserted text is never
/// scanned again. A placeholder without a value is a bug in the templates, so it panics (the
/// tests render every template).
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("an unclosed placeholder in a template: {rest}"));
        let key = &after[..end];
        let value = values
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no value for the template placeholder {{{{{key}}}}}"))
            .1;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// One line of text for a comment: control characters (newlines included) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A language's templates: whole files, then the snippets repeated per event type.
struct Templates {
    files: &'static [(&'static str, &'static str)],
    handler: &'static str,
    handler_flow_run_finished: &'static str,
    dispatch: &'static str,
    failed_run_test: &'static str,
}

const NODE: Templates = Templates {
    files: &[
        ("package.json", include_str!("templates/node/package.json")),
        ("receiver.js", include_str!("templates/node/receiver.js")),
        ("handlers.js", include_str!("templates/node/handlers.js")),
        (
            "test/receiver.test.js",
            include_str!("templates/node/receiver.test.js"),
        ),
        ("README.md", include_str!("templates/node/README.md")),
        (".gitignore", include_str!("templates/node/gitignore")),
    ],
    handler: include_str!("templates/node/handler.js.tmpl"),
    handler_flow_run_finished: include_str!("templates/node/handler_flow_run_finished.js.tmpl"),
    dispatch: include_str!("templates/node/dispatch.js.tmpl"),
    failed_run_test: include_str!("templates/node/failed_run_test.js.tmpl"),
};

const PYTHON: Templates = Templates {
    files: &[
        ("receiver.py", include_str!("templates/python/receiver.py")),
        ("handlers.py", include_str!("templates/python/handlers.py")),
        (
            "test_receiver.py",
            include_str!("templates/python/test_receiver.py"),
        ),
        (
            "requirements.txt",
            include_str!("templates/python/requirements.txt"),
        ),
        ("README.md", include_str!("templates/python/README.md")),
        (".gitignore", include_str!("templates/python/gitignore")),
    ],
    handler: include_str!("templates/python/handler.py.tmpl"),
    handler_flow_run_finished: include_str!("templates/python/handler_flow_run_finished.py.tmpl"),
    dispatch: include_str!("templates/python/dispatch.py.tmpl"),
    failed_run_test: include_str!("templates/python/failed_run_test.py.tmpl"),
};

const RUST: Templates = Templates {
    files: &[
        ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
        ("src/main.rs", include_str!("templates/rust/main.rs")),
        ("src/lib.rs", include_str!("templates/rust/lib.rs")),
        (
            "src/handlers.rs",
            include_str!("templates/rust/handlers.rs"),
        ),
        (
            "tests/receiver.rs",
            include_str!("templates/rust/receiver_test.rs"),
        ),
        ("README.md", include_str!("templates/rust/README.md")),
        (".gitignore", include_str!("templates/rust/gitignore")),
    ],
    handler: include_str!("templates/rust/handler.rs.tmpl"),
    handler_flow_run_finished: include_str!("templates/rust/handler_flow_run_finished.rs.tmpl"),
    dispatch: include_str!("templates/rust/dispatch.rs.tmpl"),
    failed_run_test: include_str!("templates/rust/failed_run_test.rs.tmpl"),
};

/// The event type whose handler has a branch for failed runs.
const FLOW_RUN_FINISHED: &str = "flow.run.finished";

/// Every file of the project, rendered; `samples.json` holds each type's sample `data`.
pub fn render_project(lang: Lang, name: &str, types: &[&EventType]) -> Vec<File> {
    let templates = match lang {
        Lang::Node => &NODE,
        Lang::Python => &PYTHON,
        Lang::Rust => &RUST,
    };
    let idents = identifiers(lang, types);
    let mut handlers = String::new();
    let mut dispatch = String::new();
    for (t, ident) in types.iter().zip(&idents) {
        let description = one_line(&t.description);
        let values = [
            ("type", t.name.as_str()),
            ("ident", ident.as_str()),
            ("description", description.as_str()),
        ];
        let handler = if t.name == FLOW_RUN_FINISHED {
            templates.handler_flow_run_finished
        } else {
            templates.handler
        };
        handlers.push_str(&render(handler, &values));
        dispatch.push_str(&render(templates.dispatch, &values));
    }
    let failed_run_test = if types.iter().any(|t| t.name == FLOW_RUN_FINISHED) {
        templates.failed_run_test
    } else {
        ""
    };
    let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
    let events = names.join(", ");
    let events_flag = names.join(",");
    let values = [
        ("name", name),
        ("events", events.as_str()),
        ("events_flag", events_flag.as_str()),
        ("handlers", handlers.as_str()),
        ("dispatch", dispatch.as_str()),
        ("failed_run_test", failed_run_test),
    ];
    let mut files: Vec<File> = templates
        .files
        .iter()
        .map(|(path, template)| File {
            path,
            contents: render(template, &values),
        })
        .collect();
    let samples: Map<String, Value> = types
        .iter()
        .map(|t| (t.name.clone(), t.sample_data.clone()))
        .collect();
    let mut samples = serde_json::to_string_pretty(&samples).expect("JSON serializes");
    samples.push('\n');
    files.push(File {
        path: "samples.json",
        contents: samples,
    });
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(types: &[&EventType]) -> Vec<String> {
        types.iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn wildcards_expand_to_the_catalogs_matches_once_each() {
        let catalog = Catalog::builtin();
        let selected = select(
            &catalog,
            &[
                "flow.run.*".into(),
                "flow.run.finished".into(),
                "user.created".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            names(&selected),
            [
                "flow.run.finished",
                "flow.run.resumed",
                "flow.run.retried",
                "flow.run.started",
                "user.created"
            ]
        );
    }

    #[test]
    fn unknown_types_and_bad_patterns_are_refused_with_suggestions() {
        let catalog = Catalog::builtin();
        let error = select(&catalog, &["user.creatd".into()]).unwrap_err();
        assert!(
            error.contains("`user.creatd` is not in the event type catalog"),
            "{error}"
        );
        assert!(error.contains("user.created"), "{error}");
        let error = select(&catalog, &["nosuch.*".into()]).unwrap_err();
        assert!(error.contains("its categories are"), "{error}");
        let error = select(&catalog, &["User Created".into()]).unwrap_err();
        assert!(error.contains("is not an event type"), "{error}");
        assert!(select(&catalog, &["".into()]).is_err());
    }

    #[test]
    fn identifiers_are_valid_in_each_language_and_never_collide() {
        assert_eq!(
            identifier(Lang::Node, "security.breach_attempt.detected"),
            "onSecurityBreachAttemptDetected"
        );
        assert_eq!(
            identifier(Lang::Python, "security.breach_attempt.detected"),
            "on_security_breach_attempt_detected"
        );
        assert_eq!(identifier(Lang::Rust, "user.created"), "on_user_created");
        let catalog = Catalog::builtin();
        let all: Vec<&EventType> = catalog.all().iter().collect();
        for lang in [Lang::Node, Lang::Python, Lang::Rust] {
            let idents = identifiers(lang, &all);
            let distinct: HashSet<&String> = idents.iter().collect();
            assert_eq!(distinct.len(), idents.len());
            for ident in &idents {
                assert!(
                    ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && ident.starts_with("on"),
                    "{ident}"
                );
            }
        }
        // Two names that meet in snake_case.
        let a = EventType {
            name: "a.b_c".into(),
            ..catalog.get("user.created").unwrap().clone()
        };
        let b = EventType {
            name: "a_b.c".into(),
            ..a.clone()
        };
        assert_eq!(
            identifiers(Lang::Rust, &[&a, &b]),
            ["on_a_b_c", "on_a_b_c_2"]
        );
    }

    #[test]
    fn rendering_is_one_pass_and_inserted_text_is_never_rescanned() {
        assert_eq!(
            render("a {{x}} b {{y}}", &[("x", "{{y}}"), ("y", "1")]),
            "a {{y}} b 1"
        );
    }

    #[test]
    fn every_template_renders_with_no_placeholder_left() {
        let catalog = Catalog::builtin();
        let all: Vec<&EventType> = catalog.all().iter().collect();
        for lang in [Lang::Node, Lang::Python, Lang::Rust] {
            for types in [&all[..], &all[..1]] {
                for file in render_project(lang, "my-receiver", types) {
                    assert!(
                        !file.contents.contains("{{") || file.path == "samples.json",
                        "{lang:?} {}: {}",
                        file.path,
                        file.contents
                    );
                }
            }
        }
    }

    #[test]
    fn project_names_suit_npm_pypi_and_cargo() {
        assert_eq!(project_name(Path::new("/tmp/My Receiver!")), "my-receiver");
        assert_eq!(
            project_name(Path::new("out/2026_hooks")),
            "receiver-2026-hooks"
        );
        assert_eq!(project_name(Path::new("/")), "herald-receiver");
        assert_eq!(project_name(Path::new("receiver")), "receiver");
    }
}
