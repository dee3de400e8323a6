//! The application: builds every part from a [`Config`], binds the listener, and runs until
//! told to stop. `main` only parses the command line; tests build an `App` on port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, DEFAULT_TENANT, Scope};
use crate::catalog::Catalog;
use crate::catalog::registry::Registry;
use crate::clock::Clock;
use crate::config::Config;
use crate::config::Role;
use crate::delivery::{DispatchConfig, Dispatcher, Signal};
use crate::destinations::{DestinationPolicy, Destinations};
use crate::metrics::{Metrics, MetricsOptions};
use crate::net::ssrf::AddressPolicy;
use crate::retention::{self, Retention};
use crate::server::{self, ConnectionLimits};
use crate::service::Service;
use crate::service::limits::{Quotas, Rates};
use crate::service::log::LogSignal;
use crate::store::postgres::{self, Notice, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, Tenant, Token, hash_token};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("could not create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cipher(#[from] crate::secret::CipherError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    /// Serves `/metrics` without a token, when the operator sets `metrics_listen`.
    metrics_listener: Option<TcpListener>,
    role: Role,
    state: AppState,
    /// Absent on an API-only node.
    dispatcher: Option<Dispatcher>,
    /// The shared store's connection settings, to listen for other nodes' notifications.
    listen: Option<postgres::Target>,
    retention: Retention,
    connection_limits: ConnectionLimits,
    new_admin_token: Option<String>,
}

impl App {
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<App, StartupError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartupError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let cipher = config.cipher(true)?;
        let now = clock.now_ms();
        let commits;
        let (store, listen): (Arc<dyn Store>, _) = match &config.database_url {
            Some(url) => {
                let store =
                    PgStore::connect(url.expose(), cipher, config.database_max_connections).await?;
                commits = Some(store.commit_metrics());
                // Nodes that deliver hear of due work; nodes that serve the API, of new
                // events for the event log's readers.
                let listen = (config.role.delivers() || config.role.serves_api())
                    .then(|| postgres::parse_url(url.expose()));
                (Arc::new(store), listen.transpose()?)
            }
            None => {
                let store = SqliteStore::open(&config.database_path(), cipher)?;
                commits = Some(store.commit_metrics());
                (Arc::new(store), None)
            }
        };
        store
            .create_tenant(Tenant {
                id: DEFAULT_TENANT.into(),
                name: "default".into(),
                created_at: now,
            })
            .await?;
        let new_admin_token = bootstrap_admin_token(&*store, &config, now).await?;

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let catalog = Catalog::builtin();
        let metrics = Arc::new(Metrics::new(MetricsOptions {
            catalog: &catalog,
            commits,
            dispatcher_slots: config.role.delivers().then_some(config.max_in_flight),
            backlog_top_streams: config.metrics_backlog_top_streams,
        }));

        let signal = Arc::new(Signal::default());
        let destination_policy = DestinationPolicy {
            allow_http: config.allow_http,
            aws_server_credentials: config.aws_server_credentials,
        };
        let addresses = AddressPolicy::new(config.allow_cidrs.clone());
        let destinations = match config.egress_proxy_url() {
            Some(proxy) => Destinations::through_proxy(
                addresses,
                config.delivery_timeout(),
                destination_policy.clone(),
                &proxy,
            ),
            None => Destinations::new(
                addresses,
                config.delivery_timeout(),
                destination_policy.clone(),
            ),
        };
        let lease = config.delivery_lease();
        let dispatcher = config.role.delivers().then(|| {
            Dispatcher::new(
                store.clone(),
                clock.clone(),
                destinations.clone(),
                signal.clone(),
                DispatchConfig {
                    max_in_flight: config.max_in_flight,
                    max_in_flight_per_stream: config.max_in_flight_per_stream,
                    lease,
                    attempt_timeout: config.delivery_timeout(),
                    shutdown_grace: config.shutdown_grace(),
                    shared: config.database_url.is_some(),
                },
                metrics.clone(),
            )
        });
        let service = Service {
            store,
            destinations,
            tokens: Arc::default(),
            catalogs: Arc::new(Registry::new(catalog)),
            clock,
            signal,
            destination_policy,
            secret_rotation_grace_ms: config.secret_rotation_grace_seconds as i64 * 1000,
            // Leasing at publish saves a claim: a node that delivers gets its publishes' new
            // deliveries already leased (on a shared store the lease is written with the row,
            // at no cost); a node that does not leaves them to the others, told by NOTIFY.
            delivery_lease_ms: config.role.delivers().then_some(lease.as_millis() as i64),
            delivers: config.role.delivers(),
            metrics,
            log_signal: Arc::new(LogSignal::new(config.max_connections / 2)),
            quotas: Quotas::from_config(&config),
            rates: Arc::new(Rates::from_config(&config)),
        };
        let state = AppState {
            service,
            max_request_bytes: config.max_request_bytes,
            limits: Arc::new(api::limits::ApiLimits::from_config(&config)),
            event_retention_days: config.event_retention_days,
            shutdown: CancellationToken::new(),
        };
        Ok(App {
            listener,
            metrics_listener,
            role: config.role,
            state,
            dispatcher,
            listen,
            retention: Retention {
                event_days: config.event_retention_days,
                response_body_days: config.response_body_retention_days,
            },
            connection_limits: ConnectionLimits {
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout(),
                // A request is answered within its timeout; a client that does not read its
                // answer gets a few seconds more.
                drain_timeout: config.request_timeout() + std::time::Duration::from_secs(5),
            },
            new_admin_token,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served without a token, if the operator asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// The admin token generated by this start, if the store had none: shown once.
    pub fn new_admin_token(&self) -> Option<&str> {
        self.new_admin_token.as_deref()
    }

    /// Serves until `shutdown` is cancelled: then stops accepting, finishes the requests under
    /// way, and lets the dispatcher finish or release its in-flight deliveries.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(crate::delivery::fanout::run(
            self.state.store.clone(),
            self.state.clock.clone(),
            self.state.signal.clone(),
            shutdown.clone(),
        ));
        if let Some(dispatcher) = self.dispatcher {
            tasks.spawn(dispatcher.run(shutdown.clone()));
            tasks.spawn(retention::run(
                self.state.store.clone(),
                self.state.clock.clone(),
                self.retention,
                self.state.metrics.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(crate::service::listen::reap(
            self.state.store.clone(),
            self.state.clock.clone(),
            self.state.signal.clone(),
            shutdown.clone(),
        ));
        {
            // Responses that never end on their own (the event log's readers) end with the
            // server.
            let (stopping, stopped) = (shutdown.clone(), self.state.shutdown.clone());
            tasks.spawn(async move {
                stopping.cancelled().await;
                stopped.cancel();
            });
        }
        if let Some(config) = self.listen {
            let (signal, log_signal) = (self.state.signal.clone(), self.state.log_signal.clone());
            let wake = move |notice| match notice {
                Notice::Due(stream_id) => signal.wake([&stream_id]),
                Notice::Events(tenant_id) => log_signal.notify(&tenant_id),
                Notice::StreamsChanged => signal.streams_changed(),
            };
            tasks.spawn(postgres::listen(config, wake, shutdown.clone()));
        }
        if let Some(listener) = self.metrics_listener {
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics without a token");
            tasks.spawn(server::serve(
                listener,
                api::metrics_router(self.state.clone()),
                self.connection_limits,
                shutdown.clone(),
            ));
        }
        tasks.close();
        let store = self.state.store.clone();
        let (signal, clock) = (self.state.signal.clone(), self.state.clock.clone());
        let router = if self.role.serves_api() {
            api::router(self.state)
        } else {
            api::health_router(self.state)
        };
        tracing::info!(addr = %self.listener.local_addr()?, role = ?self.role, "herald is listening");
        server::serve(
            self.listener,
            router,
            self.connection_limits,
            shutdown.clone(),
        )
        .await;
        tasks.wait().await;
        // A publish that finished after the dispatcher stopped leased its deliveries to it:
        // on a shared store they are given back for the other nodes, not left to lapse.
        let late: Vec<_> = signal
            .take_handed()
            .into_iter()
            .map(|claimed| (claimed.key, claimed.lease))
            .collect();
        if !late.is_empty()
            && let Err(e) = store.release(late, clock.now_ms()).await
        {
            tracing::warn!(error = %e, "could not release deliveries published while stopping; their leases lapse");
        }
        store.close().await;
        Ok(())
    }
}

/// Ensures an admin token exists: the configured one (which replaces the one configured
/// before, if it changed), or on an empty store a new one.
async fn bootstrap_admin_token(
    store: &dyn Store,
    config: &Config,
    now: i64,
) -> Result<Option<String>, StartupError> {
    let admin = |id: String| Token {
        id,
        tenant_id: None,
        name: "platform admin".into(),
        scopes: Scope::all_names(),
        created_at: now,
    };
    if let Some(secret) = &config.admin_token {
        let hash = hash_token(secret.expose());
        store
            .put_token(admin("tok_admin_configured".into()), hash)
            .await?;
        // A revoked token stays revoked, whatever the configuration says.
        if store.find_token(hash).await?.is_none() {
            tracing::warn!(
                "the configured admin token (admin_token, HERALD_ADMIN_TOKEN) was revoked and stays revoked; configure a new one to have an admin token again"
            );
        }
        return Ok(None);
    }
    if store.count_tokens().await? > 0 {
        return Ok(None);
    }
    let secret = crate::ids::api_token_secret();
    store
        .put_token(admin(crate::ids::token_id()), hash_token(&secret))
        .await?;
    Ok(Some(secret))
}
