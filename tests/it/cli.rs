//! The `herald` client commands: the real binary run against a real server on port 0 and a
//! real receiver, asserting on what it prints and how it exits.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;

/// Runs `herald args...` against `app` as the platform admin, feeding `stdin` if given. The
/// process runs on a blocking thread so the in-process server keeps serving.
async fn herald(app: &TestApp, args: &[&str], stdin: Option<String>) -> Run {
    let server = app.url("");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .env("HERALD_SERVER", server)
            .env("HERALD_TOKEN", ADMIN_TOKEN)
            .env_remove("HERALD_TENANT")
            // No saved profile of whoever runs the tests fills in a tenant.
            .env(
                "HERALD_CONFIG",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-profile.toml"),
            )
            .env_remove("HERALD_PROFILE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the herald binary starts");
        // Fed from a thread of its own: a child that writes a lot before it reads everything
        // must not wait on a test that is still writing.
        let feeder = stdin.map(|input| {
            let mut pipe = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            })
        });
        let output = child.wait_with_output().unwrap();
        if let Some(feeder) = feeder {
            feeder.join().unwrap();
        }
        Run {
            code: output.status.code().expect("herald exited, not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

/// The seed's command, with `herald streams` in place of `auth0 events`; answers the id.
async fn create_seed_stream(app: &TestApp, receiver: &Receiver) -> String {
    let configuration = json!({
        "webhook_endpoint": receiver.url,
        "webhook_authorization": {"method": "bearer", "token": "receiver-token"},
    })
    .to_string();
    let run = herald(
        app,
        &[
            "streams",
            "create",
            "-n",
            "my-event1",
            "-t",
            "webhook",
            "-s",
            "user.created",
            "-c",
            &configuration,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.field("id").to_owned();
    assert!(id.starts_with("est_"), "{run:?}");
    assert_eq!(run.field("name"), "my-event1");
    id
}

#[tokio::test]
async fn cli_creates_a_stream_with_the_seeds_command_then_shows_it() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let id = create_seed_stream(&app, &receiver).await;

    let run = herald(&app, &["streams", "show", &id], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("id"), id);
    assert_eq!(run.field("name"), "my-event1");
    assert_eq!(run.field("status"), "enabled");
    assert_eq!(run.field("type"), "webhook");
    assert_eq!(run.field("destination"), receiver.url);
    assert_eq!(run.field("subscriptions"), "user.created");
    // The credential went to the server, which never shows it again.
    assert!(!run.stdout.contains("receiver-token"), "{run:?}");
    let (_, stream) = app.get(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(
        stream["destination"]["configuration"]["webhook_authorization"]["method"],
        "bearer"
    );

    // The alias, and --json: the API's own answer.
    let run = herald(&app, &["event-streams", "show", &id, "--json"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), stream);
}

#[tokio::test]
async fn cli_lists_streams_as_a_table_as_json_and_as_ids() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let first = create_seed_stream(&app, &receiver).await;
    let second = app
        .create_stream(
            &receiver.url,
            &["user.*", "organization.created"],
            json!({}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let table = herald(&app, &["streams", "list"], None).await;
    assert_eq!(table.code, 0, "{table:?}");
    let lines = table.lines();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SUBSCRIPTIONS"),
        "{table:?}"
    );
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(table.stdout.contains("my-event1"), "{table:?}");
    assert!(
        table.stdout.contains("user.*,organization.created"),
        "{table:?}"
    );

    let json = herald(&app, &["streams", "list", "--json"], None).await;
    assert_eq!(json.code, 0, "{json:?}");
    let (_, listed) = app.get("/v1/event-streams").await;
    assert_eq!(json.json(), listed);

    let quiet = herald(&app, &["streams", "list", "-q"], None).await;
    assert_eq!(quiet.code, 0, "{quiet:?}");
    let mut ids = quiet.lines();
    ids.sort_unstable();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn cli_updates_pauses_enables_and_deletes_a_stream() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let id = create_seed_stream(&app, &receiver).await;

    let run = herald(
        &app,
        &[
            "streams",
            "update",
            &id,
            "-n",
            "renamed",
            "-s",
            "user.created,user.deleted",
            "--retry-policy",
            r#"{"max_attempts": 4}"#,
            "--payload-format",
            "audit",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("name"), "renamed");
    assert_eq!(run.field("subscriptions"), "user.created,user.deleted");
    assert_eq!(run.field("payload format"), "audit");
    let (_, stream) = app.get(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(stream["retry_policy"]["max_attempts"], 4);

    let run = herald(&app, &["streams", "pause", &id], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("status"), "paused");
    let run = herald(&app, &["streams", "enable", &id, "--backlog", "skip"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("status"), "enabled");
    let run = herald(&app, &["streams", "disable", &id, "-q"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), id);
    let (_, stream) = app.get(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(stream["status"], "disabled");

    let run = herald(&app, &["streams", "delete", &id], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("deleted stream {id}")),
        "{run:?}"
    );
    let run = herald(&app, &["streams", "show", &id], None).await;
    assert_eq!(run.code, 3, "{run:?}");
}

#[tokio::test]
async fn cli_sends_a_test_event_and_prints_what_the_receiver_answered() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200).with_body("thanks from the receiver"));
    let id = create_seed_stream(&app, &receiver).await;

    let run = herald(
        &app,
        &[
            "streams",
            "test",
            &id,
            "--event-type",
            "user.created",
            "--data",
            r#"{"user_id": "u_test"}"#,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("delivered"), "yes");
    assert_eq!(run.field("status"), "200");
    assert!(run.field("round trip").ends_with(" ms"), "{run:?}");
    assert_eq!(run.field("response"), "thanks from the receiver");
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].json()["data"], json!({"user_id": "u_test"}));
}

#[tokio::test]
async fn cli_publishes_an_event_and_lists_its_delivery() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let id = create_seed_stream(&app, &receiver).await;

    let run = herald(
        &app,
        &[
            "publish",
            "--type",
            "user.created",
            "--id",
            "evt-cli-1",
            "--data",
            r#"{"user_id": "u_1"}"#,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.lines()[0].starts_with("ID"), "{run:?}");
    assert!(run.lines()[1].starts_with("evt-cli-1 "), "{run:?}");
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].json()["data"], json!({"user_id": "u_1"}));
    assert_eq!(
        received[0].header("authorization"),
        Some("Bearer receiver-token")
    );
    app.wait_for_delivery(&id, "evt-cli-1", |d| d["status"] == "succeeded")
        .await;

    let run = herald(&app, &["deliveries", "list", &id], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let row = run.lines()[1];
    assert!(
        row.starts_with("evt-cli-1 ") && row.contains("succeeded") && row.contains("200"),
        "{run:?}"
    );
    let run = herald(
        &app,
        &["deliveries", "list", &id, "--status", "succeeded", "--json"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let listed = run.json();
    assert_eq!(listed["deliveries"][0]["event_id"], "evt-cli-1");
    assert_eq!(listed["deliveries"][0]["status"], "succeeded");
    let run = herald(
        &app,
        &["deliveries", "list", &id, "--status", "failed"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.lines().len(), 1, "only the header: {run:?}");

    let run = herald(&app, &["deliveries", "show", &id, "evt-cli-1"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("status"), "succeeded");
    assert!(run.stdout.contains("RESPONSE / ERROR"), "{run:?}");

    // Again, once, and counted in bulk without queueing.
    let run = herald(&app, &["redeliver", &id, "evt-cli-1"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("queued 1 "), "{run:?}");
    receiver.wait_for(2).await;
    let run = herald(
        &app,
        &[
            "redeliver-many",
            &id,
            "--status",
            "succeeded,failed",
            "--dry-run",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["dry_run"], true);
    assert_eq!(run.json()["queued"], 0);
}

#[tokio::test]
async fn cli_publishes_ndjson_from_stdin_in_batches_and_pages_through_deliveries() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let id = create_seed_stream(&app, &receiver).await;
    // Paused: the deliveries wait, so every one is listed whatever the dispatcher does.
    app.patch(
        &format!("/v1/event-streams/{id}"),
        &json!({"status": "paused"}),
    )
    .await;

    // 150 events: two batches of the CLI's, three pages of the API's (50 a page).
    let input: String = (0..150)
        .map(|i| {
            format!(
                "{}\n",
                json!({"type": "user.created", "id": format!("bulk-{i}")})
            )
        })
        .collect();
    let run = herald(&app, &["publish", "-q"], Some(input)).await;
    assert_eq!(run.code, 0, "{run:?}");
    let published = run.lines();
    assert_eq!(published.len(), 150, "{run:?}");
    assert_eq!(published[0], "bulk-0");
    assert_eq!(published[149], "bulk-149");

    let run = herald(&app, &["deliveries", "list", &id, "-q"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut listed = run.lines();
    listed.sort_unstable();
    listed.dedup();
    assert_eq!(listed.len(), 150, "{run:?}");
    let run = herald(
        &app,
        &["deliveries", "list", &id, "-q", "--limit", "70"],
        None,
    )
    .await;
    assert_eq!(run.lines().len(), 70, "{run:?}");

    // A line that is not JSON: exit 2, naming the line.
    let run = herald(
        &app,
        &["publish"],
        Some("{\"type\": \"user.created\"}\nnot json\n".into()),
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("stdin line 2"), "{run:?}");
}

#[tokio::test]
async fn cli_errors_print_the_apis_code_and_exit_with_a_stable_code() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    create_seed_stream(&app, &receiver).await;

    // A bad token: the API's error, exit 1.
    let run = herald(
        &app,
        &["streams", "list", "--token", "hrd_not_a_token"],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("herald: unauthorized: "), "{run:?}");
    assert!(
        run.stderr.contains("--token"),
        "the hint names the flag: {run:?}"
    );

    // A missing stream: exit 3.
    let run = herald(&app, &["streams", "show", "est_missing"], None).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("not_found") && run.stderr.contains("est_missing"),
        "{run:?}"
    );
    let run = herald(&app, &["deliveries", "list", "est_missing"], None).await;
    assert_eq!(run.code, 3, "{run:?}");

    // Invalid JSON in -c: a usage error, exit 2, before any request.
    let run = herald(
        &app,
        &[
            "streams",
            "create",
            "-n",
            "x",
            "-s",
            "user.created",
            "-c",
            "{not json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("-c expects the destination's configuration as a JSON object")
            && run.stderr.contains("not valid JSON"),
        "{run:?}"
    );
    let (_, streams) = app.get("/v1/event-streams").await;
    assert_eq!(streams.as_array().unwrap().len(), 1);

    // Bad input the API refuses: exit 1 with its code.
    let run = herald(&app, &["publish", "--type", "no.such.type"], None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("herald: "), "{run:?}");

    // Nothing listening: exit 1, naming the server.
    let run = herald(
        &app,
        &["streams", "list", "--server", "http://127.0.0.1:9"],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("could not reach http://127.0.0.1:9"),
        "{run:?}"
    );
}

#[tokio::test]
async fn cli_acts_on_the_tenant_named_by_tenant() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/v1/tenants", &json!({"id": "ten_acme", "name": "Acme"}))
        .await;
    assert_eq!(status.as_u16(), 201, "{body}");
    let receiver = Receiver::start().await;
    let configuration = json!({"webhook_endpoint": receiver.url}).to_string();
    let run = herald(
        &app,
        &[
            "streams",
            "create",
            "--tenant",
            "ten_acme",
            "-n",
            "acme",
            "-s",
            "user.created",
            "-c",
            &configuration,
            "-q",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.stdout.trim().to_owned();
    let run = herald(&app, &["streams", "list", "-q"], None).await;
    assert!(
        !run.stdout.contains(&id),
        "not in the default tenant: {run:?}"
    );
    let run = herald(
        &app,
        &["streams", "list", "-q", "--tenant", "ten_acme"],
        None,
    )
    .await;
    assert_eq!(run.stdout.trim(), id);
}

#[tokio::test]
async fn cli_lists_and_shows_events_of_the_audit_log() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = create_seed_stream(&app, &receiver).await;
    app.publish(json!({"type": "user.created", "id": "log-1", "subject": "u_1", "data": {"user_id": "u_1"}}))
        .await;
    app.publish(json!({"type": "user.deleted", "id": "log-2"}))
        .await;

    let run = herald(&app, &["events", "list", "-q"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut ids = run.lines();
    ids.sort_unstable();
    assert_eq!(ids, ["log-1", "log-2"]);
    let run = herald(
        &app,
        &["events", "list", "--type", "user.created", "--json"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let (_, listed) = app.get("/v1/events?type=user.created").await;
    assert_eq!(run.json(), listed);
    let run = herald(&app, &["events", "list", "--subject", "u_1"], None).await;
    assert_eq!(run.lines().len(), 2, "{run:?}");
    assert!(run.lines()[1].starts_with("log-1 "), "{run:?}");

    let run = herald(&app, &["events", "show", "log-1"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("type"), "user.created");
    assert_eq!(run.field("subject"), "u_1");
    assert_eq!(run.field("data"), r#"{"user_id":"u_1"}"#);
    assert!(
        run.lines().iter().any(|l| l.starts_with(&stream)),
        "the stream it went to: {run:?}"
    );
    let run = herald(&app, &["events", "show", "log-missing"], None).await;
    assert_eq!(run.code, 3, "{run:?}");
}

#[tokio::test]
async fn cli_lists_event_types_tenants_and_tokens() {
    let app = spawn_app().await;

    let run = herald(&app, &["event-types", "list"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.lines()[0].starts_with("NAME"), "{run:?}");
    assert!(
        run.lines()
            .iter()
            .any(|l| l.starts_with("user.created ") && l.contains("built-in")),
        "{run:?}"
    );
    let run = herald(
        &app,
        &["event-types", "list", "--category", "flow", "-q"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let (_, flow) = app.get("/v1/event-types?category=flow").await;
    let names: Vec<&str> = flow["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.is_empty());
    assert_eq!(run.lines(), names);

    let run = herald(&app, &["tenants", "list"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.lines().iter().any(|l| l.starts_with("ten_default ")),
        "{run:?}"
    );

    app.tenant_token("ten_default", &["read:events"]).await;
    let run = herald(&app, &["tokens", "list", "--json"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let (_, tokens) = app.get("/v1/tokens").await;
    assert_eq!(run.json(), tokens);
    let run = herald(&app, &["tokens", "list"], None).await;
    assert!(run.stdout.contains("read:events"), "{run:?}");
    let run = herald(&app, &["tokens", "list", "--platform"], None).await;
    assert!(run.stdout.contains("(platform)"), "{run:?}");

    // A tenant token may not list tenants: the API's 403, exit 1.
    let token = app.tenant_token("ten_default", &["read:events"]).await;
    let run = herald(&app, &["tenants", "list", "--token", &token], None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("herald: insufficient_scope: this token lacks the `manage:tenants` scope"),
        "{run:?}"
    );
}

#[tokio::test]
async fn cli_prints_completion_scripts_for_each_shell() {
    let app = spawn_app().await;
    for shell in ["bash", "zsh", "fish"] {
        let run = herald(&app, &["completions", shell], None).await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.contains("redeliver-many") && run.stdout.contains("event-streams"),
            "{shell}: {}",
            &run.stdout[..200.min(run.stdout.len())]
        );
    }
    let run = herald(&app, &["completions", "powershell-ish"], None).await;
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn cli_redelivers_failed_deliveries_and_waits_until_the_backlog_drains() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(500));
    let id = app
        .create_stream(
            &receiver.url,
            &["user.created"],
            json!({"retry_policy": {"max_attempts": 1}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        app.publish(json!({"type": "user.created", "id": format!("fail-{i}")}))
            .await;
    }
    for i in 0..3 {
        app.wait_for_delivery(&id, &format!("fail-{i}"), |d| d["status"] == "failed")
            .await;
    }

    let run = herald(
        &app,
        &["redeliver-many", &id, "--status", "failed", "--dry-run"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("3 delivery(ies) match; nothing was queued"),
        "{run:?}"
    );
    // --wait makes no sense with a dry run: a usage error.
    let run = herald(&app, &["redeliver-many", &id, "--dry-run", "--wait"], None).await;
    assert_eq!(run.code, 2, "{run:?}");

    receiver.always(Reply::status(200));
    let run = herald(
        &app,
        &["redeliver-many", &id, "--status", "failed", "--wait"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("3 delivery(ies) matched, 3 queued again"),
        "{run:?}"
    );
    assert!(run.stderr.contains("0 pending"), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("the backlog of {id} has drained")),
        "{run:?}"
    );
    let run = herald(
        &app,
        &["deliveries", "list", &id, "--status", "succeeded", "-q"],
        None,
    )
    .await;
    assert_eq!(run.lines().len(), 3, "{run:?}");
}

#[tokio::test]
async fn cli_creates_and_deletes_event_types_tenants_and_tokens() {
    let app = spawn_app().await;

    let run = herald(
        &app,
        &[
            "event-types",
            "create",
            "invoice.paid",
            "--description",
            "An invoice was paid",
            "--schema",
            r#"{"type": "object", "required": ["invoice_id"]}"#,
            "--sample-data",
            r#"{"invoice_id": "inv_1"}"#,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("name"), "invoice.paid");
    assert_eq!(run.field("category"), "invoice");
    // The schema now holds for publishing.
    let run = herald(
        &app,
        &["publish", "--type", "invoice.paid", "--data", "{}"],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("invoice_id"), "{run:?}");
    let run = herald(&app, &["event-types", "delete", "invoice.paid"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("deleted event type invoice.paid"),
        "{run:?}"
    );
    let run = herald(&app, &["event-types", "delete", "invoice.paid"], None).await;
    assert_eq!(run.code, 3, "{run:?}");

    let run = herald(
        &app,
        &["tenants", "create", "-n", "Acme", "--id", "ten_acme", "-q"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), "ten_acme");

    let run = herald(
        &app,
        &[
            "tokens",
            "create",
            "-n",
            "ci",
            "--scopes",
            "publish:events,read:events",
            "--tenant",
            "ten_acme",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("tenant"), "ten_acme");
    assert_eq!(run.field("scopes"), "publish:events,read:events");
    assert!(run.stderr.contains("shown only this once"), "{run:?}");
    let token = run.field("token").to_owned();
    let token_id = run.field("id").to_owned();
    // The new token works, for its tenant only.
    let (status, _) = app
        .request_as(&token, reqwest::Method::GET, "/v1/events", None)
        .await;
    assert_eq!(status.as_u16(), 200);
    let run = herald(
        &app,
        &["tokens", "delete", &token_id, "--tenant", "ten_acme"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let (status, _) = app
        .request_as(&token, reqwest::Method::GET, "/v1/events", None)
        .await;
    assert_eq!(status.as_u16(), 401);

    // Deleting a tenant deletes everything it holds: only with --yes.
    let run = herald(&app, &["tenants", "delete", "ten_acme"], None).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--yes"), "{run:?}");
    let run = herald(&app, &["tenants", "delete", "ten_acme", "--yes"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = herald(&app, &["tenants", "list", "-q"], None).await;
    assert_eq!(run.stdout.trim(), "ten_default");
}

#[tokio::test]
async fn cli_erases_events_by_id_and_by_subject() {
    let app = spawn_app().await;
    for (id, subject) in [("e-1", "u_1"), ("e-2", "u_2"), ("e-3", "u_2")] {
        app.publish(json!({"type": "user.created", "id": id, "subject": subject, "data": {"user_id": subject}}))
            .await;
    }
    let run = herald(&app, &["events", "erase"], None).await;
    assert_eq!(run.code, 2, "one of --event-ids or --subject: {run:?}");

    let run = herald(&app, &["events", "erase", "--event-ids", "e-1"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("erased 1 event(s)"), "{run:?}");
    let run = herald(
        &app,
        &["events", "erase", "--subject", "u_2", "--json"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), json!({"erased": 2}));
    let run = herald(&app, &["events", "show", "e-2"], None).await;
    assert_eq!(run.field("data"), "-");
    assert!(run.field("erased").ends_with('Z'), "{run:?}");
}

#[tokio::test]
async fn cli_shows_and_rotates_a_streams_signing_secret() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let id = create_seed_stream(&app, &receiver).await;

    let run = herald(&app, &["streams", "secret", &id, "-q"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let first = run.stdout.trim().to_owned();
    assert!(first.starts_with("whsec_"), "{run:?}");
    let (_, secret) = app.get(&format!("/v1/event-streams/{id}/secret")).await;
    assert_eq!(secret["secret"], first.as_str());

    let run = herald(
        &app,
        &["streams", "rotate-secret", &id, "--grace-period", "60"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let second = run.field("secret").to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{run:?}");
    let run = herald(&app, &["streams", "secret", &id], None).await;
    assert_eq!(run.field("secret"), second);
    assert!(run.field("previous until").ends_with('Z'), "{run:?}");

    // Signed with the secret the CLI printed.
    app.publish(json!({"type": "user.created", "id": "signed-1"}))
        .await;
    let received = receiver.wait_for(1).await;
    let verifier = standardwebhooks::Webhook::new(&second).unwrap();
    verifier
        .verify(&received[0].body, &received[0].headers)
        .expect("the signature verifies with the printed secret");
}

#[tokio::test]
async fn cli_help_gives_an_example_for_every_command() {
    let app = spawn_app().await;
    let commands: &[&[&str]] = &[
        &["streams", "create"],
        &["streams", "list"],
        &["streams", "show"],
        &["streams", "update"],
        &["streams", "delete"],
        &["streams", "enable"],
        &["streams", "disable"],
        &["streams", "pause"],
        &["streams", "secret"],
        &["streams", "rotate-secret"],
        &["streams", "test"],
        &["publish"],
        &["deliveries", "list"],
        &["deliveries", "show"],
        &["redeliver"],
        &["redeliver-many"],
        &["stats"],
        &["events", "list"],
        &["events", "show"],
        &["events", "erase"],
        &["event-types", "list"],
        &["event-types", "create"],
        &["event-types", "delete"],
        &["tenants", "list"],
        &["tenants", "create"],
        &["tenants", "delete"],
        &["tokens", "list"],
        &["tokens", "create"],
        &["tokens", "delete"],
        &["completions"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = herald(&app, &args, None).await;
        assert_eq!(run.code, 0, "{command:?}: {run:?}");
        assert!(
            run.stdout.contains("Example")
                && run
                    .stdout
                    .contains(&format!("herald {}", command.join(" "))),
            "{command:?} --help has no example: {run:?}"
        );
        if command[0] != "completions" {
            assert!(run.stdout.contains("--server"), "{command:?}: {run:?}");
        }
    }
}

#[tokio::test]
async fn cli_shows_a_streams_stats_in_total_per_type_and_per_hour() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(400)]);
    let id = create_seed_stream(&app, &receiver).await;
    app.publish(json!({"type": "user.created", "id": "st-1"}))
        .await;
    app.wait_for_delivery(&id, "st-1", |d| d["status"] == "failed")
        .await;
    for i in 2..5 {
        let event = format!("st-{i}");
        app.publish(json!({"type": "user.created", "id": event}))
            .await;
        app.wait_for_delivery(&id, &event, |d| d["status"] == "succeeded")
            .await;
    }

    let run = herald(&app, &["stats", &id], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.field("stream"), id);
    assert_eq!(run.field("pending"), "0");
    let total: Vec<&str> = run
        .lines()
        .into_iter()
        .find(|l| l.starts_with("total "))
        .unwrap_or_else(|| panic!("no total row: {run:?}"))
        .split_whitespace()
        .collect();
    // total, succeeded, failed, attempts, failed attempts, success "75.0 %", ...
    assert_eq!(
        &total[..7],
        ["total", "3", "1", "4", "1", "75.0", "%"],
        "{run:?}"
    );
    assert!(
        run.lines().iter().any(|l| l.starts_with("user.created ")),
        "{run:?}"
    );
    assert!(run.stdout.contains("HOUR"), "{run:?}");

    let run = herald(&app, &["stats", &id, "--json"], None).await;
    let (_, stats) = app.get(&format!("/v1/event-streams/{id}/stats")).await;
    assert_eq!(run.json()["total"], stats["total"]);
    let run = herald(&app, &["stats", "est_missing"], None).await;
    assert_eq!(run.code, 3, "{run:?}");
}

#[tokio::test]
async fn cli_stats_draws_the_hourly_chart_on_request_and_never_into_json() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(400)]);
    let id = create_seed_stream(&app, &receiver).await;
    app.publish(json!({"type": "user.created", "id": "ch-1"}))
        .await;
    app.wait_for_delivery(&id, "ch-1", |d| d["status"] == "failed")
        .await;
    // Two hours later: an hour without deliveries between the two drawn.
    app.clock.advance(std::time::Duration::from_secs(2 * 3600));
    for i in 2..4 {
        let event = format!("ch-{i}");
        app.publish(json!({"type": "user.created", "id": event}))
            .await;
        app.wait_for_delivery(&id, &event, |d| d["status"] == "succeeded")
            .await;
    }

    // Not a terminal: the tables alone.
    let run = herald(&app, &["stats", &id], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("HOUR"), "{run:?}");
    assert!(!run.stdout.contains("success rate:"), "{run:?}");

    let run = herald(&app, &["stats", &id, "--chart"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let chart: Vec<&str> = run
        .lines()
        .into_iter()
        .skip_while(|l| !l.starts_with("HOUR (UTC)"))
        .collect();
    assert_eq!(chart.len(), 4, "a header, two hours, a gap: {run:?}");
    assert!(chart[0].contains("success rate: # per 5 %"), "{run:?}");
    assert!(
        chart[1].contains("[....................]   0.0 %"),
        "{run:?}"
    );
    assert!(
        chart[1].ends_with("ms"),
        "the failed delivery's latency: {run:?}"
    );
    assert!(chart[2].contains("(1 hour without deliveries)"), "{run:?}");
    assert!(
        chart[3].contains("[####################] 100.0 %"),
        "{run:?}"
    );
    assert!(chart[3].contains(" ms"), "{run:?}");

    let run = herald(&app, &["stats", &id, "--chart", "--json"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["total"]["succeeded"], 2);
    let run = herald(&app, &["stats", &id, "--chart", "-q"], None).await;
    assert_eq!(run.lines(), [id.as_str()]);
}

/// Server text that holds terminal control sequences is shown escaped, never obeyed.
#[tokio::test]
async fn cli_tables_show_control_characters_escaped() {
    let app = spawn_app().await;
    let subject = "\u{1b}]0;owned\u{7}\u{1b}[2Ju_9\r";
    app.publish(json!({"type": "user.created", "id": "esc-1", "subject": subject}))
        .await;
    for args in [&["events", "list"][..], &["events", "show", "esc-1"]] {
        let run = herald(&app, args, None).await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(!run.stdout.contains('\u{1b}'), "{args:?}: {run:?}");
        assert!(!run.stdout.contains('\r'), "{args:?}: {run:?}");
        assert!(
            run.stdout.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2Ju_9\\r"),
            "{args:?}: {run:?}"
        );
    }
    // --json is the API's JSON, where the characters are escaped by JSON itself.
    let run = herald(&app, &["events", "show", "esc-1", "--json"], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.stdout.contains('\u{1b}') && run.stdout.contains("\\u001b]0;owned"),
        "{run:?}"
    );
}

/// Stdin batches are cut by size as well as by count, so a server with a small
/// `max_request_bytes` takes them all; a batch refused mid-stream says what was stored.
#[tokio::test]
async fn cli_publish_sizes_batches_by_bytes_and_says_what_a_refusal_left_stored() {
    let app = spawn_app_with(|config| config.max_request_bytes = 4096).await;
    let padding = "x".repeat(250);
    let line = |i: usize, kind: &str| {
        format!(
            "{}\n",
            json!({"type": kind, "id": format!("sized-{i}"), "data": {"padding": padding}})
        )
    };
    // 40 events of about 300 bytes: 12 KB, three times what the server accepts at once.
    let input: String = (0..40).map(|i| line(i, "user.created")).collect();
    let run = herald(
        &app,
        &["publish", "--max-batch-bytes", "4096"],
        Some(input.clone()),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let headers = run.lines().iter().filter(|l| l.starts_with("ID ")).count();
    assert!(
        (3..=4).contains(&headers),
        "batches of at most 4096 bytes: {run:?}"
    );
    let stored = run
        .lines()
        .iter()
        .filter(|l| l.starts_with("sized-"))
        .count();
    assert_eq!(stored, 40, "{run:?}");
    // By count alone, the one batch of 40 would be refused as too large.
    let run = herald(
        &app,
        &["publish", "--max-batch-bytes", "1000000"],
        Some(input),
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("payload_too_large"), "{run:?}");

    // Batches of two; the second holds an invalid event, so it is refused whole.
    let input: String = (100..105)
        .map(|i| {
            line(
                i,
                if i == 102 {
                    "Not A Type"
                } else {
                    "user.created"
                },
            )
        })
        .collect();
    let run = herald(&app, &["publish", "--max-batch-bytes", "700"], Some(input)).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "2 events from stdin were stored before this batch of 2 (stdin lines 3 to 4); \
             none of them was stored"
        ),
        "{run:?}"
    );
    let (status, _) = app.get("/v1/events/sized-101").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, _) = app.get("/v1/events/sized-103").await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
}

/// A time flag that is not RFC 3339 is a usage error, found before any request.
#[tokio::test]
async fn cli_refuses_a_malformed_time_flag_with_exit_2() {
    let app = spawn_app().await;
    for args in [
        &["stats", "est_x", "--date-from", "yesterday"][..],
        &[
            "deliveries",
            "list",
            "est_x",
            "--date-to",
            "2026-13-01T00:00:00Z",
        ],
        &["redeliver-many", "est_x", "--date-from", "2026-11-29"],
        &["events", "list", "--date-from", "29/11/2026"],
    ] {
        let run = herald(&app, args, None).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("RFC 3339"), "{args:?}: {run:?}");
    }
    let run = herald(
        &app,
        &["events", "list", "--date-from", "2026-11-29T00:00:00+01:00"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
}

/// What must not happen quietly: an id that would change the path (`.` would make
/// `redeliver STREAM .` a bulk redelivery), a redirect (it would carry the token and the body
/// elsewhere), and a new token's secret lost behind `-q`.
#[tokio::test]
async fn cli_refuses_path_changing_ids_and_redirects_and_prints_a_new_tokens_secret() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = create_seed_stream(&app, &receiver).await;
    for id in [".", ".."] {
        let run = herald(&app, &["redeliver", &stream, id], None).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("cannot be used as an id"), "{run:?}");
    }

    // A server that redirects everything elsewhere.
    let target = app.url("");
    let redirect = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { axum::response::Redirect::temporary(&format!("{target}v1/event-streams")) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, redirect).await });
    let run = herald(
        &app,
        &["streams", "list", "--server", &format!("http://{addr}")],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("redirect"), "{run:?}");

    let run = herald(
        &app,
        &[
            "tokens",
            "create",
            "--name",
            "ci",
            "--scopes",
            "read:events",
            "--platform",
            "-q",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let secret = run.stdout.trim();
    assert!(secret.starts_with("hrd_"), "{run:?}");
    let listed = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200, "the printed secret works");
}
