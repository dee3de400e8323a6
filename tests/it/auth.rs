//! Tenants, tokens and scopes: every route refuses a token from the wrong tenant and a token
//! without the route's scope.

use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

pub const TENANT_SCOPES: [&str; 9] = [
    "read:event_streams",
    "create:event_streams",
    "update:event_streams",
    "delete:event_streams",
    "read:event_deliveries",
    "update:event_deliveries",
    "publish:events",
    "read:events",
    "manage:tokens",
];

async fn create_tenant(app: &TestApp, id: &str) {
    let (status, body) = app
        .post(
            "/v1/tenants",
            &json!({"name": format!("tenant {id}"), "id": id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn bytes(body: &Value) -> Option<(&'static str, Vec<u8>)> {
    (!body.is_null()).then(|| ("application/json", serde_json::to_vec(body).unwrap()))
}

#[tokio::test]
async fn tenants_are_managed_by_platform_tokens_only() {
    let app = spawn_app().await;
    create_tenant(&app, "ten_acme").await;
    let (status, body) = app
        .post("/v1/tenants", &json!({"name": "again", "id": "ten_acme"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .post("/v1/tenants", &json!({"name": "x", "id": "acme"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, generated) = app.post("/v1/tenants", &json!({"name": "generated"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(generated["id"].as_str().unwrap().starts_with("ten_"));

    let (_, list) = app.get("/v1/tenants").await;
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert!(ids.contains(&json!("ten_default")) && ids.contains(&json!("ten_acme")));
    let (status, renamed) = app
        .patch("/v1/tenants/ten_acme", &json!({"name": "Acme Inc"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "Acme Inc");

    let all_scopes = app.tenant_token("ten_acme", &TENANT_SCOPES).await;
    let (status, body) = app
        .request_as(&all_scopes, Method::GET, "/v1/tenants", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_scope");

    let (status, _) = app.delete("/v1/tenants/ten_default").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app.delete("/v1/tenants/ten_acme").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .request_as(&all_scopes, Method::GET, "/v1/event-streams", None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted tenant's tokens are gone"
    );
    let (status, body) = app
        .request_as(ADMIN_TOKEN, Method::GET, "/v1/tenants/ten_acme", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn tokens_are_shown_once_scoped_and_revocable() {
    let app = spawn_app().await;
    create_tenant(&app, "ten_acme").await;
    let reader = app
        .tenant_token("ten_acme", &["read:event_streams", "manage:tokens"])
        .await;
    assert!(reader.starts_with("hrd_"));

    let (status, body) = app
        .request_as(&reader, Method::GET, "/v1/event-streams", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let create = json!({"name": "s", "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "https://example.com"}}});
    let (status, body) = app
        .request_as(&reader, Method::POST, "/v1/event-streams", bytes(&create))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("create:event_streams")
    );

    // No escalation: a token grants only what it holds.
    let (status, body) = app
        .request_as(
            &reader,
            Method::POST,
            "/v1/tokens",
            bytes(&json!({"name": "x", "scopes": ["publish:events"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .request_as(
            &reader,
            Method::POST,
            "/v1/tokens",
            bytes(&json!({"name": "x", "scopes": ["nope"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .request_as(
            &reader,
            Method::POST,
            "/v1/tokens",
            bytes(&json!({"name": "x", "scopes": ["read:event_streams"], "platform": true})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, list) = app
        .request_as(&reader, Method::GET, "/v1/tokens", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !list.to_string().contains("hrd_"),
        "secrets are never listed"
    );
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["tenant_id"], "ten_acme");

    let (status, _) = app
        .request_as(&reader, Method::DELETE, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .request_as(&reader, Method::GET, "/v1/event-streams", None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked token stops working at once"
    );
}

#[tokio::test]
async fn a_platform_token_names_its_tenant_and_a_tenant_token_cannot() {
    let app = spawn_app().await;
    create_tenant(&app, "ten_acme").await;
    let receiver = Receiver::start().await;
    let response = app
        .http
        .post(app.url("/v1/event-streams"))
        .bearer_auth(ADMIN_TOKEN)
        .header("herald-tenant", "ten_acme")
        .json(&json!({"name": "acme", "subscriptions": [{"event_type": "user.created"}],
            "destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // The `tenant` attribute routes a publish.
    let body = app
        .publish(json!({"type": "user.created", "tenant": "ten_acme"}))
        .await;
    assert_eq!(body["deliveries"], 1);
    assert_eq!(body["source"], "urn:herald:ten_acme");
    let got = receiver.wait_for(1).await.remove(0);
    assert!(
        got.json().get("tenant").is_none(),
        "routing is not part of the event"
    );
    let body = app.publish(json!({"type": "user.created"})).await;
    assert_eq!(
        body["deliveries"], 0,
        "without a tenant the default tenant is meant"
    );

    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"type": "user.created", "tenant": "ten_nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_tenant");
    let mixed = json!([{"type": "user.created", "tenant": "ten_acme"}, {"type": "user.created", "tenant": "ten_default"}]);
    let (status, _) = app.post_batch(&mixed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let acme = app.tenant_token("ten_acme", &TENANT_SCOPES).await;
    let other = json!({"type": "user.created", "tenant": "ten_default"});
    let (status, body) = app
        .request_as(&acme, Method::POST, "/v1/events", bytes(&other))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "wrong_tenant");
    let response = app
        .http
        .get(app.url("/v1/event-streams"))
        .bearer_auth(&acme)
        .header("herald-tenant", "ten_default")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

/// Every tenant-scoped route: (method, path, body, scope). `{stream}`, `{event}`,
/// `{delivery}` and `{token}` are tenant A's.
fn routes() -> Vec<(Method, &'static str, Value, &'static str)> {
    let stream_body = json!({"name": "s", "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": "https://example.com"}}});
    vec![
        (
            Method::GET,
            "/v1/event-streams",
            Value::Null,
            "read:event_streams",
        ),
        (
            Method::POST,
            "/v1/event-streams",
            stream_body,
            "create:event_streams",
        ),
        (
            Method::GET,
            "/v1/event-streams/{stream}",
            Value::Null,
            "read:event_streams",
        ),
        (
            Method::PATCH,
            "/v1/event-streams/{stream}",
            json!({"name": "n"}),
            "update:event_streams",
        ),
        (
            Method::GET,
            "/v1/event-streams/{stream}/secret",
            Value::Null,
            "update:event_streams",
        ),
        (
            Method::POST,
            "/v1/event-streams/{stream}/secret/rotate",
            json!({}),
            "update:event_streams",
        ),
        (
            Method::GET,
            "/v1/event-streams/{stream}/deliveries/{event}",
            Value::Null,
            "read:event_deliveries",
        ),
        (
            Method::GET,
            "/v1/deliveries/{delivery}",
            Value::Null,
            "read:event_deliveries",
        ),
        (
            Method::POST,
            "/v1/events",
            json!({"type": "user.created"}),
            "publish:events",
        ),
        (
            Method::GET,
            "/v1/event-streams/{stream}/deliveries",
            Value::Null,
            "read:event_deliveries",
        ),
        (
            Method::GET,
            "/v1/event-streams/{stream}/backlog",
            Value::Null,
            "read:event_deliveries",
        ),
        (
            Method::GET,
            "/v1/event-streams/{stream}/stats",
            Value::Null,
            "read:event_deliveries",
        ),
        (
            Method::POST,
            "/v1/event-streams/{stream}/redeliver/{event}",
            Value::Null,
            "update:event_deliveries",
        ),
        (
            Method::POST,
            "/v1/event-streams/{stream}/redeliver",
            json!({"dry_run": true}),
            "update:event_deliveries",
        ),
        (
            Method::POST,
            "/v1/event-streams/{stream}/test",
            json!({"event_type": "user.created"}),
            "update:event_streams",
        ),
        (Method::GET, "/v1/events", Value::Null, "read:events"),
        (
            Method::GET,
            "/v1/events/{event}",
            Value::Null,
            "read:events",
        ),
        (
            Method::POST,
            "/v1/events/erase",
            json!({"event_ids": ["{event}"]}),
            "update:event_deliveries",
        ),
        (
            Method::POST,
            "/v1/event-types",
            json!({"name": "acme.thing"}),
            "update:event_streams",
        ),
        (
            Method::DELETE,
            "/v1/event-types/{type}",
            Value::Null,
            "update:event_streams",
        ),
        (Method::GET, "/v1/tokens", Value::Null, "manage:tokens"),
        (
            Method::POST,
            "/v1/tokens",
            json!({"name": "t", "scopes": ["read:events"]}),
            "manage:tokens",
        ),
        (
            Method::DELETE,
            "/v1/tokens/{token}",
            Value::Null,
            "manage:tokens",
        ),
        (
            Method::DELETE,
            "/v1/event-streams/{stream}",
            Value::Null,
            "delete:event_streams",
        ),
    ]
}

#[tokio::test]
async fn every_route_refuses_other_tenants_and_missing_scopes() {
    let app = spawn_app().await;
    create_tenant(&app, "ten_a").await;
    create_tenant(&app, "ten_b").await;
    let receiver = Receiver::start().await;
    let a = app.tenant_token("ten_a", &TENANT_SCOPES).await;
    let b = app.tenant_token("ten_b", &TENANT_SCOPES).await;

    let body = json!({"name": "a", "subscriptions": [{"event_type": "user.created"}],
        "destination": {"type": "webhook", "configuration": {"webhook_endpoint": receiver.url}}});
    let (_, stream) = app
        .request_as(&a, Method::POST, "/v1/event-streams", bytes(&body))
        .await;
    let stream_id = stream["id"].as_str().unwrap().to_string();
    let (_, event) = app
        .request_as(
            &a,
            Method::POST,
            "/v1/events",
            bytes(&json!({"id": "a-1", "type": "user.created"})),
        )
        .await;
    assert_eq!(event["deliveries"], 1);
    let got = receiver.wait_for(1).await.remove(0);
    let delivery_id = got.header("webhook-id").unwrap().to_string();
    let (status, _) = app
        .request_as(
            &a,
            Method::POST,
            "/v1/event-types",
            bytes(&json!({"name": "acme.owned"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // A token of A's for the revocation route to revoke.
    let (_, victim) = app
        .request_as(
            &a,
            Method::POST,
            "/v1/tokens",
            bytes(&json!({"name": "victim", "scopes": ["read:events"]})),
        )
        .await;
    let token_id = victim["id"].as_str().unwrap().to_string();
    let fill = |path: &str| {
        path.replace("{stream}", &stream_id)
            .replace("{event}", "a-1")
            .replace("{delivery}", &delivery_id)
            .replace("{token}", &token_id)
            .replace("{type}", "acme.owned")
    };

    for (method, template, body, scope) in routes() {
        let path = fill(template);
        let body: Value = serde_json::from_str(&fill(&body.to_string())).unwrap();
        // Tenant B sees none of tenant A's rows.
        let (status, response) = app
            .request_as(&b, method.clone(), &path, bytes(&body))
            .await;
        if template.contains('{') {
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "B: {method} {path}: {response}"
            );
        } else if method == Method::GET {
            assert_eq!(status, StatusCode::OK, "B: {method} {path}");
            let text = response.to_string();
            assert!(
                !text.contains(&stream_id)
                    && !text.contains(&token_id)
                    && !text.contains("\"a-1\""),
                "B sees A's rows: {text}"
            );
        } else if template == "/v1/events/erase" {
            assert_eq!(response["erased"], 0, "B erased A's event: {response}");
        }

        // A token of tenant A without the route's scope is refused.
        let others: Vec<&str> = TENANT_SCOPES
            .iter()
            .copied()
            .filter(|s| *s != scope)
            .collect();
        let limited = app.tenant_token("ten_a", &others).await;
        let (status, response) = app
            .request_as(&limited, method.clone(), &path, bytes(&body))
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "without {scope}: {method} {path}: {response}"
        );
        assert_eq!(response["error"]["code"], "insufficient_scope");
    }

    // A's rows are all still there and A can use every route.
    for (method, template, body, _) in routes() {
        let path = fill(template);
        let body: Value = serde_json::from_str(&fill(&body.to_string())).unwrap();
        let (status, response) = app
            .request_as(&a, method.clone(), &path, bytes(&body))
            .await;
        assert!(
            status.is_success(),
            "A: {method} {path}: {status} {response}"
        );
    }
}
