//! JSON Schemas for the `data` of a tenant's own event types (drafts 4 to 2020-12, by the
//! schema's `$schema`; 2020-12 when it names none). Remote `$ref`s are never fetched.

use std::fmt;

/// A compiled schema.
pub struct Schema(jsonschema::Validator);

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

impl Schema {
    /// Compiles a schema, refusing one that is not a valid JSON Schema.
    pub fn compile(schema: &serde_json::Value) -> Result<Schema, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a JSON Schema is an object (or a boolean)".into());
        }
        jsonschema::meta::validate(schema).map_err(|e| e.to_string())?;
        jsonschema::validator_for(schema)
            .map(Schema)
            .map_err(|e| e.to_string())
    }

    /// The first place `data` fails the schema, if any.
    pub fn validate(&self, data: &serde_json::Value) -> Result<(), DataError> {
        match self.0.iter_errors(data).next() {
            None => Ok(()),
            Some(error) => Err(DataError {
                path: error.instance_path().to_string(),
                message: error.to_string(),
            }),
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
    fn invalid_schemas_are_refused() {
        assert!(Schema::compile(&json!({"type": "not-a-type"})).is_err());
        assert!(Schema::compile(&json!({"minLength": -1})).is_err());
        assert!(Schema::compile(&json!("string")).is_err());
        assert!(Schema::compile(&json!(true)).is_ok());
    }
}
