//! Stream management: Auth0-shaped CRUD, validation, write-only secrets.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn streams_are_created_read_updated_and_deleted() {
    let app = spawn_app().await;
    let body = json!({
        "name": "crm-sync",
        "subscriptions": [{"event_type": "user.created"}, {"event_type": "organization.*"}],
        "destination": {"type": "webhook", "configuration": {
            "webhook_endpoint": "https://example.com/webhook",
            "webhook_authorization": {"method": "bearer", "token": "tok-secret-value"}
        }}
    });
    let (status, created) = app.post("/v1/event-streams", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("est_") && id.len() == 26, "{id}");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["name"], "crm-sync");
    assert_eq!(created["subscriptions"][1]["event_type"], "organization.*");
    assert_eq!(
        created["destination"],
        json!({"type": "webhook", "configuration": {
            "webhook_endpoint": "https://example.com/webhook",
            "webhook_authorization": {"method": "bearer"}
        }})
    );
    assert_eq!(created["payload_format"], "cloudevents");
    assert_eq!(created["retry_policy"]["max_attempts"], 22);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let (_, shown) = app.get(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(shown, created);
    let (_, listed) = app.get("/v1/event-streams").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    for text in [created.to_string(), shown.to_string(), listed.to_string()] {
        assert!(
            !text.contains("tok-secret-value") && !text.contains("whsec_"),
            "{text}"
        );
    }

    let (status, updated) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"name": "renamed", "status": "disabled", "retry_policy": {"max_attempts": 4}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["status"], "disabled");
    assert_eq!(updated["retry_policy"]["max_attempts"], 4);
    assert_eq!(updated["subscriptions"], created["subscriptions"]);

    let (status, _) = app.delete(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = app.delete(&format!("/v1/event-streams/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_streams_are_refused_with_a_reason() {
    let app = spawn_app_with(|config| config.allow_http = false).await;
    let base = json!({
        "name": "s",
        "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "https://example.com/h"}}
    });
    let (status, _) = app.post("/v1/event-streams", &base).await;
    assert_eq!(status, StatusCode::CREATED);

    let variants = [
        (
            "/destination/configuration/webhook_endpoint",
            json!("http://example.com/h"),
            "https",
        ),
        (
            "/destination/configuration/webhook_endpoint",
            json!("not a url"),
            "valid URL",
        ),
        (
            "/destination/type",
            json!("carrier_pigeon"),
            "unknown variant",
        ),
        ("/subscriptions", json!([]), "subscriptions"),
        (
            "/subscriptions",
            json!([{"event_type": "user.createdd"}]),
            "selects no event type",
        ),
        (
            "/subscriptions",
            json!([{"event_type": "User Created"}]),
            "not an event type",
        ),
        ("/name", json!(""), "name"),
        ("/name", json!(42), "invalid type"),
        ("/retry_policy", json!({"max_attempts": 0}), "max_attempts"),
        ("/retry_policy", json!({"jitter": 2}), "jitter"),
        ("/payload_format", json!("xml"), "unknown variant"),
        (
            "/destination/configuration/webhook_authorization",
            json!({"method": "bearer"}),
            "token",
        ),
        (
            "/destination/configuration/signing_secret",
            json!("nope"),
            "whsec_",
        ),
        ("/unexpected", json!(true), "unknown field"),
    ];
    for (pointer, value, expected) in variants {
        let mut body = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut body
        } else {
            body.pointer_mut(parent).unwrap()
        };
        target[key] = value.clone();
        let (status, response) = app.post("/v1/event-streams", &body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{pointer} = {value}: {response}"
        );
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{pointer} = {value}: {message}");
    }

    let (status, response) = app
        .request(
            reqwest::Method::POST,
            "/v1/event-streams",
            Some(("application/json", b"{".to_vec())),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(response["error"]["code"], "malformed_json");
}

#[tokio::test]
async fn a_given_signing_secret_is_used_and_readable_only_via_the_secret_route() {
    let app = spawn_app().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let stream = app
        .create_stream(
            "https://example.com/h",
            &["user.created"],
            json!({"destination": {"type": "webhook", "configuration": {
                "webhook_endpoint": "https://example.com/h", "signing_secret": secret
            }}}),
        )
        .await;
    assert!(!stream.to_string().contains(secret));
    let id = stream["id"].as_str().unwrap();
    let (status, body) = app.get(&format!("/v1/event-streams/{id}/secret")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["secret"], secret);

    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{id}/secret/rotate"),
            &json!({"secret": "bad"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .post("/v1/event-streams/est_missing/secret/rotate", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest() {
    // Scans the embedded store's files; both stores seal with the same code (`store::columns`).
    let app = spawn_app_with(|config| config.database_url = None).await;
    let (status, _) = app
        .post(
            "/v1/event-streams",
            &json!({
                "name": "visible-name-canary", "subscriptions": [{"event_type": "user.created"}],
                "destination": {"type": "webhook", "configuration": {
                    "webhook_endpoint": "https://example.com/h",
                    "webhook_authorization": {"method": "bearer", "token": "plaintext-canary-token"}
                }}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let dir = app.stop().await;

    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let haystack = String::from_utf8_lossy(&stored);
    assert!(
        haystack.contains("visible-name-canary"),
        "the scan reads the stored rows"
    );
    assert!(
        !haystack.contains("plaintext-canary-token"),
        "the token is stored in clear"
    );
    assert!(
        !haystack.contains("whsec_"),
        "a signing secret is stored in clear"
    );
}

#[tokio::test]
async fn a_stream_that_becomes_a_webhook_gets_a_signing_secret() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (status, stream) = app
        .post(
            "/v1/event-streams",
            &json!({
                "name": "moving", "subscriptions": [{"event_type": "user.created"}],
                "destination": {"type": "eventbridge", "configuration": {
                    "aws_account_id": "123456789012", "aws_region": "us-east-1",
                    "aws_access_key_id": "AKIA", "aws_secret_access_key": "s"}}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stream}");
    assert_eq!(stream["content_mode"], "structured");
    let id = stream["id"].as_str().unwrap();
    let (status, _) = app.get(&format!("/v1/event-streams/{id}/secret")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no secret while on a bus");

    let (status, changed) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let (status, secret) = app.get(&format!("/v1/event-streams/{id}/secret")).await;
    assert_eq!(status, StatusCode::OK, "{secret}");
    let secret = secret["secret"].as_str().unwrap().to_string();
    app.publish(json!({"id": "m-1", "type": "user.created"}))
        .await;
    let got = receiver.wait_for(1).await.remove(0);
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("the new webhook signs with the secret it got");

    // Binary mode does not follow it onto a bus (EventBridge's default applies), and a return
    // to a webhook gets a fresh secret: the one from before does not come back.
    let (status, _) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"content_mode": "binary"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let bus = json!({"type": "eventbridge", "configuration": {
        "aws_account_id": "123456789012", "aws_region": "us-east-1",
        "aws_access_key_id": "AKIA", "aws_secret_access_key": "s"}});
    let (status, changed) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"destination": bus}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["content_mode"], "structured");
    let (status, _) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = app.get(&format!("/v1/event-streams/{id}/secret")).await;
    assert_ne!(again["secret"], secret.as_str(), "a fresh secret");
    assert_eq!(
        again["previous"],
        json!([]),
        "the old one does not sign again"
    );
}

#[tokio::test]
async fn stream_names_are_unique_per_tenant() {
    let app = spawn_app().await;
    let body = |name: &str| {
        json!({
            "name": name, "subscriptions": [{"event_type": "user.created"}],
            "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "https://example.com/a"}}
        })
    };
    let (_, first) = app.post("/v1/event-streams", &body("billing")).await;
    let (status, error) = app.post("/v1/event-streams", &body("billing")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "conflict");
    assert_eq!(error["error"]["details"]["stream_id"], first["id"]);
    let (_, listed) = app.get("/v1/event-streams").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "nothing half-created");

    let (status, second) = app.post("/v1/event-streams", &body("crm")).await;
    assert_eq!(status, StatusCode::CREATED);
    let second = second["id"].as_str().unwrap();
    let (status, error) = app
        .patch(
            &format!("/v1/event-streams/{second}"),
            &json!({"name": "billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let (_, kept) = app.get(&format!("/v1/event-streams/{second}")).await;
    assert_eq!(kept["name"], "crm");
    // Keeping its own name while changing something else is no conflict.
    let (status, _) = app
        .patch(
            &format!("/v1/event-streams/{second}"),
            &json!({"name": "crm", "status": "paused"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_destination_is_checked_against_the_stored_one_without_revealing_it() {
    let app = spawn_app().await;
    let webhook = |token: &str| {
        json!({"type": "webhook", "configuration": {
            "webhook_endpoint": "https://example.com/hook",
            "webhook_authorization": {"method": "bearer", "token": token}}})
    };
    let (_, stream) = app
        .post(
            "/v1/event-streams",
            &json!({"name": "checked", "subscriptions": [{"event_type": "user.created"}],
                    "destination": webhook("tok-1")}),
        )
        .await;
    let check = format!(
        "/v1/event-streams/{}/destination/check",
        stream["id"].as_str().unwrap()
    );
    let (status, answer) = app.post(&check, &webhook("tok-1")).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"matches": true})));
    let (_, answer) = app.post(&check, &webhook("tok-2")).await;
    assert_eq!(answer, json!({"matches": false}));
    let mut other_url = webhook("tok-1");
    other_url["configuration"]["webhook_endpoint"] = json!("https://example.com/other");
    let (_, answer) = app.post(&check, &other_url).await;
    assert_eq!(answer, json!({"matches": false}));
    let (status, error) = app.post(&check, &json!({"type": "webhook"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    // AWS keys are write-only too.
    let bus = |secret: &str| {
        json!({"type": "eventbridge", "configuration": {
            "aws_account_id": "123456789012", "aws_region": "us-east-1",
            "aws_access_key_id": "AKIA", "aws_secret_access_key": secret}})
    };
    let (_, on_bus) = app
        .post(
            "/v1/event-streams",
            &json!({"name": "bus", "subscriptions": [{"event_type": "user.created"}],
                    "destination": bus("s-1")}),
        )
        .await;
    let bus_check = format!(
        "/v1/event-streams/{}/destination/check",
        on_bus["id"].as_str().unwrap()
    );
    let (_, answer) = app.post(&bus_check, &bus("s-1")).await;
    assert_eq!(answer, json!({"matches": true}));
    let (_, answer) = app.post(&bus_check, &bus("s-2")).await;
    assert_eq!(answer, json!({"matches": false}));

    // Few checks a minute per stream: no way to guess a credential by trying values.
    for _ in 3..10 {
        let (status, _) = app.post(&check, &webhook("guess")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, error) = app.post(&check, &webhook("guess")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert_eq!(error["error"]["code"], "rate_limited");
    let (status, _) = app.post(&bus_check, &bus("s-1")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another stream has its own allowance"
    );
    app.clock.advance(std::time::Duration::from_secs(60));
    let (status, _) = app.post(&check, &webhook("tok-1")).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = app
        .post(
            "/v1/event-streams/est_missing/destination/check",
            &webhook("x"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Guessing a destination's credential: after 20 mismatched checks in a row (however slowly)
/// the stream is not checked again, even with the right value, until its destination is
/// updated; a match clears the count.
#[tokio::test]
async fn destination_checks_stop_after_many_mismatches_in_a_row() {
    let app = spawn_app().await;
    let webhook = |token: &str| {
        json!({"type": "webhook", "configuration": {
            "webhook_endpoint": "https://example.com/hook",
            "webhook_authorization": {"method": "bearer", "token": token}}})
    };
    let (_, stream) = app
        .post(
            "/v1/event-streams",
            &json!({"name": "guessed", "subscriptions": [{"event_type": "user.created"}],
                    "destination": webhook("tok-1")}),
        )
        .await;
    let id = stream["id"].as_str().unwrap();
    let check = format!("/v1/event-streams/{id}/destination/check");
    let guess = |n: usize| webhook(&format!("guess-{n}"));
    for n in 0..19 {
        let (status, answer) = app.post(&check, &guess(n)).await;
        assert_eq!(
            (status, answer),
            (StatusCode::OK, json!({"matches": false}))
        );
        app.clock.advance(std::time::Duration::from_secs(10));
    }
    let (_, answer) = app.post(&check, &webhook("tok-1")).await;
    assert_eq!(answer, json!({"matches": true}), "a match clears the count");
    for n in 0..20 {
        let (status, _) = app.post(&check, &guess(n)).await;
        assert_eq!(status, StatusCode::OK);
        app.clock.advance(std::time::Duration::from_secs(10));
    }
    let (status, error) = app.post(&check, &webhook("tok-1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert_eq!(error["error"]["code"], "destination_checks_locked");

    let (status, updated) = app
        .patch(
            &format!("/v1/event-streams/{id}"),
            &json!({"destination": webhook("tok-2")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let (status, answer) = app.post(&check, &webhook("tok-2")).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"matches": true})));
}
