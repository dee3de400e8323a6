//! moto (PyPI `moto[server]`), the AWS-compatible server the EventBridge scenario puts events
//! on: `HERALD_BENCH_MOTO_SERVER`, else `moto_server` on the `PATH`. Started without
//! authentication on a free loopback port, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::destinations::aws::{Credentials, Signing, sign_headers};
use herald::secret::Secret;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Result<Moto, String> {
        let server = std::env::var("HERALD_BENCH_MOTO_SERVER")
            .ok()
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path)
                    .map(|dir| dir.join("moto_server"))
                    .find(|p| p.is_file())
                    .map(|p| p.display().to_string())
            })
            .ok_or("no moto_server (set HERALD_BENCH_MOTO_SERVER or put it on PATH)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{server} does not start: {e}"))?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..400 {
            let probe = http
                .get(format!("{}/moto-api/data.json", moto.endpoint))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(moto);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{server} did not answer on port {port}"))
    }

    /// One EventBridge call (`AWSEvents.CreateEventBus`...), signed with any key: moto runs
    /// without authentication here.
    pub async fn events(&self, target: &str, body: &Value) -> Value {
        let url = reqwest::Url::parse(&format!("{}/", self.endpoint)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        headers.insert("x-amz-target", HeaderValue::from_str(target).unwrap());
        let body = serde_json::to_vec(body).unwrap();
        let credentials = Credentials {
            access_key_id: "AKIABENCH00000000000".into(),
            secret_access_key: Secret::new("bench"),
            session_token: None,
            expires_at: None,
        };
        let signing = Signing {
            region: "us-east-1",
            service: "events",
        };
        sign_headers(
            &url,
            &mut headers,
            &body,
            &credentials,
            &signing,
            herald::clock::system_now_ms(),
        )
        .unwrap();
        let response = reqwest::Client::new()
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("moto answers");
        assert!(
            response.status().is_success(),
            "{target}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }
}
