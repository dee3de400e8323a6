//! The audit log, payload erasure, retention and delivery statistics.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_log_is_queried_by_type_context_subject_and_time() {
    let app = spawn_app().await;
    for i in 0..12 {
        let kind = ["user.created", "user.deleted", "flow.run.finished"][i % 3];
        app.publish(json!({
            "id": format!("log-{i}"), "type": kind, "subject": format!("subj-{}", i % 2),
            "projectid": format!("proj-{}", i % 4), "userid": "u-1", "data": {"n": i}
        }))
        .await;
        if i == 5 {
            app.clock.advance(Duration::from_secs(60));
        }
    }
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, all) = app.get("/v1/events?take=100").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        ids(&all),
        (0..12)
            .rev()
            .map(|i| format!("log-{i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(all["events"][0]["data"], json!({"n": 11}));
    assert!(all["events"][0]["received_at"].is_string());

    let (_, flows) = app.get("/v1/events?type=flow.run.finished").await;
    assert_eq!(ids(&flows), ["log-11", "log-8", "log-5", "log-2"]);
    let (_, p1) = app.get("/v1/events?projectid=proj-1&subject=subj-1").await;
    assert_eq!(ids(&p1), ["log-9", "log-5", "log-1"]);
    let (_, by_user) = app.get("/v1/events?userid=u-1&take=5").await;
    assert_eq!(by_user["events"].as_array().unwrap().len(), 5);
    let next = by_user["next"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/v1/events?userid=u-1&take=5&from={next}"))
        .await;
    assert_eq!(ids(&page2), ["log-6", "log-5", "log-4", "log-3", "log-2"]);

    let (_, late) = app
        .get(&format!(
            "/v1/events?date_from={}",
            herald::event::format_time(herald::clock::Clock::now_ms(&*app.clock))
        ))
        .await;
    assert_eq!(
        ids(&late),
        ["log-11", "log-10", "log-9", "log-8", "log-7", "log-6"]
    );

    let (status, body) = app.get("/v1/events?take=1000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app.get("/v1/events?date_to=never").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_event_shows_where_it_went_and_its_payload_can_be_erased() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    app.publish(
        json!({"id": "gdpr-1", "type": "user.created", "subject": "user-42",
        "userid": "user-42", "platformid": "p", "data": {"email": "jane@example.com"}}),
    )
    .await;
    app.publish(
        json!({"id": "gdpr-2", "type": "user.updated", "subject": "user-42",
        "data": {"email": "jane@example.com"}}),
    )
    .await;
    receiver.wait_for(1).await;

    let (status, shown) = app.get("/v1/events/gdpr-1").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["event"]["data"]["email"], "jane@example.com");
    assert_eq!(shown["deliveries"][0]["stream_id"], stream["id"]);

    let (status, body) = app
        .post("/v1/events/erase", &json!({"subject": "user-42"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["erased"], 2);
    let (_, shown) = app.get("/v1/events/gdpr-1").await;
    let event = &shown["event"];
    assert!(event.get("data").is_none(), "{event}");
    assert!(event.get("userid").is_none(), "{event}");
    assert!(event.get("platformid").is_none(), "{event}");
    assert!(event.get("subject").is_none(), "{event}");
    assert_eq!(event["type"], "user.created", "what identifies it stays");
    assert!(event["erased_at"].is_string());
    assert_eq!(
        shown["deliveries"].as_array().unwrap().len(),
        1,
        "history stays"
    );
    let (_, log) = app.get("/v1/events").await;
    assert!(!log.to_string().contains("jane@example.com"));

    for bad in [
        json!({}),
        json!({"event_ids": []}),
        json!({"event_ids": ["a"], "subject": "b"}),
    ] {
        let (status, _) = app.post("/v1/events/erase", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) = app.get("/v1/events/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn erasure_removes_base64_payloads_context_and_echoes_and_later_attempts_send_none() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let payload = "amFuZUBleGFtcGxlLmNvbQ==";
    receiver.script([Reply::status(503).with_body(&format!("echo: {payload}"))]);
    let stream = app
        .create_stream(
            &receiver.url,
            &["user.created"],
            json!({"retry_policy": {"max_attempts": 3, "initial_interval_seconds": 10, "jitter": 0}}),
        )
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(
        json!({"id": "b64-1", "type": "user.created", "subject": "user-7",
        "userid": "user-7", "customerid": "cus-9", "datacontenttype": "application/octet-stream",
        "data_base64": payload}),
    )
    .await;
    let d = app.wait_for_attempts(stream_id, "b64-1", 1).await;
    assert_eq!(d["status"], "pending", "{d}");
    assert_eq!(
        d["attempts"][0]["response_body"],
        format!("echo: {payload}")
    );

    let (status, body) = app
        .post("/v1/events/erase", &json!({"event_ids": ["b64-1"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["erased"], 1);
    let personal = [payload, "user-7", "cus-9", "octet-stream"];
    let (_, shown) = app.get("/v1/events/b64-1").await;
    let event = &shown["event"];
    for (attribute, value) in [
        ("id", "b64-1"),
        ("type", "user.created"),
        ("specversion", "1.0"),
    ] {
        assert_eq!(event[attribute], value, "{event}");
    }
    assert!(
        event["source"].is_string() && event["time"].is_string(),
        "{event}"
    );
    let (_, log) = app.get("/v1/events").await;
    for text in [shown.to_string(), log.to_string()] {
        for value in personal {
            assert!(!text.contains(value), "{value} survived erasure: {text}");
        }
    }
    let d = app.wait_for_attempts(stream_id, "b64-1", 1).await;
    assert_eq!(
        d["attempts"][0]["response_status"], 503,
        "the outcome stays"
    );
    assert!(d["attempts"][0]["response_body"].is_null(), "{d}");

    // The pending delivery's next attempt sends what is left of the event.
    app.clock.advance(Duration::from_secs(10));
    let received = receiver.wait_for(2).await;
    let sent = String::from_utf8_lossy(&received[1].body).to_string();
    assert_eq!(received[1].json()["id"], "b64-1");
    for value in personal {
        assert!(
            !sent.contains(value),
            "{value} was delivered after erasure: {sent}"
        );
    }
}

#[tokio::test]
async fn retention_removes_old_events_and_response_bodies() {
    let app = spawn_app_with(|c| {
        c.event_retention_days = 30;
        c.response_body_retention_days = 7;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200).with_body("ok, stored"));
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let sid = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "old", "type": "user.created"}))
        .await;
    app.wait_for_delivery(sid, "old", |d| d["status"] == "succeeded")
        .await;

    app.clock.advance(Duration::from_secs(8 * 86_400));
    app.publish(json!({"id": "newer", "type": "user.created"}))
        .await;
    app.wait_for_delivery(sid, "newer", |d| d["status"] == "succeeded")
        .await;
    let d = app
        .wait_for_delivery(sid, "old", |d| d["attempts"][0]["response_body"].is_null())
        .await;
    assert_eq!(
        d["status"], "succeeded",
        "the delivery outlives its response body"
    );
    let (_, newer) = app
        .get(&format!("/v1/event-streams/{sid}/deliveries/newer"))
        .await;
    assert_eq!(newer[0]["attempts"][0]["response_body"], "ok, stored");

    app.clock.advance(Duration::from_secs(23 * 86_400));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.get("/v1/events/old").await.0 != StatusCode::NOT_FOUND {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old event was never swept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = app
        .get(&format!("/v1/event-streams/{sid}/deliveries/old"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/v1/events/newer").await;
    assert_eq!(status, StatusCode::OK, "younger events stay");
}

#[tokio::test]
async fn stats_count_outcomes_and_latency_per_type_and_hour() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(400)]);
    let stream = app
        .create_stream(
            &receiver.url,
            &["user.*"],
            json!({"retry_policy": {"max_attempts": 2, "jitter": 0}}),
        )
        .await;
    let sid = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "s1", "type": "user.created"}))
        .await; // 500 then retried
    app.wait_for_attempts(sid, "s1", 1).await;
    app.publish(json!({"id": "s2", "type": "user.deleted"}))
        .await; // 400: failed
    app.wait_for_delivery(sid, "s2", |d| d["status"] == "failed")
        .await;
    app.clock.advance(Duration::from_secs(3600));
    app.wait_for_delivery(sid, "s1", |d| d["status"] == "succeeded")
        .await;
    app.publish(json!({"id": "s3", "type": "user.created"}))
        .await;
    app.wait_for_delivery(sid, "s3", |d| d["status"] == "succeeded")
        .await;

    let (status, stats) = app.get(&format!("/v1/event-streams/{sid}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let total = &stats["total"];
    assert_eq!(total["succeeded"], 2);
    assert_eq!(total["failed"], 1);
    assert_eq!(total["attempts"], 4);
    assert_eq!(total["failed_attempts"], 2);
    let rate = total["success_rate"].as_f64().unwrap();
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    assert!(total["latency_ms"]["p50"].as_f64().unwrap() >= 0.0);
    assert!(
        total["latency_ms"]["p99"].as_f64().unwrap()
            >= total["latency_ms"]["p50"].as_f64().unwrap()
    );
    assert_eq!(stats["by_event_type"]["user.created"]["succeeded"], 2);
    assert_eq!(stats["by_event_type"]["user.deleted"]["failed"], 1);
    let hours = stats["by_hour"].as_array().unwrap();
    assert_eq!(hours.len(), 2, "{hours:?}");
    assert_eq!(hours[0]["failed_attempts"], 2);
    assert_eq!(hours[1]["succeeded"], 2);
    assert_eq!(stats["pending"], 0);

    let (status, _) = app
        .get(&format!(
            "/v1/event-streams/{sid}/stats?date_from=2020-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a range over 93 days is refused"
    );
}
