//! The Herald under test: a `herald serve` child process on a temporary embedded store (or
//! the PostgreSQL database its environment names), its API, and its resource use read from
//! `/proc` (CPU seconds and peak RSS).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const TOKEN: &str = "hrd_bench_admin_token_00000000000";

pub struct Herald {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    data: PathBuf,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The `herald` binary built beside this one.
fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    exe.with_file_name("herald")
}

impl Herald {
    pub fn start(extra_env: &[(&str, String)]) -> Herald {
        let data =
            std::env::temp_dir().join(format!("herald-bench-{}", herald::ids::random_base62(10)));
        let mut command = Command::new(herald_binary());
        command
            .arg("serve")
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_DATA_DIR", &data)
            .env("HERALD_ALLOW_HTTP", "true")
            .env("HERALD_ALLOW_CIDRS", "127.0.0.0/8")
            .env("HERALD_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", herald_binary().display()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("herald exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("herald listening on ") {
                break url.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        Herald {
            child,
            base,
            http,
            data,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        self.post_in("ten_default", path, body).await
    }

    /// A POST acting on `tenant` (the platform token names it with `Herald-Tenant`).
    pub async fn post_in(&self, tenant: &str, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("herald-tenant", tenant)
            .json(body)
            .send()
            .await
            .expect("herald answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    pub async fn patch(&self, path: &str, body: &Value) {
        let response = self
            .http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .expect("herald answers");
        assert!(
            response.status().is_success(),
            "PATCH {path}: {}",
            response.status()
        );
    }

    /// Creates a stream to `url` for `event_type`, with a retry policy that keeps failing
    /// receivers busy (the S5 scenario) rather than disabling them.
    pub async fn stream(&self, url: &str, event_type: &str) -> String {
        self.stream_in("ten_default", url, event_type).await
    }

    /// [`Herald::stream`] for another tenant.
    pub async fn stream_in(&self, tenant: &str, url: &str, event_type: &str) -> String {
        // Stream names are unique per tenant.
        static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = json!({
            "name": format!("bench-{n}"),
            "subscriptions": [{"event_type": event_type}],
            "destination": {"type": "webhook", "configuration": {"webhook_endpoint": url}},
            "max_consecutive_failures": 0,
            "retry_policy": {"max_attempts": 100, "initial_interval_seconds": 1, "jitter": 0}
        });
        self.post_in(tenant, "/v1/event-streams", &body).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// CPU seconds used so far, user and system, all threads.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// Peak resident set size in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// CPU seconds process `pid` has used so far, user and system, all threads; `None` when it
/// cannot be read (gone, or not on this machine).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name and state.
    Some((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// `getconf CLK_TCK`; 100 on every Linux this runs on, asked anyway.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Waits until `done` holds, checking every few milliseconds, for at most `limit`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}
