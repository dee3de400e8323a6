//! Fair sharing of delivery capacity: one tenant's dead endpoints never make another tenant's
//! deliveries wait for a slot.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Sixteen streams of the default tenant to an endpoint that accepts and does not answer
/// within the test, and `events` published to them; returns once each has a request hung.
async fn hung_streams(app: &TestApp, events: usize) -> Receiver {
    let hung = Receiver::start().await;
    hung.always(Reply::status(200).delayed(Duration::from_secs(120)));
    for i in 0..16 {
        app.create_stream(
            &hung.url,
            &["user.created"],
            json!({"name": format!("hung {i}")}),
        )
        .await;
    }
    let events: Vec<Value> = (0..events)
        .map(|i| json!({"id": format!("hung-{i}"), "type": "user.created"}))
        .collect();
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, 202, "{body}");
    hung.wait_for(16).await;
    hung
}

/// Tenant A's 16 streams point at endpoints that accept and never answer (within the test),
/// and A publishes hundreds of events to them; tenant B's healthy stream still gets each of
/// its events at once. With 32 slots in all, A's streams could hold every one of them (even
/// at four each) until their requests time out: only the reserve keeps some for B.
#[tokio::test]
async fn one_tenants_hung_endpoints_do_not_hold_up_another_tenant() {
    let app = spawn_app_with(|c| {
        // Hung requests would hold their slots for a minute.
        c.delivery_timeout_seconds = 60;
        c.max_in_flight = 32;
    })
    .await;
    let hung = hung_streams(&app, 600).await;

    let (status, body) = app
        .post("/v1/tenants", &json!({"id": "ten_b", "name": "B"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let b = app
        .tenant_token(
            "ten_b",
            &[
                "create:event_streams",
                "publish:events",
                "read:event_deliveries",
            ],
        )
        .await;
    let healthy = Receiver::start().await;
    let stream = json!({
        "name": "healthy", "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": healthy.url}},
    });
    let (status, body) = app
        .request_as(
            &b,
            Method::POST,
            "/v1/event-streams",
            Some(("application/json", serde_json::to_vec(&stream).unwrap())),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for i in 0..20 {
        let event = json!({"id": format!("b-{i}"), "type": "user.created"});
        let (status, body) = app
            .request_as(
                &b,
                Method::POST,
                "/v1/events",
                Some(("application/json", serde_json::to_vec(&event).unwrap())),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // Within the harness's patience (20 s), far less than the hung requests' 60 s timeout.
    healthy.wait_for(20).await;
    assert!(
        hung.received().len() < 32,
        "the hung streams kept slots free: {}",
        hung.received().len()
    );
}

/// Within one tenant, with the default 512 slots: a stream starts with a few concurrent
/// requests and earns more only by using them well, so 16 hung streams hold 64 slots, not
/// 32 each (all 512), and the tenant's healthy stream still gets its own at once.
#[tokio::test]
async fn a_tenants_hung_streams_do_not_hold_up_its_healthy_one() {
    let app = spawn_app_with(|c| {
        c.delivery_timeout_seconds = 60;
    })
    .await;
    let hung = hung_streams(&app, 200).await;

    let healthy = Receiver::start().await;
    app.create_stream(&healthy.url, &["flow.run.finished"], json!({}))
        .await;
    for i in 0..10 {
        app.publish(json!({"id": format!("f-{i}"), "type": "flow.run.finished"}))
            .await;
    }
    healthy.wait_for(10).await;
    assert!(
        hung.received().len() <= 16 * 4,
        "hung streams started with a few slots each: {}",
        hung.received().len()
    );
}
