//! Durability: `kill -9` in the middle of a publishing load loses nothing acknowledged; a
//! restart delivers every pending delivery. Then SIGTERM shuts down cleanly.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::helpers::*;

// Multi-threaded: the test blocks on the child process while its receiver must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let mut server = start_server(dir.path(), &[]);
    let http = reqwest::Client::new();

    server.create_stream(&http, &receiver).await;

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut publishers = Vec::new();
    for p in 0..8 {
        let (http, base, acknowledged) = (http.clone(), server.base.clone(), acknowledged.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("p{p}-{i}");
                let sent = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"id": id, "source": "/load", "type": "user.created"}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    // The server died: whatever was not acknowledged may be lost.
                    _ => break,
                }
            }
        }));
    }

    // Let the load run until a good number of events are acknowledged, then kill -9.
    loop {
        let count = acknowledged.lock().unwrap().len();
        if count >= 400 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for p in publishers {
        p.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let delivered_before = unique_event_ids(&receiver).len();
    assert!(
        delivered_before < acknowledged.len(),
        "the kill should leave a backlog ({delivered_before} of {} delivered)",
        acknowledged.len()
    );

    let mut server = start_server(dir.path(), &[]);
    receiver
        .wait_until("every acknowledged event", |received| {
            let delivered: HashSet<String> = received.iter().map(event_id).collect();
            acknowledged.is_subset(&delivered)
        })
        .await;

    // SIGTERM: a graceful stop with exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "herald exited with {exit} after SIGTERM");
}

fn unique_event_ids(receiver: &Receiver) -> HashSet<String> {
    receiver.received().iter().map(event_id).collect()
}

fn event_id(received: &Received) -> String {
    received.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_data_directory_serves_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = herald::App::build(
        test_config(dir.path()),
        std::sync::Arc::new(herald::clock::ManualClock::default()),
    )
    .await
    .unwrap();
    let second = herald::App::build(
        test_config(dir.path()),
        std::sync::Arc::new(herald::clock::ManualClock::default()),
    )
    .await;
    let err = second
        .err()
        .expect("a second process on the same data directory is refused");
    assert!(err.to_string().contains("another herald process"), "{err}");
    drop(first);
}
