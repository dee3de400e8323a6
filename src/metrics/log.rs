//! The event log's readers (`GET /v1/events/stream`): how many are open on this node, how
//! many events they were sent, and how many were refused for the node's or the tenant's cap
//! on readers. Unlabelled but for the cap: a reader's tenant is in its requests' logs, and
//! the caps already bound how many readers one tenant holds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct LogMetrics {
    readers: Gauge,
    served: Counter,
    refused_node: Counter,
    refused_tenant: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// The cap a reader was refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderCap {
    /// The node serves as many readers as it may.
    Node,
    /// The tenant holds as many readers on this node as it may.
    Tenant,
}

impl LogMetrics {
    pub(super) fn register(registry: &mut Registry) -> LogMetrics {
        let readers = Gauge::default();
        registry.register(
            "event_log_readers",
            "Event log readers (GET /v1/events/stream) open on this node",
            readers.clone(),
        );
        let served = Counter::default();
        registry.register(
            "event_log_events_served",
            "Events sent to event log readers (each reader's copy counts)",
            served.clone(),
        );
        let refused = Family::<LimitLabels, Counter>::default();
        registry.register(
            "event_log_readers_refused",
            "Event log readers refused for a cap, by which: node (half of max_connections) or tenant (20 per tenant on a node)",
            refused.clone(),
        );
        // Both series from the start, so a rate over them exists before the first refusal.
        let of = |limit| refused.get_or_create_owned(&LimitLabels { limit });
        LogMetrics {
            readers,
            served,
            refused_node: of("node"),
            refused_tenant: of("tenant"),
        }
    }

    /// Counts a reader as open until the returned guard is dropped.
    pub fn opened(&self) -> OpenReader {
        self.readers.inc();
        OpenReader(self.readers.clone())
    }

    /// Counts one event sent to a reader.
    pub fn served(&self) {
        self.served.inc();
    }

    pub fn refused(&self, cap: ReaderCap) {
        match cap {
            ReaderCap::Node => &self.refused_node,
            ReaderCap::Tenant => &self.refused_tenant,
        }
        .inc();
    }
}

/// One open reader, counted from when it is admitted until it is dropped.
pub struct OpenReader(Gauge);

impl Drop for OpenReader {
    fn drop(&mut self) {
        self.0.dec();
    }
}
