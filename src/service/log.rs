//! The readers of each tenant's event log on this node: the signal that wakes them when the
//! tenant publishes, and how many may be open at once (`GET /v1/events/stream` reads the
//! log; a publish wakes its readers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Error;
use crate::metrics::log::{LogMetrics, OpenReader, ReaderCap};

/// Readers one tenant may have open on a node.
pub const MAX_READERS_PER_TENANT: usize = 20;

/// Wakes the readers of a tenant's event log when it has new events, and counts the readers
/// open on this node.
pub struct LogSignal {
    tenants: Mutex<HashMap<String, watch::Sender<()>>>,
    readers: Mutex<HashMap<String, usize>>,
    max_readers: usize,
}

impl LogSignal {
    /// At most `max_readers` readers open on this node.
    pub fn new(max_readers: usize) -> LogSignal {
        LogSignal {
            tenants: Mutex::default(),
            readers: Mutex::default(),
            max_readers: max_readers.max(1),
        }
    }

    /// The tenant's log has new events. Costs a map lookup when nobody reads it.
    pub fn notify(&self, tenant_id: &str) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = tenants.get(tenant_id) {
            if sender.receiver_count() == 0 {
                tenants.remove(tenant_id);
            } else {
                sender.send_replace(());
            }
        }
    }

    pub fn subscribe(&self, tenant_id: &str) -> watch::Receiver<()> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant_id.to_string())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// A place for one more reader of the tenant's log, given back when dropped; a refusal
    /// is counted in `metrics`.
    pub fn admit(
        self: &Arc<Self>,
        tenant_id: &str,
        metrics: &LogMetrics,
    ) -> Result<ReaderPermit, Error> {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.values().sum::<usize>() >= self.max_readers {
            metrics.refused(ReaderCap::Node);
            return Err(Error::NodeReadersFull);
        }
        let open = readers.entry(tenant_id.to_string()).or_default();
        if *open >= MAX_READERS_PER_TENANT {
            metrics.refused(ReaderCap::Tenant);
            return Err(Error::TenantReadersFull);
        }
        *open += 1;
        Ok(ReaderPermit {
            signal: self.clone(),
            tenant_id: tenant_id.to_string(),
            _counted: metrics.opened(),
        })
    }
}

/// A reader's place, given back when dropped.
pub struct ReaderPermit {
    signal: Arc<LogSignal>,
    tenant_id: String,
    _counted: OpenReader,
}

impl Drop for ReaderPermit {
    fn drop(&mut self) {
        let mut readers = self
            .signal
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = readers.get_mut(&self.tenant_id) {
            *open -= 1;
            if *open == 0 {
                readers.remove(&self.tenant_id);
            }
        }
    }
}
