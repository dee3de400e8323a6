//! The web console against the real server: signing in and out with a token, sessions that
//! end (revoked token, idle, absolute lifetime), CSRF tokens on forms, tenant isolation,
//! escaping, the security headers, and status changes the API then sees. A browser here is a
//! reqwest client that keeps cookies and does not follow redirects, so each answer is seen.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::cookie::CookieStore;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::*;

const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// A browser: its own cookie jar, redirects left to the test.
pub(crate) struct Browser {
    pub(crate) http: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    pub(crate) base: String,
}

impl Browser {
    pub(crate) fn new(app: &TestApp) -> Browser {
        Browser::at(&app.url(""))
    }

    /// A browser of the server at `base` (`http://127.0.0.1:port`).
    pub(crate) fn at(base: &str) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser {
            http,
            jar,
            base: base.to_string(),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Page {
        Page::read(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        Page::read(
            self.http
                .post(format!("{}{path}", self.base))
                .form(form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Opens the sign-in page and submits `token` with the form's CSRF token.
    pub(crate) async fn sign_in(&self, token: &str) -> Page {
        let form = self.get("/sign-in").await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let csrf = form.hidden("csrf");
        self.post("/sign-in", &[("token", token), ("csrf", &csrf)])
            .await
    }

    /// Signs in and follows the redirect to the first page.
    pub(crate) async fn signed_in(app: &TestApp, token: &str) -> Browser {
        let browser = Browser::new(app);
        let answer = browser.sign_in(token).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        browser
    }

    /// The session cookie the browser holds, as it would send it.
    pub(crate) fn cookies(&self) -> String {
        self.jar
            .cookies(&self.base.parse().unwrap())
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// The CSRF token of the forms on `path`.
    pub(crate) async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        page.hidden("csrf")
    }
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) async fn read(response: reqwest::Response) -> Page {
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub(crate) fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no location in a {} answer", self.status))
    }

    pub(crate) fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// The value of the first hidden field named `name`.
    pub(crate) fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
            + marker.len();
        let end = start + self.body[start..].find('"').unwrap();
        self.body[start..end].to_string()
    }

    /// Whether the answer sends the browser to sign in.
    pub(crate) fn to_sign_in(&self) -> bool {
        self.status == StatusCode::SEE_OTHER && self.location() == "/sign-in"
    }
}

/// A tenant, and a token of it with `scopes`: (its id, its secret).
pub(crate) async fn tenant_with_token(
    app: &TestApp,
    tenant: &str,
    scopes: &[&str],
) -> (String, String) {
    let (status, body) = app
        .post("/v1/tenants", &json!({"id": tenant, "name": tenant}))
        .await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::CONFLICT,
        "{body}"
    );
    token_of(app, tenant, scopes).await
}

pub(crate) async fn token_of(app: &TestApp, tenant: &str, scopes: &[&str]) -> (String, String) {
    app.token_in(tenant, &format!("{tenant} admin"), scopes)
        .await
}

/// A webhook stream named `name` in `tenant`; its id. Nothing is sent unless an event is
/// published to it.
pub(crate) async fn stream_in(app: &TestApp, tenant: &str, name: &str) -> String {
    let (status, body) = app
        .request_in(
            tenant,
            reqwest::Method::POST,
            "/v1/event-streams",
            Some(&json!({
                "name": name,
                "subscriptions": [{"event_type": "user.created"}],
                "destination": {"type": "webhook", "configuration": {
                    "webhook_endpoint": "http://127.0.0.1:9/hook",
                    "webhook_authorization": {"method": "bearer", "token": "bearer-secret-value"},
                }},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

pub(crate) async fn api_stream(app: &TestApp, tenant: &str, id: &str) -> Value {
    let (status, body) = app
        .request_in(
            tenant,
            reqwest::Method::GET,
            &format!("/v1/event-streams/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub(crate) const ALL_STREAM_SCOPES: &[&str] = &[
    "read:event_streams",
    "update:event_streams",
    "read:event_deliveries",
];

#[tokio::test]
async fn a_good_token_opens_a_session_and_a_bad_one_does_not() {
    let app = spawn_app().await;
    let browser = Browser::new(&app);

    let home = browser.get("/").await;
    assert!(home.to_sign_in(), "{}", home.status);
    let form = browser.get("/sign-in").await;
    assert!(form.body.contains("<label for=\"token\">Token</label>"));
    assert!(form.body.contains(">Sign in</button>"));

    let refused = browser.sign_in("hrd_not_a_token").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.body.contains("This token is not valid"),
        "{}",
        refused.body
    );
    assert!(
        !refused
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("herald_session=")),
        "{:?}",
        refused.set_cookies()
    );
    assert!(
        browser
            .get("/tenants/ten_default/streams")
            .await
            .to_sign_in()
    );

    let signed = browser.sign_in(ADMIN_TOKEN).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    assert_eq!(signed.location(), "/tenants/ten_default/streams");
    let cookie = signed
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("herald_session="))
        .expect("a session cookie")
        .to_string();
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(!cookie.contains(ADMIN_TOKEN), "{cookie}");
    let session_id = cookie["herald_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let streams = browser.get("/tenants/ten_default/streams").await;
    assert_eq!(streams.status, StatusCode::OK, "{}", streams.body);
    assert!(streams.body.contains("<h1>Event streams</h1>"));
    let home = browser.get("/").await;
    assert_eq!(home.location(), "/tenants/ten_default/streams");

    // The store keeps the session id's hash, never the id.
    if std::env::var("HERALD_TEST_APP_DATABASE").as_deref() != Ok("postgres") {
        let conn =
            rusqlite::Connection::open(app.data_dir().join(herald::config::DATABASE_FILE)).unwrap();
        let hashes: Vec<Vec<u8>> = conn
            .prepare("SELECT hash FROM console_sessions")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            hashes,
            vec![herald::store::hash_token(&session_id).to_vec()]
        );
    }
}

#[tokio::test]
async fn over_tls_the_cookies_are_secure_and_host_bound() {
    let app = spawn_app().await;
    // By hand: a cookie jar would (rightly) keep `Secure` cookies from a plain-http server.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = Page::read(
        http.get(app.url("/sign-in"))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let nonce = form
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-herald_sign_in="))
        .expect("a sign-in cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let signed = Page::read(
        http.post(app.url("/sign-in"))
            .header("x-forwarded-proto", "https")
            .header("cookie", &nonce)
            .form(&[("token", ADMIN_TOKEN), ("csrf", &form.hidden("csrf"))])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    let cookie = signed
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-herald_session="))
        .expect("a secure session cookie")
        .to_string();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert!(cookie.contains("; HttpOnly; SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();

    let page = |proto: &'static str| {
        http.get(app.url("/tenants/ten_default/streams"))
            .header("x-forwarded-proto", proto)
            .header("cookie", &session)
            .send()
    };
    assert_eq!(page("https").await.unwrap().status(), StatusCode::OK);
    // The secure cookie's name is not the one a plain-http request is read for.
    assert_eq!(page("http").await.unwrap().status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn revoking_the_token_ends_its_sessions() {
    let app = spawn_app().await;
    let (token_id, token) = tenant_with_token(&app, "ten_acme", ALL_STREAM_SCOPES).await;
    let browser = Browser::signed_in(&app, &token).await;
    let other = Browser::signed_in(&app, ADMIN_TOKEN).await;
    assert_eq!(
        browser.get("/tenants/ten_acme/streams").await.status,
        StatusCode::OK
    );

    let (status, _) = app
        .request_in(
            "ten_acme",
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let ended = browser.get("/tenants/ten_acme/streams").await;
    assert!(ended.to_sign_in(), "{} {}", ended.status, ended.body);
    assert!(
        ended
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("herald_session=;") && c.contains("Max-Age=0")),
        "the cookie is cleared: {:?}",
        ended.set_cookies()
    );
    // Signing in again with it is refused; another token's session is untouched.
    assert_eq!(
        browser.sign_in(&token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        other.get("/tenants/ten_acme/streams").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_session_ends_when_idle_and_at_its_absolute_lifetime() {
    let app = spawn_app().await;
    let page = "/tenants/ten_default/streams";
    let minutes = |n: u64| Duration::from_secs(n * 60);

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    // Used within 30 minutes each time, it stays open...
    for _ in 0..3 {
        app.clock.advance(minutes(29));
        assert_eq!(browser.get(page).await.status, StatusCode::OK);
    }
    // ... and 30 minutes without use end it.
    app.clock.advance(minutes(30));
    assert!(browser.get(page).await.to_sign_in());

    // However much it is used, it ends 12 hours after signing in.
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let mut used = Duration::ZERO;
    while used + minutes(25) < Duration::from_secs(12 * 3600) {
        app.clock.advance(minutes(25));
        used += minutes(25);
        let answer = browser.get(page).await;
        assert_eq!(answer.status, StatusCode::OK, "after {used:?}");
    }
    app.clock.advance(Duration::from_secs(12 * 3600) - used);
    assert!(browser.get(page).await.to_sign_in());
}

#[tokio::test]
async fn signing_out_deletes_the_session() {
    let app = spawn_app().await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let page = "/tenants/ten_default/streams";
    let csrf = browser.csrf(page).await;
    let cookie = browser.cookies();
    assert!(cookie.contains("herald_session=hcs_"), "{cookie}");

    // Without the form's CSRF token, signing out is refused too.
    let refused = browser.post("/sign-out", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.get(page).await.status, StatusCode::OK);

    let out = browser.post("/sign-out", &[("csrf", &csrf)]).await;
    assert!(out.to_sign_in(), "{} {}", out.status, out.body);
    assert!(
        out.set_cookies()
            .iter()
            .any(|c| c.starts_with("herald_session=;") && c.contains("Max-Age=0"))
    );
    assert!(browser.get(page).await.to_sign_in());
    // The session is gone from the store, not only from the browser.
    let replayed = app
        .http
        .get(app.url(page))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.url().path(), "/sign-in");
}

#[tokio::test]
async fn a_form_without_this_sessions_csrf_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let id = stream_in(&app, "ten_default", "guarded").await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let path = format!("/tenants/ten_default/streams/{id}");
    let action = format!("{path}/status");
    let csrf = browser.csrf(&path).await;
    // A token of another session: valid there, not here.
    let elsewhere = Browser::signed_in(&app, ADMIN_TOKEN)
        .await
        .csrf(&path)
        .await;
    assert_ne!(csrf, elsewhere);

    for form in [
        vec![("status", "paused")],
        vec![("status", "paused"), ("csrf", "")],
        vec![("status", "paused"), ("csrf", "bm90IHRoZSB0b2tlbg")],
        vec![("status", "paused"), ("csrf", &elsewhere)],
    ] {
        let refused = browser.post(&action, &form).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{form:?}");
        assert!(
            refused.body.contains("Reload the page"),
            "the page says what to do: {}",
            refused.body
        );
        assert_eq!(
            api_stream(&app, "ten_default", &id).await["status"],
            "enabled"
        );
    }
    // A sign-in form without its token is refused as well.
    let fresh = Browser::new(&app);
    fresh.get("/sign-in").await;
    let refused = fresh.post("/sign-in", &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(fresh.get("/").await.to_sign_in());

    let accepted = browser
        .post(&action, &[("status", "paused"), ("csrf", &csrf)])
        .await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.body);
    assert_eq!(
        api_stream(&app, "ten_default", &id).await["status"],
        "paused"
    );
}

#[tokio::test]
async fn a_tenant_token_sees_only_its_own_tenant() {
    let app = spawn_app().await;
    let (_, token) = tenant_with_token(&app, "ten_a", ALL_STREAM_SCOPES).await;
    tenant_with_token(&app, "ten_b", ALL_STREAM_SCOPES).await;
    let a_stream = stream_in(&app, "ten_a", "stream of a").await;
    let b_stream = stream_in(&app, "ten_b", "stream of b").await;

    let browser = Browser::new(&app);
    let signed = browser.sign_in(&token).await;
    assert_eq!(signed.location(), "/tenants/ten_a/streams");
    let own = browser.get("/tenants/ten_a/streams").await;
    assert_eq!(own.status, StatusCode::OK);
    assert!(own.body.contains("stream of a"));
    assert!(!own.body.contains("stream of b"));
    assert!(!own.body.contains("href=\"/tenants\""), "no tenants link");
    let csrf = own.hidden("csrf");

    for path in [
        "/tenants/ten_b/streams".to_string(),
        format!("/tenants/ten_b/streams/{b_stream}"),
        format!("/tenants/ten_a/streams/{b_stream}"),
        "/tenants/ten_nope/streams".to_string(),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.body.contains("stream of b"), "{path}");
        assert!(!page.body.contains("ten_b"), "{path}: {}", page.body);
    }
    for path in [
        format!("/tenants/ten_b/streams/{b_stream}/status"),
        format!("/tenants/ten_a/streams/{b_stream}/status"),
    ] {
        let refused = browser
            .post(&path, &[("status", "paused"), ("csrf", &csrf)])
            .await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        api_stream(&app, "ten_b", &b_stream).await["status"],
        "enabled"
    );

    let tenants = browser.get("/tenants").await;
    assert_eq!(tenants.status, StatusCode::FORBIDDEN);
    assert!(!tenants.body.contains("ten_b"), "{}", tenants.body);
    assert_eq!(
        browser
            .get(&format!("/tenants/ten_a/streams/{a_stream}"))
            .await
            .status,
        StatusCode::OK
    );

    // The platform admin sees every tenant and switches between them.
    let admin = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let tenants = admin.get("/tenants").await;
    assert_eq!(tenants.status, StatusCode::OK);
    assert!(tenants.body.contains("href=\"/tenants/ten_a/streams\""));
    assert!(tenants.body.contains("href=\"/tenants/ten_b/streams\""));
    assert!(tenants.body.contains("id=\"tenant-picker\""), "the picker");
    let switched = admin.get("/switch-tenant?tenant=ten_b").await;
    assert_eq!(switched.location(), "/tenants/ten_b/streams");
    let b_page = admin.get("/tenants/ten_b/streams").await;
    assert_eq!(b_page.status, StatusCode::OK);
    assert!(b_page.body.contains("stream of b"));
}

#[tokio::test]
async fn names_render_as_text() {
    let app = spawn_app().await;
    let script = "<script>alert(1)</script>";
    let id = stream_in(&app, "ten_default", script).await;
    let (status, body) = app
        .post(
            "/v1/tenants",
            &json!({"id": "ten_markup", "name": "<img src=x onerror=alert(2)>"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;

    for path in [
        "/tenants/ten_default/streams".to_string(),
        format!("/tenants/ten_default/streams/{id}"),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {}",
            page.body
        );
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
    }
    let tenants = browser.get("/tenants").await;
    assert!(tenants.body.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(!tenants.body.contains("<img"), "{}", tenants.body);
    // The stream's page shows that its credentials are set, never their values.
    let page = browser
        .get(&format!("/tenants/ten_default/streams/{id}"))
        .await;
    assert!(
        page.body
            .contains("Bearer token</dt><dd><span class=\"set\">set</span>")
    );
    assert!(
        page.body
            .contains("Signing secret</dt><dd><span class=\"set\">set</span>")
    );
    assert!(!page.body.contains("bearer-secret-value"));
    assert!(!page.body.contains("whsec_"));
}

#[tokio::test]
async fn every_console_answer_carries_the_security_headers() {
    let app = spawn_app().await;
    let id = stream_in(&app, "ten_default", "headers").await;
    let anonymous = Browser::new(&app);
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let stream = format!("/tenants/ten_default/streams/{id}");

    let mut answers = vec![
        ("anonymous /", anonymous.get("/").await),
        ("sign-in page", anonymous.get("/sign-in").await),
        ("refused sign-in", anonymous.sign_in("hrd_nope").await),
        ("stylesheet", anonymous.get("/assets/console.css").await),
        (
            "page without a session",
            anonymous.get("/tenants/ten_default/streams").await,
        ),
        ("/", browser.get("/").await),
        ("streams", browser.get("/tenants/ten_default/streams").await),
        ("stream", browser.get(&stream).await),
        ("tenants", browser.get("/tenants").await),
        ("not found", browser.get("/tenants/ten_nope/streams").await),
        (
            "forged form",
            browser
                .post(&format!("{stream}/status"), &[("status", "paused")])
                .await,
        ),
    ];
    let csrf = browser.csrf(&stream).await;
    answers.push((
        "form",
        browser
            .post(
                &format!("{stream}/status"),
                &[("status", "paused"), ("csrf", &csrf)],
            )
            .await,
    ));
    answers.push((
        "sign-out",
        browser.post("/sign-out", &[("csrf", &csrf)]).await,
    ));
    let expected = [
        (200, "sign-in page"),
        (401, "refused sign-in"),
        (303, "form"),
        (403, "forged form"),
        (404, "not found"),
    ];
    for (what, answer) in &answers {
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            header("content-security-policy").as_deref(),
            Some(CSP),
            "{what}"
        );
        assert_eq!(
            header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(
            header("referrer-policy").as_deref(),
            Some("same-origin"),
            "{what}"
        );
        // No page relies on what the policy forbids: its one script is the console's own file.
        let scripts: Vec<&str> = answer
            .body
            .match_indices("<script")
            .map(|(i, _)| &answer.body[i..])
            .collect();
        for script in scripts {
            assert!(
                script.starts_with(r#"<script src="/assets/console.js" defer></script>"#),
                "{what}: {script}"
            );
        }
        assert!(!answer.body.contains("<style"), "{what}");
        assert!(!answer.body.contains(" style="), "{what}");
        if let Some((status, _)) = expected.iter().find(|(_, w)| w == what) {
            assert_eq!(answer.status.as_u16(), *status, "{what}");
        }
    }
    let css = &answers[3].1;
    assert_eq!(
        css.headers["content-type"].to_str().unwrap(),
        "text/css; charset=utf-8"
    );
    assert!(css.body.contains(".badge"));
}

#[tokio::test]
async fn status_changes_through_the_console_are_what_the_api_sees() {
    let app = spawn_app().await;
    let id = stream_in(&app, "ten_default", "switched").await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let path = format!("/tenants/ten_default/streams/{id}");
    let action = format!("{path}/status");
    let csrf = browser.csrf(&path).await;
    let post = |status: &'static str, backlog: Option<&'static str>| {
        let mut form = vec![("status", status), ("csrf", csrf.as_str())];
        form.extend(backlog.map(|b| ("backlog", b)));
        let (browser, action, path) = (&browser, &action, &path);
        async move {
            let answer = browser.post(action, &form).await;
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
            assert_eq!(answer.location(), path);
        }
    };

    post("paused", None).await;
    assert_eq!(
        api_stream(&app, "ten_default", &id).await["status"],
        "paused"
    );
    // Paused, it keeps what comes as a backlog, which its page shows.
    let event = app
        .publish(json!({"type": "user.created", "data": {"user_id": "u1"}}))
        .await;
    let page = browser.get(&path).await;
    assert!(
        page.body.contains("<strong>paused</strong>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("1 pending delivery"), "{}", page.body);
    assert!(page.body.contains("Deliver the backlog (1 pending)"));
    assert!(
        page.body.contains(event["id"].as_str().unwrap()),
        "recent deliveries"
    );

    // Enabled again skipping to now: the backlog is cancelled, as the API tells.
    post("enabled", Some("skip")).await;
    assert_eq!(
        api_stream(&app, "ten_default", &id).await["status"],
        "enabled"
    );
    let deliveries = app.deliveries(&id, event["id"].as_str().unwrap()).await;
    assert_eq!(deliveries[0]["status"], "cancelled", "{deliveries:?}");

    post("disabled", None).await;
    assert_eq!(
        api_stream(&app, "ten_default", &id).await["status"],
        "disabled"
    );
    let listed = browser.get("/tenants/ten_default/streams").await;
    assert!(
        listed
            .body
            .contains("<span class=\"badge disabled\">disabled</span>")
    );
}

#[tokio::test]
async fn a_refused_change_shows_the_services_message_beside_the_form() {
    let app = spawn_app().await;
    let id = stream_in(&app, "ten_default", "read only").await;
    let (_, token) = token_of(&app, "ten_default", &["read:event_streams"]).await;
    let browser = Browser::signed_in(&app, &token).await;
    let path = format!("/tenants/ten_default/streams/{id}");
    let csrf = browser.csrf(&path).await;

    let refused = browser
        .post(
            &format!("{path}/status"),
            &[("status", "paused"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains(
            "id=\"status-error\" role=\"alert\">this token lacks the `update:event_streams` \
             scope</p><div class=\"actions\">"
        ),
        "{}",
        refused.body
    );
    // Still the stream's page, with what the token may see.
    assert!(refused.body.contains(">Pause</button>"));
    assert!(
        refused
            .body
            .contains("lacks the `read:event_deliveries` scope")
    );
    assert_eq!(
        api_stream(&app, "ten_default", &id).await["status"],
        "enabled"
    );
}

#[tokio::test]
async fn console_requests_spend_the_tokens_request_allowance() {
    let app = spawn_app_with(|c| {
        c.token_rate_limit_per_second = 1;
        c.token_rate_limit_burst = 3;
    })
    .await;
    let (_, token) = tenant_with_token(&app, "ten_busy", &["read:event_streams"]).await;
    let browser = Browser::signed_in(&app, &token).await;
    let page = "/tenants/ten_busy/streams";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer = browser.get(page).await;
        statuses.push(answer.status);
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(answer.headers.get("retry-after").is_some());
            assert!(
                answer.body.contains("token_rate_limit_per_second"),
                "{}",
                answer.body
            );
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // The API and the console share the token's allowance; it comes back with time.
    let (status, _) = app
        .request_as(&token, reqwest::Method::GET, "/v1/event-streams", None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    app.clock.advance(Duration::from_secs(2));
    assert_eq!(browser.get(page).await.status, StatusCode::OK);

    // The platform's admin is exempt, as on the API.
    let admin = Browser::signed_in(&app, ADMIN_TOKEN).await;
    for _ in 0..5 {
        assert_eq!(admin.get(page).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn over_tls_two_signing_in_pages_open_at_once_both_sign_in() {
    let app = spawn_app().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |tls: bool, cookie: Option<String>| {
        let mut request = http.get(app.url("/sign-in"));
        if tls {
            request = request.header("x-forwarded-proto", "https");
        }
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        async move { Page::read(request.send().await.unwrap()).await }
    };
    let nonce_of = |page: &Page| {
        page.set_cookies()
            .into_iter()
            .find(|c| c.contains("herald_sign_in="))
            .expect("a sign-in cookie")
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };

    // Over TLS the second page keeps the nonce the browser holds: the first tab's form
    // still signs in after the second tab opened.
    let first = page(true, None).await;
    let nonce = nonce_of(&first);
    let second = page(true, Some(nonce.clone())).await;
    assert_eq!(nonce_of(&second), nonce);
    let signed = Page::read(
        http.post(app.url("/sign-in"))
            .header("x-forwarded-proto", "https")
            .header("cookie", &nonce)
            .form(&[("token", ADMIN_TOKEN), ("csrf", &first.hidden("csrf"))])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);

    // Over plain http, where a cookie may be planted, every page makes its own.
    let first = page(false, None).await;
    let nonce = nonce_of(&first);
    let second = page(false, Some(nonce.clone())).await;
    assert_ne!(nonce_of(&second), nonce);
    // A planted value is never taken, even over TLS.
    let planted = page(true, Some("__Host-herald_sign_in=short".into())).await;
    assert_ne!(nonce_of(&planted), "__Host-herald_sign_in=short");
}
