//! The console in a real headless browser: Debian's Chromium driven by npm `playwright-core`
//! (`tests/browser/story.mjs`), against the real server and a real receiver. The script does
//! what a person does in the browser; this side does what the rest of the world does (the
//! platform publishing events, the receiver going down and coming back),
//! each when the script asks, over the script's stdin and stdout, one JSON line per step.
//!
//! It needs `HERALD_TEST_BROWSER_NODE_MODULES` (a `node_modules` holding `playwright-core`)
//! and Chromium at `HERALD_TEST_CHROMIUM` (default `/usr/bin/chromium`); `.ci/run` installs
//! both. Screenshots of each page at 1280 and 390 px go to `HERALD_TEST_SCREENSHOTS` (by
//! default `console-screenshots` in the build's target directory).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::console::tenant_with_token;
use crate::helpers::*;

/// The whole story, every step included; a bound on a hung browser, not a timing claim.
const STORY_PATIENCE: Duration = Duration::from_secs(240);

fn screenshots_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HERALD_TEST_SCREENSHOTS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // The test binary lives in `<target>/debug/deps`.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("the test binary is inside a target directory")
        .join("console-screenshots")
}

/// Answers one request of the script.
async fn serve_step(app: &TestApp, receiver: &Receiver, step: &Value) -> Value {
    match step["do"].as_str().unwrap_or_default() {
        "publish" => {
            let accepted = app.publish(step["event"].clone()).await;
            json!({ "ok": true, "event": accepted })
        }
        "receiver_fails" => {
            receiver.always(Reply::status(503).with_body("down for maintenance"));
            json!({ "ok": true })
        }
        "receiver_recovers" => {
            receiver.always(Reply::status(200).with_body("ok"));
            json!({ "ok": true })
        }
        "received" => json!({ "ok": true, "count": receiver.received().len() }),
        other => panic!("the story asked for an unknown step `{other}`: {step}"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(herald_browser_tests),
    ignore = "needs HERALD_TEST_BROWSER_NODE_MODULES"
)]
async fn the_console_story_in_a_real_browser() {
    let node_modules = std::env::var("HERALD_TEST_BROWSER_NODE_MODULES")
        .expect("HERALD_TEST_BROWSER_NODE_MODULES names a node_modules with playwright-core");
    let chromium =
        std::env::var("HERALD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let shots = screenshots_dir();
    // Only this run's pictures, so that the check below sees what this run took.
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200).with_body("ok"));
    let (_, tenant_token) = tenant_with_token(
        &app,
        "ten_acme",
        &[
            "read:event_streams",
            "create:event_streams",
            "update:event_streams",
            "read:event_deliveries",
        ],
    )
    .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/story.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .env("HERALD_URL", app.url(""))
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HERALD_TENANT_TOKEN", &tenant_token)
        .env("RECEIVER_URL", &receiver.url)
        .env("NODE_PATH", &node_modules)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut to_script = child.stdin.take().unwrap();
    let mut from_script = BufReader::new(child.stdout.take().unwrap()).lines();

    let story = async {
        let mut log = Vec::new();
        while let Some(line) = from_script.next_line().await.unwrap() {
            let Some(step) = line
                .strip_prefix("STEP ")
                .map(|s| serde_json::from_str::<Value>(s).unwrap())
            else {
                println!("{line}");
                log.push(line);
                continue;
            };
            let answer = serve_step(&app, &receiver, &step).await;
            to_script
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
        }
        let status = child.wait().await.unwrap();
        (status, log)
    };
    let (status, log) = tokio::time::timeout(STORY_PATIENCE, story)
        .await
        .expect("the browser story finished");
    assert!(status.success(), "the story failed: {}", log.join("\n"));
    assert!(
        log.iter().any(|l| l == "story: done"),
        "the story ran to its end: {}",
        log.join("\n")
    );
    // Every page was photographed at both widths.
    for page in [
        "01-sign-in",
        "02-streams-empty",
        "03-new-destination",
        "04-test-webhook",
        "05-stream",
        "06-deliveries",
        "07-delivery-failed",
        "08-delivery-redelivered",
        "09-streams",
        "10-stream-charts",
        "11-event-log",
        "12-event",
        "13-event-types",
        "14-tenants",
        "15-token-created",
        "16-tokens",
    ] {
        for width in ["1280", "390"] {
            let file = shots.join(format!("{page}-{width}.png"));
            let size = std::fs::metadata(&file)
                .unwrap_or_else(|_| panic!("no screenshot {}", file.display()))
                .len();
            assert!(size > 1_000, "{} is {size} bytes", file.display());
        }
    }
    println!("screenshots: {}", shots.display());
}
