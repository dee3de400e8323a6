//! The API's request metrics: a middleware around every route counts each answer by method,
//! route template (axum's `MatchedPath`, never the path itself: `/v1/event-streams/{id}` is
//! one series however many streams there are) and status code, and times it. A request no
//! route matched counts under `unmatched`, and a method outside the standard ones under
//! `other`, so nothing a caller sends can add a series. It also counts the store failures
//! behind API errors, which handlers report through a [`StoreFailure`] extension.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{Metrics, StoreCaller, StoreFailure};

pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

/// A route template, or none when no route matched. Cloning it clones a reference count.
#[derive(Clone, Debug)]
struct Route(Option<MatchedPath>);

impl Route {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl Hash for Route {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Route,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: Route,
}

/// Upper bounds of the request latency buckets, in seconds: from a cached read to a stream
/// test that waits out a slow endpoint.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "API requests answered, by method, route template and status code",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            request_histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "How long API requests took to answer, by method and route template",
            Unit::Seconds,
            durations.clone(),
        );
        HttpMetrics {
            requests,
            durations,
        }
    }
}

/// The middleware: wraps every route of the API (outside the other layers, so it sees the
/// answer the client gets, a shed request's 503 and a panic's 500 included).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = Route(request.extensions().get::<MatchedPath>().cloned());
    let response = next.run(request).await;
    let took = started.elapsed().as_secs_f64();
    let http = &metrics.http;
    http.requests
        .get_or_create(&RequestLabels {
            method,
            route: route.clone(),
            code: response.status().as_u16(),
        })
        .inc();
    http.durations
        .get_or_create(&RouteLabels { method, route })
        .observe(took);
    if let Some(StoreFailure(kind)) = response.extensions().get::<StoreFailure>() {
        metrics.store_error_of_kind(StoreCaller::Api, kind);
    }
    response
}

/// The standard methods by name; anything else is `other`.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}
