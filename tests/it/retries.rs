//! Retries on a controlled clock: backoff, Retry-After, permanent failures, 410 Gone.

use std::time::Duration;

use herald::clock::Clock;
use herald::event::format_time;
use serde_json::json;

use crate::helpers::*;

fn no_jitter(max_attempts: u32) -> serde_json::Value {
    json!({"retry_policy": {
        "max_attempts": max_attempts, "initial_interval_seconds": 10,
        "multiplier": 2, "max_interval_seconds": 3600, "jitter": 0
    }})
}

/// The requests that carried event `id`.
fn attempts_of(receiver: &Receiver, id: &str) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.json()["id"] == id)
        .collect()
}

#[tokio::test]
async fn failures_are_retried_with_exponential_backoff_until_success() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(502)]);
    let stream = app
        .create_stream(&receiver.url, &["user.created"], no_jitter(5))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    let start = app.clock.now_ms();
    app.publish(json!({"id": "r-1", "type": "user.created"}))
        .await;

    let d = app.wait_for_attempts(stream_id, "r-1", 1).await;
    assert_eq!(d["status"], "pending");
    assert_eq!(d["attempts"][0]["response_status"], 500);
    assert_eq!(
        d["next_attempt_at"],
        format_time(start + 10_000),
        "first retry after 10 s"
    );

    app.clock.advance(Duration::from_secs(10));
    let d = app.wait_for_attempts(stream_id, "r-1", 2).await;
    assert_eq!(d["attempts"][1]["response_status"], 502);
    assert_eq!(
        d["next_attempt_at"],
        format_time(start + 30_000),
        "then 20 s more"
    );

    app.clock.advance(Duration::from_secs(19));
    // Not retried before it is due. A change to the stream makes the dispatcher look for its
    // due work at the new time; a sentinel published after it is delivered in a later pass,
    // so once its outcome is stored, a retry wrongly due by then would have been sent.
    let (status, body) = app
        .patch(
            &format!("/v1/event-streams/{stream_id}"),
            &json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.publish(json!({"id": "sentinel", "type": "user.created"}))
        .await;
    app.wait_for_delivery(stream_id, "sentinel", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        attempts_of(&receiver, "r-1").len(),
        2,
        "not retried before it is due"
    );
    app.clock.advance(Duration::from_secs(1));
    let d = app
        .wait_for_delivery(stream_id, "r-1", |d| d["status"] == "succeeded")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);
    assert!(d["next_attempt_at"].is_null());

    let ids: Vec<_> = attempts_of(&receiver, "r-1")
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "webhook-id is stable across retries"
    );
    let stamps: Vec<i64> = attempts_of(&receiver, "r-1")
        .iter()
        .map(|r| r.header("webhook-timestamp").unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        stamps[2] - stamps[0],
        30,
        "each attempt is signed with its own timestamp"
    );
}

#[tokio::test]
async fn retry_after_on_429_and_503_is_honoured() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::status(429).with_header("retry-after", "120"),
        Reply::status(503).with_header("retry-after", "7"),
    ]);
    let stream = app
        .create_stream(&receiver.url, &["user.created"], no_jitter(5))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    let start = app.clock.now_ms();
    app.publish(json!({"id": "ra-1", "type": "user.created"}))
        .await;

    let d = app.wait_for_attempts(stream_id, "ra-1", 1).await;
    assert_eq!(d["next_attempt_at"], format_time(start + 120_000));
    app.clock.advance(Duration::from_secs(120));
    let d = app.wait_for_attempts(stream_id, "ra-1", 2).await;
    assert_eq!(d["attempts"][1]["response_status"], 503);
    assert_eq!(d["next_attempt_at"], format_time(start + 127_000));
    app.clock.advance(Duration::from_secs(7));
    app.wait_for_delivery(stream_id, "ra-1", |d| d["status"] == "succeeded")
        .await;
}

#[tokio::test]
async fn retries_run_out_into_failed() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(500).with_body("database down"));
    let stream = app
        .create_stream(&receiver.url, &["user.created"], no_jitter(3))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "f-1", "type": "user.created"}))
        .await;
    app.wait_for_attempts(stream_id, "f-1", 1).await;
    app.clock.advance(Duration::from_secs(10));
    app.wait_for_attempts(stream_id, "f-1", 2).await;
    app.clock.advance(Duration::from_secs(20));
    let d = app
        .wait_for_delivery(stream_id, "f-1", |d| d["status"] == "failed")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(d["attempts"][2]["response_body"], "database down");
}

#[tokio::test]
async fn a_4xx_is_permanent_but_408_409_425_are_retried() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::status(408),
        Reply::status(409),
        Reply::status(425),
        Reply::status(422),
    ]);
    let stream = app
        .create_stream(&receiver.url, &["user.created"], no_jitter(10))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "p-1", "type": "user.created"}))
        .await;
    for n in 1..=3 {
        let d = app.wait_for_attempts(stream_id, "p-1", n).await;
        assert_eq!(d["status"], "pending");
        app.clock.advance(Duration::from_secs(3600));
    }
    let d = app
        .wait_for_delivery(stream_id, "p-1", |d| d["status"] == "failed")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 4);
    assert_eq!(d["attempts"][3]["response_status"], 422);
}

#[tokio::test]
async fn gone_disables_the_stream() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(410)]);
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "g-1", "type": "user.created"}))
        .await;
    let d = app
        .wait_for_delivery(stream_id, "g-1", |d| d["status"] == "failed")
        .await;
    assert_eq!(d["attempts"][0]["response_status"], 410);

    let (_, stream) = app.get(&format!("/v1/event-streams/{stream_id}")).await;
    assert_eq!(stream["status"], "disabled");
    assert!(stream["status_reason"].as_str().unwrap().contains("410"));
    let published = app
        .publish(json!({"id": "g-2", "type": "user.created"}))
        .await;
    assert_eq!(
        published["deliveries"], 0,
        "a disabled stream gets no new deliveries"
    );

    let (status, stream) = app
        .patch(
            &format!("/v1/event-streams/{stream_id}"),
            &json!({"status": "enabled"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(stream.get("status_reason").is_none());
    let published = app
        .publish(json!({"id": "g-3", "type": "user.created"}))
        .await;
    assert_eq!(published["deliveries"], 1);
    receiver.wait_for(2).await;
}
