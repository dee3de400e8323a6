//! The console's figures against real deliveries: the streams list's success rate over the
//! last 24 hours and its sparkline, read for every stream at once; a stream's charts of
//! success rate and latency per hour (read through their accessible titles and descriptions,
//! never their pixels), 24 hours or 7 days, with the clock moved across hours; and its
//! signing secret, revealed on demand and rotated, as the next delivery's signature shows.

use std::time::Duration;

use herald::clock::Clock;
use herald::event::format_time;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console::{Browser, Page, stream_in, tenant_with_token};
use crate::helpers::*;

const HOUR: Duration = Duration::from_secs(3600);
const HOUR_MS: i64 = 3_600_000;
const STREAMS: &str = "/tenants/ten_default/streams";

fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

/// An hour as the charts name it.
fn utc(hour: i64) -> String {
    format!("{} UTC", &format_time(hour)[11..16])
}

/// An hour with its date, as the 7-day charts name it.
fn dated(hour: i64) -> String {
    let time = format_time(hour);
    format!("{} {} UTC", &time[..10], &time[11..16])
}

/// Milliseconds as the charts write them.
fn millis(ms: f64) -> String {
    if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The list's row for stream `id`.
fn row<'a>(page: &'a Page, id: &str) -> &'a str {
    let link = page
        .body
        .find(&format!("/streams/{id}\""))
        .unwrap_or_else(|| panic!("no row for {id} in {}", page.body));
    let start = page.body[..link].rfind("<tr>").unwrap();
    let end = start + page.body[start..].find("</tr>").unwrap();
    &page.body[start..end]
}

/// The text of the element that opens with `opening` (up to its closing `</{tag}>`).
fn element<'a>(page: &'a Page, opening: &str, tag: &str) -> &'a str {
    let start = page
        .body
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening} in {}", page.body))
        + opening.len();
    let end = start + page.body[start..].find(&format!("</{tag}>")).unwrap();
    &page.body[start..end]
}

/// A webhook stream to the receiver whose failures are final at once.
async fn stream_to(app: &TestApp, receiver: &Receiver, extra: Value) -> String {
    let mut fields = json!({"retry_policy": {"max_attempts": 1}});
    if let (Value::Object(base), Value::Object(more)) = (&mut fields, extra) {
        base.extend(more);
    }
    let stream = app
        .create_stream(&receiver.url, &["user.created"], fields)
        .await;
    stream["id"].as_str().unwrap().to_string()
}

/// Publishes event `id`, which the receiver answers with `reply`, and waits until its
/// delivery to `stream` is `status`.
async fn deliver(
    app: &TestApp,
    receiver: &Receiver,
    stream: &str,
    id: &str,
    reply: Reply,
    status: &str,
) {
    receiver.script([reply]);
    app.publish(json!({"id": id, "type": "user.created"})).await;
    app.wait_for_delivery(stream, id, |d| d["status"] == status)
        .await;
}

#[tokio::test]
async fn the_list_and_the_charts_show_the_success_rate_and_latency_of_real_deliveries() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = stream_to(&app, &receiver, json!({})).await;
    // Paused: its deliveries wait, so it has a backlog and no outcome.
    let waiting = stream_to(&app, &receiver, json!({"status": "paused"})).await;
    let first = hour_of(app.clock.now_ms());
    let second = first + HOUR_MS;

    // The first hour: one success, one failure. The second: two successes, one slow.
    deliver(
        &app,
        &receiver,
        &stream,
        "e1",
        Reply::status(200),
        "succeeded",
    )
    .await;
    deliver(&app, &receiver, &stream, "e2", Reply::status(400), "failed").await;
    app.clock.advance(HOUR);
    deliver(
        &app,
        &receiver,
        &stream,
        "e3",
        Reply::status(200),
        "succeeded",
    )
    .await;
    // The receiver holds this answer back: an attempt between 500 ms and 1 s.
    let slow = Reply::status(200).delayed(Duration::from_millis(650));
    deliver(&app, &receiver, &stream, "e4", slow, "succeeded").await;

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = browser.get(STREAMS).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let figures = "Success rate over the last 24 hours: 75% (3 of 4 finished deliveries succeeded)";
    let cells = row(&list, &stream);
    assert!(cells.contains("role=\"img\""), "{cells}");
    assert!(
        cells.contains(&format!("aria-label=\"{figures}\"")),
        "{cells}"
    );
    assert!(
        cells.contains(&format!("<title>{figures}</title>")),
        "{cells}"
    );
    assert!(cells.contains("<span class=\"rate\">75%</span>"), "{cells}");
    let cells = row(&list, &waiting);
    assert!(
        cells.contains("<td class=\"num\">4"),
        "four pending: {cells}"
    );
    assert!(
        cells.contains("No deliveries finished in the last 24 hours"),
        "{cells}"
    );
    assert!(!cells.contains("<svg"), "{cells}");

    // The stream's charts say the same figures per hour, and the API's `/stats` agrees.
    let path = format!("{STREAMS}/{stream}");
    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        element(&page, "<title id=\"success-chart-title\">", "title"),
        "Success rate per hour, last 24 hours"
    );
    assert_eq!(
        element(&page, "<desc id=\"success-chart-description\">", "desc"),
        format!(
            "Overall 75% (3 of 4 finished deliveries succeeded). {}: 50% (1 of 2); {}: 100% (2 of 2).",
            utc(first),
            utc(second)
        )
    );
    assert!(
        page.body
            .contains(&format!("<title>{}: 50% (1 of 2)</title>", utc(first)))
    );
    for label in ["Hour (UTC)", "Success rate", "Latency (ms)"] {
        assert!(page.body.contains(&format!(">{label}</text>")), "{label}");
    }

    let (status, stats) = app.get(&format!("/v1/event-streams/{stream}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let hours = stats["by_hour"].as_array().unwrap();
    assert_eq!(hours.len(), 2, "{stats}");
    let latency = element(&page, "<desc id=\"latency-chart-description\">", "desc");
    let mut expected = Vec::new();
    for (hour, figures) in [first, second].iter().zip(hours) {
        let ms = |q: &str| millis(figures["latency_ms"][q].as_f64().unwrap());
        expected.push(format!(
            "{}: p50 {}, p95 {}, p99 {}",
            utc(*hour),
            ms("p50"),
            ms("p95"),
            ms("p99")
        ));
    }
    assert_eq!(
        latency,
        format!("4 attempts in all. {}.", expected.join("; "))
    );
    // In the second hour one attempt of two took 500 ms to 1 s: its p95 and p99 fall in that
    // bucket, at 90% and 98% of it.
    assert!(
        latency.contains(&format!("{}: p50 ", utc(second)))
            && latency.ends_with(", p95 950 ms, p99 990 ms."),
        "{latency}"
    );
    assert!(
        page.body
            .contains(&format!("<title>{} p99: 990 ms</title>", utc(second))),
        "{}",
        page.body
    );

    // A day later the first hour has left the last 24 hours, but not the last 7 days. (The
    // session has ended meanwhile.)
    app.clock.advance(24 * HOUR);
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = browser.get(STREAMS).await;
    assert!(
        row(&list, &stream).contains(
            "<title>Success rate over the last 24 hours: 100% (2 of 2 finished deliveries succeeded)</title>"
        ),
        "{}",
        list.body
    );
    let page = browser.get(&path).await;
    assert_eq!(
        element(&page, "<desc id=\"success-chart-description\">", "desc"),
        format!(
            "Overall 100% (2 of 2 finished deliveries succeeded). {}: 100% (2 of 2).",
            utc(second)
        )
    );
    let week = browser.get(&format!("{path}?range=7d")).await;
    assert_eq!(week.status, StatusCode::OK, "{}", week.body);
    assert_eq!(
        element(&week, "<title id=\"success-chart-title\">", "title"),
        "Success rate per hour, last 7 days"
    );
    assert_eq!(
        element(&week, "<desc id=\"success-chart-description\">", "desc"),
        format!(
            "Overall 75% (3 of 4 finished deliveries succeeded). {}: 50% (1 of 2); {}: 100% (2 of 2).",
            dated(first),
            dated(second)
        )
    );
    assert!(
        week.body.contains("<option value=\"7d\" selected>"),
        "{}",
        week.body
    );

    // A range the selector does not offer is named beside it; the last 24 hours are shown.
    let odd = browser.get(&format!("{path}?range=forever")).await;
    assert_eq!(odd.status, StatusCode::OK);
    assert!(
        odd.body.contains("is not a range these charts can show"),
        "{}",
        odd.body
    );
    assert!(odd.body.contains("<option value=\"24h\" selected>"));
    assert_eq!(
        element(&odd, "<title id=\"success-chart-title\">", "title"),
        "Success rate per hour, last 24 hours"
    );
}

#[tokio::test]
async fn a_list_of_two_hundred_streams_renders_each_with_its_figures() {
    let app = spawn_app_with(|c| c.max_streams_per_tenant = 250).await;
    let receiver = Receiver::start().await;
    // Paused: each keeps the busy stream's events as its backlog.
    let mut ids = Vec::new();
    for i in 0..200 {
        let (status, body) = app
            .post(
                "/v1/event-streams",
                &json!({
                    "name": format!("stream number {i:03}"),
                    "status": "paused",
                    "subscriptions": [{"event_type": "user.created"}],
                    "destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}},
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let busy = stream_to(&app, &receiver, json!({})).await;
    deliver(
        &app,
        &receiver,
        &busy,
        "e1",
        Reply::status(200),
        "succeeded",
    )
    .await;
    deliver(
        &app,
        &receiver,
        &busy,
        "e2",
        Reply::status(200),
        "succeeded",
    )
    .await;

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = browser.get(STREAMS).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let tbody = element(&list, "<tbody>", "tbody");
    assert_eq!(tbody.matches("<tr>").count(), 201);
    for (i, id) in ids.iter().enumerate() {
        let cells = row(&list, id);
        assert!(
            cells.contains(&format!(">stream number {i:03}</a>")),
            "{cells}"
        );
        assert!(
            cells.contains("<td class=\"num\">2"),
            "two pending: {cells}"
        );
        assert!(
            cells.contains("No deliveries finished in the last 24 hours"),
            "{cells}"
        );
    }
    assert!(
        row(&list, &busy).contains(
            "<title>Success rate over the last 24 hours: 100% (2 of 2 finished deliveries succeeded)</title>"
        ),
        "{}",
        list.body
    );
}

#[tokio::test]
async fn a_stream_name_with_markup_renders_as_text_beside_its_figures() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let script = "<script>alert(1)</script>";
    let stream = stream_to(&app, &receiver, json!({"name": script})).await;
    deliver(
        &app,
        &receiver,
        &stream,
        "e1",
        Reply::status(200),
        "succeeded",
    )
    .await;

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = browser.get(STREAMS).await;
    let cells = row(&list, &stream);
    assert!(
        cells.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{cells}"
    );
    assert!(
        cells.contains("100% (1 of 1 finished deliveries succeeded)"),
        "{cells}"
    );
    assert!(!list.body.contains("<script>alert"), "{}", list.body);
}

async fn api_secret(app: &TestApp, tenant: &str, stream: &str) -> String {
    let (status, body) = app
        .request_in(
            tenant,
            reqwest::Method::GET,
            &format!("/v1/event-streams/{stream}/secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["secret"].as_str().unwrap().to_string()
}

/// The secret an answer shows.
fn shown_secret(page: &Page) -> String {
    element(page, "<code id=\"signing-secret\">", "code").to_string()
}

#[tokio::test]
async fn the_signing_secret_is_revealed_on_demand_and_a_rotation_signs_the_next_delivery() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = stream_to(&app, &receiver, json!({})).await;
    let secret = api_secret(&app, "ten_default", &stream).await;
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let path = format!("{STREAMS}/{stream}");

    let page = browser.get(&path).await;
    assert!(!page.body.contains(&secret));
    assert!(page.body.contains(">Reveal signing secret</button>"));
    let csrf = page.hidden("csrf");
    let revealed = browser
        .post(&format!("{path}/secret"), &[("csrf", &csrf)])
        .await;
    assert_eq!(revealed.status, StatusCode::OK, "{}", revealed.body);
    assert_eq!(shown_secret(&revealed), secret);
    assert_eq!(revealed.headers["cache-control"], "no-store");
    let again = browser.get(&path).await;
    assert!(!again.body.contains(&secret), "shown on that answer only");

    // A form without the session's CSRF token, or with a grace period not offered, changes
    // nothing.
    let forged = browser
        .post(&format!("{path}/secret/rotate"), &[("grace", "0")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let odd = browser
        .post(
            &format!("{path}/secret/rotate"),
            &[("csrf", &csrf), ("grace", "soon")],
        )
        .await;
    assert_eq!(odd.status, StatusCode::BAD_REQUEST, "{}", odd.body);
    assert!(
        odd.body
            .contains("choose how long the current secret keeps signing from the list"),
        "{}",
        odd.body
    );
    assert!(
        odd.body.contains("signing-error"),
        "beside the form: {}",
        odd.body
    );
    assert_eq!(api_secret(&app, "ten_default", &stream).await, secret);

    let rotated = browser
        .post(
            &format!("{path}/secret/rotate"),
            &[("csrf", &csrf), ("grace", "0")],
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new = shown_secret(&rotated);
    assert_ne!(new, secret);
    assert!(new.starts_with("whsec_"), "{new}");
    assert_eq!(api_secret(&app, "ten_default", &stream).await, new);

    app.publish(json!({"id": "after", "type": "user.created"}))
        .await;
    let got = receiver.wait_for(1).await.remove(0);
    verify(&new, &got).expect("signed with the new secret");
    assert!(
        verify(&secret, &got).is_err(),
        "with no grace period the old secret no longer signs"
    );
}

#[tokio::test]
async fn a_token_without_the_update_scope_cannot_reveal_or_rotate_the_secret() {
    let app = spawn_app().await;
    let (_, token) = tenant_with_token(
        &app,
        "ten_acme",
        &["read:event_streams", "read:event_deliveries"],
    )
    .await;
    let stream = stream_in(&app, "ten_acme", "orders").await;
    let secret = api_secret(&app, "ten_acme", &stream).await;
    let browser = Browser::signed_in(&app, &token).await;
    let path = format!("/tenants/ten_acme/streams/{stream}");

    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(!page.body.contains("Reveal signing secret"));
    assert!(page.body.contains("update:event_streams"), "{}", page.body);
    let csrf = page.hidden("csrf");
    for action in ["secret", "secret/rotate"] {
        let refused = browser
            .post(&format!("{path}/{action}"), &[("csrf", &csrf)])
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert!(!refused.body.contains(&secret), "{action}");
        assert!(!refused.body.contains("signing-secret"), "{action}");
        assert!(refused.body.contains("update:event_streams"), "{action}");
    }
    assert_eq!(api_secret(&app, "ten_acme", &stream).await, secret);
}
