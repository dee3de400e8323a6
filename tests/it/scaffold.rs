//! `herald scaffold`: the real binary writes each language's receiver project, whose own tests
//! then run with the real toolchain (`node --test`, Python's unittest, `cargo test`) and the
//! real Standard Webhooks library of that language; and a real Herald delivers to a running
//! generated receiver. The toolchain tests need what `.ci/run` prepares, named by
//! `HERALD_TEST_SCAFFOLD_NODE_MODULES`, `HERALD_TEST_SCAFFOLD_PYTHON` and
//! `HERALD_TEST_SCAFFOLD_CARGO_TARGET` (see `build.rs`); each is reported as ignored without its
//! variable. None of them needs the network.

#![cfg_attr(
    not(any(
        herald_scaffold_node_tests,
        herald_scaffold_python_tests,
        herald_scaffold_rust_tests
    )),
    allow(dead_code, unused_imports)
)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::helpers::*;

/// The types the toolchain tests generate for: the pair, and a name with an
/// underscore, which each language must turn into a valid identifier.
const EVENTS: &str = "user.created,flow.run.finished,security.breach_attempt.detected";

/// Runs `herald scaffold args...`; answers its output.
fn scaffold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("scaffold")
        .args(args)
        .output()
        .expect("the herald binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Generates `lang`'s project for `events` into `dir`; panics unless it succeeds.
fn generate(lang: &str, events: &str, dir: &Path) {
    let out = scaffold(&[
        "--events",
        events,
        "--lang",
        lang,
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A variable `.ci/run` sets, read when the test runs, else as it was when the tests were built.
fn prepared(variable: &str, built: Option<&'static str>) -> String {
    std::env::var(variable)
        .ok()
        .filter(|v| !v.is_empty())
        .or(built.map(str::to_owned))
        .unwrap_or_else(|| panic!("{variable} was set when the tests were built"))
}

/// Runs a generated project's tests; panics with their output unless they pass.
fn run_tests(command: &mut Command) -> String {
    let output = command.output().expect("the toolchain runs");
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "the project's tests failed:\n{all}"
    );
    all
}

#[test]
fn scaffold_refuses_unknown_types_and_non_empty_directories_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("receiver");
    let out_arg = out.to_str().unwrap();

    let unknown = scaffold(&[
        "--events",
        "user.created,user.creatd",
        "--lang",
        "node",
        "--out",
        out_arg,
    ]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    let stderr = text(&unknown.stderr);
    assert!(
        stderr.contains("`user.creatd` is not in the event type catalog")
            && stderr.contains("user.created"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written for a refused command");

    let language = scaffold(&[
        "--events",
        "user.created",
        "--lang",
        "cobol",
        "--out",
        out_arg,
    ]);
    assert_eq!(language.status.code(), Some(2), "{language:?}");

    // A wildcard expands to the catalog's matches, each with its own handler.
    generate("python", "user.*,flow.run.finished", &out);
    let handlers = std::fs::read_to_string(out.join("handlers.py")).unwrap();
    for name in [
        "user.created",
        "user.signed.in",
        "user.password.reset",
        "flow.run.finished",
    ] {
        let ident = format!("def on_{}(event):", name.replace('.', "_"));
        assert!(handlers.contains(&ident), "no `{ident}` in:\n{handlers}");
        assert!(handlers.contains(&format!("\"{name}\": on_")), "{handlers}");
    }
    let samples: Value =
        serde_json::from_slice(&std::fs::read(out.join("samples.json")).unwrap()).unwrap();
    assert_eq!(
        samples["user.created"]["object"]["email"], "jane.doe@example.com",
        "the catalog's sample data"
    );

    let again = scaffold(&[
        "--events",
        "user.created",
        "--lang",
        "node",
        "--out",
        out_arg,
    ]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(text(&again.stderr).contains("--force"), "{again:?}");
    assert!(
        !out.join("package.json").exists(),
        "a refused run writes nothing"
    );

    let forced = scaffold(&[
        "--events",
        "user.created",
        "--lang",
        "node",
        "--out",
        out_arg,
        "--force",
    ]);
    assert_eq!(forced.status.code(), Some(0), "{forced:?}");
    assert!(out.join("package.json").exists());

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let not_dir = scaffold(&[
        "--events",
        "user.created",
        "--lang",
        "node",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(not_dir.status.code(), Some(2), "{not_dir:?}");
}

#[test]
#[cfg_attr(
    not(herald_scaffold_node_tests),
    ignore = "needs HERALD_TEST_SCAFFOLD_NODE_MODULES"
)]
fn the_node_receiver_passes_its_own_tests() {
    let modules = prepared(
        "HERALD_TEST_SCAFFOLD_NODE_MODULES",
        option_env!("HERALD_TEST_SCAFFOLD_NODE_MODULES"),
    );
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("node-receiver");
    generate("node", EVENTS, &project);
    // What `npm install` would have put there, from `.ci/run`'s pinned install.
    std::os::unix::fs::symlink(&modules, project.join("node_modules")).unwrap();
    let output = run_tests(Command::new("node").arg("--test").current_dir(&project));
    // 6 cases of signatures and ids, 1 per event type, the failed-run branch.
    assert!(output.contains("# pass 10"), "{output}");
    assert!(output.contains("# fail 0"), "{output}");
}

#[test]
#[cfg_attr(
    not(herald_scaffold_python_tests),
    ignore = "needs HERALD_TEST_SCAFFOLD_PYTHON"
)]
fn the_python_receiver_passes_its_own_tests() {
    let python = prepared(
        "HERALD_TEST_SCAFFOLD_PYTHON",
        option_env!("HERALD_TEST_SCAFFOLD_PYTHON"),
    );
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("python-receiver");
    generate("python", EVENTS, &project);
    let output = run_tests(
        Command::new(python)
            .args(["-m", "unittest", "-v"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&project),
    );
    assert!(output.contains("Ran 8 tests"), "{output}");
    assert!(output.contains("\nOK"), "{output}");
    for case in [
        "test_a_tampered_body_is_refused",
        "test_another_secret_is_refused",
        "test_a_repeated_webhook_id_is_not_handled_twice",
        "test_each_event_reaches_its_handler",
        "test_a_failed_flow_run_takes_the_failed_run_branch",
    ] {
        assert!(
            output.contains(&format!("{case} ")),
            "{case} did not run:\n{output}"
        );
    }
}

#[test]
#[cfg_attr(
    not(herald_scaffold_rust_tests),
    ignore = "needs HERALD_TEST_SCAFFOLD_CARGO_TARGET"
)]
fn the_rust_receiver_passes_its_own_tests() {
    let target = prepared(
        "HERALD_TEST_SCAFFOLD_CARGO_TARGET",
        option_env!("HERALD_TEST_SCAFFOLD_CARGO_TARGET"),
    );
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("rust-receiver");
    generate("rust", EVENTS, &project);
    // Herald's own lock file pins the generated project's crates (axum, tokio,
    // standardwebhooks are all in it), so the build runs offline from the local registry
    // cache, and the cached target directory is reused from one run to the next.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .unwrap();
    let output = run_tests(
        Command::new(env!("CARGO"))
            .args(["test", "--offline", "--quiet"])
            .env("CARGO_TARGET_DIR", target)
            // A throwaway build: no debug info or incremental state to write and keep.
            .env("CARGO_PROFILE_DEV_DEBUG", "false")
            .env("CARGO_INCREMENTAL", "0")
            .env_remove("RUSTFLAGS")
            .current_dir(&project),
    );
    assert!(
        output.contains("test result: ok. 8 passed; 0 failed"),
        "{output}"
    );
    assert!(
        !output.contains("warning"),
        "the project builds without warnings:\n{output}"
    );
}

/// A child process killed when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[cfg_attr(
    not(herald_scaffold_python_tests),
    ignore = "needs HERALD_TEST_SCAFFOLD_PYTHON"
)]
async fn herald_delivers_to_a_running_generated_python_receiver_and_its_handlers_run() {
    let python = prepared(
        "HERALD_TEST_SCAFFOLD_PYTHON",
        option_env!("HERALD_TEST_SCAFFOLD_PYTHON"),
    );
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("receiver");
    generate("python", "user.created,flow.run.finished", &project);
    let mut command = Command::new(python);
    command
        .arg("receiver.py")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    delivers_end_to_end(&project, command).await;
}

#[tokio::test]
#[cfg_attr(
    not(herald_scaffold_node_tests),
    ignore = "needs HERALD_TEST_SCAFFOLD_NODE_MODULES"
)]
async fn herald_delivers_to_a_running_generated_node_receiver_and_its_handlers_run() {
    let modules = prepared(
        "HERALD_TEST_SCAFFOLD_NODE_MODULES",
        option_env!("HERALD_TEST_SCAFFOLD_NODE_MODULES"),
    );
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("receiver");
    generate("node", "user.created,flow.run.finished", &project);
    std::os::unix::fs::symlink(&modules, project.join("node_modules")).unwrap();
    let mut command = Command::new("node");
    command.arg("receiver.js");
    delivers_end_to_end(&project, command).await;
}

/// Starts the generated receiver in `project` with `command`, points a real Herald at it, and
/// checks from the delivery records that the receiver verified each delivery, ran the right
/// handler (the failed-run branch included), answered a redelivery as a duplicate, and
/// refused a stream whose secret it does not hold.
async fn delivers_end_to_end(project: &Path, mut command: Command) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut child = command
        .env("HERALD_WEBHOOK_SECRET", secret)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .current_dir(project)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the receiver starts");
    let stdout = child.stdout.take().unwrap();
    let receiver = Running(child);
    let url = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the receiver did not say where it listens: {line:?}"))
            .to_owned()
    })
    .await
    .unwrap();

    let app = spawn_app().await;
    let stream = app
        .create_stream(
            &format!("{url}/herald"),
            &["user.created", "flow.run.finished"],
            json!({
                "destination": {"type": "webhook", "configuration": {
                    "webhook_endpoint": format!("{url}/herald"),
                    "signing_secret": secret,
                }},
                "retry_policy": {"max_attempts": 1},
            }),
        )
        .await;
    let sid = stream["id"].as_str().unwrap();

    let sample = herald::catalog::Catalog::builtin()
        .get("flow.run.finished")
        .unwrap()
        .sample_data
        .clone();
    let mut failed = sample.clone();
    failed["flowRun"]["status"] = json!("FAILED");
    let run_id = sample["flowRun"]["id"].as_str().unwrap();
    app.publish(json!({"id": "evt-user", "type": "user.created", "source": "tests"}))
        .await;
    app.publish(
        json!({"id": "evt-run", "type": "flow.run.finished", "source": "tests", "data": failed}),
    )
    .await;

    let body = |delivery: &Value, n: usize| -> Value {
        let attempt = &delivery["attempts"][n];
        assert_eq!(attempt["response_status"], 200, "{delivery}");
        serde_json::from_str(attempt["response_body"].as_str().unwrap()).unwrap()
    };
    let user = app
        .wait_for_delivery(sid, "evt-user", |d| d["status"] != "pending")
        .await;
    assert_eq!(user["status"], "succeeded", "{user}");
    assert_eq!(
        body(&user, 0),
        json!({"status": "handled", "type": "user.created", "result": "user.created evt-user"}),
        "the user.created handler ran on the delivered event"
    );
    let run = app
        .wait_for_delivery(sid, "evt-run", |d| d["status"] != "pending")
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        body(&run, 0)["result"],
        format!("failed run {run_id} (FAILED)"),
        "the failed-run branch ran"
    );

    // A redelivery carries the same `webhook-id`: answered 2xx, the handler not run again.
    let (status, queued) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver/evt-user"),
            &json!(null),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{queued}");
    let user = app.wait_for_attempts(sid, "evt-user", 2).await;
    assert_eq!(user["status"], "succeeded", "{user}");
    assert_eq!(body(&user, 1)["status"], "duplicate", "{user}");

    // A stream whose secret the receiver does not hold is refused: 401, never handled.
    let stranger = app
        .create_stream(
            &format!("{url}/herald"),
            &["user.deleted"],
            json!({"retry_policy": {"max_attempts": 1}}),
        )
        .await;
    let stranger = stranger["id"].as_str().unwrap();
    app.publish(json!({"id": "evt-gone", "type": "user.deleted", "source": "tests"}))
        .await;
    let refused = app
        .wait_for_delivery(stranger, "evt-gone", |d| d["status"] != "pending")
        .await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["attempts"][0]["response_status"], 401, "{refused}");
    drop(receiver);
}
