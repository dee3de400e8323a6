//! Herald's log lines as an operator's collector receives them: JSON, one object a line,
//! with the request's span, or plain text without colour codes when not on a terminal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// Starts `herald serve` with `env`, stderr piped; returns its base URL and its stderr lines.
fn serve(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATA_DIR", dir)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        // Request spans are at debug level.
        .env("RUST_LOG", "info,herald=debug")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the herald binary starts");
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = stdout.next().expect("herald printed its address").unwrap();
        if let Some(url) = line.strip_prefix("herald listening on ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in stdout {});
    (child, base, lines)
}

/// Collects lines until one satisfies `found`.
fn wait_for(lines: &mpsc::Receiver<String>, found: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("never logged what was expected; got {seen:#?}"));
        let done = found(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

async fn create_tenant(base: &str, request_id: &str) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", request_id)
        .json(&json!({"id": "ten_logged", "name": "logged"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_and_carry_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, lines) = serve(dir.path(), &[("HERALD_LOG_FORMAT", "json")]);
    create_tenant(&base, "req_logged_1").await;
    let seen = wait_for(&lines, |line| line.contains("tenant created"));
    child.kill().unwrap();
    let objects: Vec<Value> = seen
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let started = objects
        .iter()
        .find(|o| o["message"] == "herald is listening")
        .expect("the start is logged");
    assert_eq!(started["level"], "INFO");
    assert!(started["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let created = objects.last().unwrap();
    assert_eq!(created["tenant"], "ten_logged");
    assert_eq!(created["span"]["name"], "request");
    assert_eq!(created["span"]["request_id"], "req_logged_1");
    assert_eq!(created["span"]["method"], "POST");
    assert_eq!(created["span"]["path"], "/v1/tenants");
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, lines) = serve(dir.path(), &[]);
    create_tenant(&base, "req_logged_2").await;
    let seen = wait_for(&lines, |line| line.contains("tenant created"));
    child.kill().unwrap();
    let created = seen.last().unwrap();
    assert!(created.contains("req_logged_2"), "{created}");
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
    }
}
