//! The operator's egress proxy: deliveries go through it, and the SSRF guard still refuses a
//! destination whose host resolves to a refused address, before anything reaches the proxy.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// A tiny HTTP proxy on port 0: tunnels CONNECT, forwards absolute-form requests, and keeps
/// the request line of each connection it is asked to open.
struct Proxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, log.clone()));
            }
        });
        Proxy { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn relay(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().push(line.clone());
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut upstream = if method == "CONNECT" {
        let upstream = TcpStream::connect(target).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        upstream
    } else {
        let authority = target
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let mut upstream = TcpStream::connect(authority).await?;
        upstream.write_all(&head).await?;
        upstream
    };
    copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[tokio::test]
async fn deliveries_go_through_the_egress_proxy() {
    let proxy = Proxy::start().await;
    let app = spawn_app_with(|c| c.egress_proxy = Some(proxy.url.clone())).await;
    let receiver = Receiver::start().await;
    app.create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    app.publish(json!({"id": "via-proxy", "type": "user.created", "data": {"id": "u1"}}))
        .await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["id"], "via-proxy");
    let authority = receiver
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/hook");
    assert!(
        proxy.seen().iter().any(|line| line.contains(authority)),
        "the proxy never carried a request to {authority}: {:?}",
        proxy.seen()
    );
}

#[tokio::test]
async fn through_the_proxy_a_refused_destination_is_still_refused() {
    let proxy = Proxy::start().await;
    let app = spawn_app_with(|c| {
        c.egress_proxy = Some(proxy.url.clone());
        // Loopback is refused again; the proxy's own (loopback) address is not checked.
        c.allow_cidrs = Vec::new();
    })
    .await;
    let receiver = Receiver::start().await;
    let url = receiver.url.replace("127.0.0.1", "localhost");
    let stream = app.create_stream(&url, &["user.created"], json!({})).await;
    let (status, result) = app
        .test_stream(stream["id"].as_str().unwrap(), "user.created")
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["delivered"], false, "{result}");
    assert_eq!(result["error"]["kind"], "blocked", "{result}");
    assert_eq!(
        result["error"]["message"],
        "the destination's address is not allowed"
    );
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn https_destinations_are_tunnelled_with_connect() {
    let proxy = Proxy::start().await;
    let app = spawn_app_with(|c| c.egress_proxy = Some(proxy.url.clone())).await;
    // A plain-http receiver behind an https URL: the tunnel opens, the TLS handshake fails.
    let receiver = Receiver::start().await;
    let authority = receiver
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .replace("127.0.0.1", "localhost");
    let stream = app
        .create_stream(
            &format!("https://{authority}/hook"),
            &["user.created"],
            json!({}),
        )
        .await;
    let (status, result) = app
        .test_stream(stream["id"].as_str().unwrap(), "user.created")
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["delivered"], false, "{result}");
    assert_eq!(
        proxy.seen(),
        vec![format!("CONNECT {authority} HTTP/1.1")],
        "{result}"
    );
}
