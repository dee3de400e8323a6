//! A receiver that is down for a while: the stream's circuit opens, the backlog waits
//! without spending retries, a probe at a time finds the endpoint back, and everything is
//! delivered without an operator.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const BACKLOG: usize = 10_000;

/// Waits until the receiver has seen more than `before` requests, and until the outcome of
/// each of those is stored: by then the dispatcher has almost always heard of it too, so the
/// clock can move. (If it has not, the next probe waits from a later time: fewer probes, which
/// the bound below allows.)
async fn wait_for_more(
    app: &TestApp,
    receiver: &Receiver,
    stream_id: &str,
    before: usize,
) -> usize {
    let received = receiver.wait_for(before + 1).await;
    for (i, r) in received.iter().enumerate().skip(before) {
        let id = r.json()["id"].as_str().unwrap().to_string();
        let sent = received[..=i]
            .iter()
            .filter(|o| o.json()["id"] == id)
            .count();
        app.wait_for_attempts(stream_id, &id, sent).await;
    }
    received.len()
}

#[tokio::test]
async fn a_receiver_down_for_ten_minutes_costs_probes_and_loses_nothing() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(503));
    let stream = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let stream_id = stream["id"].as_str().unwrap().to_string();

    for batch in 0..BACKLOG / 1_000 {
        let events: Vec<_> = (0..1_000)
            .map(|i| json!({"specversion": "1.0", "id": format!("e-{batch}-{i}"), "type": "user.created", "source": "/test"}))
            .collect();
        let (status, body) = app.post_batch(&events).await;
        assert_eq!(status, 202, "{body}");
    }

    // The first requests fail until the circuit opens; then one probe per wait, each wait
    // at most a minute: ten minutes of outage cost a probe a minute.
    let open_after = herald::delivery::scheduler::OPEN_AFTER as usize;
    let mut seen = wait_for_more(&app, &receiver, &stream_id, open_after - 1).await;
    for _ in 0..10 {
        app.clock.advance(Duration::from_secs(60));
        seen = wait_for_more(&app, &receiver, &stream_id, seen).await;
    }
    let during_outage = receiver.received().len();
    eprintln!("requests during the outage: {during_outage}");
    assert!(
        during_outage <= 40,
        "{during_outage} requests during the outage: the backlog was sent, not probed"
    );
    let (_, stream) = app.get(&format!("/v1/event-streams/{stream_id}")).await;
    assert_eq!(
        stream["status"], "enabled",
        "an outage of minutes disables nothing"
    );

    // The receiver is back: the next probe closes the circuit and the backlog drains in due
    // order, each delivery's retry budget untouched.
    receiver.always(Reply::status(200));
    app.clock.advance(Duration::from_secs(60));
    let mut delivered = HashSet::new();
    let mut counted = during_outage;
    while delivered.len() < BACKLOG {
        let received = receiver
            .wait_for(counted + (BACKLOG - delivered.len()).min(1_000))
            .await;
        for r in &received[counted..] {
            delivered.insert(r.json()["id"].as_str().unwrap().to_string());
        }
        counted = received.len();
    }
    assert_eq!(
        counted - during_outage,
        BACKLOG,
        "each delivery is sent once after the outage"
    );
    let (_, stats) = app
        .get(&format!("/v1/event-streams/{stream_id}/stats"))
        .await;
    let (_, stream) = app.get(&format!("/v1/event-streams/{stream_id}")).await;
    assert_eq!(stream["status"], "enabled", "{stats}");
}
