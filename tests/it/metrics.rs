//! `/metrics` as a scraper sees it: who may read it, what the counters say after real
//! deliveries to real receivers, the backlog and slots while an endpoint hangs, and the
//! format as PyPI `prometheus-client`'s parsers read it (Prometheus text and OpenMetrics).
//! That last test needs `HERALD_TEST_PROMETHEUS_PYTHON` (a Python with `prometheus-client`;
//! `.ci/run` installs one into a cached virtualenv) and is reported as ignored without it.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A scrape in the Prometheus text format, read back sample by sample.
pub struct Scrape {
    pub text: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("not a sample: {line}")))
            .collect();
        Scrape { text, samples }
    }

    /// The sum of the samples of `name` whose labels include `labels`; 0 if there are none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the one sample of `name` whose labels include `labels`, if there is one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert!(found.len() <= 1, "several samples match: {found:?}");
        found.first().map(|s| s.value)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|value| value == v))
        })
    }
}

/// `name{key="value",...} value`, with the text format's escapes in label values.
fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some(Sample {
            name: head.to_string(),
            labels: BTreeMap::new(),
            value,
        });
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `GET /metrics` on the API listener as the admin, in the Prometheus text format.
pub async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    Scrape::parse(response.text().await.unwrap())
}

#[tokio::test]
async fn delivery_counters_move_by_exactly_what_was_delivered() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(503)]);
    let refusing = Receiver::start().await;
    refusing.always(Reply::status(400));
    let users = app
        .create_stream(&receiver.url, &["user.created"], json!({}))
        .await;
    let users = users["id"].as_str().unwrap();
    let flows = app
        .create_stream(
            &refusing.url,
            &["flow.run.finished"],
            json!({"name": "refused"}),
        )
        .await;
    let flows = flows["id"].as_str().unwrap();
    let before = scrape(&app).await;

    for id in ["u1", "u2", "u3", "u1"] {
        app.publish(json!({"id": id, "type": "user.created"})).await;
    }
    app.publish(json!({"id": "f1", "type": "flow.run.finished"}))
        .await;
    // One of the three met the 503 and waits for its retry, due within 12 s (10 s, ±20 %).
    for id in ["u1", "u2", "u3"] {
        app.wait_for_attempts(users, id, 1).await;
    }
    app.clock.advance(Duration::from_secs(13));
    for id in ["u1", "u2", "u3"] {
        app.wait_for_delivery(users, id, |d| d["status"] == "succeeded")
            .await;
    }
    app.wait_for_delivery(flows, "f1", |d| d["status"] == "failed")
        .await;
    // Reads by a route template, and a path no route matches.
    let (status, _) = app.get(&format!("/v1/event-streams/{users}")).await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/no/such/route").await;
    assert_eq!(status, 404);

    let after = scrape(&app).await;
    let moved =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let attempts = |outcome| {
        moved(
            "herald_delivery_attempts_total",
            &[("destination", "webhook"), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("delivered"), 3.0, "{}", after.text);
    assert_eq!(attempts("retrying"), 1.0, "{}", after.text);
    assert_eq!(attempts("failed"), 1.0, "{}", after.text);
    assert_eq!(
        receiver.received().len() + refusing.received().len(),
        5,
        "what the receivers saw is what was counted"
    );
    assert_eq!(
        moved(
            "herald_delivery_attempt_duration_seconds_count",
            &[("destination", "webhook")]
        ),
        5.0
    );
    let published = |category, outcome| {
        moved(
            "herald_events_published_total",
            &[("category", category), ("outcome", outcome)],
        )
    };
    assert_eq!(published("user", "accepted"), 3.0);
    assert_eq!(published("user", "duplicate"), 1.0);
    assert_eq!(published("flow", "accepted"), 1.0);
    assert_eq!(after.sum("herald_events_published_total", &[]), 5.0);

    assert_eq!(
        moved(
            "herald_http_requests_total",
            &[("method", "POST"), ("route", "/v1/events"), ("code", "202")]
        ),
        5.0
    );
    let by_template = [
        ("method", "GET"),
        ("route", "/v1/event-streams/{id}"),
        ("code", "200"),
    ];
    assert_eq!(
        after.get("herald_http_requests_total", &by_template),
        Some(1.0)
    );
    let unmatched = [("route", "unmatched"), ("code", "404")];
    assert_eq!(
        after.get("herald_http_requests_total", &unmatched),
        Some(1.0)
    );
    assert!(
        !after.text.contains(users) && !after.text.contains("/no/such/route"),
        "a raw path became a label: {}",
        after.text
    );
    assert_eq!(
        after.get(
            "herald_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/events")]
        ),
        Some(5.0)
    );
    // Everything was delivered: no backlog (read, not failed to read), and no slot held.
    assert_eq!(after.sum("herald_backlog_deliveries", &[]), 0.0);
    assert_eq!(
        after.sum("herald_store_errors_total", &[("caller", "metrics")]),
        0.0
    );
    assert_eq!(
        after.get(
            "herald_dispatcher_slots_in_use",
            &[("tenant", "ten_default")]
        ),
        Some(0.0)
    );
    // Both stores commit publishes in groups.
    let commits = after.sum("herald_store_group_commit_jobs_count", &[]);
    let jobs = after.sum("herald_store_group_commit_jobs_sum", &[]);
    assert!(commits > 0.0 && jobs >= commits, "{}", after.text);
}

/// Requests that hang at the receiver hold their tenant's slots, and what waits behind them
/// is the backlog: its depth, and how long the oldest due delivery has waited on Herald's
/// clock. Only the deepest stream is reported on its own (`metrics_backlog_top_streams`).
#[tokio::test]
async fn a_hung_endpoint_shows_as_slots_in_use_and_a_backlog_that_ages() {
    let app = spawn_app_with(|c| {
        c.max_in_flight_per_stream = 1;
        c.metrics_backlog_top_streams = 1;
    })
    .await;
    let hung = Receiver::start().await;
    hung.always(Reply::status(200).delayed(Duration::from_secs(120)));
    let deep = app
        .create_stream(&hung.url, &["user.created"], json!({"name": "deep"}))
        .await;
    let deep = deep["id"].as_str().unwrap();
    let shallow = app
        .create_stream(
            &hung.url,
            &["flow.run.finished"],
            json!({"name": "shallow"}),
        )
        .await;
    let shallow = shallow["id"].as_str().unwrap();
    let events: Vec<Value> = [
        "user.created",
        "user.created",
        "user.created",
        "flow.run.finished",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| json!({"id": format!("e{i}"), "type": t}))
    .collect();
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, 202, "{body}");
    // One request per stream hangs; the rest wait, due since they were published.
    hung.wait_for(2).await;
    app.clock.advance(Duration::from_secs(7));

    let scraped = scrape(&app).await;
    let tenant = [("tenant", "ten_default")];
    assert_eq!(
        scraped.get("herald_dispatcher_slots_in_use", &tenant),
        Some(2.0),
        "{}",
        scraped.text
    );
    assert_eq!(scraped.get("herald_dispatcher_slots", &[]), Some(512.0));
    assert_eq!(scraped.get("herald_backlog_deliveries", &tenant), Some(4.0));
    assert_eq!(
        scraped.get("herald_backlog_oldest_due_age_seconds", &tenant),
        Some(7.0),
        "{}",
        scraped.text
    );
    let stream = [("tenant", "ten_default"), ("stream", deep)];
    assert_eq!(
        scraped.get("herald_stream_backlog_deliveries", &stream),
        Some(3.0)
    );
    assert_eq!(
        scraped.get("herald_stream_backlog_oldest_due_age_seconds", &stream),
        Some(7.0)
    );
    assert!(
        !scraped.text.contains(shallow),
        "only the deepest stream is reported on its own: {}",
        scraped.text
    );
}

/// The event log's readers: those open on the node, the events sent to them (each reader's
/// copy), and the readers refused for the tenant's cap and for the node's.
#[tokio::test]
async fn event_log_readers_are_counted_open_served_and_refused() {
    use crate::log_stream::SseClient;
    // Four readers on the node: half of max_connections.
    let app = spawn_app_with(|c| c.max_connections = 8).await;
    let base = app.url("");
    let readers = |scraped: &Scrape| scraped.get("herald_event_log_readers", &[]);
    let served = |scraped: &Scrape| scraped.get("herald_event_log_events_served_total", &[]);
    let refused = |scraped: &Scrape, limit| {
        scraped.get(
            "herald_event_log_readers_refused_total",
            &[("limit", limit)],
        )
    };
    let before = scrape(&app).await;
    assert_eq!(readers(&before), Some(0.0), "{}", before.text);
    assert_eq!(served(&before), Some(0.0));
    assert_eq!(refused(&before, "node"), Some(0.0));
    assert_eq!(refused(&before, "tenant"), Some(0.0));

    let mut all = SseClient::open(&base, ADMIN_TOKEN, "", None).await;
    let mut users = SseClient::open(&base, ADMIN_TOKEN, "?event_type=user.*", None).await;
    for (id, event_type) in [
        ("u1", "user.created"),
        ("f1", "flow.run.finished"),
        ("u2", "user.deleted"),
    ] {
        app.publish(json!({"id": id, "type": event_type})).await;
    }
    for id in ["u1", "f1", "u2"] {
        assert_eq!(all.next().await.data["id"], id);
    }
    for id in ["u1", "u2"] {
        assert_eq!(users.next().await.data["id"], id);
    }
    let scraped = scrape(&app).await;
    assert_eq!(readers(&scraped), Some(2.0), "{}", scraped.text);
    assert_eq!(
        served(&scraped),
        Some(5.0),
        "what a filter holds back is not served"
    );

    // A reader whose client went away is noticed at its next message.
    drop(users);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for n in 0.. {
        let id = format!("more{n}");
        app.publish(json!({"id": id, "type": "user.created"})).await;
        assert_eq!(all.next().await.data["id"], id.as_str());
        if readers(&scrape(&app).await) == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader stayed counted"
        );
    }

    // The node's cap: four readers, and another is refused; then the tenant's cap, on
    // a node of its own.
    let _more: Vec<SseClient> = futures_util::future::join_all(
        (0..3).map(|_| SseClient::open(&base, ADMIN_TOKEN, "", None)),
    )
    .await;
    let response = SseClient::request(&base, ADMIN_TOKEN, "", None).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let scraped = scrape(&app).await;
    assert_eq!(readers(&scraped), Some(4.0), "{}", scraped.text);
    assert_eq!(refused(&scraped, "node"), Some(1.0));
    assert_eq!(refused(&scraped, "tenant"), Some(0.0));

    let app = spawn_app().await;
    let base = app.url("");
    let _open: Vec<SseClient> = futures_util::future::join_all(
        (0..herald::api::log_stream::MAX_READERS_PER_TENANT)
            .map(|_| SseClient::open(&base, ADMIN_TOKEN, "", None)),
    )
    .await;
    let response = SseClient::request(&base, ADMIN_TOKEN, "", None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let scraped = scrape(&app).await;
    assert_eq!(
        readers(&scraped),
        Some(herald::api::log_stream::MAX_READERS_PER_TENANT as f64)
    );
    assert_eq!(refused(&scraped, "tenant"), Some(1.0), "{}", scraped.text);
    assert_eq!(refused(&scraped, "node"), Some(0.0));
}

#[tokio::test]
async fn metrics_need_a_platform_token_with_read_metrics_or_the_metrics_listener() {
    let app = spawn_app_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let get = |token: Option<String>| {
        let mut request = app.http.get(app.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    let error_code = |body: &str| -> String {
        let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
        body["error"]["code"].as_str().unwrap().to_string()
    };

    let (status, body) = get(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthorized");

    // A tenant token never reads metrics, which name every tenant, nor can it be granted to.
    let tenant = app
        .tenant_token("ten_default", &["read:events", "manage:tokens"])
        .await;
    let (status, body) = get(Some(tenant.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "insufficient_scope");
    let (status, body) = app
        .post(
            "/v1/tokens",
            &json!({"name": "scraper", "scopes": ["read:metrics"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");

    let platform = |scopes: Value| {
        let app = &app;
        async move {
            let (status, body) = app
                .post(
                    "/v1/tokens",
                    &json!({"name": "ops", "scopes": scopes, "platform": true}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["token"].as_str().unwrap().to_string()
        }
    };
    let (status, body) = get(Some(platform(json!(["read:events"])).await)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "insufficient_scope");
    let (status, body) = get(Some(platform(json!(["read:metrics"])).await)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("# TYPE herald_http_requests_total counter"),
        "{body}"
    );
    // A token that administers every tenant reads them too, whenever it was made.
    let (status, _) = get(Some(platform(json!(["manage:tenants"])).await)).await;
    assert_eq!(status, StatusCode::OK);

    // The operator's own address: no token, and nothing but the metrics.
    let base = format!(
        "http://{}",
        app.metrics_addr.expect("metrics_listen is set")
    );
    let response = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let scraped = Scrape::parse(response.text().await.unwrap());
    assert_eq!(
        scraped.get(
            "herald_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("code", "401")]
        ),
        Some(1.0),
        "{}",
        scraped.text
    );
    for path in ["/v1/events", "/healthz", "/"] {
        let response = app.http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = app
        .http
        .post(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Reads `text` with PyPI `prometheus-client`'s parser for `format` (`prometheus` or
/// `openmetrics`), which raises on anything malformed; gives its families as JSON.
#[cfg(herald_prometheus_parser_tests)]
fn reference_parse(format: &str, text: &str) -> Vec<Value> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else prometheus
json.dump([{"name": f.name, "type": f.type, "help": f.documentation, "unit": f.unit,
            "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
           for f in parse(sys.stdin.read())], sys.stdout)
"#;
    let python = std::env::var("HERALD_TEST_PROMETHEUS_PYTHON")
        .ok()
        .or(option_env!("HERALD_TEST_PROMETHEUS_PYTHON").map(str::to_string))
        .expect("HERALD_TEST_PROMETHEUS_PYTHON was set when the tests were built");
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("HERALD_TEST_PROMETHEUS_PYTHON={python} does not run: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the {format} parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(herald_prometheus_parser_tests),
    ignore = "needs HERALD_TEST_PROMETHEUS_PYTHON"
)]
async fn the_scrape_passes_the_reference_parsers() {
    #[cfg(herald_prometheus_parser_tests)]
    {
        let app = spawn_app().await;
        let receiver = Receiver::start().await;
        let delivered = app
            .create_stream(&receiver.url, &["user.created"], json!({}))
            .await;
        let delivered = delivered["id"].as_str().unwrap();
        let hung = Receiver::start().await;
        hung.always(Reply::status(200).delayed(Duration::from_secs(120)));
        app.create_stream(&hung.url, &["flow.run.finished"], json!({"name": "hung"}))
            .await;
        for id in ["a", "b"] {
            app.publish(json!({"id": id, "type": "user.created"})).await;
            app.publish(json!({"id": id, "type": "flow.run.finished", "source": "/flows"}))
                .await;
        }
        for id in ["a", "b"] {
            app.wait_for_delivery(delivered, id, |d| d["status"] == "succeeded")
                .await;
        }
        hung.wait_for(1).await;

        let mut expected = vec![
            ("herald_http_requests", "counter"),
            ("herald_http_request_duration_seconds", "histogram"),
            ("herald_events_published", "counter"),
            ("herald_delivery_attempts", "counter"),
            ("herald_delivery_attempt_duration_seconds", "histogram"),
            ("herald_dispatcher_slots_in_use", "gauge"),
            ("herald_dispatcher_slots", "gauge"),
            ("herald_backlog_deliveries", "gauge"),
            ("herald_backlog_oldest_due_age_seconds", "gauge"),
            ("herald_stream_backlog_deliveries", "gauge"),
            ("herald_stream_backlog_oldest_due_age_seconds", "gauge"),
            ("herald_event_log_readers", "gauge"),
            ("herald_event_log_events_served", "counter"),
            ("herald_event_log_readers_refused", "counter"),
            ("herald_store_group_commit_jobs", "histogram"),
            ("herald_store_group_commit_duration_seconds", "histogram"),
        ];
        expected.sort();

        for (format, accept) in [
            ("prometheus", "text/plain"),
            ("openmetrics", "application/openmetrics-text; version=1.0.0"),
        ] {
            let response = app
                .http
                .get(app.url("/metrics"))
                .bearer_auth(ADMIN_TOKEN)
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            let families = reference_parse(format, &text);
            let mut found: Vec<(&str, &str)> = families
                .iter()
                .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
                .collect();
            found.sort();
            // A sample outside a declared family would show as an untyped one.
            assert_eq!(found, expected, "{format}:\n{text}");
            for family in &families {
                let name = family["name"].as_str().unwrap();
                assert!(
                    family["help"].as_str().is_some_and(|h| h.len() > 20),
                    "{format}: {name} has no help"
                );
                if format == "openmetrics" {
                    let unit = if name.ends_with("_seconds") {
                        "seconds"
                    } else {
                        ""
                    };
                    assert_eq!(family["unit"], unit, "{format}: {name}");
                }
                assert!(
                    !family["samples"].as_array().unwrap().is_empty(),
                    "{format}: {name} has no samples"
                );
            }
            let delivered: f64 = families
                .iter()
                .filter(|f| f["name"] == "herald_delivery_attempts")
                .flat_map(|f| f["samples"].as_array().unwrap())
                .filter(|s| {
                    s["name"] == "herald_delivery_attempts_total"
                        && s["labels"]["outcome"] == "delivered"
                })
                .map(|s| s["value"].as_f64().unwrap())
                .sum();
            assert_eq!(delivered, 2.0, "{format}:\n{text}");
        }
    }
}
