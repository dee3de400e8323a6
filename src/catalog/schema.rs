//! JSON Schemas for the `data` of a tenant's own event types (drafts 4 to 2020-12, by the
//! schema's `$schema`; 2020-12 when it names none). Nothing is ever loaded from elsewhere: no
//! remote or `file://` `$ref`s. Patterns run on a linear-time regex engine, so a tenant's
//! schema cannot stall publishing.

use std::fmt;

use boon::{CompileError, Compiler, Draft, SchemaIndex, Schemas, SchemeUrlLoader, ValidationError};

/// A compiled schema.
pub struct Schema {
    schemas: Schemas,
    index: SchemaIndex,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema")
    }
}

/// Where `data` fails its schema, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    /// A JSON Pointer into `data` (`""` for `data` itself).
    pub path: String,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "at `{at}`: {}", self.message)
    }
}

/// The first leaf of an error tree: the specific failure, not the `allOf` around it.
fn leaf<'a, 'b>(mut error: &'a ValidationError<'a, 'b>) -> &'a ValidationError<'a, 'b> {
    while let Some(cause) = error.causes.first() {
        error = cause;
    }
    error
}

const LOCATION: &str = "urn:herald:event-type-schema";

impl Schema {
    /// Compiles a schema, refusing one that is not a valid JSON Schema.
    pub fn compile(schema: &serde_json::Value) -> Result<Schema, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a JSON Schema is an object (or a boolean)".into());
        }
        let mut compiler = Compiler::new();
        // A loader that knows no scheme: `$ref`s resolve only inside the schema itself.
        compiler.use_loader(Box::new(SchemeUrlLoader::new()));
        compiler.set_default_draft(Draft::V2020_12);
        compiler.enable_format_assertions();
        compiler
            .add_resource(LOCATION, schema.clone())
            .map_err(|e| format!("{e}"))?;
        let mut schemas = Schemas::new();
        match compiler.compile(LOCATION, &mut schemas) {
            Ok(index) => Ok(Schema { schemas, index }),
            Err(CompileError::ValidationError { src, .. }) => {
                let e = leaf(&src);
                Err(format!(
                    "at `{}` in the schema: {}",
                    e.instance_location, e.kind
                ))
            }
            Err(e) => Err(format!("{e}")),
        }
    }

    /// The first place `data` fails the schema, if any.
    pub fn validate(&self, data: &serde_json::Value) -> Result<(), DataError> {
        match self.schemas.validate(data, self.index) {
            Ok(()) => Ok(()),
            Err(error) => {
                let e = leaf(&error);
                Err(DataError {
                    path: e.instance_location.to_string(),
                    message: e.kind.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_is_checked_with_the_failing_path() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["user"],
            "properties": {"user": {"type": "object", "properties": {
                "email": {"type": "string", "maxLength": 10}
            }}}
        }))
        .unwrap();
        assert!(
            schema
                .validate(&json!({"user": {"email": "a@b.c"}}))
                .is_ok()
        );
        let err = schema
            .validate(&json!({"user": {"email": "far-too-long@example.com"}}))
            .unwrap_err();
        assert_eq!(err.path, "/user/email");
        let err = schema.validate(&json!({})).unwrap_err();
        assert_eq!(err.path, "");
        assert!(err.message.contains("user"), "{}", err.message);
    }

    #[test]
    fn nothing_is_loaded_from_outside_the_schema() {
        let err = Schema::compile(&json!({"$ref": "file:///etc/passwd"})).unwrap_err();
        assert!(err.contains("file:///etc/passwd"), "{err}");
        assert!(Schema::compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
        assert!(
            Schema::compile(&json!({"pattern": "(?<=a)b"})).is_err(),
            "no backtracking regexes"
        );
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(Schema::compile(&json!({"type": "not-a-type"})).is_err());
        assert!(Schema::compile(&json!({"minLength": -1})).is_err());
        assert!(Schema::compile(&json!("string")).is_err());
        assert!(Schema::compile(&json!(true)).is_ok());
    }
}
