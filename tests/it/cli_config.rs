//! `herald login`/`logout` profiles and configuration as code (`plan`, `apply`, `export`):
//! the real binary against a real server on port 0, with a configuration file of the test's
//! own (`HERALD_CONFIG`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::helpers::*;

/// Runs `herald args...` with exactly the `env` given beside `HERALD_CONFIG` (no server,
/// token, tenant or profile inherited), feeding `stdin`.
async fn herald(config: &Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Run {
    let config = config.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(&args)
            .env("HERALD_CONFIG", &config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in [
            "HERALD_SERVER",
            "HERALD_TOKEN",
            "HERALD_TENANT",
            "HERALD_PROFILE",
        ] {
            command.env_remove(name);
        }
        command.envs(env);
        let mut child = command.spawn().expect("the herald binary starts");
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            let _ = pipe.write_all(stdin.as_bytes());
        }
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().expect("herald exited, not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn login_saves_a_private_profile_that_commands_fall_back_on() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald").join("config.toml");
    let server = app.url("");

    // The token comes on stdin, never in the arguments; it is never printed.
    let run = herald(
        &config,
        &[],
        &["login", "--server", &server, "--token", "-"],
        &format!("{ADMIN_TOKEN}\n"),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("saved profile `default`"), "{run:?}");
    assert!(!format!("{run:?}").contains(ADMIN_TOKEN), "{run:?}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&config), 0o600);
        assert_eq!(mode(config.parent().unwrap()), 0o700);
    }
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(
        saved.contains(&server) && saved.contains(ADMIN_TOKEN),
        "{saved}"
    );

    // Commands take what the flags and environment leave out from the profile.
    app.create_stream("https://example.com/a", &["user.created"], json!({}))
        .await;
    let run = herald(&config, &[], &["streams", "list", "-q"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");

    // Flags before the environment before the profile.
    let nowhere = "http://127.0.0.1:9";
    let run = herald(
        &config,
        &[("HERALD_SERVER", nowhere)],
        &["streams", "list"],
        "",
    )
    .await;
    assert_eq!(run.code, 1, "the environment's server wins: {run:?}");
    let run = herald(
        &config,
        &[("HERALD_SERVER", nowhere)],
        &["streams", "list", "--server", &server],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "the flag wins: {run:?}");
    let run = herald(
        &config,
        &[("HERALD_TOKEN", "hrd_not_a_token")],
        &["streams", "list"],
        "",
    )
    .await;
    assert_eq!(run.code, 1, "the environment's token wins: {run:?}");

    // A rejected token is said so and saves nothing.
    let run = herald(
        &config,
        &[],
        &[
            "login",
            "--profile",
            "bad",
            "--server",
            &server,
            "--token",
            "-",
        ],
        "hrd_not_a_token\n",
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("rejected the token"), "{run:?}");
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains("[profiles.bad]")
    );
    let run = herald(&config, &[], &["streams", "list", "--profile", "bad"], "").await;
    assert_eq!(run.code, 3, "a profile that does not exist: {run:?}");
    let run = herald(&config, &[], &["login", "--token", "-"], ADMIN_TOKEN).await;
    assert_eq!(run.code, 2, "no server: {run:?}");

    // A second profile, chosen by HERALD_PROFILE.
    let run = herald(
        &config,
        &[("HERALD_TOKEN", ADMIN_TOKEN)],
        &["login", "--profile", "other", "--server", &server],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = herald(
        &config,
        &[("HERALD_PROFILE", "other")],
        &["streams", "list", "-q"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");

    let run = herald(&config, &[], &["logout"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = herald(&config, &[], &["logout"], "").await;
    assert_eq!(run.code, 3, "{run:?}");
    let run = herald(&config, &[], &["logout", "--profile", "other"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains(ADMIN_TOKEN)
    );
    let run = herald(&config, &[], &["streams", "list"], "").await;
    assert_eq!(run.code, 1, "no token, no default server: {run:?}");
}

const FILE: &str = r#"
[[event_types]]
name = "invoice.paid"
description = "An invoice was paid"
sample_data = { invoice = "inv_1", amount = 100 }

[[streams]]
name = "billing"
subscriptions = ["invoice.*", "user.created"]
retry_policy = { max_attempts = 4 }

[streams.destination]
type = "webhook"

[streams.destination.configuration]
webhook_endpoint = "RECEIVER"
webhook_authorization = { method = "bearer", token = "${env:BILLING_TOKEN}" }

[[streams]]
name = "to the bus"
subscriptions = ["user.*"]

[streams.destination]
type = "eventbridge"

[streams.destination.configuration]
aws_account_id = "123456789012"
aws_region = "eu-west-1"
aws_access_key_id = "${env:BUS_KEY_ID}"
aws_secret_access_key = "${env:BUS_SECRET}"
"#;

struct Setup {
    app: TestApp,
    receiver: Receiver,
    _dir: tempfile::TempDir,
    config: PathBuf,
    file: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let app = spawn_app().await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, FILE.replace("RECEIVER", &receiver.url)).unwrap();
        Setup {
            app,
            receiver,
            config: dir.path().join("no-profiles.toml"),
            file,
            _dir: dir,
        }
    }

    async fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let server = self.app.url("");
        let mut all = vec![
            ("HERALD_SERVER", server.as_str()),
            ("HERALD_TOKEN", ADMIN_TOKEN),
        ];
        all.extend_from_slice(env);
        herald(&self.config, &all, args, "").await
    }
}

const SECRETS: &[(&str, &str)] = &[
    ("BILLING_TOKEN", "token-1"),
    ("BUS_KEY_ID", "AKIAEXAMPLE"),
    ("BUS_SECRET", "secret-1"),
];

#[tokio::test]
async fn apply_makes_the_server_match_the_file_and_twice_is_a_no_op() {
    let s = Setup::new().await;
    let file = s.file.to_str().unwrap();
    let (_, legacy) = s
        .app
        .post(
            "/v1/event-streams",
            &json!({"name": "legacy", "subscriptions": [{"event_type": "user.deleted"}],
                    "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "https://example.com/old"}}}),
        )
        .await;
    let legacy_id = legacy["id"].as_str().unwrap();

    let run = s.run(&[], &["plan", "-f", file]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.replace(legacy_id, "est_LEGACY"),
        "+ event type invoice.paid\n\
         + stream billing\n\
         + stream to the bus\n\
         note: stream `billing`: set BILLING_TOKEN before applying\n\
         note: stream `to the bus`: set BUS_KEY_ID, BUS_SECRET before applying\n\
         note: stream `legacy` (est_LEGACY) is not in the file; kept (--prune deletes it)\n\
         Plan: 3 to create, 0 to update, 0 to replace, 0 to delete.\n",
        "{run:?}"
    );

    // A variable missing: nothing at all is changed.
    let run = s
        .run(&[("BILLING_TOKEN", "token-1")], &["apply", "-f", file])
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("BUS_KEY_ID"), "{run:?}");
    let (_, listed) = s.app.get("/v1/event-streams").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    let run = s.run(SECRETS, &["apply", "-f", file]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Applied 3 changes."), "{run:?}");
    let run = s.run(SECRETS, &["apply", "-f", file]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .ends_with(&format!("No changes: the server matches {file}.\n")),
        "{run:?}"
    );
    let (_, listed) = s.app.get("/v1/event-streams").await;
    let billing = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "billing")
        .unwrap()
        .clone();
    assert_eq!(billing["retry_policy"]["max_attempts"], 4);
    let billing_id = billing["id"].as_str().unwrap().to_owned();

    // The token is delivered as declared.
    s.app
        .publish(
            json!({"id": "inv-1", "type": "invoice.paid", "data": {"invoice": "i", "amount": 1}}),
        )
        .await;
    let got = s.receiver.wait_for(1).await;
    assert_eq!(got[0].header("authorization"), Some("Bearer token-1"));

    // A changed secret is found through the server and applied; so is a changed field.
    std::fs::write(
        &s.file,
        std::fs::read_to_string(&s.file)
            .unwrap()
            .replace("max_attempts = 4", "max_attempts = 5"),
    )
    .unwrap();
    let rotated = [
        ("BILLING_TOKEN", "token-2"),
        ("BUS_KEY_ID", "AKIAEXAMPLE"),
        ("BUS_SECRET", "secret-1"),
    ];
    let run = s.run(&rotated, &["plan", "-f", file]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout
            .replace(&billing_id, "est_BILLING")
            .replace(legacy_id, "est_LEGACY"),
        "~ stream billing (est_BILLING)\n    \
         retry_policy.max_attempts: 4 -> 5\n    \
         destination: write-only values changed\n\
         note: stream `legacy` (est_LEGACY) is not in the file; kept (--prune deletes it)\n\
         Plan: 0 to create, 1 to update, 0 to replace, 0 to delete.\n",
        "{run:?}"
    );
    let run = s.run(&rotated, &["apply", "-f", file]).await;
    assert_eq!(run.code, 0, "{run:?}");
    s.app
        .publish(
            json!({"id": "inv-2", "type": "invoice.paid", "data": {"invoice": "i", "amount": 2}}),
        )
        .await;
    let got = s.receiver.wait_for(2).await;
    assert_eq!(got[1].header("authorization"), Some("Bearer token-2"));
    let run = s.run(&rotated, &["plan", "-f", file]).await;
    assert!(run.stdout.contains("No changes"), "{run:?}");

    // --force-secrets sends them again even unchanged.
    let run = s
        .run(&rotated, &["plan", "-f", file, "--force-secrets"])
        .await;
    assert!(
        run.stdout
            .contains("destination: write-only values sent again (--force-secrets)"),
        "{run:?}"
    );

    // An event type cannot change in place: it is replaced.
    std::fs::write(
        &s.file,
        std::fs::read_to_string(&s.file)
            .unwrap()
            .replace("An invoice was paid", "An invoice was settled"),
    )
    .unwrap();
    let run = s.run(&rotated, &["plan", "-f", file, "-q"]).await;
    assert_eq!(run.stdout, "replace event type invoice.paid\n", "{run:?}");
    let run = s.run(&rotated, &["apply", "-f", file]).await;
    assert!(
        run.stdout.contains("replaced event type invoice.paid"),
        "{run:?}"
    );
    let (_, types) = s.app.get("/v1/event-types").await;
    assert!(
        types.to_string().contains("An invoice was settled"),
        "{types}"
    );

    // --prune deletes what the file does not declare.
    let run = s.run(&rotated, &["apply", "-f", file, "--prune"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("deleted stream legacy ({legacy_id})")),
        "{run:?}"
    );
    let (status, _) = s.app.get(&format!("/v1/event-streams/{legacy_id}")).await;
    assert_eq!(status, axum::http::StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn export_then_plan_shows_no_changes() {
    let s = Setup::new().await;
    let file = s.file.to_str().unwrap();
    let run = s.run(SECRETS, &["apply", "-f", file]).await;
    assert_eq!(run.code, 0, "{run:?}");
    s.app
        .create_stream(
            "https://example.com/basic",
            &["user.created"],
            json!({"destination": {"type": "webhook", "configuration": {
                "webhook_endpoint": "https://example.com/basic",
                "webhook_authorization": {"method": "basic", "username": "u", "password": "p"}}},
                "payload_format": "audit", "max_consecutive_failures": 7}),
        )
        .await;

    let exported = s._dir.path().join("exported.toml");
    let exported = exported.to_str().unwrap();
    let run = s.run(&[], &["export", "-o", exported]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(exported).unwrap();
    assert!(
        text.contains("token = \"${env:BILLING_TOKEN}\"")
            && text.contains("aws_secret_access_key = \"${env:TO_THE_BUS_AWS_SECRET_ACCESS_KEY}\"")
            && !text.contains("token-1")
            && !text.contains("secret-1"),
        "{text}"
    );
    let run = s.run(&[], &["plan", "-f", exported]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .ends_with(&format!("No changes: the server matches {exported}.\n")),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("write-only values not checked"),
        "{run:?}"
    );
    let run = s.run(&[], &["plan", "-f", exported, "--json"]).await;
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["changes"], json!([]), "{run:?}");
    assert_eq!(plan["notes"].as_array().unwrap().len(), 3, "{run:?}");

    // With the values set, the server confirms them.
    let run = s
        .run(
            &[
                ("BILLING_TOKEN", "token-1"),
                ("TO_THE_BUS_AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
                ("TO_THE_BUS_AWS_SECRET_ACCESS_KEY", "secret-1"),
            ],
            &["plan", "-f", exported],
        )
        .await;
    assert!(
        run.stdout.contains("not checked") && run.stdout.contains("PASSWORD"),
        "only the unset one: {run:?}"
    );
    assert!(run.stdout.contains("No changes"), "{run:?}");
}

#[tokio::test]
async fn configuration_errors_say_what_to_fix_with_their_exit_codes() {
    let s = Setup::new().await;
    let dir = s._dir.path();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };

    let run = s
        .run(
            &[],
            &["plan", "-f", &write("bad.toml", "[[streams]\nname = ")],
        )
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("not a valid herald configuration"),
        "{run:?}"
    );

    let run = s
        .run(
            &[],
            &[
                "plan",
                "-f",
                &dir.join("missing.toml").display().to_string(),
            ],
        )
        .await;
    assert_eq!(run.code, 2, "{run:?}");

    // A secret written in the file is refused, before anything is asked of the server.
    let literal = FILE.replace("${env:BILLING_TOKEN}", "a-literal-token");
    let run = s
        .run(&[], &["apply", "-f", &write("literal.toml", &literal)])
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("webhook_authorization.token` is write-only"),
        "{run:?}"
    );
    let unknown = FILE.replace("aws_region", "aws_regions");
    let run = s
        .run(&[], &["plan", "-f", &write("unknown.toml", &unknown)])
        .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("stream `to the bus`"), "{run:?}");

    let with_id = FILE.replace(
        "name = \"billing\"",
        "id = \"est_gone\"\nname = \"billing\"",
    );
    let run = s
        .run(SECRETS, &["apply", "-f", &write("id.toml", &with_id)])
        .await;
    assert_eq!(run.code, 3, "a stream id the server does not have: {run:?}");

    let run = s
        .run(
            &[("HERALD_TOKEN", "hrd_not_a_token")],
            &["plan", "-f", s.file.to_str().unwrap()],
        )
        .await;
    assert_eq!(run.code, 1, "{run:?}");

    // The server refuses what it refuses, with its message.
    let bad_type = FILE.replace("\"user.created\"]", "\"no.such.type\"]");
    let run = s
        .run(SECRETS, &["apply", "-f", &write("type.toml", &bad_type)])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no.such.type"), "{run:?}");
}

/// Streams that shared a name before names were unique: `plan` names them and says what to
/// rename, and refuses to guess which one the file means.
#[tokio::test]
async fn plan_reports_streams_that_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let first = server.create_stream(&http, &receiver).await;
    let second = server.create_stream(&http, &receiver).await;
    // As written before the rule: straight into the store.
    let conn = rusqlite::Connection::open(dir.path().join(herald::config::DATABASE_FILE)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute("UPDATE streams SET name = 'shared'", [])
        .unwrap();

    let config = dir.path().join("no-profiles.toml");
    let env = [
        ("HERALD_SERVER", server.base.as_str()),
        ("HERALD_TOKEN", ADMIN_TOKEN),
    ];
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let run = herald(&config, &env, &["plan", "-f", empty.to_str().unwrap()], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "note: streams {first}, {second} share the name `shared`; names are unique now: \
             rename all but one (for example `herald streams update {second} -n shared-2`)"
        )),
        "{run:?}"
    );

    let file = dir.path().join("herald.toml");
    let declared = format!(
        "[[streams]]\nname = \"shared\"\nsubscriptions = [\"*\"]\n\
         destination = {{ type = \"webhook\", configuration = {{ webhook_endpoint = \"{}\" }} }}\n",
        receiver.url
    );
    std::fs::write(&file, &declared).unwrap();
    let run = herald(&config, &env, &["apply", "-f", file.to_str().unwrap()], "").await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("the server has 2 streams of this name"),
        "{run:?}"
    );

    // With the id, the file means one of them; renaming the other ends the ambiguity.
    std::fs::write(
        &file,
        format!("[[streams]]\nid = \"{first}\"\n{}", &declared[12..]),
    )
    .unwrap();
    let run = herald(&config, &env, &["plan", "-f", file.to_str().unwrap()], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("No changes"), "{run:?}");
}
