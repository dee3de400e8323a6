//! A database outage, made by cutting the connections of a small TCP proxy between Herald
//! and PostgreSQL: requests get a clear 503 instead of hanging or a 500, `/readyz` reports
//! the fault, delivery pauses, and everything resumes when the database is back, without a
//! restart. Needs `HERALD_TEST_DATABASE_URL`; without it, reported as ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::secret::Secret;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Forwards connections to `upstream` until cut; while cut, new connections are closed at
/// once, as if the database host went away.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    live: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let live = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (accept_down, accept_live) = (down.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if accept_down.load(Ordering::SeqCst) {
                    continue; // Dropped: the connection closes.
                }
                let cut = accept_live.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy { addr, down, live }
    }

    /// Closes every open connection and refuses new ones.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        let mut live = self.live.lock().unwrap();
        live.cancel();
        *live = CancellationToken::new();
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[tokio::test]
#[cfg_attr(not(herald_postgres_tests), ignore = "needs HERALD_TEST_DATABASE_URL")]
async fn a_database_outage_answers_503_pauses_delivery_and_heals_without_a_restart() {
    let database = postgres_database().await;
    let mut url = url::Url::parse(&database.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream.parse().unwrap()).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let app = spawn_app_with(|config| {
        config.database_url = Some(Secret::new(url.to_string()));
        // Longer than the clock moves here while the store comes back: a delivery is made a
        // second time only if its outcome was given up on.
        config.delivery_lease_seconds = Some(3_600);
    })
    .await;

    // A delivery that fails once, so its retry falls due during the outage.
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503)]);
    let retry = json!({"retry_policy": {
        "max_attempts": 5, "initial_interval_seconds": 10,
        "multiplier": 2, "max_interval_seconds": 60, "jitter": 0
    }});
    let stream = app
        .create_stream(&receiver.url, &["user.created"], retry)
        .await;
    let stream_id = stream["id"].as_str().unwrap();
    app.publish(json!({"id": "before", "type": "user.created"}))
        .await;
    let d = app.wait_for_attempts(stream_id, "before", 1).await;
    assert_eq!(d["status"], "pending");

    proxy.cut();
    let (status, body) = app
        .post(
            "/v1/events",
            &json!({"id": "during", "type": "user.created"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_ready");
    // Unauthenticated: the state, not the store's error text.
    assert_eq!(body["error"]["message"], "the store cannot serve requests");
    // The metrics still answer, count the failures, and leave out the backlog they could
    // not read rather than show a stale one.
    let scraped = crate::metrics::scrape(&app).await;
    let errors = |caller| {
        scraped.sum(
            "herald_store_errors_total",
            &[("caller", caller), ("kind", "unavailable")],
        )
    };
    assert!(errors("api") >= 1.0, "{}", scraped.text);
    assert!(errors("metrics") >= 1.0, "{}", scraped.text);
    assert_eq!(scraped.sum("herald_backlog_deliveries", &[]), 0.0);
    // The retry falls due, but nothing can be claimed: delivery waits for the database.
    app.clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "no attempt without the database"
    );

    proxy.restore();
    // A client retries; the first tries may still meet connections the outage broke. The
    // dispatcher tries the store again each second of Herald's clock.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        app.clock.advance(Duration::from_secs(1));
        let (status, body) = app
            .post(
                "/v1/events",
                &json!({"id": "during", "type": "user.created"}),
            )
            .await;
        if status == 202 {
            break;
        }
        assert_eq!(
            status, 503,
            "only the outage's own error until it heals: {body}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
    drive_until_succeeded(&app, stream_id, "before").await;
    let d = app.deliveries(stream_id, "before").await.remove(0);
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2);
    drive_until_succeeded(&app, stream_id, "during").await;

    // An outcome that comes back while the store is away is held, and stored once it
    // returns: the delivery is not made a second time.
    let slow = Receiver::start().await;
    slow.always(Reply::status(200).delayed(Duration::from_millis(300)));
    let held = app
        .create_stream(&slow.url, &["flow.created"], json!({}))
        .await;
    let held_id = held["id"].as_str().unwrap();
    app.publish(json!({"id": "held", "type": "flow.created"}))
        .await;
    slow.wait_for(1).await;
    proxy.cut();
    // The receiver answers during the outage; give its answer time to come back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.restore();
    // An outcome given up on would leave the delivery pending until its lease lapsed, then
    // make it again.
    drive_until_succeeded(&app, held_id, "held").await;
    let d = app.deliveries(held_id, "held").await.remove(0);
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(
        slow.received().len(),
        1,
        "the outcome was kept, not the attempt repeated"
    );
    app.stop().await;
}

/// Moves Herald's clock a second at a time until the delivery succeeds: the dispatcher and
/// the recorder wait on that clock between tries of a store that failed.
async fn drive_until_succeeded(app: &TestApp, stream_id: &str, event_id: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = app
            .get(&format!(
                "/v1/event-streams/{stream_id}/deliveries/{event_id}"
            ))
            .await;
        if status == 200 && body[0]["status"] == "succeeded" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{event_id} was never delivered: {body}"
        );
        app.clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
