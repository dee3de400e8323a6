//! The API's last line of defence: a request id on every answer, and a handler that panics
//! answers a 500 with the error body while the server keeps serving.

use axum::Router;
use axum::routing::get;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    // The same layers as the API, around a route that panics.
    let router = herald::api::guarded(
        Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("boom");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .route("/fine", get(|| async { "fine" })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();

    let response = http.get(format!("{base}/boom")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("req_"), "{id}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert!(
        !body.to_string().contains("boom"),
        "the panic's text stays in the log: {body}"
    );

    let response = http
        .get(format!("{base}/fine"))
        .header("x-request-id", "from-the-proxy")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the server still serves");
    assert_eq!(
        response.headers()["x-request-id"],
        "from-the-proxy",
        "a proxy's request id is kept"
    );
}

#[tokio::test]
async fn every_api_answer_carries_a_request_id() {
    let app = spawn_app().await;
    for path in ["/healthz", "/v1/event-streams", "/no/such/route"] {
        let response = app
            .http
            .get(app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            response.headers().contains_key("x-request-id"),
            "{path}: {:?}",
            response.headers()
        );
    }
}
