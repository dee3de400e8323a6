//! Each tenant's catalog: the built-in types plus the tenant's own, loaded from the store on
//! first use and cached. A change to a tenant's types drops its entry here; entries also
//! expire, so nodes sharing a database see each other's changes within `TTL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Catalog;
use crate::store::{Store, StoreResult};

const TTL: Duration = Duration::from_secs(30);

pub struct Registry {
    builtin: Arc<Catalog>,
    tenants: Mutex<HashMap<String, (Instant, Arc<Catalog>)>>,
}

impl Registry {
    pub fn new(builtin: Catalog) -> Registry {
        Registry {
            builtin: Arc::new(builtin),
            tenants: Mutex::default(),
        }
    }

    pub fn builtin(&self) -> &Catalog {
        &self.builtin
    }

    pub async fn for_tenant(
        &self,
        store: &dyn Store,
        tenant_id: &str,
    ) -> StoreResult<Arc<Catalog>> {
        if let Some((loaded, catalog)) = self.lock().get(tenant_id)
            && loaded.elapsed() < TTL
        {
            return Ok(catalog.clone());
        }
        let custom = store.list_event_types(tenant_id).await?;
        let catalog = Arc::new(if custom.is_empty() {
            (*self.builtin).clone()
        } else {
            self.builtin.with_custom(custom)
        });
        self.lock()
            .insert(tenant_id.to_string(), (Instant::now(), catalog.clone()));
        Ok(catalog)
    }

    /// Forgets a tenant's catalog after its types changed.
    pub fn invalidate(&self, tenant_id: &str) {
        self.lock().remove(tenant_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<Catalog>)>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}
