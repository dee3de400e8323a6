//! Herald's metrics, served by `GET /metrics` in the Prometheus text format (or OpenMetrics,
//! when the scraper asks for it). One [`Metrics`] per app, built at start with every family
//! registered, is shared by the parts that count: the API's middleware ([`http`]), publish
//! handler and event log readers ([`log`]), the dispatcher and its recorder, retention, and
//! the store's group commits ([`CommitMetrics`]). The backlog is read from the store when
//! scraped ([`backlog`]).
//!
//! Counting stays off the hot path's bill: counters and gauges are atomics, and the handles
//! of the common label sets are resolved once (per event category at start, per destination
//! kind and tenant when the dispatcher loads a stream) rather than looked up per event. Label
//! values come from closed sets (route templates, destination kinds, built-in categories) or
//! from tenant and stream ids, whose count the backlog bounds (see [`backlog`]); never from
//! raw paths or anything a caller can make up.

pub mod backlog;
pub mod http;
pub mod log;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::catalog::Catalog;
use crate::event::Event;
use crate::store::{DeliveryStatus, Published, StoreError};

/// The media type of the Prometheus text format, which scrapers get unless they ask for
/// OpenMetrics.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The media type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of one app, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    pub http: http::HttpMetrics,
    pub events: EventMetrics,
    pub delivery: DeliveryMetrics,
    pub backlog: Arc<backlog::BacklogMetrics>,
    pub log: log::LogMetrics,
    store_errors: Family<StoreErrorLabels, Counter>,
}

/// What the app is, as far as its metrics care.
pub struct MetricsOptions<'a> {
    /// The built-in catalog: its categories are the values of `category`.
    pub catalog: &'a Catalog,
    /// The store's group commits of publishes (every write, on the embedded store).
    pub commits: Option<CommitMetrics>,
    /// The dispatcher's slots; `None` on a node that does not deliver.
    pub dispatcher_slots: Option<usize>,
    /// Streams reported on their own in the backlog (the deepest backlogs).
    pub backlog_top_streams: usize,
}

impl Metrics {
    pub fn new(options: MetricsOptions<'_>) -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let http = http::HttpMetrics::register(&mut registry);
        let events = EventMetrics::register(&mut registry, options.catalog);
        let delivery = DeliveryMetrics::register(&mut registry);
        let log = log::LogMetrics::register(&mut registry);
        if let Some(slots) = options.dispatcher_slots {
            let capacity = Gauge::<i64>::default();
            capacity.set(slots as i64);
            registry.register(
                "dispatcher_slots",
                "Requests to destinations the dispatcher may have in flight at once (max_in_flight)",
                capacity,
            );
        }
        if let Some(commits) = options.commits {
            commits.register(&mut registry);
        }
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Store calls that failed, by the part of Herald that made them (api, dispatcher, recorder, retention, metrics) and the kind of failure",
            store_errors.clone(),
        );
        let backlog = Arc::new(backlog::BacklogMetrics::new(options.backlog_top_streams));
        registry.register_collector(Box::new(backlog.clone()));
        Metrics {
            registry,
            http,
            events,
            delivery,
            backlog,
            log,
            store_errors,
        }
    }

    /// Renders every metric; OpenMetrics when `openmetrics`, else the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, and every label value is escaped by the encoder.
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        };
        if let Err(e) = encoded {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        text
    }

    /// Counts a failed store call.
    pub fn store_error(&self, caller: StoreCaller, error: &StoreError) {
        self.store_error_of_kind(caller, store_error_kind(error));
    }

    pub fn store_error_of_kind(&self, caller: StoreCaller, kind: &'static str) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                caller: caller.as_str(),
                kind,
            })
            .inc();
    }
}

/// The part of Herald a failed store call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCaller {
    Api,
    Dispatcher,
    Recorder,
    Retention,
    /// Reading the backlog for a scrape.
    Metrics,
}

impl StoreCaller {
    fn as_str(self) -> &'static str {
        match self {
            StoreCaller::Api => "api",
            StoreCaller::Dispatcher => "dispatcher",
            StoreCaller::Recorder => "recorder",
            StoreCaller::Retention => "retention",
            StoreCaller::Metrics => "metrics",
        }
    }
}

/// The `kind` label of a store error: which way it failed, never its text.
pub fn store_error_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Database(_) => "database",
        StoreError::Postgres(_) => "postgres",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Open { .. } => "open",
        StoreError::Cipher(_) => "cipher",
        StoreError::Corrupt(_) => "corrupt",
        StoreError::Commit(_) => "commit",
        StoreError::Closed => "closed",
        StoreError::NameTaken(_) => "name_taken",
    }
}

/// Marks an API answer caused by a failed store call, for the HTTP middleware to count: the
/// handler's error carries it out as a response extension.
#[derive(Debug, Clone, Copy)]
pub struct StoreFailure(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    caller: &'static str,
    kind: &'static str,
}

/// Events accepted by `POST /v1/events`, by category and whether they were new.
pub struct EventMetrics {
    by_category: HashMap<String, PublishCounters>,
    /// Types whose category is not one of the built-in catalog's (a tenant's own).
    other: PublishCounters,
}

/// The counters of one category: accepted and duplicate (handles onto the shared series).
#[derive(Clone)]
pub struct PublishCounters {
    accepted: Counter,
    duplicate: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedLabels {
    category: String,
    outcome: &'static str,
}

impl EventMetrics {
    /// The category label of a type whose category is not built in.
    pub const OTHER: &'static str = "other";

    fn register(registry: &mut Registry, catalog: &Catalog) -> EventMetrics {
        let family = Family::<PublishedLabels, Counter>::default();
        registry.register(
            "events_published",
            "Events accepted by the publish API, by category (the built-in catalog's, or other) and outcome (accepted: new; duplicate: already stored, nothing delivered again)",
            family.clone(),
        );
        let counters = |category: &str| {
            let of = |outcome| {
                family.get_or_create_owned(&PublishedLabels {
                    category: category.to_string(),
                    outcome,
                })
            };
            PublishCounters {
                accepted: of("accepted"),
                duplicate: of("duplicate"),
            }
        };
        let mut by_category = HashMap::new();
        for t in catalog.all() {
            if !by_category.contains_key(&t.category) {
                by_category.insert(t.category.clone(), counters(&t.category));
            }
        }
        EventMetrics {
            by_category,
            other: counters(Self::OTHER),
        }
    }

    /// The counters of each event, looked up in `catalog` before the events go to the store.
    pub fn counters_for<'a>(
        &'a self,
        catalog: &Catalog,
        events: &[Event],
    ) -> Vec<&'a PublishCounters> {
        events
            .iter()
            .map(|event| {
                catalog
                    .get(&event.event_type)
                    .and_then(|t| self.by_category.get(&t.category))
                    .unwrap_or(&self.other)
            })
            .collect()
    }

    /// Counts what a publish stored: `counters` from [`Self::counters_for`], in the same order.
    pub fn published(counters: &[PublishCounters], published: &[Published]) {
        for (counters, outcome) in counters.iter().zip(published) {
            if outcome.duplicate {
                counters.duplicate.inc();
            } else {
                counters.accepted.inc();
            }
        }
    }
}

/// The dispatcher's metrics: attempts by destination kind and outcome, their latency, and
/// the slots each tenant holds.
pub struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    durations: Family<DestinationLabels, Histogram, fn() -> Histogram>,
    slots: Family<TenantLabels, Gauge>,
    /// Tenants with a slots gauge, to drop those that no longer have a stream.
    tenants: Mutex<HashSet<String>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    destination: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// Upper bounds of the attempt latency buckets, in seconds: a fast receiver's milliseconds
/// up to the default 15 s timeout and beyond.
const ATTEMPT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

fn attempt_histogram() -> Histogram {
    Histogram::new(ATTEMPT_BUCKETS)
}

impl DeliveryMetrics {
    fn register(registry: &mut Registry) -> DeliveryMetrics {
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts finished, by destination kind and outcome: delivered; retrying (it failed and another attempt is scheduled); failed (given up: retries exhausted, a permanent refusal, or the stream disabled)",
            attempts.clone(),
        );
        let durations =
            Family::<DestinationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                attempt_histogram,
            );
        registry.register_with_unit(
            "delivery_attempt_duration",
            "How long delivery attempts took, from sending to the destination's answer or the error, by destination kind (each delivery of a batched call counts the call's duration)",
            Unit::Seconds,
            durations.clone(),
        );
        let slots = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "dispatcher_slots_in_use",
            "Requests to destinations in flight, by tenant",
            slots.clone(),
        );
        DeliveryMetrics {
            attempts,
            durations,
            slots,
            tenants: Mutex::default(),
        }
    }

    /// The handles of one destination kind, resolved once per stream.
    pub fn destination(&self, kind: &'static str) -> DestinationMetrics {
        let attempts = |outcome| {
            self.attempts.get_or_create_owned(&AttemptLabels {
                destination: kind,
                outcome,
            })
        };
        DestinationMetrics {
            delivered: attempts("delivered"),
            retrying: attempts("retrying"),
            failed: attempts("failed"),
            duration: self
                .durations
                .get_or_create_owned(&DestinationLabels { destination: kind }),
        }
    }

    /// The slots gauge of a tenant, resolved once per stream.
    pub fn slots(&self, tenant: &str) -> TenantSlots {
        self.lock_tenants().insert(tenant.to_string());
        TenantSlots(self.slots.get_or_create_owned(&TenantLabels {
            tenant: tenant.to_string(),
        }))
    }

    /// Drops the slots gauges of tenants not in `keep` that hold no slot (a tenant whose
    /// streams were all deleted or disabled), so deleted tenants do not linger.
    pub fn keep_tenants(&self, keep: &HashSet<&str>) {
        self.lock_tenants().retain(|tenant| {
            if keep.contains(tenant.as_str()) {
                return true;
            }
            let labels = TenantLabels {
                tenant: tenant.clone(),
            };
            let idle = self.slots.get(&labels).is_none_or(|gauge| gauge.get() == 0);
            if idle {
                self.slots.remove(&labels);
            }
            !idle
        });
    }

    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The counters and the latency histogram of one destination kind.
#[derive(Clone)]
pub struct DestinationMetrics {
    delivered: Counter,
    retrying: Counter,
    failed: Counter,
    duration: Histogram,
}

impl DestinationMetrics {
    /// Counts an attempt that took `took` and left its delivery in `status`.
    pub fn attempted(&self, status: DeliveryStatus, took: Duration) {
        match status {
            DeliveryStatus::Succeeded => &self.delivered,
            DeliveryStatus::Pending => &self.retrying,
            // An attempt never leaves its delivery cancelled; counted as given up if it did.
            DeliveryStatus::Failed | DeliveryStatus::Cancelled => &self.failed,
        }
        .inc();
        self.duration.observe(took.as_secs_f64());
    }
}

/// The gauge of the slots one tenant's requests hold.
#[derive(Clone)]
pub struct TenantSlots(Gauge);

impl TenantSlots {
    /// Counts a slot as held until the returned guard is dropped.
    pub fn take(&self) -> SlotInUse {
        self.0.inc();
        SlotInUse(self.0.clone())
    }
}

/// One slot held by a tenant's request, from when it starts until it is dropped.
pub struct SlotInUse(Gauge);

impl Drop for SlotInUse {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The store's group commits: how many jobs each carried and how long each took, fsync
/// included. Kept by the embedded store's writer thread (every write) or the shared store's
/// publish writer (publishes); registered by the app.
#[derive(Clone)]
pub struct CommitMetrics {
    jobs: Histogram,
    duration: Histogram,
}

/// Upper bounds of the jobs-per-commit buckets: powers of two up to the writer's 1,024.
const COMMIT_JOB_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Upper bounds of the commit time buckets, in seconds: an fsync takes from tens of
/// microseconds (a battery-backed cache) to tens of milliseconds (a busy disk).
const COMMIT_SECONDS_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Default for CommitMetrics {
    fn default() -> Self {
        CommitMetrics {
            jobs: Histogram::new(COMMIT_JOB_BUCKETS),
            duration: Histogram::new(COMMIT_SECONDS_BUCKETS),
        }
    }
}

impl CommitMetrics {
    /// One commit of `jobs` jobs, which took `took` (the transaction and its fsync).
    pub fn committed(&self, jobs: usize, took: Duration) {
        self.jobs.observe(jobs as f64);
        self.duration.observe(took.as_secs_f64());
    }

    fn register(self, registry: &mut Registry) {
        registry.register(
            "store_group_commit_jobs",
            "Writes committed together by one group commit of the store",
            self.jobs,
        );
        registry.register_with_unit(
            "store_group_commit_duration",
            "How long the store's group commits took, the transaction and its fsync",
            Unit::Seconds,
            self.duration,
        );
    }
}
