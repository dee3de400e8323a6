//! The OpenAPI document (`openapi.json`) against the server: every documented operation is
//! routed, every route is documented, and the document is what the server serves.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn document() -> Value {
    serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json is JSON")
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| METHODS.contains(&k.to_uppercase().as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

/// The paths the router declares, read from its source: `.route("/path", ...)`.
fn routed_paths() -> BTreeSet<String> {
    let source = include_str!("../../src/api/mod.rs");
    source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            Some(rest[start..end].to_string())
        })
        .collect()
}

/// The served document is the repository's file as it is now (read at test time, not the
/// copy compiled into the test), as JSON, and it names the version of the server serving it.
#[tokio::test]
async fn the_server_serves_the_document_in_the_repository() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let served: Value = response.json().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(served, on_disk);
    assert_eq!(served["openapi"], "3.0.3");
    assert_eq!(
        served["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "openapi.json's info.version follows Cargo.toml"
    );
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        routed_paths(),
        documented,
        "routes in src/api/mod.rs vs paths in openapi.json"
    );

    let app = spawn_app().await;
    let ops = operations(&doc);
    for path in &documented {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let response = app
                .http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&concrete),
                )
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = response.status();
            // A stream of events never ends: its answering is what counts.
            let streaming = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body: Value = if streaming {
                Value::Null
            } else {
                response.json().await.unwrap_or(Value::Null)
            };
            let code = body["error"]["code"].as_str().unwrap_or_default();
            let routed = code != "method_not_allowed"
                && !(status == 404 && body["error"]["message"] == "no such route");
            let listed = ops.contains(&(method.to_string(), path.clone()));
            assert_eq!(
                routed, listed,
                "{method} {path}: documented {listed}, routed {routed} ({status} {body})"
            );
        }
    }
}
