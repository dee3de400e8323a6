//! The console's administration against the real server: sign-in links to a tenant's
//! console (single use, never more than the issuing token, ending with it and with the
//! tenant), the tokens pages (a new token's secret once, revocation ending sessions), the
//! tenants page's forms, the event log (filters, one event, erasure after a confirmation)
//! and the event types page, with tenant isolation and escaping throughout.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console::{Browser, Page, api_stream, stream_in, tenant_with_token, token_of};
use crate::helpers::*;

/// Issues a sign-in link to `tenant`'s console with `token`; the answer's status and body.
async fn issue_link(app: &TestApp, token: &str, tenant: &str, body: Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    app.request_as(
        token,
        reqwest::Method::POST,
        &format!("/v1/tenants/{tenant}/console-link"),
        Some(("application/json", bytes)),
    )
    .await
}

/// A link's path on the server, from its URL.
fn link_path(app: &TestApp, answer: &Value) -> String {
    let url = answer["url"].as_str().expect("a url");
    let base = app.url("");
    assert!(
        url.starts_with(&format!("{base}/console-link/hcl_")),
        "{url} is on {base}"
    );
    url[base.len()..].to_string()
}

/// Opens a link as a browser would: its page, then its button.
async fn open_link(browser: &Browser, path: &str) -> Page {
    let page = browser.get(path).await;
    if page.status != StatusCode::OK {
        return page;
    }
    assert!(
        page.body.contains(">Open the console</button>"),
        "{}",
        page.body
    );
    let csrf = page.hidden("csrf");
    browser.post(path, &[("csrf", &csrf)]).await
}

/// A platform token with `scopes`: (its id, its secret).
async fn platform_token(app: &TestApp, scopes: &[&str]) -> (String, String) {
    let (status, body) = app
        .post(
            "/v1/tokens",
            &json!({"name": "portal", "scopes": scopes, "platform": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        body["token"].as_str().unwrap().to_string(),
    )
}

fn refused_link(page: &Page) -> bool {
    page.status == StatusCode::GONE && page.body.contains("This sign-in link cannot be used")
}

#[tokio::test]
async fn a_sign_in_link_signs_in_once_and_a_second_use_is_refused() {
    let app = spawn_app().await;
    tenant_with_token(&app, "ten_acme", &["read:event_streams"]).await;
    stream_in(&app, "ten_acme", "acme orders").await;
    stream_in(&app, "ten_default", "platform stream").await;

    let (status, link) = issue_link(
        &app,
        ADMIN_TOKEN,
        "ten_acme",
        json!({"scopes": ["read:event_streams", "read:events"], "session_name": "Ada at Acme"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    assert_eq!(link["tenant_id"], "ten_acme");
    assert_eq!(link["scopes"], json!(["read:event_streams", "read:events"]));
    assert!(herald::event::parse_time(link["expires_at"].as_str().unwrap()).is_some());
    let path = link_path(&app, &link);
    let secret = path.rsplit('/').next().unwrap().to_string();

    // The store keeps the secret's hash, never the secret.
    if std::env::var("HERALD_TEST_APP_DATABASE").as_deref() != Ok("postgres") {
        let conn =
            rusqlite::Connection::open(app.data_dir().join(herald::config::DATABASE_FILE)).unwrap();
        let (hash, lifetime): (Vec<u8>, i64) = conn
            .query_row(
                "SELECT hash, expires_at - created_at FROM console_links",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(hash, herald::store::hash_token(&secret).to_vec());
        assert_eq!(lifetime, 300_000, "five minutes unless asked otherwise");
    }

    // Looking at the link's page does not use it up.
    let first = Browser::new(&app);
    let second = Browser::new(&app);
    for browser in [&first, &second] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("ten_acme"));
    }
    // Two browsers press its button at once: one is signed in, the other refused.
    let (csrf_first, csrf_second) = (
        first.get(&path).await.hidden("csrf"),
        second.get(&path).await.hidden("csrf"),
    );
    let (form_first, form_second) = ([("csrf", &*csrf_first)], [("csrf", &*csrf_second)]);
    let (a, b) = tokio::join!(
        first.post(&path, &form_first),
        second.post(&path, &form_second),
    );
    let (winner, signed, refused) = if a.status == StatusCode::SEE_OTHER {
        (&first, a, b)
    } else {
        (&second, b, a)
    };
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    assert_eq!(signed.location(), "/tenants/ten_acme/streams");
    assert!(
        refused_link(&refused),
        "{} {}",
        refused.status,
        refused.body
    );

    // The session is the tenant's, under the name the link gave it.
    let streams = winner.get("/tenants/ten_acme/streams").await;
    assert_eq!(streams.status, StatusCode::OK, "{}", streams.body);
    assert!(streams.body.contains("acme orders"));
    assert!(streams.body.contains("Ada at Acme"), "{}", streams.body);
    let elsewhere = winner.get("/tenants/ten_default/streams").await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert!(!elsewhere.body.contains("platform stream"));
    assert_eq!(winner.get("/tenants").await.status, StatusCode::FORBIDDEN);

    // Later, the link is refused to anyone, its page included.
    let late = Browser::new(&app);
    assert!(refused_link(&late.get(&path).await));
    assert!(refused_link(&open_link(&late, &path).await));
    assert!(late.get("/tenants/ten_acme/streams").await.to_sign_in());

    // An unused link ends when its time is up.
    let (_, short) = issue_link(
        &app,
        ADMIN_TOKEN,
        "ten_acme",
        json!({"scopes": ["read:event_streams"], "expires_in_seconds": 60}),
    )
    .await;
    let short = link_path(&app, &short);
    let browser = Browser::new(&app);
    let page = browser.get(&short).await;
    assert_eq!(page.status, StatusCode::OK);
    app.clock.advance(Duration::from_secs(60));
    let csrf = page.hidden("csrf");
    assert!(refused_link(
        &browser.post(&short, &[("csrf", &csrf)]).await
    ));
    assert!(browser.get("/tenants/ten_acme/streams").await.to_sign_in());
}

#[tokio::test]
async fn a_link_cannot_grant_more_than_the_token_that_issues_it() {
    let app = spawn_app().await;
    let (_, tenant_token) = tenant_with_token(&app, "ten_acme", &["read:event_streams"]).await;
    let stream = stream_in(&app, "ten_acme", "acme orders").await;
    let (_, portal) = platform_token(&app, &["manage:tenants", "read:event_streams"]).await;

    let refusals = [
        (
            &portal,
            "ten_acme",
            json!({"scopes": ["update:event_streams"]}),
            403,
            "does not hold",
        ),
        (
            &portal,
            "ten_acme",
            json!({"scopes": ["manage:tenants"]}),
            400,
            "platform scope",
        ),
        (
            &portal,
            "ten_acme",
            json!({"scopes": ["nope"]}),
            400,
            "is not a scope",
        ),
        (
            &portal,
            "ten_acme",
            json!({"scopes": []}),
            400,
            "at least one",
        ),
        (
            &portal,
            "ten_acme",
            json!({"scopes": ["read:event_streams"], "expires_in_seconds": 7200}),
            400,
            "expires_in_seconds",
        ),
        (
            &portal,
            "ten_nope",
            json!({"scopes": ["read:event_streams"]}),
            404,
            "ten_nope",
        ),
        (
            &tenant_token,
            "ten_acme",
            json!({"scopes": ["read:event_streams"]}),
            403,
            "manage:tenants",
        ),
    ];
    for (token, tenant, body, status, says) in refusals {
        let (got, answer) = issue_link(&app, token, tenant, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
    }

    // The platform admin holds every scope, yet its link grants only what it names: the
    // session sees the stream and may not change it.
    let (_, link) = issue_link(
        &app,
        ADMIN_TOKEN,
        "ten_acme",
        json!({"scopes": ["read:event_streams"]}),
    )
    .await;
    let browser = Browser::new(&app);
    let signed = open_link(&browser, &link_path(&app, &link)).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    let path = format!("/tenants/ten_acme/streams/{stream}");
    let csrf = browser.csrf(&path).await;
    let refused = browser
        .post(
            &format!("{path}/status"),
            &[("status", "paused"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused
            .body
            .contains("this token lacks the `update:event_streams` scope"),
        "{}",
        refused.body
    );
    assert_eq!(
        api_stream(&app, "ten_acme", &stream).await["status"],
        "enabled"
    );
    // Nor does it reach the tenant's tokens.
    assert_eq!(
        browser.get("/tenants/ten_acme/tokens").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_link_session_ends_with_its_issuing_token_and_with_its_tenant() {
    let app = spawn_app().await;
    tenant_with_token(&app, "ten_acme", &["read:event_streams"]).await;
    tenant_with_token(&app, "ten_gone", &["read:event_streams"]).await;
    let (portal_id, portal) = platform_token(&app, &["manage:tenants", "read:event_streams"]).await;

    let open = |tenant: &'static str, token: String| {
        let app = &app;
        async move {
            let (status, link) = issue_link(
                app,
                &token,
                tenant,
                json!({"scopes": ["read:event_streams"]}),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{link}");
            let browser = Browser::new(app);
            let signed = open_link(&browser, &link_path(app, &link)).await;
            assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
            let page = format!("/tenants/{tenant}/streams");
            assert_eq!(browser.get(&page).await.status, StatusCode::OK);
            (browser, page)
        }
    };

    // Revoking the token that issued the link ends the session, and a link it issued that
    // was not opened yet no longer opens.
    let (by_portal, page) = open("ten_acme", portal.clone()).await;
    let (_, unopened) = issue_link(
        &app,
        &portal,
        "ten_acme",
        json!({"scopes": ["read:event_streams"]}),
    )
    .await;
    let (by_admin, _) = open("ten_acme", ADMIN_TOKEN.to_string()).await;
    let (status, body) = app
        .delete(&format!("/v1/tokens/{portal_id}?platform=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(by_portal.get(&page).await.to_sign_in());
    assert!(refused_link(
        &open_link(&Browser::new(&app), &link_path(&app, &unopened)).await
    ));
    assert_eq!(by_admin.get(&page).await.status, StatusCode::OK);

    // Deleting the tenant ends the sessions its links opened.
    let (gone, page) = open("ten_gone", ADMIN_TOKEN.to_string()).await;
    let (status, body) = app.delete("/v1/tenants/ten_gone").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(gone.get(&page).await.to_sign_in());
}

#[tokio::test]
async fn a_tenant_token_sees_only_its_own_tokens_and_never_the_tenants_page() {
    let app = spawn_app().await;
    let (_, token) = tenant_with_token(
        &app,
        "ten_a",
        &["manage:tokens", "read:event_streams", "read:events"],
    )
    .await;
    let (b_id, b_secret) = tenant_with_token(&app, "ten_b", &["read:event_streams"]).await;
    let browser = Browser::signed_in(&app, &token).await;

    let own = browser.get("/tenants/ten_a/tokens").await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert!(own.body.contains("ten_a admin"));
    assert!(!own.body.contains(&b_id));
    let csrf = own.hidden("csrf");
    // Only the scopes it holds are offered, and no platform scope.
    assert!(own.body.contains("value=\"read:events\""));
    assert!(!own.body.contains("value=\"publish:events\""));
    assert!(!own.body.contains("value=\"manage:tenants\""));

    for path in [
        "/tenants/ten_b/tokens",
        "/tenants/ten_b/events",
        "/tenants/ten_b/event-types",
        "/tenants/ten_nope/tokens",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.body.contains("ten_b"), "{path}: {}", page.body);
    }
    for (path, form) in [
        (
            "/tenants/ten_b/tokens".to_string(),
            vec![("name", "intruder"), ("scope", "read:event_streams")],
        ),
        (format!("/tenants/ten_b/tokens/{b_id}/revoke"), vec![]),
        (format!("/tenants/ten_a/tokens/{b_id}/revoke"), vec![]),
    ] {
        let mut form = form;
        form.push(("csrf", &csrf));
        let refused = browser.post(&path, &form).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = app
        .request_as(&b_secret, reqwest::Method::GET, "/v1/event-streams", None)
        .await;
    assert_eq!(status, StatusCode::OK, "ten_b's token still works");

    // The tenants page, its forms and the platform's tokens are not for a tenant token.
    for path in ["/tenants", "/tokens"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert!(!page.body.contains("ten_b"), "{path}: {}", page.body);
    }
    let refused = browser
        .post(
            "/tenants",
            &[("name", "Mine"), ("id", "ten_mine"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = browser
        .post(
            "/tenants/ten_b/rename",
            &[("name", "Taken"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let (_, tenants) = app.get("/v1/tenants").await;
    let names: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"Mine") && !names.contains(&"Taken"),
        "{names:?}"
    );
}

/// The secret on a "Token created" page.
fn new_secret(page: &Page) -> String {
    let field = page
        .body
        .find("id=\"new-token\"")
        .unwrap_or_else(|| panic!("no new token in {}", page.body));
    let marker = "value=\"";
    let start = field + page.body[field..].find(marker).unwrap() + marker.len();
    let end = start + page.body[start..].find('"').unwrap();
    page.body[start..end].to_string()
}

#[tokio::test]
async fn a_new_tokens_secret_is_shown_once_and_works_against_the_api() {
    let app = spawn_app().await;
    tenant_with_token(&app, "ten_acme", &["read:events"]).await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let path = "/tenants/ten_acme/tokens";
    let csrf = browser.csrf(path).await;

    // Refused forms come back with what was typed and the reason beside its field.
    let no_name = browser
        .post(
            path,
            &[("name", " "), ("scope", "read:events"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(no_name.status, StatusCode::BAD_REQUEST);
    assert!(
        no_name
            .body
            .contains("id=\"token-name-error\" role=\"alert\">`name` must be"),
        "{}",
        no_name.body
    );
    assert!(
        no_name.body.contains("value=\"read:events\" checked>"),
        "the ticked scope stays ticked: {}",
        no_name.body
    );
    let no_scope = browser
        .post(path, &[("name", "ci publisher"), ("csrf", &csrf)])
        .await;
    assert_eq!(no_scope.status, StatusCode::BAD_REQUEST);
    assert!(no_scope.body.contains("id=\"token-scopes-error\""));
    assert!(no_scope.body.contains("value=\"ci publisher\""));
    // Without the session's CSRF token, nothing is made.
    let forged = browser
        .post(path, &[("name", "forged"), ("scope", "read:events")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let created = browser
        .post(
            path,
            &[
                ("name", "ci publisher"),
                ("scope", "publish:events"),
                ("scope", "read:events"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(created.body.contains("<h1>Token created</h1>"));
    let secret = new_secret(&created);
    assert!(secret.starts_with("hrd_"), "{secret}");

    // It works against the API, on its tenant, with its scopes.
    let event = json!({"type": "user.created", "data": {"object": {"user_id": "u1"}}});
    let (status, body) = app
        .request_as(
            &secret,
            reqwest::Method::POST,
            "/v1/events",
            Some(("application/json", serde_json::to_vec(&event).unwrap())),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, listed) = app
        .request_as(&secret, reqwest::Method::GET, "/v1/events", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        listed["events"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // The list names it; no page shows its secret again.
    let list = browser.get(path).await;
    assert!(list.body.contains("ci publisher"));
    assert!(!list.body.contains(&secret));
    let (_, tokens) = app
        .request_as(&secret, reqwest::Method::GET, "/v1/tokens", None)
        .await;
    assert!(!tokens.to_string().contains(&secret));
    assert!(
        !browser
            .get("/tenants/ten_acme/streams")
            .await
            .body
            .contains(&secret)
    );
}

#[tokio::test]
async fn revoking_a_token_in_the_console_ends_its_sessions() {
    let app = spawn_app().await;
    let (id, token) = tenant_with_token(&app, "ten_acme", &["read:event_streams"]).await;
    let user = Browser::signed_in(&app, &token).await;
    let admin = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = admin.get("/tenants/ten_acme/tokens").await;
    assert!(
        list.body.contains("<summary>Revoke</summary>"),
        "{}",
        list.body
    );
    let action = format!("/tenants/ten_acme/tokens/{id}/revoke");
    assert!(list.body.contains(&format!("action=\"{action}\"")));
    let csrf = list.hidden("csrf");

    let forged = admin.post(&action, &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        user.get("/tenants/ten_acme/streams").await.status,
        StatusCode::OK
    );

    let revoked = admin.post(&action, &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.body);
    assert_eq!(revoked.location(), "/tenants/ten_acme/tokens");
    assert!(user.get("/tenants/ten_acme/streams").await.to_sign_in());
    let (status, _) = app
        .request_as(&token, reqwest::Method::GET, "/v1/event-streams", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !admin
            .get("/tenants/ten_acme/tokens")
            .await
            .body
            .contains(&id)
    );
    // Revoking it again finds nothing.
    assert_eq!(
        admin.post(&action, &[("csrf", &csrf)]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_platform_admin_creates_and_renames_tenants() {
    let app = spawn_app().await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let page = browser.get("/tenants").await;
    assert!(
        page.body
            .contains("<label for=\"tenant-name\">Name</label>")
    );
    let csrf = page.hidden("csrf");

    let created = browser
        .post(
            "/tenants",
            &[("name", "Acme"), ("id", "ten_acme"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    assert_eq!(created.location(), "/tenants/ten_acme/streams");
    let (_, tenant) = app.get("/v1/tenants/ten_acme").await;
    assert_eq!(tenant["name"], "Acme");

    // The same id again: refused beside the ID field, with both values kept.
    let taken = browser
        .post(
            "/tenants",
            &[("name", "Acme two"), ("id", "ten_acme"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert!(
        taken
            .body
            .contains("id=\"tenant-id-error\" role=\"alert\">a tenant with id `ten_acme` exists"),
        "{}",
        taken.body
    );
    assert!(taken.body.contains("value=\"Acme two\""));
    let bad = browser
        .post(
            "/tenants",
            &[("name", "Bad"), ("id", "acme!"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("id=\"tenant-id-error\""));
    assert!(bad.body.contains("value=\"acme!\""));

    let renamed = browser
        .post(
            "/tenants/ten_acme/rename",
            &[("name", "Acme Corp"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(renamed.status, StatusCode::SEE_OTHER, "{}", renamed.body);
    let (_, tenant) = app.get("/v1/tenants/ten_acme").await;
    assert_eq!(tenant["name"], "Acme Corp");
    let empty = browser
        .post(
            "/tenants/ten_acme/rename",
            &[("name", "  "), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(
        empty.body.contains("<details class=\"confirm\" open>"),
        "{}",
        empty.body
    );
    assert!(empty.body.contains("role=\"alert\">`name` must be"));
    let forged = browser
        .post("/tenants/ten_acme/rename", &[("name", "Forged")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let (_, tenant) = app.get("/v1/tenants/ten_acme").await;
    assert_eq!(tenant["name"], "Acme Corp");
}

#[tokio::test]
async fn the_event_log_filters_and_erases_an_event_after_asking() {
    let app = spawn_app().await;
    let kept = app
        .publish(json!({"type": "user.deleted", "subject": "user-7",
            "data": {"object": {"user_id": "u-kept-7"}}}))
        .await;
    let erased = app
        .publish(json!({"type": "user.created", "subject": "user-42",
            "data": {"object": {"user_id": "u-secret-42"}}}))
        .await;
    let id = erased["id"].as_str().unwrap().to_string();
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;

    let log = browser.get("/tenants/ten_default/events").await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.body);
    assert!(log.body.contains(&id));
    assert!(log.body.contains(kept["id"].as_str().unwrap()));
    let only = browser
        .get("/tenants/ten_default/events?event_type=user.created")
        .await;
    assert!(only.body.contains(&id));
    assert!(!only.body.contains(kept["id"].as_str().unwrap()));
    let later = browser
        .get("/tenants/ten_default/events?date_from=2999-01-01T00%3A00%3A00Z")
        .await;
    assert!(!later.body.contains(&id));
    assert!(later.body.contains("No events match."));
    let bad = browser
        .get("/tenants/ten_default/events?date_from=yesterday&subject=user-42")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body
            .contains("id=\"filter-from-error\" role=\"alert\">`date_from` must be"),
        "{}",
        bad.body
    );
    assert!(bad.body.contains("value=\"yesterday\""));
    assert!(bad.body.contains("value=\"user-42\""));

    let event_path = format!("/tenants/ten_default/events/{id}");
    let event = browser.get(&event_path).await;
    assert_eq!(event.status, StatusCode::OK, "{}", event.body);
    assert!(event.body.contains("u-secret-42"));

    // The confirmation page erases nothing.
    let erase = format!("{event_path}/erase");
    let confirm = browser.get(&erase).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains(">Erase the data</button>"));
    let (_, shown) = app.get(&format!("/v1/events/{id}")).await;
    assert_eq!(shown["event"]["data"]["object"]["user_id"], "u-secret-42");
    let csrf = confirm.hidden("csrf");
    let forged = browser.post(&erase, &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let done = browser.post(&erase, &[("csrf", &csrf)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let event = browser.get(done.location()).await;
    assert_eq!(event.status, StatusCode::OK);
    assert!(!event.body.contains("u-secret-42"), "{}", event.body);
    assert!(event.body.contains("data was erased"));
    let (_, shown) = app.get(&format!("/v1/events/{id}")).await;
    assert_eq!(shown["event"]["data"], Value::Null, "{shown}");
    let (_, other) = app
        .get(&format!("/v1/events/{}", kept["id"].as_str().unwrap()))
        .await;
    assert_eq!(other["event"]["data"]["object"]["user_id"], "u-kept-7");

    // Erasing needs its scope: the page says so and erases nothing.
    let (_, reader) = token_of(&app, "ten_default", &["read:events"]).await;
    let reader = Browser::signed_in(&app, &reader).await;
    let kept_erase = format!(
        "/tenants/ten_default/events/{}/erase",
        kept["id"].as_str().unwrap()
    );
    let csrf = reader.csrf(&kept_erase).await;
    let refused = reader.post(&kept_erase, &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused
            .body
            .contains("lacks the `update:event_deliveries` scope")
    );
    let (_, other) = app
        .get(&format!("/v1/events/{}", kept["id"].as_str().unwrap()))
        .await;
    assert_eq!(other["event"]["data"]["object"]["user_id"], "u-kept-7");
}

#[tokio::test]
async fn hostile_event_types_and_data_render_as_text() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/event-types",
            &json!({
                "name": "evil.markup",
                "category": "<b>category</b>",
                "description": "<script>alert(1)</script>",
                "schema": {"type": "object", "description": "</pre><img src=x onerror=alert(2)>"},
                "sample_data": {"html": "<script>alert(3)</script>"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let event = app
        .publish(
            json!({"type": "evil.markup", "subject": "<img src=x onerror=alert(4)>",
            "data": {"html": "</code></pre><script>alert(5)</script>"}}),
        )
        .await;
    let id = event["id"].as_str().unwrap();
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;

    let types = browser.get("/tenants/ten_default/event-types").await;
    assert_eq!(types.status, StatusCode::OK, "{}", types.body);
    assert!(types.body.contains("evil.markup"));
    assert!(
        types.body.contains("title=\"user.created\""),
        "the catalog too"
    );
    assert!(types.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(types.body.contains("&lt;b&gt;category&lt;/b&gt;"));
    assert!(
        types
            .body
            .contains("&lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;")
    );
    assert!(types.body.contains("&lt;script&gt;alert(3)&lt;/script&gt;"));
    let found = browser.get("/tenants/ten_default/event-types?q=evil").await;
    assert!(found.body.contains("evil.markup"));
    assert!(
        !found.body.contains("title=\"user.created\""),
        "the search narrows the list"
    );

    let log = browser.get("/tenants/ten_default/events").await;
    let shown = browser
        .get(&format!("/tenants/ten_default/events/{id}"))
        .await;
    assert!(
        shown
            .body
            .contains("&lt;/code&gt;&lt;/pre&gt;&lt;script&gt;alert(5)")
    );
    for (what, page) in [("types", &types), ("log", &log), ("event", &shown)] {
        assert_eq!(page.status, StatusCode::OK, "{what}");
        assert!(
            !page.body.contains("<script>alert"),
            "{what}: {}",
            page.body
        );
        assert!(!page.body.contains("<img"), "{what}: {}", page.body);
        assert!(!page.body.contains("<b>"), "{what}: {}", page.body);
    }
    assert!(log.body.contains("&lt;img src=x onerror=alert(4)&gt;"));
}

#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn on_two_nodes_sharing_a_database_a_link_signs_in_once() {
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let database = postgres_database().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| {
            start_server(
                dir.path(),
                &[
                    ("HERALD_DATABASE_URL", &database.url),
                    ("HERALD_SECRET_KEY", KEY),
                ],
            )
        })
        .collect();
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/v1/tenants/ten_default/console-link",
            nodes[0].base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"scopes": ["read:event_streams"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let link: Value = answer.json().await.unwrap();
    let url = link["url"].as_str().unwrap();
    let path = url
        .strip_prefix(&nodes[0].base)
        .expect("a link to the node asked");

    // The same link opened on both nodes at once: one signs in, the other is refused.
    let browsers: Vec<Browser> = nodes.iter().map(|node| Browser::at(&node.base)).collect();
    let mut forms = Vec::new();
    for browser in &browsers {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        forms.push([("csrf", page.hidden("csrf"))]);
    }
    let forms: Vec<[(&str, &str); 1]> = forms
        .iter()
        .map(|[(name, value)]| [(*name, value.as_str())])
        .collect();
    let (a, b) = tokio::join!(
        browsers[0].post(path, &forms[0]),
        browsers[1].post(path, &forms[1]),
    );
    let mut statuses = vec![a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::SEE_OTHER, StatusCode::GONE]);
    let winner = if a.status == StatusCode::SEE_OTHER {
        0
    } else {
        1
    };
    assert_eq!(
        browsers[winner]
            .get("/tenants/ten_default/streams")
            .await
            .status,
        StatusCode::OK
    );
    // Later, on either node, it is refused.
    for node in &nodes {
        assert!(refused_link(
            &open_link(&Browser::at(&node.base), path).await
        ));
    }
}

#[tokio::test]
async fn withdrawing_a_tenants_links_ends_their_sessions_and_nothing_else() {
    let app = spawn_app().await;
    let (_, acme_token) = tenant_with_token(&app, "ten_acme", &["read:event_streams"]).await;
    tenant_with_token(&app, "ten_other", &["read:event_streams"]).await;
    let scopes = json!({"scopes": ["read:event_streams"]});

    let (_, opened) = issue_link(&app, ADMIN_TOKEN, "ten_acme", scopes.clone()).await;
    let (_, unopened) = issue_link(&app, ADMIN_TOKEN, "ten_acme", scopes.clone()).await;
    let (_, elsewhere) = issue_link(&app, ADMIN_TOKEN, "ten_other", scopes.clone()).await;
    let by_link = Browser::new(&app);
    assert_eq!(
        open_link(&by_link, &link_path(&app, &opened)).await.status,
        StatusCode::SEE_OTHER
    );
    let other_link = Browser::new(&app);
    assert_eq!(
        open_link(&other_link, &link_path(&app, &elsewhere))
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let by_token = Browser::signed_in(&app, &acme_token).await;
    let acme = "/tenants/ten_acme/streams";

    // Only a platform token with `manage:tenants` may withdraw.
    let (status, _) = app
        .request_as(
            &acme_token,
            reqwest::Method::DELETE,
            "/v1/tenants/ten_acme/console-link",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(by_link.get(acme).await.status, StatusCode::OK);

    let (status, body) = app.delete("/v1/tenants/ten_acme/console-link").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"withdrawn_links": 1, "ended_sessions": 1}));
    assert!(
        by_link.get(acme).await.to_sign_in(),
        "the link's session ended"
    );
    assert!(refused_link(
        &open_link(&Browser::new(&app), &link_path(&app, &unopened)).await
    ));
    // A session opened with a token, and another tenant's link session, go on.
    assert_eq!(by_token.get(acme).await.status, StatusCode::OK);
    assert_eq!(
        other_link.get("/tenants/ten_other/streams").await.status,
        StatusCode::OK
    );
    let (status, _) = app.delete("/v1/tenants/ten_nobody/console-link").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn link_sessions_of_different_tenants_do_not_share_a_test_allowance() {
    let app = spawn_app_with(|c| c.stream_tests_per_minute_per_token = 2).await;
    let receiver = Receiver::start().await;
    let scopes = json!({"scopes": ["create:event_streams", "read:event_streams"]});
    let mut sessions = Vec::new();
    for tenant in ["ten_a", "ten_b"] {
        tenant_with_token(&app, tenant, &["read:event_streams"]).await;
        let (_, link) = issue_link(&app, ADMIN_TOKEN, tenant, scopes.clone()).await;
        let browser = Browser::new(&app);
        assert_eq!(
            open_link(&browser, &link_path(&app, &link)).await.status,
            StatusCode::SEE_OTHER
        );
        sessions.push((browser, format!("/tenants/{tenant}/streams/new")));
    }
    let test = |browser: &Browser, path: String| {
        let url = receiver.url.clone();
        let browser = browser.http.clone();
        let base = app.url("");
        async move {
            let form = browser.get(format!("{base}{path}")).send().await.unwrap();
            let body = form.text().await.unwrap();
            let marker = "name=\"csrf\" value=\"";
            let start = body.find(marker).unwrap() + marker.len();
            let csrf = body[start..start + body[start..].find('"').unwrap()].to_string();
            browser
                .post(format!("{base}{path}"))
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("webhook_url", url.as_str()),
                    ("event", "user.created"),
                    ("intent", "test"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let (a, a_path) = &sessions[0];
    let (b, b_path) = &sessions[1];
    assert_eq!(test(a, a_path.clone()).await, StatusCode::OK);
    assert_eq!(test(a, a_path.clone()).await, StatusCode::OK);
    assert_eq!(test(a, a_path.clone()).await, StatusCode::TOO_MANY_REQUESTS);
    // Tenant B's session, and the platform's own token, keep their allowances.
    assert_eq!(test(b, b_path.clone()).await, StatusCode::OK);
    let (status, body) = app
        .post(
            "/v1/event-streams/test",
            &json!({"destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}},
                    "event_type": "user.created"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_navigation_offers_only_the_pages_the_token_can_open() {
    let app = spawn_app().await;
    let (_, reader) = tenant_with_token(&app, "ten_nav", &["read:event_streams"]).await;
    let narrow = Browser::signed_in(&app, &reader).await;
    let page = narrow.get("/tenants/ten_nav/streams").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(">Event types</a>"), "{}", page.body);
    assert!(!page.body.contains(">Event log</a>"), "{}", page.body);
    assert!(!page.body.contains(">Tokens</a>"), "{}", page.body);

    let admin = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let page = admin.get("/tenants/ten_nav/streams").await;
    for link in [">Event log</a>", ">Tokens</a>", ">Tenants</a>"] {
        assert!(page.body.contains(link), "{link}");
    }
}
