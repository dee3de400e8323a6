//! Where Herald's logs and spans go. Log lines go to stderr, as text or JSON, filtered by
//! `RUST_LOG`. With an OTLP endpoint configured, Herald's spans also go to an OpenTelemetry
//! collector over OTLP/HTTP (protobuf), whatever `RUST_LOG` lets into the log: a span per API
//! request and per request to a destination (an `attempt`). An attempt's span is a child of
//! the trace its event carries (see [`crate::trace`]) and is the parent the receiver sees in
//! its `traceparent`, so the publisher's, Herald's and the receiver's spans form one trace.
//! Without an endpoint nothing of OpenTelemetry is installed, and the hooks the request and
//! delivery paths call cost one atomic load.

use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

use crate::event::Event;
use crate::trace::{TRACESTATE, TraceParent};

/// Set once, when export is installed; read by every request and attempt.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// How long one export request to the collector may take (OTLP's default timeout).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether spans are being exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text, coloured only on a terminal.
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to `{endpoint}`: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

/// The process's logging and, when configured, span export. Keep it until the server has
/// stopped, then [`Telemetry::shutdown`] sends the spans still batched.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Logs only. Installs the process-wide subscriber: call once.
    pub fn logs(format: LogFormat) -> Telemetry {
        // One global filter: the cheapest arrangement, and all there was before export.
        tracing_subscriber::registry()
            .with(log_filter())
            .with(log_layer(format))
            .init();
        Telemetry { provider: None }
    }

    /// Logs, and spans exported to `otlp_endpoint` (a collector's OTLP/HTTP base URL) when
    /// one is given. Installs the process-wide subscriber: call once, and outside the async
    /// runtime, since the exporter's client blocks (it runs on the batch processor's thread).
    pub fn install(
        format: LogFormat,
        otlp_endpoint: Option<&str>,
    ) -> Result<Telemetry, TelemetryError> {
        let Some(endpoint) = otlp_endpoint else {
            return Ok(Telemetry::logs(format));
        };
        let provider = provider(endpoint).map_err(|reason| TelemetryError {
            endpoint: endpoint.to_string(),
            reason,
        })?;
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald"))
            .with_threads(false)
            .with_filter(herald_spans());
        // Each layer filters for itself, so `RUST_LOG` keeps the log at its level while
        // Herald's debug-level spans still reach the exporter.
        tracing_subscriber::registry()
            .with(log_layer(format).with_filter(log_filter()))
            .with(spans)
            .init();
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// Sends the spans still batched and stops exporting, waiting up to 5 s for the collector.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "the last spans may not have been exported");
        }
    }
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())
}

fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        // Colour codes only where a person reads them, not in a file or a collector's pipe.
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

/// Herald's own spans, at debug level and above; events stay in the log.
fn herald_spans() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter::filter_fn(|meta| {
        meta.is_span()
            && *meta.level() <= Level::DEBUG
            && (meta.target() == "herald" || meta.target().starts_with("herald::"))
    })
    .with_max_level_hint(LevelFilter::DEBUG)
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient(client))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// Where spans are posted: `endpoint` is the collector's base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is (`http://collector:4318`), unless it already names the
/// traces path.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// `service.name` is `herald` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// names it; `OTEL_RESOURCE_ATTRIBUTES` adds to it (`deployment.environment=prod`, ...).
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let builder = if named {
        Resource::builder()
    } else {
        Resource::builder().with_service_name("herald")
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The exporter's HTTP client: reqwest's blocking client. The SDK's batch processor exports
/// from a thread of its own with a plain executor, where an async client finds no runtime;
/// the blocking one brings its own, so exporting never takes a turn on the delivery runtime.
#[derive(Debug)]
struct ExportClient(reqwest::blocking::Client);

/// A collector's answer is a short status; more than this is not read.
const MAX_ANSWER: u64 = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let response = self.0.execute(request.try_into()?)?;
        let mut answer = opentelemetry_http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            headers.extend(
                response
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone())),
            );
        }
        let mut body = Vec::new();
        response.take(MAX_ANSWER).read_to_end(&mut body)?;
        Ok(answer.body(body.into())?)
    }
}

/// Readies an attempt's span for export, before it is first entered: a client span, the
/// child of its first delivery's event's trace, linked to the other events' traces when the
/// request carries several (a batched EventBridge call).
pub fn export_attempt<'a>(
    span: &tracing::Span,
    mut deliveries: impl Iterator<Item = (&'a str, &'a Event)>,
) {
    let Some((tenant, first)) = deliveries.next() else {
        return;
    };
    span.record("otel.kind", "client");
    let parent = remote(&TraceParent::of_event(tenant, first), tracestate(first));
    for (tenant, event) in deliveries {
        let other = remote(&TraceParent::of_event(tenant, event), tracestate(event));
        if other.trace_id() != parent.trace_id() {
            span.add_link(other);
        }
    }
    // Fails only for a span the exporter does not see, which is then not exported anyway.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// Readies an API request's span for export: a server span, the child of the caller's
/// `traceparent` when it sent a valid one.
pub fn export_request(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    span.record("otel.kind", "server");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(parent) = header(crate::trace::TRACEPARENT).and_then(TraceParent::parse) {
        let _ = span.set_parent(
            Context::new().with_remote_span_context(remote(&parent, header(TRACESTATE))),
        );
    }
}

/// The current span's own context while spans are exported (`None` otherwise): an API
/// request's span, whose trace an untraced publish's events then continue, or the attempt
/// being sent.
pub fn current_span_traceparent() -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let own = span.span_context();
    own.is_valid().then(|| TraceParent {
        trace_id: own.trace_id().to_bytes(),
        parent_id: own.span_id().to_bytes(),
        flags: own.trace_flags().to_u8(),
    })
}

/// The `traceparent` of the exported span being run (the attempt, inside a destination's
/// send), when it is in `parent`'s trace: a receiver that continues it makes its spans
/// children of Herald's exported one.
pub fn current_traceparent(parent: &TraceParent) -> Option<TraceParent> {
    current_span_traceparent().filter(|own| own.trace_id == parent.trace_id)
}

fn tracestate(event: &Event) -> Option<&str> {
    event.extensions.get(TRACESTATE).and_then(Value::as_str)
}

/// A context received from elsewhere (a publisher) as OpenTelemetry's remote parent.
fn remote(parent: &TraceParent, tracestate: Option<&str>) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        tracestate
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_base_url_unless_it_names_the_traces_path() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/prefix/"),
            "https://otel.example/prefix/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn a_remote_parent_keeps_the_publishers_ids_flags_and_state() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let context = remote(&parent, Some("congo=t61rcWkgMzE"));
        assert!(context.is_remote() && !context.is_sampled());
        assert_eq!(context.trace_id().to_bytes(), parent.trace_id);
        assert_eq!(context.span_id().to_bytes(), parent.parent_id);
        assert_eq!(context.trace_state().header(), "congo=t61rcWkgMzE");
    }
}
