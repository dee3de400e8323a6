//! A throwaway schema on a PostgreSQL server, for the test suite and the benchmark: each
//! needs a shared store that starts empty and leaves nothing behind. The schema is created
//! with a short-lived connection, handed out as a URL whose sessions work in it, and dropped
//! with everything in it afterwards, also when the caller panics.

use super::{parse_url, redact_url};

/// A schema of its own on a PostgreSQL server; dropped with its tables on drop.
pub struct Scratch {
    base: String,
    schema: String,
    /// The URL to hand Herald: `base` with every connection put into the schema.
    pub url: String,
}

impl Scratch {
    /// Creates a fresh schema named `<prefix>_<random>` on the server at `base`; the error
    /// says why it could not, in words fit for a report.
    pub async fn create(base: &str, prefix: &str) -> Result<Scratch, String> {
        let schema = format!("{prefix}_{}", crate::ids::random_base62(10).to_lowercase());
        let shown = redact_url(base);
        let client = connect(base)
            .await
            .map_err(|e| format!("PostgreSQL at {shown} is unreachable: {e}"))?;
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| {
                format!(
                    "PostgreSQL at {shown} refused to create a schema: {}",
                    crate::error_chain(&e)
                )
            })?;
        let separator = if base.contains('?') { '&' } else { '?' };
        // Herald's sessions carry the schema's name, so the cleanup can end any it left open.
        let url = format!(
            "{base}{separator}options=-c%20search_path%3D{schema}&application_name={schema}"
        );
        Ok(Scratch {
            base: base.to_string(),
            schema,
            url,
        })
    }

    /// The schema's name, which is also the `application_name` of every session in it.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        // Drop cannot await, and may run while the caller's runtime unwinds or is blocked in
        // this very drop; a thread with a runtime of its own does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the cleanup runtime");
            runtime.block_on(async {
                let dropped = match connect(&base).await {
                    Ok(client) => client
                        .batch_execute(&format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = '{schema}'; \
                             DROP SCHEMA IF EXISTS {schema} CASCADE"
                        ))
                        .await
                        .map_err(|e| crate::error_chain(&e)),
                    Err(e) => Err(e),
                };
                if let Err(e) = dropped {
                    eprintln!("could not drop the scratch schema {schema}: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A connection to `url`, its driver running on the current runtime until the client is
/// dropped.
pub(super) async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    // The same settings, TLS included, as Herald's own connections.
    let target = parse_url(url).map_err(|e| e.to_string())?;
    target.open().await.map_err(|e| crate::error_chain(&e))
}
