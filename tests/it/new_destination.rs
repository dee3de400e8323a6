//! Trying a destination before it is saved (`POST /v1/event-streams/test`) and the console's
//! New destination form, against the real server and a real receiver: the test reaches the
//! receiver signed and authorised, stores nothing, passes the SSRF guard and the rate limits;
//! the form keeps what was typed, shows each refusal beside its field, and creates the
//! stream the API then sees.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console::{Browser, stream_in, tenant_with_token};
use crate::helpers::*;

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook(url: &str) -> Value {
    json!({"type": "webhook", "configuration": {
        "webhook_endpoint": url,
        "webhook_authorization": {"method": "bearer", "token": "tok-123"},
        "signing_secret": SECRET,
    }})
}

/// Tests the bearer-authenticated webhook at `url` with `user.created`'s sample.
async fn test_unsaved(app: &TestApp, url: String) -> (StatusCode, Value) {
    app.post(
        "/v1/event-streams/test",
        &json!({"destination": webhook(&url), "event_type": "user.created"}),
    )
    .await
}

#[tokio::test]
async fn an_unsaved_destination_is_tested_and_nothing_is_stored() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(202).with_body("thanks"));

    let (status, body) = app
        .post(
            "/v1/event-streams/test",
            &json!({"destination": webhook(&receiver.url), "event_type": "user.created"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], true, "{body}");
    assert_eq!(body["response_status"], 202, "{body}");
    assert_eq!(body["response_body"], "thanks", "{body}");
    assert!(body["error"].is_null(), "{body}");

    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.header("authorization"), Some("Bearer tok-123"));
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("signed with the secret given");
    let event = got.json();
    assert_eq!(event["type"], "user.created");
    assert_eq!(event["purpose"], "test", "{event}");
    assert_eq!(event["id"], body["event_id"]);

    // Nothing was kept: no stream, no event in the log.
    let (_, streams) = app.get("/v1/event-streams").await;
    assert_eq!(streams, json!([]));
    let (_, events) = app.get("/v1/events").await;
    assert_eq!(events["events"], json!([]), "{events}");

    // Without a signing secret of its own, a fresh one signs.
    let (status, body) = app
        .post(
            "/v1/event-streams/test",
            &json!({
                "destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}},
                "event_type": "flow.run.finished",
                "data": {"flowId": "f1", "runId": "r1", "status": "SUCCEEDED"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = receiver.wait_for(2).await.remove(1);
    assert!(got.header("webhook-signature").is_some());
    assert!(got.header("authorization").is_none());
    assert_eq!(got.json()["data"]["runId"], "r1");
}

#[tokio::test]
async fn an_unsaved_destination_is_checked_as_on_create() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let refused = |body: Value| {
        let app = &app;
        async move { app.post("/v1/event-streams/test", &body).await }
    };

    let (status, body) = refused(json!({
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "ftp://example.com/x"}},
        "event_type": "user.created",
    }))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("webhook_endpoint"),
        "{body}"
    );

    let (status, body) = refused(json!({
        "destination": webhook(&receiver.url),
        "event_type": "no.such.type",
    }))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_event_type");

    let (status, body) = refused(json!({
        "destination": {"type": "listen", "configuration": {"forward_to": receiver.url}},
        "event_type": "user.created",
    }))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = refused(json!({
        "destination": webhook(&receiver.url),
        "event_type": "user.created",
        "surprise": true,
    }))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(receiver.received().is_empty());

    // The operation creates nothing but needs the scope that would.
    let (_, reader) = tenant_with_token(&app, "ten_reader", &["read:event_streams"]).await;
    let response = app
        .http
        .post(app.url("/v1/event-streams/test"))
        .bearer_auth(reader)
        .json(&json!({"destination": webhook(&receiver.url), "event_type": "user.created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_scope", "{body}");
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn an_unsaved_destination_passes_the_ssrf_guard() {
    let app = spawn_app_with(|config| config.allow_cidrs.clear()).await;
    let receiver = Receiver::start().await;
    let (status, body) = app
        .post(
            "/v1/event-streams/test",
            &json!({"destination": webhook(&receiver.url), "event_type": "user.created"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["delivered"], false, "{body}");
    assert_eq!(body["error"]["kind"], "blocked", "{body}");
    assert!(receiver.received().is_empty(), "nothing reached loopback");
}

#[tokio::test]
async fn unsaved_tests_are_rate_limited_per_destination_and_per_token() {
    let app = spawn_app_with(|c| {
        c.stream_tests_per_minute = 2;
        c.stream_tests_per_minute_per_token = 3;
    })
    .await;
    let a = Receiver::start().await;
    let b = Receiver::start().await;
    let test = |url: String| test_unsaved(&app, url);
    assert_eq!(test(a.url.clone()).await.0, StatusCode::OK);
    assert_eq!(test(a.url.clone()).await.0, StatusCode::OK);
    let (status, body) = test(a.url.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(stream_tests_per_minute)"),
        "{body}"
    );
    // Another destination has its own allowance; the token's runs out after three.
    assert_eq!(test(b.url.clone()).await.0, StatusCode::OK);
    let (status, body) = test(b.url.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(stream_tests_per_minute_per_token)"),
        "{body}"
    );
    assert_eq!(a.received().len(), 2);
    assert_eq!(b.received().len(), 1);
}

const NEW: &str = "/tenants/ten_default/streams/new";

/// The form's fields for a bearer-authenticated webhook to `url` subscribed to `events`.
fn form<'a>(csrf: &'a str, url: &'a str, intent: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("name", "Audit to Slack"),
        ("kind", "webhook"),
        ("webhook_url", url),
        ("auth_method", "bearer"),
        ("auth_token", "console-token"),
        ("event", "user.created"),
        ("event", "user.deleted"),
        ("test_event_type", ""),
        ("intent", intent),
    ]
}

#[tokio::test]
async fn the_form_lists_the_catalog_with_labelled_controls() {
    let app = spawn_app().await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let streams = browser.get("/tenants/ten_default/streams").await;
    assert!(
        streams.body.contains(&format!("href=\"{NEW}\""))
            && streams.body.contains("New destination"),
        "the list links to the form: {}",
        streams.body
    );
    let page = browser.get(NEW).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for (id, label) in [
        ("name", "Name"),
        ("webhook-url", "Webhook URL"),
        ("auth-method", "Authentication Method"),
        ("auth-token", "Authorization Token"),
        ("event-user.created", "user.created"),
        ("event-flow.run.finished", "flow.run.finished"),
        ("event-search", "Search events"),
    ] {
        assert!(
            page.body
                .contains(&format!("<label for=\"{id}\">{label}</label>")),
            "no label {label} for #{id}"
        );
        assert!(page.body.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    assert!(page.body.contains("Test webhook") && page.body.contains(">Create</button>"));
}

#[tokio::test]
async fn test_webhook_shows_the_receivers_answer_and_keeps_the_form() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(418).with_body("<script>alert('teapot')</script>"));
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let csrf = browser.csrf(NEW).await;

    let page = browser.post(NEW, &form(&csrf, &receiver.url, "test")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("id=\"test-status\">HTTP 418<"),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"test-duration\">"));
    // The receiver's body is shown as text.
    assert!(
        page.body
            .contains("&lt;script&gt;alert('teapot')&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert"));
    // The first event picked was sent, authorised as typed.
    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.json()["type"], "user.created");
    assert_eq!(got.header("authorization"), Some("Bearer console-token"));
    // Everything typed is still there, and nothing was saved.
    assert!(page.body.contains("value=\"Audit to Slack\""));
    assert!(page.body.contains(&format!("value=\"{}\"", receiver.url)));
    assert!(page.body.contains("value=\"console-token\""));
    assert!(page.body.contains("<option value=\"bearer\" selected>"));
    for event in ["user.created", "user.deleted"] {
        assert!(
            page.body.contains(&format!("value=\"{event}\" checked")),
            "{event} stays picked"
        );
    }
    let (_, streams) = app.get("/v1/event-streams").await;
    assert_eq!(streams, json!([]));

    // A chosen event is the one sent.
    let mut fields = form(&csrf, &receiver.url, "test");
    fields.retain(|(k, _)| *k != "test_event_type");
    fields.push(("test_event_type", "user.deleted"));
    let page = browser.post(NEW, &fields).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(receiver.wait_for(2).await[1].json()["type"], "user.deleted");
}

#[tokio::test]
async fn create_makes_the_stream_the_api_sees() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let csrf = browser.csrf(NEW).await;

    let answer = browser
        .post(NEW, &form(&csrf, &receiver.url, "create"))
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let (_, streams) = app.get("/v1/event-streams").await;
    let stream = &streams[0];
    assert_eq!(stream["name"], "Audit to Slack");
    assert_eq!(
        stream["subscriptions"],
        json!([{"event_type": "user.created"}, {"event_type": "user.deleted"}])
    );
    assert_eq!(
        stream["destination"],
        json!({"type": "webhook", "configuration": {
            "webhook_endpoint": receiver.url,
            "webhook_authorization": {"method": "bearer"},
        }})
    );
    let id = stream["id"].as_str().unwrap();
    assert_eq!(
        answer.location(),
        format!("/tenants/ten_default/streams/{id}")
    );

    // It delivers, with the token typed.
    app.publish(json!({"type": "user.created"})).await;
    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.header("authorization"), Some("Bearer console-token"));
}

#[tokio::test]
async fn refusals_appear_beside_their_fields_and_nothing_typed_is_lost() {
    let app = spawn_app().await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let csrf = browser.csrf(NEW).await;

    // Nothing picked and no name: both said, beside their fields.
    let page = browser
        .post(
            NEW,
            &[
                ("csrf", csrf.as_str()),
                ("name", ""),
                ("kind", "webhook"),
                ("webhook_url", "https://hooks.example.com/in"),
                ("auth_method", "none"),
                ("intent", "create"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"name-error\""), "{}", page.body);
    assert!(page.body.contains("Enter a name for the stream."));
    assert!(page.body.contains("id=\"events-error\""));
    assert!(page.body.contains("Pick at least one event to send."));
    assert!(page.body.contains("aria-describedby=\"name-error\""));
    assert!(page.body.contains("value=\"https://hooks.example.com/in\""));

    // The service's own check, in the form's words, beside the URL.
    let page = browser
        .post(NEW, &form(&csrf, "ftp://hooks.example.com/in", "create"))
        .await;
    assert_eq!(
        page.status,
        StatusCode::BAD_REQUEST,
        "the API's status for it"
    );
    let error = &page.body[page
        .body
        .find("id=\"webhook-url-error\"")
        .expect("beside the URL")..];
    let error = &error[..error.find("</div>").unwrap()];
    assert!(error.contains("The Webhook URL must use https"), "{error}");
    assert!(!error.contains("webhook_endpoint"), "{error}");
    assert!(page.body.contains("value=\"ftp://hooks.example.com/in\""));
    assert!(page.body.contains("value=\"Audit to Slack\""));

    // A bearer method without its token.
    let mut fields = form(&csrf, "https://hooks.example.com/in", "create");
    fields.retain(|(k, _)| *k != "auth_token");
    let page = browser.post(NEW, &fields).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"auth-error\""));
    assert!(page.body.contains("Enter the Authorization Token."));

    // Testing with no event picked says what to do.
    let page = browser
        .post(
            NEW,
            &[
                ("csrf", csrf.as_str()),
                ("webhook_url", "https://hooks.example.com/in"),
                ("intent", "test"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"test-error\""));

    let (_, streams) = app.get("/v1/event-streams").await;
    assert_eq!(streams, json!([]), "nothing was created");
}

#[tokio::test]
async fn the_form_is_refused_without_its_csrf_token_or_for_another_tenant() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    stream_in(&app, "ten_default", "existing").await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;

    let page = browser
        .post(NEW, &form("forged", &receiver.url, "create"))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = browser
        .post(NEW, &form("forged", &receiver.url, "test"))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        receiver.received().is_empty(),
        "a forged test sends nothing"
    );

    let (_, token) = tenant_with_token(
        &app,
        "ten_other",
        &[
            "create:event_streams",
            "read:event_streams",
            "update:event_streams",
        ],
    )
    .await;
    let tenant = Browser::signed_in(&app, &token).await;
    assert_eq!(tenant.get(NEW).await.status, StatusCode::NOT_FOUND);
    let own = "/tenants/ten_other/streams/new";
    let csrf = tenant.csrf(own).await;
    let page = tenant
        .post(NEW, &form(&csrf, &receiver.url, "create"))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let (_, streams) = app.get("/v1/event-streams").await;
    assert_eq!(streams.as_array().unwrap().len(), 1, "{streams}");

    // In its own tenant the same form creates there.
    let page = tenant
        .post(own, &form(&csrf, &receiver.url, "create"))
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(
        page.location()
            .starts_with("/tenants/ten_other/streams/est_")
    );
}

#[tokio::test]
async fn a_changed_path_or_query_does_not_buy_another_test() {
    let app = spawn_app_with(|c| c.stream_tests_per_minute = 1).await;
    let receiver = Receiver::start().await;
    let test = |url: String| async { test_unsaved(&app, url).await.0 };
    assert_eq!(test(receiver.url.clone()).await, StatusCode::OK);
    for variant in ["?probe=1", "/other", "?x=y#z"] {
        assert_eq!(
            test(format!("{}{variant}", receiver.url)).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{variant}"
        );
    }
    assert_eq!(receiver.received().len(), 1);

    // The form says so with the API's status and when to try again.
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let csrf = browser.csrf(NEW).await;
    let page = browser.post(NEW, &form(&csrf, &receiver.url, "test")).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
    assert!(page.headers.get("retry-after").is_some());
    assert!(page.body.contains("id=\"test-error\""), "{}", page.body);
    assert!(page.body.contains("value=\"Audit to Slack\""));
}
