//! Tenants: platform administration. Only a platform token with `manage:tenants` may create,
//! list, rename or delete tenants; the default tenant stays.

use super::{Caller, DEFAULT_TENANT, Error, Scope, Service};
use crate::store::Tenant;

const MAX_NAME_LEN: usize = 128;
const MAX_ID_LEN: usize = 64;

/// A tenant to create.
pub struct NewTenant {
    pub name: String,
    /// A chosen id (`ten_acme`), for example the platform's own organization id; generated
    /// when absent.
    pub id: Option<String>,
}

fn require_platform(caller: &Caller) -> Result<(), Error> {
    caller.require(Scope::ManageTenants)?;
    if !caller.is_platform() {
        return Err(Error::Forbidden(
            "managing tenants needs a platform token".into(),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::Invalid(format!(
            "`name` must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

pub async fn create(service: &Service, caller: &Caller, new: NewTenant) -> Result<Tenant, Error> {
    require_platform(caller)?;
    check_name(&new.name)?;
    let id = match new.id {
        Some(id) => {
            let valid = id.starts_with("ten_")
                && id.len() <= MAX_ID_LEN
                && id.len() > 4
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(Error::Invalid(format!(
                    "`id` must start with `ten_` and hold at most {MAX_ID_LEN} letters, digits, `_` or `-`"
                )));
            }
            id
        }
        None => format!("ten_{}", crate::ids::random_base62(22)),
    };
    let tenant = Tenant {
        id,
        name: new.name,
        created_at: service.clock.now_ms(),
    };
    if !service.store.create_tenant(tenant.clone()).await? {
        return Err(Error::Conflict(format!(
            "a tenant with id `{}` exists",
            tenant.id
        )));
    }
    tracing::info!(tenant = %tenant.id, "tenant created");
    Ok(tenant)
}

pub async fn list(service: &Service, caller: &Caller) -> Result<Vec<Tenant>, Error> {
    require_platform(caller)?;
    Ok(service.store.list_tenants().await?)
}

pub async fn get(service: &Service, caller: &Caller, id: &str) -> Result<Tenant, Error> {
    require_platform(caller)?;
    service
        .store
        .get_tenant(id)
        .await?
        .ok_or_else(|| not_found(id))
}

pub async fn rename(
    service: &Service,
    caller: &Caller,
    id: &str,
    name: &str,
) -> Result<Tenant, Error> {
    require_platform(caller)?;
    check_name(name)?;
    service
        .store
        .rename_tenant(id, name)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Deletes a tenant with everything it holds; its tokens stop working at once.
pub async fn delete(service: &Service, caller: &Caller, id: &str) -> Result<(), Error> {
    require_platform(caller)?;
    if id == DEFAULT_TENANT {
        return Err(Error::DefaultTenant);
    }
    let (owned, tenant_id) = (service.clone(), id.to_string());
    let deleted = super::to_completion(async move {
        if !owned.store.close_tenant(&tenant_id).await? {
            return Ok(false);
        }
        // From here nothing is sent for the tenant and none of its tokens or console sessions
        // is accepted, however long deleting the rest of its rows takes.
        owned.signal.streams_changed();
        owned.tokens.clear();
        let deleted = owned.store.delete_tenant(&tenant_id).await?;
        // A stream a platform token made meanwhile went with the rest.
        owned.signal.streams_changed();
        Ok(deleted)
    })
    .await?;
    if !deleted {
        return Err(not_found(id));
    }
    tracing::info!(tenant = %id, "tenant deleted with all its data");
    Ok(())
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: "tenant",
        id: id.to_string(),
    }
}
