//! Operating streams: delivery history and paging, redelivery, test events, pausing,
//! auto-disable, backlog control and Herald's own notices.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn no_retry() -> Value {
    json!({"retry_policy": {"max_attempts": 1}})
}

async fn publish_batch(app: &TestApp, events: Vec<Value>) {
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// Waits until the stream has no pending delivery.
async fn settle(app: &TestApp, stream_id: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, page) = app
            .get(&format!(
                "/v1/event-streams/{stream_id}/deliveries?statuses=pending"
            ))
            .await;
        if page["deliveries"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {page}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn deliveries_are_listed_newest_first_with_filters_and_cursors() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    // Every third request fails for good.
    receiver.script((0..30).map(|i| Reply::status(if i % 3 == 0 { 400 } else { 200 })));
    let stream = app
        .create_stream(&receiver.url, &["user.*"], no_retry())
        .await;
    let sid = stream["id"].as_str().unwrap();
    for i in 0..30 {
        let kind = if i % 2 == 0 {
            "user.created"
        } else {
            "user.deleted"
        };
        app.publish(json!({"id": format!("e{i}"), "type": kind}))
            .await;
        receiver.wait_for(i + 1).await;
    }
    settle(&app, sid).await;

    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let cursor = next
            .as_ref()
            .map(|c| format!("&from={c}"))
            .unwrap_or_default();
        let (status, page) = app
            .get(&format!(
                "/v1/event-streams/{sid}/deliveries?take=7{cursor}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["deliveries"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(
            items
                .iter()
                .map(|d| d["event_id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).rev().map(|i| format!("e{i}")).collect();
    assert_eq!(seen, expected, "every delivery once, newest first");

    let (_, failed) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?statuses=failed&take=100"
        ))
        .await;
    let failed = failed["deliveries"].as_array().unwrap();
    assert_eq!(failed.len(), 10);
    assert!(
        failed
            .iter()
            .all(|d| d["status"] == "failed" && d["last_response_status"] == 400)
    );
    let (_, mixed) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?statuses=failed,succeeded&event_types=user.deleted&take=100"
        ))
        .await;
    assert_eq!(mixed["deliveries"].as_array().unwrap().len(), 15);

    app.clock.advance(Duration::from_secs(1));
    let now = herald::event::format_time(herald::clock::Clock::now_ms(&*app.clock));
    let (_, none) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?date_from={now}"
        ))
        .await;
    assert_eq!(none["deliveries"].as_array().unwrap().len(), 0);

    for bad in [
        "take=0",
        "take=101",
        "statuses=lost",
        "date_from=yesterday",
        "from=abc",
        "colour=red",
    ] {
        let (status, body) = app
            .get(&format!("/v1/event-streams/{sid}/deliveries?{bad}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let (status, _) = app.get("/v1/event-streams/est_nope/deliveries").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn one_event_or_a_filtered_set_is_redelivered() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(500));
    let stream = app.create_stream(&receiver.url, &["*"], no_retry()).await;
    let sid = stream["id"].as_str().unwrap();
    publish_batch(
        &app,
        vec![
            json!({"id": "a", "type": "user.created"}),
            json!({"id": "b", "type": "user.deleted"}),
            json!({"id": "c", "type": "user.created"}),
        ],
    )
    .await;
    receiver.wait_for(3).await;
    settle(&app, sid).await;

    receiver.always(Reply::status(200));
    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver/a"),
            &json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["queued"], 1);
    let d = app
        .wait_for_delivery(sid, "a", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        d["attempts"].as_array().unwrap().len(),
        2,
        "history keeps the first attempt"
    );

    let filter = json!({"statuses": ["failed"], "event_types": ["user.created"], "dry_run": true});
    let (status, body) = app
        .post(&format!("/v1/event-streams/{sid}/redeliver"), &filter)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"matched": 1, "queued": 0, "dry_run": true}));
    assert_eq!(receiver.received().len(), 4, "a dry run sends nothing");

    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver"),
            &json!({"statuses": ["failed"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["queued"], 2);
    app.wait_for_delivery(sid, "b", |d| d["status"] == "succeeded")
        .await;
    app.wait_for_delivery(sid, "c", |d| d["status"] == "succeeded")
        .await;

    // A stream created after an event can be given it.
    let late = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let lid = late["id"].as_str().unwrap();
    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{lid}/redeliver/a"),
            &json!(null),
        )
        .await;
    assert_eq!(
        (status, body["queued"].as_i64()),
        (StatusCode::ACCEPTED, Some(1))
    );
    app.wait_for_delivery(lid, "a", |d| d["status"] == "succeeded")
        .await;

    let (status, _) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver/zzz"),
            &json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver"),
            &json!({"statuses": ["gone"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    app.patch(
        &format!("/v1/event-streams/{sid}"),
        &json!({"status": "disabled"}),
    )
    .await;
    let (status, body) = app
        .post(
            &format!("/v1/event-streams/{sid}/redeliver/a"),
            &json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "stream_disabled");
    let (status, _) = app
        .post(&format!("/v1/event-streams/{sid}/redeliver"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_test_event_is_sent_at_once_with_sample_data_and_a_test_marker() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(200).with_body("thanks")]);
    let stream = app
        .create_stream(&receiver.url, &["flow.run.finished"], json!({}))
        .await;
    let sid = stream["id"].as_str().unwrap();
    let (status, result) = app.test_stream(sid, "flow.run.finished").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["delivered"], true);
    assert_eq!(result["response_status"], 200);
    assert_eq!(result["response_body"], "thanks");
    assert!(result["duration_ms"].is_u64());

    let got = receiver.received().remove(0);
    let body = got.json();
    assert_eq!(body["purpose"], "test");
    let (_, catalog) = app.get("/v1/event-types?category=flow").await;
    let sample = catalog["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "flow.run.finished")
        .unwrap()["sample_data"]
        .clone();
    assert_eq!(body["data"], sample);
    assert_eq!(got.header("webhook-id"), result["delivery_id"].as_str());

    receiver.script([Reply::status(503)]);
    let (_, result) = app
        .post(
            &format!("/v1/event-streams/{sid}/test"),
            &json!({"event_type": "user.created", "data": {"custom": true}}),
        )
        .await;
    assert_eq!(result["delivered"], false);
    assert_eq!(result["response_status"], 503);
    assert_eq!(
        receiver.received()[1].json()["data"],
        json!({"custom": true})
    );

    let (status, _) = app
        .post(
            &format!("/v1/event-streams/{sid}/test"),
            &json!({"event_type": "nope.nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .post(&format!("/v1/event-streams/{sid}/deliveries"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_paused_stream_buffers_and_re_enabling_chooses_the_backlog() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let sid = stream["id"].as_str().unwrap();
    let (status, paused) = app
        .patch(
            &format!("/v1/event-streams/{sid}"),
            &json!({"status": "paused"}),
        )
        .await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (StatusCode::OK, Some("paused"))
    );

    for i in 0..3 {
        let body = app
            .publish(json!({"id": format!("p{i}"), "type": "user.created"}))
            .await;
        assert_eq!(
            body["deliveries"], 1,
            "a paused stream keeps new deliveries"
        );
    }
    let (_, pending) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?statuses=pending"
        ))
        .await;
    assert_eq!(pending["deliveries"].as_array().unwrap().len(), 3);
    assert!(receiver.received().is_empty());

    let (status, body) = app
        .patch(
            &format!("/v1/event-streams/{sid}"),
            &json!({"backlog": "skip"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "backlog without enabling: {body}"
    );

    app.patch(
        &format!("/v1/event-streams/{sid}"),
        &json!({"status": "enabled", "backlog": "deliver"}),
    )
    .await;
    receiver.wait_for(3).await;

    // Pause again, buffer two, and skip them on re-enabling.
    app.patch(
        &format!("/v1/event-streams/{sid}"),
        &json!({"status": "paused"}),
    )
    .await;
    app.publish(json!({"id": "s1", "type": "user.created"}))
        .await;
    app.publish(json!({"id": "s2", "type": "user.created"}))
        .await;
    let (status, _) = app
        .patch(
            &format!("/v1/event-streams/{sid}"),
            &json!({"status": "enabled", "backlog": "skip"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, cancelled) = app
        .get(&format!(
            "/v1/event-streams/{sid}/deliveries?statuses=cancelled"
        ))
        .await;
    assert_eq!(cancelled["deliveries"].as_array().unwrap().len(), 2);
    app.publish(json!({"id": "after", "type": "user.created"}))
        .await;
    let all = receiver.wait_for(4).await;
    assert_eq!(
        all[3].json()["id"],
        "after",
        "the skipped backlog was never sent"
    );
    assert_eq!(all.len(), 4);
}

#[tokio::test]
async fn too_many_failures_in_a_row_disable_the_stream_and_notices_report_it() {
    let app = spawn_app().await;
    let broken = Receiver::start().await;
    broken.always(Reply::status(500));
    let alerts = Receiver::start().await;
    app.create_stream(&alerts.url, &["herald.*"], json!({}))
        .await;
    let stream = app
        .create_stream(
            &broken.url,
            &["flow.run.finished"],
            // The count alone decides, as Auth0's streams do.
            json!({"max_consecutive_failures": 3, "disable_after_failing_seconds": 0, "retry_policy": {"max_attempts": 2, "jitter": 0}}),
        )
        .await;
    let sid = stream["id"].as_str().unwrap();

    app.publish(json!({"id": "f1", "type": "flow.run.finished"}))
        .await;
    app.wait_for_attempts(sid, "f1", 1).await;
    app.clock.advance(Duration::from_secs(10));
    app.wait_for_delivery(sid, "f1", |d| d["status"] == "failed")
        .await;

    // The alert stream hears that the delivery was given up.
    let notice = alerts.wait_for(1).await.remove(0).json();
    assert_eq!(notice["type"], "herald.delivery.failed");
    assert_eq!(notice["data"]["event_id"], "f1");
    assert_eq!(notice["data"]["stream_id"], sid);
    assert_eq!(notice["data"]["attempts"], 2);
    assert_eq!(notice["data"]["reason"], "retries exhausted");

    // The third failure in a row disables the stream.
    app.publish(json!({"id": "f2", "type": "flow.run.finished"}))
        .await;
    app.wait_for_attempts(sid, "f2", 1).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stream = loop {
        let (_, s) = app.get(&format!("/v1/event-streams/{sid}")).await;
        if s["status"] == "disabled" {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        stream["status_reason"]
            .as_str()
            .unwrap()
            .contains("3 failed attempts in a row")
    );
    let notices = alerts.wait_for(2).await;
    let disabled = notices
        .iter()
        .map(Received::json)
        .find(|n| n["type"] == "herald.stream.disabled")
        .unwrap();
    assert_eq!(disabled["data"]["stream_id"], sid);

    // Backlog depth and age while disabled.
    let (status, stats) = app.get(&format!("/v1/event-streams/{sid}/backlog")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["pending"], 1);
    assert!(stats["oldest_pending_at"].is_string());

    // Re-enabling is announced too.
    app.patch(
        &format!("/v1/event-streams/{sid}"),
        &json!({"status": "enabled", "backlog": "skip"}),
    )
    .await;
    let notices = alerts.wait_for(3).await;
    assert!(
        notices
            .iter()
            .any(|n| n.json()["type"] == "herald.stream.enabled")
    );
    let (_, stats) = app.get(&format!("/v1/event-streams/{sid}/backlog")).await;
    assert_eq!(stats["pending"], 0);
}
