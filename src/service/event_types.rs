//! Event types: the catalog a tenant sees (the built-in types and its own), and the tenant's
//! own types with a JSON Schema for their `data`. Names are unique per tenant and never
//! shadow a built-in type or take Herald's own `herald.` prefix.

use serde_json::{Value, json};

use super::limits::Quotas;
use super::{Caller, Error, Scope, Service};
use crate::catalog::schema::Schema;
use crate::catalog::{EventType, is_valid_type_name};

const MAX_TEXT: usize = 1024;
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// `sample_data` goes into every test event and catalog listing.
const MAX_SAMPLE_BYTES: usize = 64 * 1024;

/// The tenant's catalog, of one category or all. No scope is checked: any token of the
/// tenant, a publishing one included, may read it.
pub async fn list(
    service: &Service,
    caller: &Caller,
    category: Option<&str>,
) -> Result<Vec<EventType>, Error> {
    let catalog = service
        .catalogs
        .for_tenant(&*service.store, &caller.tenant_id)
        .await?;
    Ok(catalog
        .all()
        .iter()
        .filter(|t| category.is_none_or(|c| t.category == c))
        .cloned()
        .collect())
}

/// A tenant's own event type to create.
pub struct NewEventType {
    pub name: String,
    /// The name's first segment when absent.
    pub category: Option<String>,
    pub description: Option<String>,
    pub schema: Option<Value>,
    pub sample_data: Option<Value>,
}

pub async fn create(
    service: &Service,
    caller: &Caller,
    new: NewEventType,
) -> Result<EventType, Error> {
    caller.require(Scope::UpdateEventStreams)?;
    if !is_valid_type_name(&new.name) {
        return Err(Error::Invalid(format!(
            "`{}` is not a valid event type name: lowercase dotted segments such as `invoice.paid`",
            new.name
        )));
    }
    if new.name.starts_with("herald.") {
        return Err(Error::Invalid(
            "names under `herald.` are Herald's own".into(),
        ));
    }
    if service.catalogs.builtin().get(&new.name).is_some() {
        return Err(Error::Conflict(format!(
            "`{}` is a built-in event type",
            new.name
        )));
    }
    let category = new
        .category
        .unwrap_or_else(|| new.name.split('.').next().unwrap_or_default().to_string());
    let description = new.description.unwrap_or_default();
    if category.is_empty() || category.len() > 64 || description.len() > MAX_TEXT {
        return Err(Error::Invalid(
            "`category` must be 1 to 64 characters and `description` at most 1024".into(),
        ));
    }
    if new
        .sample_data
        .as_ref()
        .is_some_and(|sample| sample.to_string().len() > MAX_SAMPLE_BYTES)
    {
        return Err(Error::Invalid("`sample_data` is larger than 64 KiB".into()));
    }
    if let Some(schema) = &new.schema {
        if schema.to_string().len() > MAX_SCHEMA_BYTES {
            return Err(Error::Invalid("`schema` is larger than 64 KiB".into()));
        }
        let compiled = Schema::compile(schema)
            .map_err(|e| Error::Invalid(format!("`schema` is not a valid JSON Schema: {e}")))?;
        if let Some(sample) = &new.sample_data {
            compiled.validate(sample).map_err(|e| {
                Error::Invalid(format!("`sample_data` does not match `schema`: {e}"))
            })?;
        }
    }
    let event_type = EventType {
        name: new.name,
        category,
        description,
        sample_data: new.sample_data.unwrap_or_else(|| json!({})),
        custom: true,
        schema: new.schema,
    };
    let count = service
        .store
        .list_event_types(&caller.tenant_id)
        .await?
        .len();
    Quotas::check(
        service.quotas.event_types,
        count,
        "custom event types",
        "max_event_types_per_tenant",
    )?;
    let created = service
        .store
        .create_event_type(
            &caller.tenant_id,
            event_type.clone(),
            service.clock.now_ms(),
        )
        .await?;
    if !created {
        return Err(Error::Conflict(format!(
            "the event type `{}` exists",
            event_type.name
        )));
    }
    service.catalogs.invalidate(&caller.tenant_id);
    Ok(event_type)
}

/// Deletes one of the tenant's own types; built-in types stay.
pub async fn delete(service: &Service, caller: &Caller, name: &str) -> Result<(), Error> {
    caller.require(Scope::UpdateEventStreams)?;
    if service.catalogs.builtin().get(name).is_some() {
        return Err(Error::Conflict(format!(
            "`{name}` is a built-in event type and cannot be deleted"
        )));
    }
    if !service
        .store
        .delete_event_type(&caller.tenant_id, name)
        .await?
    {
        return Err(Error::NotFound {
            what: "custom event type",
            id: name.to_string(),
        });
    }
    service.catalogs.invalidate(&caller.tenant_id);
    Ok(())
}
