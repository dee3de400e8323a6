//! A real AWS-compatible server for the AWS destinations' tests: `moto_server` (PyPI
//! `moto[server]`), one process per test on a free port, so its count of unauthenticated
//! requests is the test's own. With authentication on, the first three requests create an
//! admin user, its allow-everything policy and its access key; every later request must be
//! signed with a key that exists, so a wrong key or signature is refused as AWS would.
//!
//! The server is `HERALD_TEST_MOTO_SERVER` (CI installs moto into a cached virtualenv and sets
//! it), else `moto_server` on the `PATH`; without either, the tests that need it are skipped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::clock::system_now_ms;
use herald::destinations::aws::{Credentials, Signing, form_body, sign_headers};
use herald::secret::Secret;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::helpers::PATIENCE;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub endpoint: String,
    /// The admin's key; `None` when authentication is off.
    pub admin: Option<(String, String)>,
    http: reqwest::Client,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> Option<String> {
    if let Ok(path) = std::env::var("HERALD_TEST_MOTO_SERVER") {
        return Some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("moto_server"))
        .find(|candidate| candidate.is_file())
        .map(|p| p.display().to_string())
}

/// Requests moto serves before it checks signatures: the admin's user, policy and key.
const FREE_REQUESTS: usize = 3;

impl Moto {
    /// moto with IAM authentication on, and an admin key for the test's own calls. `None`
    /// (the test is skipped) when no moto server is installed.
    pub async fn start() -> Option<Moto> {
        let mut moto = Self::spawn(true).await?;
        let dummy = ("AKIAFREEREQUESTS0000".to_string(), "free".to_string());
        moto.admin = Some(dummy);
        moto.iam(&[("Action", "CreateUser"), ("UserName", "admin")])
            .await;
        moto.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "admin"),
            ("PolicyName", "everything"),
            ("PolicyDocument", &allow(&["*"])),
        ])
        .await;
        let key = moto
            .iam(&[("Action", "CreateAccessKey"), ("UserName", "admin")])
            .await;
        moto.admin = Some((
            between(&key, "<AccessKeyId>", "</AccessKeyId>"),
            between(&key, "<SecretAccessKey>", "</SecretAccessKey>"),
        ));
        Some(moto)
    }

    /// moto without authentication: for a proxy in front of it that rewrites requests.
    pub async fn start_open() -> Option<Moto> {
        Self::spawn(false).await
    }

    async fn spawn(auth: bool) -> Option<Moto> {
        let Some(server) = moto_server() else {
            eprintln!("skipped: no moto_server (set HERALD_TEST_MOTO_SERVER or put it on PATH)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(&server);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("AWS_DEFAULT_REGION", REGION)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", FREE_REQUESTS.to_string());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{server} does not start: {e}"));
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            admin: None,
            http: reqwest::Client::new(),
        };
        // An external process: wait until it answers (a bound, not a timing assertion).
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let probe = moto
                .http
                .get(format!("{}/moto-api/data.json", moto.endpoint))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(moto)
    }

    /// A signed POST (with the admin key, when authentication is on).
    async fn post(&self, service: &str, mut headers: HeaderMap, body: Vec<u8>) -> (u16, String) {
        let url = reqwest::Url::parse(&format!("{}/", self.endpoint)).unwrap();
        let (id, secret) = self
            .admin
            .clone()
            .unwrap_or_else(|| ("AKIAOPEN000000000000".into(), "open".into()));
        let credentials = Credentials {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
            session_token: None,
            expires_at: None,
        };
        let signing = Signing {
            region: REGION,
            service,
        };
        sign_headers(
            &url,
            &mut headers,
            &body,
            &credentials,
            &signing,
            system_now_ms(),
        )
        .unwrap();
        let response = self
            .http
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// An IAM (query protocol) call; panics unless it succeeds. Gives the XML answer.
    pub async fn iam(&self, params: &[(&str, &str)]) -> String {
        self.query("iam", "2010-05-08", params).await
    }

    pub async fn query(&self, service: &str, version: &str, params: &[(&str, &str)]) -> String {
        let mut pairs = params.to_vec();
        pairs.push(("Version", version));
        let body = form_body(&pairs);
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let (status, text) = self.post(service, headers, body.into_bytes()).await;
        assert_eq!(status, 200, "{service} {params:?}: {text}");
        text
    }

    /// A JSON-protocol call (`AWSEvents.PutRule`, `AmazonSQS.ReceiveMessage`...); panics
    /// unless it succeeds.
    pub async fn json(&self, service: &str, target: &str, body: Value) -> Value {
        let content_type = if service == "sqs" {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(content_type));
        headers.insert("x-amz-target", HeaderValue::from_str(target).unwrap());
        let (status, text) = self
            .post(service, headers, serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(status, 200, "{target}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// A bus with a rule that routes `event_type` to a new queue; gives the queue's URL.
    pub async fn bus_to_queue(&self, bus: &str, event_type: &str) -> String {
        if bus != "default" {
            self.json("events", "AWSEvents.CreateEventBus", json!({"Name": bus}))
                .await;
        }
        let queue = self
            .json(
                "sqs",
                "AmazonSQS.CreateQueue",
                json!({"QueueName": format!("{bus}-queue")}),
            )
            .await["QueueUrl"]
            .as_str()
            .unwrap()
            .to_string();
        let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{bus}-queue");
        self.json(
            "events",
            "AWSEvents.PutRule",
            json!({
                "Name": "route",
                "EventBusName": bus,
                "EventPattern": json!({"detail-type": [event_type]}).to_string(),
            }),
        )
        .await;
        self.json(
            "events",
            "AWSEvents.PutTargets",
            json!({"Rule": "route", "EventBusName": bus, "Targets": [{"Id": "queue", "Arn": arn}]}),
        )
        .await;
        queue
    }

    /// Reads messages off `queue` until `n` have arrived; gives their bodies as JSON.
    pub async fn receive(&self, queue: &str, n: usize) -> Vec<Value> {
        let mut bodies = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while bodies.len() < n {
            let answer = self
                .json(
                    "sqs",
                    "AmazonSQS.ReceiveMessage",
                    json!({"QueueUrl": queue, "MaxNumberOfMessages": 10}),
                )
                .await;
            for message in answer["Messages"].as_array().into_iter().flatten() {
                bodies.push(serde_json::from_str(message["Body"].as_str().unwrap()).unwrap());
                self.json(
                    "sqs",
                    "AmazonSQS.DeleteMessage",
                    json!({"QueueUrl": queue, "ReceiptHandle": message["ReceiptHandle"]}),
                )
                .await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} messages reached the queue",
                bodies.len()
            );
            if bodies.len() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        bodies
    }

    /// A user whose key can do only `actions`; gives its key.
    pub async fn user(&self, name: &str, actions: &[&str]) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])
            .await;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "limited"),
            ("PolicyDocument", &allow(actions)),
        ])
        .await;
        let key = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
            .await;
        (
            between(&key, "<AccessKeyId>", "</AccessKeyId>"),
            between(&key, "<SecretAccessKey>", "</SecretAccessKey>"),
        )
    }
}

/// An IAM policy document allowing `actions` on everything.
pub fn allow(actions: &[&str]) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]
    })
    .to_string()
}

/// The text between two markers of an XML answer.
pub fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    let to = text[from..].find(end).unwrap() + from;
    text[from..to].to_string()
}
