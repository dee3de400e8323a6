//! The receiver's own tests: deliveries signed with the real Standard Webhooks library, built
//! from the event catalog's samples (samples.json), sent through the receiver's router.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Map, Value};
use standardwebhooks::Webhook;
use tower::ServiceExt;

const SECRET: &str = "whsec_dGhlIHJlY2VpdmVyJ3MgdGVzdCBzZWNyZXQsIDMyIGI=";
const OTHER_SECRET: &str = "whsec_bm90IHRoZSByZWNlaXZlcidzIHNlY3JldCwgMzIgYnk=";

fn samples() -> Map<String, Value> {
    serde_json::from_str(include_str!("../samples.json")).expect("samples.json is a JSON object")
}

fn first_type() -> String {
    samples()
        .keys()
        .next()
        .expect("at least one sample")
        .clone()
}

/// A CloudEvent as Herald sends it, with the catalog's sample `data` unless given.
fn cloud_event(event_type: &str, data: Option<Value>) -> String {
    json!({
        "specversion": "1.0",
        "id": format!("evt_{}", unique()),
        "source": "https://example.com/platform",
        "type": event_type,
        "datacontenttype": "application/json",
        "data": data.unwrap_or_else(|| samples()[event_type].clone()),
    })
    .to_string()
}

fn unique() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        + u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Delivery<'a> {
    signed: &'a str,
    sent: &'a str,
    id: String,
    secret: &'a str,
}

impl<'a> Delivery<'a> {
    fn of(body: &'a str) -> Self {
        Delivery {
            signed: body,
            sent: body,
            id: format!("dlv_{}", unique()),
            secret: SECRET,
        }
    }

    /// POSTs the body signed with the delivery's secret (the body sent may differ from the
    /// one signed); answers the status and the JSON reply.
    async fn send(&self, router: &Router) -> (StatusCode, Value) {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signature = Webhook::new(self.secret)
            .unwrap()
            .sign(&self.id, timestamp, self.signed.as_bytes())
            .unwrap();
        let request = Request::post("/")
            .header("content-type", "application/cloudevents+json")
            .header("webhook-id", &self.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Body::from(self.sent.to_owned()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

fn router() -> Router {
    receiver::router(SECRET).unwrap()
}

#[tokio::test]
async fn a_valid_signature_is_handled() {
    let body = cloud_event(&first_type(), None);
    let (status, reply) = Delivery::of(&body).send(&router()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["status"], "handled");
    assert_eq!(reply["type"], first_type());
}

#[tokio::test]
async fn a_tampered_body_is_refused() {
    let signed = cloud_event(&first_type(), None);
    let tampered = signed.replacen('{', r#"{"tampered":true,"#, 1);
    let (status, reply) = Delivery {
        sent: &tampered,
        ..Delivery::of(&signed)
    }
    .send(&router())
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
}

#[tokio::test]
async fn another_secret_is_refused() {
    let body = cloud_event(&first_type(), None);
    let (status, reply) = Delivery {
        secret: OTHER_SECRET,
        ..Delivery::of(&body)
    }
    .send(&router())
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
}

#[tokio::test]
async fn missing_signature_headers_are_refused() {
    let request = Request::post("/")
        .body(Body::from(cloud_event(&first_type(), None)))
        .unwrap();
    let response = router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_repeated_webhook_id_is_not_handled_twice() {
    let router = router();
    let body = cloud_event(&first_type(), None);
    let delivery = Delivery::of(&body);
    let (status, first) = delivery.send(&router).await;
    assert_eq!(
        (status, &first["status"]),
        (StatusCode::OK, &json!("handled"))
    );
    let (status, again) = delivery.send(&router).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again,
        json!({"status": "duplicate", "webhook_id": delivery.id})
    );
}

#[tokio::test]
async fn each_event_reaches_its_handler() {
    let router = router();
    for event_type in samples().keys() {
        let body = cloud_event(event_type, None);
        let (status, reply) = Delivery::of(&body).send(&router).await;
        assert_eq!(status, StatusCode::OK, "{event_type}: {reply}");
        assert_eq!(reply["status"], "handled", "{event_type}: {reply}");
        assert_eq!(reply["type"], event_type.as_str());
    }
}

#[tokio::test]
async fn the_audit_payload_format_reaches_the_handler() {
    let event_type = first_type();
    let body = json!({"id": "evt_audit", "action": event_type, "data": samples()[&event_type]})
        .to_string();
    let (status, reply) = Delivery::of(&body).send(&router()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["status"], "handled");
    assert_eq!(reply["type"], event_type);
}
{{failed_run_test}}