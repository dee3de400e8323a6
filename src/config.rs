//! Configuration: one documented default (`config/herald.default.toml`, embedded in the
//! binary), then an optional `herald.toml`, then `HERALD_*` environment variables, then
//! command-line flags. Validated once at start; an error names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::{Cipher, CipherError, Secret};

/// The embedded store's file in the data directory.
pub const DATABASE_FILE: &str = "herald.sqlite3";
/// The embedded store's secret key, in its data directory, when `secret_key` is unset.
pub const KEY_FILE: &str = "secret.key";

pub const DEFAULT_CONFIG: &str = include_str!("../config/herald.default.toml");

/// The settled configuration of one `herald serve`.
/// `Debug` is safe to log: the secrets are `Secret`s, whose `Debug` is redacted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// A second listener that serves `/metrics` alone, without a token.
    pub metrics_listen: Option<SocketAddr>,
    /// Streams the metrics report their backlog for one by one (the deepest backlogs).
    pub metrics_backlog_top_streams: usize,
    /// A collector's OTLP/HTTP base URL to export spans to; unset, none are exported.
    pub otlp_endpoint: Option<String>,
    pub data_dir: PathBuf,
    /// A `postgres://` URL selects the shared store; unset, the embedded one in `data_dir`.
    pub database_url: Option<Secret>,
    pub database_max_connections: usize,
    pub role: Role,
    pub allow_http: bool,
    /// AWS destinations without credentials of their own may use the server's.
    pub aws_server_credentials: bool,
    #[serde(deserialize_with = "cidr_list")]
    pub allow_cidrs: Vec<IpNet>,
    /// An HTTP proxy every destination request goes through.
    pub egress_proxy: Option<String>,
    pub admin_token: Option<Secret>,
    pub secret_key: Option<Secret>,
    /// Keys secrets may still be sealed with while the secret key is rotated.
    #[serde(default, deserialize_with = "secret_list")]
    pub previous_secret_keys: Vec<Secret>,
    pub delivery_timeout_seconds: u64,
    /// Unset: the delivery timeout plus 45 s.
    pub delivery_lease_seconds: Option<u64>,
    pub max_in_flight: usize,
    pub max_in_flight_per_stream: usize,
    pub secret_rotation_grace_seconds: u64,
    pub max_request_bytes: usize,
    pub shutdown_grace_seconds: u64,
    pub event_retention_days: u64,
    pub response_body_retention_days: u64,
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
    pub header_read_timeout_seconds: u64,
    pub request_timeout_seconds: u64,
    /// Requests a second each token may make on average; 0 turns the limit off.
    pub token_rate_limit_per_second: u32,
    pub token_rate_limit_burst: u32,
    /// Platform (admin) tokens are exempt unless this is set.
    pub rate_limit_platform_tokens: bool,
    pub stream_tests_per_minute: u32,
    pub stream_tests_per_minute_per_token: u32,
    /// Per-tenant quotas; 0 is no limit.
    pub max_streams_per_tenant: usize,
    pub max_event_types_per_tenant: usize,
    pub max_tokens_per_tenant: usize,
}

/// What a node does: serve the API, deliver, or both. Only a shared database can be split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The HTTP API and delivery.
    All,
    /// The HTTP API only: published deliveries are left for the worker nodes.
    Api,
    /// Delivery only: the HTTP listener answers `/healthz` and `/readyz` alone.
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    pub fn delivers(self) -> bool {
        self != Role::Api
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

/// Values given on the command line; `None` leaves the key to the lower layers.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct Overrides {
    /// Address to listen on [env: HERALD_LISTEN] [default: 127.0.0.1:8470]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address to serve /metrics on without a token, for a scraper on a private network
    /// [env: HERALD_METRICS_LISTEN] [default: none; /metrics is on --listen with a token]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// OpenTelemetry collector to export spans to over OTLP/HTTP, its base URL such as
    /// http://localhost:4318 [env: HERALD_OTLP_ENDPOINT] [default: none; no export]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Directory of the embedded store [env: HERALD_DATA_DIR] [default: ./herald-data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL of a shared store, instead of the embedded one [env: HERALD_DATABASE_URL]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// What this node does [env: HERALD_ROLE] [default: all]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Allow http:// destination URLs (development only) [env: HERALD_ALLOW_HTTP]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// Let AWS destinations without credentials of their own use the server's (grants every
    /// tenant what that identity can reach) [env: HERALD_AWS_SERVER_CREDENTIALS]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_server_credentials: Option<bool>,
    /// Reserved ranges destinations may reach, comma-separated [env: HERALD_ALLOW_CIDRS]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_cidrs: Option<String>,
    /// HTTP proxy for every destination request, e.g. http://proxy.internal:3128
    /// [env: HERALD_EGRESS_PROXY]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<String>,
    /// Destination request timeout in seconds [env: HERALD_DELIVERY_TIMEOUT_SECONDS] [default: 15]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_timeout_seconds: Option<u64>,
    /// Concurrent requests to destinations in total [env: HERALD_MAX_IN_FLIGHT] [default: 512]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Concurrent requests per stream [env: HERALD_MAX_IN_FLIGHT_PER_STREAM] [default: 32]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_stream: Option<usize>,
}

impl Config {
    /// Loads the layers. `file` is `--config`; without it `./herald.toml` is read if present.
    pub fn load(file: Option<PathBuf>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new("herald.toml").exists() => {
                figment = figment.merge(Toml::file_exact("herald.toml"));
            }
            None => {}
        }
        let known = known_keys();
        figment = figment
            .merge(Env::prefixed("HERALD_").filter(move |key| known.iter().any(|k| k == key)))
            .merge(Serialized::defaults(overrides));
        Self::from_figment(figment)
    }

    /// The defaults alone, for tests and embedding.
    pub fn defaults() -> Config {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_CONFIG)))
            .expect("the embedded default configuration is valid")
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "delivery_timeout_seconds",
                self.delivery_timeout_seconds as usize,
            ),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_per_stream", self.max_in_flight_per_stream),
            ("max_request_bytes", self.max_request_bytes),
            ("database_max_connections", self.database_max_connections),
            ("max_connections", self.max_connections),
            ("max_concurrent_requests", self.max_concurrent_requests),
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds as usize,
            ),
            (
                "token_rate_limit_burst",
                self.token_rate_limit_burst as usize,
            ),
            (
                "stream_tests_per_minute",
                self.stream_tests_per_minute as usize,
            ),
            (
                "stream_tests_per_minute_per_token",
                self.stream_tests_per_minute_per_token as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("`{key}` must be greater than 0")));
            }
        }
        match &self.database_url {
            Some(url) if !is_postgres_url(url.expose()) => {
                return Err(ConfigError(
                    "`database_url` must be a PostgreSQL URL (postgres://user@host/database)"
                        .into(),
                ));
            }
            None if self.role != Role::All => {
                return Err(ConfigError(
                    "`role` api or worker needs a shared database: set `database_url` to a \
                     postgres:// URL (the embedded store belongs to one process)"
                        .into(),
                ));
            }
            _ => {}
        }
        if let Some(proxy) = &self.egress_proxy {
            self.egress_proxy_url().ok_or_else(|| {
                ConfigError(format!(
                    "`egress_proxy` must be an http:// or https:// URL such as \
                     http://proxy.internal:3128, got `{proxy}`"
                ))
            })?;
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let url = url::Url::parse(endpoint).ok();
            let usable = url.is_some_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some_and(|h| !h.is_empty())
            });
            if !usable {
                return Err(ConfigError(format!(
                    "`otlp_endpoint` must be an http:// or https:// URL such as \
                     http://localhost:4318, got `{endpoint}`"
                )));
            }
        }
        if let Some(lease) = self.delivery_lease_seconds
            && lease <= self.delivery_timeout_seconds
        {
            return Err(ConfigError(format!(
                "`delivery_lease_seconds` ({lease}) must exceed `delivery_timeout_seconds` ({}): \
                 a lease has to outlast the attempt it covers",
                self.delivery_timeout_seconds
            )));
        }
        if let Some(token) = &self.admin_token
            && token.expose().len() < 16
        {
            return Err(ConfigError(
                "`admin_token` must be at least 16 characters long".into(),
            ));
        }
        Ok(())
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_secs(self.delivery_timeout_seconds)
    }

    pub fn delivery_lease(&self) -> Duration {
        // Room beyond the attempt itself for its wait in the stream's queue and for
        // recording its outcome.
        Duration::from_secs(
            self.delivery_lease_seconds
                .unwrap_or(self.delivery_timeout_seconds + 45),
        )
    }

    /// The proxy destinations go through, if one is set and valid.
    pub fn egress_proxy_url(&self) -> Option<url::Url> {
        let url = url::Url::parse(self.egress_proxy.as_deref()?).ok()?;
        let usable = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some_and(|h| !h.is_empty());
        usable.then_some(url)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    /// Never shorter than one delivery attempt and a second: a stream test waits for one.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(
            self.request_timeout_seconds
                .max(self.delivery_timeout_seconds + 1),
        )
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }

    /// The node's secret key (`secret_key`, else the data directory's key file, made on first
    /// start when `create`), able to open what the `previous_secret_keys` sealed too.
    pub fn cipher(&self, create: bool) -> Result<Cipher, CipherError> {
        let key = match &self.secret_key {
            Some(key) => {
                Cipher::from_base64(key.expose()).map_err(|_| CipherError::BadSetting {
                    setting: "secret_key".into(),
                })?
            }
            None if create => Cipher::load_or_create(&self.data_dir.join(KEY_FILE))?,
            None => Cipher::load(&self.data_dir.join(KEY_FILE))?,
        };
        let previous = self
            .previous_secret_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                Cipher::from_base64(key.expose()).map_err(|_| CipherError::BadSetting {
                    setting: format!("previous_secret_keys (key {})", i + 1),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(key.with_previous(previous))
    }
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Every key of the default file, plus the keys it documents in comments.
fn known_keys() -> Vec<String> {
    DEFAULT_CONFIG
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter_map(|line| line.split_once(" = ").map(|(key, _)| key.to_string()))
        .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

/// A list given as `["a", "b"]` (a file) or `"a,b"` (the environment), items trimmed and
/// empty ones dropped.
fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Joined(String),
    }
    let items = match Raw::deserialize(deserializer)? {
        Raw::List(items) => items,
        Raw::Joined(joined) => joined.split(',').map(str::to_string).collect(),
    };
    Ok(items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// Accepts `["k1", "k2"]` or `"k1,k2"` (environment).
fn secret_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    Ok(string_list(deserializer)?
        .into_iter()
        .map(Secret::new)
        .collect())
}

/// Accepts `["10.0.0.0/8", "127.0.0.1/32"]` or `"10.0.0.0/8,127.0.0.1/32"` (environment).
fn cidr_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    string_list(deserializer)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not a CIDR range such as 127.0.0.0/8"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
// `figment::Jail`'s error type is large; it only ever reaches the test harness.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let config = Config::defaults();
        assert_eq!(config.listen, "127.0.0.1:8470".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./herald-data"));
        assert!(!config.allow_http);
        assert!(config.allow_cidrs.is_empty());
        assert_eq!(config.delivery_timeout(), Duration::from_secs(15));
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(config.max_concurrent_requests, 512);
        assert_eq!(config.request_timeout(), Duration::from_secs(30));
        assert_eq!(
            (
                config.token_rate_limit_per_second,
                config.token_rate_limit_burst
            ),
            (100, 200)
        );
        assert!(!config.rate_limit_platform_tokens);
        assert_eq!(
            (
                config.max_streams_per_tenant,
                config.max_event_types_per_tenant,
                config.max_tokens_per_tenant
            ),
            (100, 1000, 100)
        );
        assert!(config.egress_proxy.is_none());
        assert!(config.metrics_listen.is_none());
        assert_eq!(config.metrics_backlog_top_streams, 20);
        assert!(config.otlp_endpoint.is_none());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut config = Config::defaults();
        config.admin_token = Some(Secret::new("hrd_do_not_log_this_token"));
        let shown = format!("{config:?}");
        assert!(
            shown.contains("listen") && !shown.contains("do_not_log"),
            "{shown}"
        );
    }

    #[test]
    fn layers_apply_in_order_and_env_lists_are_comma_separated() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                "listen = \"127.0.0.1:9000\"\nallow_http = true",
            )?;
            jail.set_env("HERALD_LISTEN", "127.0.0.1:9001");
            jail.set_env("HERALD_ALLOW_CIDRS", "127.0.0.0/8, ::1");
            jail.set_env("HERALD_TEST_DATABASE_URL", "ignored: not a config key");
            jail.set_env("HERALD_METRICS_LISTEN", "127.0.0.1:9470");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
            assert_eq!(
                config.metrics_listen,
                Some("127.0.0.1:9470".parse().unwrap())
            );
            assert!(config.allow_http);
            assert_eq!(config.allow_cidrs.len(), 2);

            let flags = Overrides {
                listen: Some("127.0.0.1:9002".parse().unwrap()),
                ..Overrides::default()
            };
            let config = Config::load(None, &flags).unwrap();
            assert_eq!(config.listen, "127.0.0.1:9002".parse().unwrap());
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_offending_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("herald.toml", "listne = \"127.0.0.1:9000\"")?;
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("listne"), "{err}");

            jail.create_file("herald.toml", "")?;
            jail.set_env("HERALD_ALLOW_CIDRS", "not-a-range");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("not-a-range"), "{err}");

            jail.set_env("HERALD_ALLOW_CIDRS", "");
            jail.set_env("HERALD_MAX_IN_FLIGHT", "0");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("max_in_flight"), "{err}");

            jail.set_env("HERALD_MAX_IN_FLIGHT", "8");
            jail.set_env("HERALD_EGRESS_PROXY", "socks5://proxy.internal:1080");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("egress_proxy"), "{err}");
            jail.set_env("HERALD_EGRESS_PROXY", "http://proxy.internal:3128");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(
                config.egress_proxy_url().map(String::from).as_deref(),
                Some("http://proxy.internal:3128/")
            );

            jail.set_env("HERALD_OTLP_ENDPOINT", "localhost:4318");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("otlp_endpoint"), "{err}");
            jail.set_env("HERALD_OTLP_ENDPOINT", "http://localhost:4318");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(
                config.otlp_endpoint.as_deref(),
                Some("http://localhost:4318")
            );
            Ok(())
        });
    }

    #[test]
    fn a_split_role_needs_a_shared_database_and_leases_outlast_attempts() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_ROLE", "worker");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("needs a shared database"), "{err}");

            jail.set_env("HERALD_DATABASE_URL", "mysql://localhost/herald");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("PostgreSQL URL"), "{err}");

            jail.set_env("HERALD_DATABASE_URL", "postgres://herald@localhost/herald");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(config.role, Role::Worker);
            assert!(config.role.delivers() && !config.role.serves_api());

            jail.set_env("HERALD_DELIVERY_LEASE_SECONDS", "15");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("delivery_lease_seconds"), "{err}");
            Ok(())
        });
    }
}
