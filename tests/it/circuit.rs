//! A receiver that is down for a while: the stream's circuit opens, the backlog waits
//! without spending retries, a probe at a time finds the endpoint back, and everything is
//! delivered without an operator.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const BACKLOG: usize = 10_000;

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
    // at most a minute: ten minutes of outage cost a probe a minute. The clock moves 5 s at
    // a time, each step given a moment to show a probe (a slower machine sees fewer: probe
    // waits run from when the last probe's failure is taken in, never from earlier).
    receiver
        .wait_for(herald::delivery::scheduler::OPEN_AFTER as usize)
        .await;
    for _ in 0..120 {
        app.clock.advance(Duration::from_secs(5));
        let seen = receiver.received().len();
        let _ = tokio::time::timeout(Duration::from_millis(20), receiver.wait_for(seen + 1)).await;
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
    // Once each (a probe on its way when the receiver came back may count on either side).
    assert!(
        counted - during_outage <= BACKLOG + 1,
        "{} requests after the outage for {BACKLOG} deliveries",
        counted - during_outage
    );
    let (_, stats) = app
        .get(&format!("/v1/event-streams/{stream_id}/stats"))
        .await;
    let (_, stream) = app.get(&format!("/v1/event-streams/{stream_id}")).await;
    assert_eq!(stream["status"], "enabled", "{stats}");
}
