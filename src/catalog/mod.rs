//! The event type catalog: every type a platform may publish, with its category, description
//! and a sample `data` (used by tests and the "Test" button). The built-in types cover every
//! event named by the products Herald stands in for; they live in `event_types.json`. A tenant
//! may add its own types, each with an optional JSON Schema that published `data` must match;
//! a tenant's [`Catalog`] is the built-in one plus its own (see [`registry`]).

pub mod registry;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use schema::{DataError, Schema};

const BUILTIN: &str = include_str!("event_types.json");

/// Longest accepted event type name.
pub const MAX_TYPE_LEN: usize = 128;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    pub name: String,
    pub category: String,
    pub description: String,
    pub sample_data: serde_json::Value,
    /// A tenant's own type rather than a built-in one.
    #[serde(default)]
    pub custom: bool,
    /// The JSON Schema `data` must match, if any.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    types: Vec<EventType>,
    by_name: HashMap<String, usize>,
    schemas: HashMap<String, Arc<Schema>>,
}

impl Catalog {
    pub fn builtin() -> Catalog {
        let types: Vec<EventType> =
            serde_json::from_str(BUILTIN).expect("the built-in event type catalog is valid JSON");
        Self::from_types(types)
    }

    fn from_types(types: Vec<EventType>) -> Catalog {
        let by_name = types
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let schemas = types
            .iter()
            .filter_map(|t| {
                let schema = t.schema.as_ref()?;
                match Schema::compile(schema) {
                    Ok(compiled) => Some((t.name.clone(), Arc::new(compiled))),
                    Err(e) => {
                        // Schemas are checked when a type is created; this is a stored one
                        // that no longer compiles. Publishing still works, unvalidated.
                        tracing::warn!(event_type = %t.name, error = %e, "a stored schema does not compile");
                        None
                    }
                }
            })
            .collect();
        Catalog {
            types,
            by_name,
            schemas,
        }
    }

    /// This catalog plus a tenant's own types.
    pub fn with_custom(&self, custom: Vec<EventType>) -> Catalog {
        let mut types = self.types.clone();
        types.extend(custom);
        Self::from_types(types)
    }

    /// Checks `data` against the type's schema, if it has one.
    pub fn check_data(&self, event_type: &str, data: &RawValue) -> Result<(), DataError> {
        let Some(schema) = self.schemas.get(event_type) else {
            return Ok(());
        };
        let value: serde_json::Value = serde_json::from_str(data.get()).map_err(|e| DataError {
            path: String::new(),
            message: format!("`data` cannot be read as JSON: {e}"),
        })?;
        schema.validate(&value)
    }

    pub fn all(&self) -> &[EventType] {
        &self.types
    }

    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.by_name.get(name).map(|&i| &self.types[i])
    }

    /// Whether a subscription pattern (`user.created`, `user.*`, `*`) selects at least one
    /// known type. A pattern that selects nothing is almost always a typo.
    pub fn selects_any(&self, pattern: &str) -> bool {
        self.types.iter().any(|t| pattern_matches(pattern, &t.name))
    }
}

/// `*` matches every type but Herald's own (`herald.*`, which a stream must name to get);
/// `a.b.*` matches every type below `a.b`; anything else is exact.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => !event_type.starts_with("herald."),
        Some(prefix) if prefix.ends_with('.') => event_type.starts_with(prefix),
        _ => pattern == event_type,
    }
}

/// Dotted lowercase segments: `user.created`, `flow.run.finished`, `security.account_locked`.
pub fn is_valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TYPE_LEN
        && name.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// A valid type name, `*`, or a valid type name prefix followed by `.*`.
pub fn is_valid_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(prefix) => is_valid_type_name(prefix),
        None => is_valid_type_name(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_covers_the_seed_events() {
        let catalog = Catalog::builtin();
        for name in [
            "flow.created",
            "flow.run.finished",
            "folder.deleted",
            "connection.upserted",
            "user.signed.up",
            "user.signed.in",
            "user.password.reset",
            "user.email.verified",
            "signing.key.created",
            "project.role.updated",
            "project.release.created",
            "user.created",
            "user.updated",
            "user.deleted",
            "organization.created",
            "group.created",
            "mfa.enabled",
            "session.created",
            "oauth.token.issued",
            "sso.provider.linked",
        ] {
            assert!(
                catalog.get(name).is_some(),
                "{name} missing from the catalog"
            );
        }
        for t in catalog.all() {
            assert!(
                is_valid_type_name(&t.name),
                "{} is not a valid name",
                t.name
            );
            assert!(t.sample_data.is_object(), "{} has no sample object", t.name);
        }
        assert_eq!(
            catalog.by_name.len(),
            catalog.all().len(),
            "duplicate names"
        );
    }

    #[test]
    fn patterns_match_exactly_by_prefix_or_everything() {
        assert!(pattern_matches("user.created", "user.created"));
        assert!(!pattern_matches("user.created", "user.created.v2"));
        assert!(pattern_matches("user.*", "user.signed.in"));
        assert!(!pattern_matches("user.*", "users.created"));
        assert!(!pattern_matches("user.*", "user"));
        assert!(pattern_matches("*", "flow.run.finished"));
        assert!(!pattern_matches("*", "herald.delivery.failed"));
        assert!(pattern_matches("herald.*", "herald.delivery.failed"));
    }

    #[test]
    fn names_and_patterns_are_validated() {
        assert!(is_valid_type_name("flow.run.finished"));
        assert!(!is_valid_type_name("Flow.Created"));
        assert!(!is_valid_type_name("user..created"));
        assert!(!is_valid_type_name(""));
        assert!(is_valid_pattern("user.*"));
        assert!(is_valid_pattern("*"));
        assert!(!is_valid_pattern("user*"));
        assert!(!is_valid_pattern("*.created"));
    }
}
