//! The console's deliveries pages against the real server and real receivers: the filters
//! and paging of a stream's list, the attempt drawer with the request as sent (credentials
//! masked) and the receiver's answer, redelivery of one delivery and, after a dry-run count,
//! of every delivery a filter matches, CSRF tokens, tenant isolation, escaping, and refusals
//! shown beside the field they concern.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console::{Browser, Page, token_of};
use crate::helpers::*;

const BEARER: &str = "bearer-secret-value-42";

/// A webhook stream of the default tenant to `url`, with a bearer token, subscribed to
/// `user.created` and `user.deleted`; its id.
async fn webhook_stream(app: &TestApp, url: &str) -> String {
    let stream = app
        .create_stream(
            url,
            &["user.created", "user.deleted"],
            json!({"destination": {"type": "webhook", "configuration": {
                "webhook_endpoint": url,
                "webhook_authorization": {"method": "bearer", "token": BEARER},
            }}}),
        )
        .await;
    stream["id"].as_str().unwrap().to_string()
}

/// Publishes an event; its id.
async fn publish(app: &TestApp, event_type: &str, data: Value) -> String {
    let event = app.publish(json!({"type": event_type, "data": data})).await;
    event["id"].as_str().unwrap().to_string()
}

/// Waits until the event's delivery to the stream has `status`; the delivery as the API
/// shows it.
async fn settled(app: &TestApp, stream: &str, event: &str, status: &str) -> Value {
    app.wait_for_delivery(stream, event, |d| d["status"] == status)
        .await
}

fn id_of(delivery: &Value) -> String {
    delivery["id"].as_str().unwrap().to_string()
}

/// Text as a page shows it: maud escapes these four.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How many deliveries a list page links to.
fn rows(page: &Page) -> usize {
    page.body
        .matches("href=\"/tenants/ten_default/deliveries/")
        .count()
}

fn list_path(stream: &str) -> String {
    format!("/tenants/ten_default/streams/{stream}/deliveries")
}

fn delivery_path(id: &str) -> String {
    format!("/tenants/ten_default/deliveries/{id}")
}

#[tokio::test]
async fn filters_narrow_the_list_and_a_bad_one_is_shown_beside_its_field() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    receiver.script([Reply::status(200), Reply::status(200), Reply::status(400)]);

    let first = publish(&app, "user.created", json!({"n": 1})).await;
    let first = id_of(&settled(&app, &stream, &first, "succeeded").await);
    app.clock.advance(Duration::from_secs(3600));
    let second = publish(&app, "user.deleted", json!({"n": 2})).await;
    let second = settled(&app, &stream, &second, "succeeded").await;
    let third = publish(&app, "user.created", json!({"n": 3})).await;
    let third = id_of(&settled(&app, &stream, &third, "failed").await);
    // The second's creation time, to the minute and without an offset, as a person types it.
    let created = second["created_at"].as_str().unwrap();
    let minute = format!("{} {}", &created[..10], &created[11..16]);
    let second = id_of(&second);

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = list_path(&stream);
    let shows = |page: &Page, expected: &[&String]| {
        for id in [&first, &second, &third] {
            assert_eq!(
                page.body.contains(id.as_str()),
                expected.contains(&id),
                "{id} in {}",
                page.body
            );
        }
        assert_eq!(rows(page), expected.len());
    };

    let all = browser.get(&list).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    shows(&all, &[&first, &second, &third]);
    for label in [
        "<label for=\"event-type\">Event type</label>",
        "<label for=\"from\">From (UTC)</label>",
        "<label for=\"to\">To (UTC)</label>",
        "<legend>Status</legend>",
    ] {
        assert!(all.body.contains(label), "{label}");
    }

    let failed = browser.get(&format!("{list}?status=failed")).await;
    shows(&failed, &[&third]);
    assert!(
        failed
            .body
            .contains("name=\"status\" value=\"failed\" checked")
    );
    let deleted = browser
        .get(&format!("{list}?event_type=user.deleted"))
        .await;
    shows(&deleted, &[&second]);
    assert!(deleted.body.contains("value=\"user.deleted\""), "kept");
    let both = browser
        .get(&format!(
            "{list}?status=succeeded&status=pending&event_type=user.created"
        ))
        .await;
    shows(&both, &[&first]);
    let since = browser
        .get(&format!("{list}?from={}", urlencode(&minute)))
        .await;
    shows(&since, &[&second, &third]);
    let until = browser
        .get(&format!("{list}?to={}", urlencode(&minute)))
        .await;
    shows(&until, &[&first]);
    let none = browser.get(&format!("{list}?status=cancelled")).await;
    assert_eq!(none.status, StatusCode::OK);
    shows(&none, &[]);
    assert!(none.body.contains("No deliveries match these filters."));

    // A time Herald cannot read: said beside the field, what was typed kept, no list.
    let bad = browser
        .get(&format!("{list}?from=yesterday&event_type=user.created"))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains(
            "id=\"from-error\" role=\"alert\">Herald cannot read “yesterday” as a time: \
             write it like 2026-11-30T15:00:00Z"
        ),
        "{}",
        bad.body
    );
    assert!(bad.body.contains("name=\"from\" value=\"yesterday\""));
    assert!(bad.body.contains("value=\"user.created\""));
    assert!(
        bad.body
            .contains("aria-describedby=\"time-hint from-error\"")
    );
    shows(&bad, &[]);
    let backwards = browser
        .get(&format!(
            "{list}?from=2026-11-30T16:00:00Z&to=2026-11-30T15:00:00Z"
        ))
        .await;
    assert_eq!(backwards.status, StatusCode::BAD_REQUEST);
    assert!(
        backwards
            .body
            .contains("id=\"to-error\" role=\"alert\">This is before the “From” time"),
        "{}",
        backwards.body
    );
    // The service's own limit, beside the field it concerns too.
    let types: Vec<String> = (0..101).map(|n| format!("user.t{n}")).collect();
    let many = browser
        .get(&format!(
            "{list}?event_type={}",
            urlencode(&types.join(","))
        ))
        .await;
    assert_eq!(many.status, StatusCode::BAD_REQUEST);
    assert!(
        many.body.contains(
            "id=\"event-type-error\" role=\"alert\">`event_types` names 101 types; a filter \
             may name at most 100"
        ),
        "{}",
        many.body
    );
    let unknown = browser.get(&format!("{list}?status=lost")).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown
            .body
            .contains("id=\"status-error\" role=\"alert\">“lost” is not a delivery status")
    );
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn pages_follow_the_services_cursor_and_keep_the_filters() {
    let app = spawn_app().await;
    let stream = webhook_stream(&app, "http://127.0.0.1:9/hook").await;
    // Paused, the stream keeps its deliveries pending: nothing is sent.
    let (status, body) = app
        .patch(
            &format!("/v1/event-streams/{stream}"),
            &json!({"status": "paused"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut batch: Vec<Value> = (0..51)
        .map(|n| json!({"type": "user.created", "data": {"n": n}}))
        .collect();
    batch.push(json!({"type": "user.deleted", "data": {}}));
    let (status, body) = app.post_batch(&batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = list_path(&stream);
    let first = browser
        .get(&format!("{list}?event_type=user.created"))
        .await;
    assert_eq!(rows(&first), 50, "{}", first.body);
    let marker = "<a href=\"";
    let older = first
        .body
        .split(marker)
        .find_map(|rest| {
            let (href, text) = rest.split_once("\">")?;
            text.starts_with("Older deliveries")
                .then(|| href.replace("&amp;", "&"))
        })
        .expect("a link to older deliveries");
    assert!(older.contains("event_type=user.created"), "{older}");
    assert!(older.contains("before="), "{older}");
    let second = browser.get(&older).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(rows(&second), 1, "{}", second.body);
    assert!(!second.body.contains("Older deliveries"));
    assert!(second.body.contains("Newest deliveries"));
    // The 50 and the 1 are the 51 `user.created` deliveries, none twice.
    let (_, api) = app
        .get(&format!(
            "/v1/event-streams/{stream}/deliveries?event_types=user.created&take=100"
        ))
        .await;
    let ids: Vec<&str> = api["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 51);
    for id in &ids[..50] {
        assert!(first.body.contains(id));
    }
    assert!(second.body.contains(ids[50]));

    let bad = browser.get(&format!("{list}?before=soon")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("is not a place in the list"),
        "{}",
        bad.body
    );
}

#[tokio::test]
async fn the_drawer_shows_the_request_as_sent_with_its_secret_masked_and_the_answer() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    let answer = "{\"error\": \"busy\", \"retry\": \"later & slowly\"}";
    // Refused for good: no retry comes while the clock moves.
    receiver.always(Reply::status(422).with_body(answer));
    let event = publish(
        &app,
        "user.created",
        json!({"user_id": "u-42", "plan": "pro"}),
    )
    .await;
    let delivery = settled(&app, &stream, &event, "failed").await;
    let sent = receiver.wait_for(1).await.remove(0);

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    // The stream's page links to the list, the list to the delivery.
    let stream_page = browser
        .get(&format!("/tenants/ten_default/streams/{stream}"))
        .await;
    assert!(
        stream_page
            .body
            .contains(&format!("href=\"{}\"", list_path(&stream)))
    );
    let path = delivery_path(&id_of(&delivery));
    assert!(stream_page.body.contains(&format!("href=\"{path}\"")));
    assert!(
        browser
            .get(&list_path(&stream))
            .await
            .body
            .contains(&format!("href=\"{path}\""))
    );

    // Rebuilt later, after a rotation of the signing secret, it is still what was sent then.
    app.clock.advance(Duration::from_secs(1));
    let (status, rotated) = app
        .post(
            &format!("/v1/event-streams/{stream}/secret/rotate"),
            &json!({"grace_period_seconds": 600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    app.clock.advance(Duration::from_secs(300));
    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains("id=\"attempt-1\" open"), "{body}");
    assert!(body.contains(&format!("<code>POST {}</code>", receiver.url)));
    // The request as the receiver got it: the same body, id, timestamp and signature.
    let sent_body = String::from_utf8(sent.body.to_vec()).unwrap();
    assert!(
        body.contains(&format!(
            "id=\"request-body\">{}</pre>",
            escaped(&sent_body)
        )),
        "{sent_body} in {body}"
    );
    for name in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "user-agent",
    ] {
        let value = sent.header(name).unwrap();
        assert!(
            body.contains(&format!(
                "<code>{name}</code></th><td><code>{}</code>",
                escaped(value)
            )),
            "{name}: {value} in {body}"
        );
    }
    // The bearer token is masked, and no secret is on the page.
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert!(body.contains(
        "<code>authorization</code></th><td><span class=\"masked\" \
         title=\"Hidden: a credential is never shown\">Bearer ••••••••</span>"
    ));
    assert!(!body.contains(BEARER));
    assert!(!body.contains("whsec_"));
    // The receiver's answer.
    assert!(body.contains("<dt>Status</dt><dd>HTTP 422</dd>"), "{body}");
    assert!(body.contains(&format!("<pre class=\"payload\">{}</pre>", escaped(answer))));
    assert!(body.contains(" · HTTP 422 · "), "the drawer's summary");

    // Once the secret that signed it has expired, the signature is not shown rather than
    // shown wrong.
    app.clock.advance(Duration::from_secs(301));
    let page = browser.get(&path).await;
    assert!(
        page.body.contains(
            "<code>webhook-signature</code></th><td><span class=\"masked\" title=\"Hidden: a \
             credential is never shown\">(signed with a secret that has expired since)</span>"
        ),
        "{}",
        page.body
    );
    assert!(
        !page
            .body
            .contains(sent.header("webhook-signature").unwrap())
    );
}

#[tokio::test]
async fn redelivering_one_makes_a_new_attempt_at_the_receiver() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    receiver.script([Reply::status(400).with_body("not yet")]);
    let event = publish(&app, "user.created", json!({"user_id": "u-1"})).await;
    let id = id_of(&settled(&app, &stream, &event, "failed").await);
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let path = delivery_path(&id);
    let page = browser.get(&path).await;
    assert!(
        page.body
            .contains("<span class=\"badge failed\">failed</span>")
    );
    assert!(page.body.contains(">Redeliver</button>"));
    let csrf = page.hidden("csrf");

    let queued = browser
        .post(&format!("{path}/redeliver"), &[("csrf", &csrf)])
        .await;
    assert_eq!(queued.status, StatusCode::SEE_OTHER, "{}", queued.body);
    assert_eq!(queued.location(), format!("{path}?queued=1"));
    let received = receiver.wait_for(2).await;
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id"),
        "the same delivery, attempted again"
    );
    let delivery = app
        .wait_for_delivery(&stream, &event, |d| {
            d["status"] == "succeeded" && d["attempts"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(id_of(&delivery), id);

    let page = browser.get(&format!("{path}?queued=1")).await;
    assert!(page.body.contains("Queued again with a fresh retry budget"));
    assert!(
        page.body
            .contains("<span class=\"badge succeeded\">succeeded</span>")
    );
    assert!(page.body.contains("id=\"attempt-2\" open"), "{}", page.body);
    assert!(
        page.body.contains("id=\"attempt-1\">"),
        "the first one closed"
    );
    assert!(page.body.contains("not yet"));

    // A disabled stream takes no redelivery: said beside the button.
    let (status, _) = app
        .patch(
            &format!("/v1/event-streams/{stream}"),
            &json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let refused = browser
        .post(&format!("{path}/redeliver"), &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body.contains(
            "id=\"redeliver-error\" role=\"alert\">The stream is disabled: enable it before \
             redelivering to it"
        ),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains("aria-describedby=\"redeliver-error\">Redeliver")
    );
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn bulk_redelivery_counts_first_changes_nothing_then_queues_on_confirm() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    receiver.script([Reply::status(400), Reply::status(400), Reply::status(400)]);
    let mut failed = Vec::new();
    for n in 0..3 {
        let event = publish(&app, "user.created", json!({"n": n})).await;
        settled(&app, &stream, &event, "failed").await;
        failed.push(event);
    }
    let ok = publish(&app, "user.deleted", json!({})).await;
    settled(&app, &stream, &ok, "succeeded").await;

    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let list = list_path(&stream);
    let page = browser.get(&format!("{list}?status=failed")).await;
    assert_eq!(rows(&page), 3);
    let csrf = page.hidden("csrf");
    let action = format!("{list}/redeliver");

    let counted = browser
        .post(&action, &[("csrf", &csrf), ("status", "failed")])
        .await;
    assert_eq!(counted.status, StatusCode::OK, "{}", counted.body);
    assert!(
        counted
            .body
            .contains("<strong>3 deliveries match</strong> these filters"),
        "{}",
        counted.body
    );
    assert!(counted.body.contains(">Redeliver 3 deliveries</button>"));
    assert!(counted.body.contains("name=\"confirm\" value=\"yes\""));
    assert!(
        counted
            .body
            .contains("type=\"hidden\" name=\"status\" value=\"failed\"")
    );
    // The dry run queued nothing: each is still failed, with its one attempt.
    for event in &failed {
        let d = &app.deliveries(&stream, event).await[0];
        assert_eq!(d["status"], "failed", "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
    }
    let nothing = browser
        .post(&action, &[("csrf", &csrf), ("status", "cancelled")])
        .await;
    assert!(
        nothing
            .body
            .contains("No delivery matches these filters: there is nothing to redeliver.")
    );

    // A delivery that fails after the count is not among those confirmed.
    let counted_before = counted.hidden("counted_before");
    app.clock.advance(std::time::Duration::from_secs(1));
    receiver.script([Reply::status(400)]);
    let late = publish(&app, "user.created", json!({"n": "late"})).await;
    settled(&app, &stream, &late, "failed").await;

    let confirmed = browser
        .post(
            &action,
            &[
                ("csrf", &csrf),
                ("status", "failed"),
                ("counted_before", &counted_before),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(
        confirmed.status,
        StatusCode::SEE_OTHER,
        "{}",
        confirmed.body
    );
    assert_eq!(
        confirmed.location(),
        format!("{list}?status=failed&queued=3")
    );
    let after = browser.get(confirmed.location()).await;
    assert!(
        after
            .body
            .contains("3 deliveries queued again: they are sent now"),
        "{}",
        after.body
    );
    for event in &failed {
        app.wait_for_delivery(&stream, event, |d| {
            d["status"] == "succeeded" && d["attempts"].as_array().unwrap().len() == 2
        })
        .await;
    }
    // The filter held: the succeeded delivery was not sent again, nor the late one.
    let d = &app.deliveries(&stream, &ok).await[0];
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    let d = &app.deliveries(&stream, &late).await[0];
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(receiver.received().len(), 8);
}

#[tokio::test]
async fn a_redelivery_without_this_sessions_csrf_token_is_refused() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    receiver.script([Reply::status(400)]);
    let event = publish(&app, "user.created", json!({})).await;
    let id = id_of(&settled(&app, &stream, &event, "failed").await);
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let elsewhere = Browser::signed_in(&app, ADMIN_TOKEN)
        .await
        .csrf(&delivery_path(&id))
        .await;
    let one = format!("{}/redeliver", delivery_path(&id));
    let bulk = format!("{}/redeliver", list_path(&stream));

    for csrf in [None, Some(""), Some("bm90IHRoZSB0b2tlbg"), Some(&elsewhere)] {
        let mut form = vec![("confirm", "yes")];
        form.extend(csrf.map(|c| ("csrf", c)));
        for action in [&one, &bulk] {
            let refused = browser.post(action, &form).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{action} {csrf:?}");
            assert!(refused.body.contains("Nothing was changed."));
        }
    }
    let d = &app.deliveries(&stream, &event).await[0];
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn another_tenants_delivery_is_not_found() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(400));
    for tenant in ["ten_a", "ten_b"] {
        let (status, body) = app
            .post("/v1/tenants", &json!({"id": tenant, "name": tenant}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, token) = token_of(
        &app,
        "ten_a",
        &[
            "read:event_streams",
            "read:event_deliveries",
            "update:event_deliveries",
            "read:events",
        ],
    )
    .await;
    // A stream of tenant B with one failed delivery.
    let b_token = app
        .tenant_token(
            "ten_b",
            &[
                "create:event_streams",
                "publish:events",
                "read:event_deliveries",
            ],
        )
        .await;
    let as_b = |method: reqwest::Method, path: String, body: Option<Value>| {
        let b_token = b_token.clone();
        let app = &app;
        async move {
            let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
            app.request_as(&b_token, method, &path, body).await
        }
    };
    let (status, stream) = as_b(
        reqwest::Method::POST,
        "/v1/event-streams".into(),
        Some(json!({
            "name": "stream of b",
            "subscriptions": [{"event_type": "user.created"}],
            "destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{stream}");
    let b_stream = stream["id"].as_str().unwrap().to_string();
    let (status, _) = as_b(
        reqwest::Method::POST,
        "/v1/events".into(),
        Some(json!({"type": "user.created", "data": {"secret_of_b": "b-data"}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let b_delivery = loop {
        let (_, body) = as_b(
            reqwest::Method::GET,
            format!("/v1/event-streams/{b_stream}/deliveries?statuses=failed"),
            None,
        )
        .await;
        if let Some(d) = body["deliveries"].get(0) {
            break id_of(d);
        }
        assert!(tokio::time::Instant::now() < deadline, "no failed delivery");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let browser = Browser::signed_in(&app, &token).await;
    let csrf = browser.csrf("/tenants/ten_a/streams").await;
    for path in [
        format!("/tenants/ten_a/deliveries/{b_delivery}"),
        format!("/tenants/ten_b/deliveries/{b_delivery}"),
        format!("/tenants/ten_b/streams/{b_stream}/deliveries"),
        format!("/tenants/ten_a/streams/{b_stream}/deliveries"),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
        assert!(!page.body.contains("b-data"), "{path}");
        assert!(!page.body.contains("stream of b"), "{path}");
    }
    for path in [
        format!("/tenants/ten_a/deliveries/{b_delivery}/redeliver"),
        format!("/tenants/ten_b/deliveries/{b_delivery}/redeliver"),
        format!("/tenants/ten_a/streams/{b_stream}/deliveries/redeliver"),
    ] {
        let refused = browser
            .post(&path, &[("csrf", &csrf), ("confirm", "yes")])
            .await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(receiver.received().len(), 1, "nothing was queued again");

    // B's own admin sees it.
    let admin = Browser::signed_in(&app, ADMIN_TOKEN).await;
    let page = admin
        .get(&format!("/tenants/ten_b/deliveries/{b_delivery}"))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("b-data"));
}

#[tokio::test]
async fn hostile_event_data_and_answers_render_as_text() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    receiver.always(Reply::status(500).with_body("<img src=x onerror=alert(2)>"));
    let event = publish(
        &app,
        "user.created",
        json!({"note": "<script>alert(1)</script>"}),
    )
    .await;
    let id = id_of(&app.wait_for_attempts(&stream, &event, 1).await);
    let browser = Browser::signed_in(&app, ADMIN_TOKEN).await;

    let page = browser.get(&delivery_path(&id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(!page.body.contains("<img"), "{}", page.body);
    let list = browser.get(&list_path(&stream)).await;
    assert!(!list.body.contains("<script>"));
}

#[tokio::test]
async fn a_missing_scope_is_said_where_it_matters() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = webhook_stream(&app, &receiver.url).await;
    receiver.always(Reply::status(400).with_body("refused"));
    let event = publish(&app, "user.created", json!({"user_id": "u-7"})).await;
    let id = id_of(&settled(&app, &stream, &event, "failed").await);

    // Streams only: the list says which scope it needs.
    let (_, token) = token_of(&app, "ten_default", &["read:event_streams"]).await;
    let browser = Browser::signed_in(&app, &token).await;
    let page = browser.get(&list_path(&stream)).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.body.contains(
            "id=\"list-error\" role=\"alert\">This token lacks the `read:event_deliveries` \
             scope"
        ),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&id));

    // Deliveries without events: the attempts, but not the event's data; no redelivery.
    let (_, token) = token_of(
        &app,
        "ten_default",
        &["read:event_streams", "read:event_deliveries"],
    )
    .await;
    let browser = Browser::signed_in(&app, &token).await;
    let path = delivery_path(&id);
    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(
            "id=\"requests-unavailable\">This token lacks the `read:events` scope, which \
             showing the request needs"
        ),
        "{}",
        page.body
    );
    assert!(!page.body.contains("u-7"));
    assert!(page.body.contains("refused"), "the receiver's answer");
    let csrf = page.hidden("csrf");
    let refused = browser
        .post(&format!("{path}/redeliver"), &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains(
        "id=\"redeliver-error\" role=\"alert\">This token lacks the `update:event_deliveries` \
         scope"
    ));
    let counted = browser
        .post(
            &format!("{}/redeliver", list_path(&stream)),
            &[("csrf", &csrf), ("status", "failed")],
        )
        .await;
    assert_eq!(counted.status, StatusCode::FORBIDDEN);
    assert!(
        counted.body.contains(
            "id=\"redeliver-error\" role=\"alert\">This token lacks the \
             `update:event_deliveries` scope"
        ),
        "{}",
        counted.body
    );
    assert!(
        counted
            .body
            .contains("name=\"status\" value=\"failed\" checked"),
        "kept"
    );

    // Deliveries and events without the streams' scope: the endpoint (which may carry a
    // secret in its path or query) is not shown.
    let (_, token) = token_of(
        &app,
        "ten_default",
        &["read:event_deliveries", "read:events"],
    )
    .await;
    let browser = Browser::signed_in(&app, &token).await;
    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("This token lacks the `read:event_streams` scope"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&receiver.url), "{}", page.body);
    assert_eq!(receiver.received().len(), 1);
}
