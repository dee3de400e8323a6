//! The `herald` command: parses the command line and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use herald::config::Overrides;
use herald::secret::Cipher;
use herald::store::postgres::PgStore;
use herald::telemetry::{LogFormat, Telemetry};
use herald::{App, Config};
use tokio_util::sync::CancellationToken;

/// mimalloc: Herald allocates many small, short-lived buffers per delivery (bodies, headers,
/// JSON), where it measurably beats the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted event streaming: publish, sign, deliver, retry, record."
)]
struct Cli {
    /// How log lines are written to stderr: `text` (coloured only on a terminal) or `json`
    /// (one object a line, for a log collector)
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: on the embedded store, or with --database-url on PostgreSQL.
    Serve {
        /// Configuration file [default: ./herald.toml, if present]
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Bring the PostgreSQL schema up to date, then exit (`serve` also does this at start).
    Migrate {
        /// PostgreSQL URL of the shared store
        #[arg(long, env = "HERALD_DATABASE_URL")]
        database_url: String,
    },
    /// Copy an embedded store (tenants, tokens, streams, events, deliveries, attempts,
    /// statistics) into an empty PostgreSQL database. Stop Herald on the data directory first.
    MigrateStore {
        /// Data directory of the embedded store
        #[arg(long)]
        from: PathBuf,
        /// PostgreSQL URL of the shared store
        #[arg(long)]
        to: String,
        /// The secret key, when the embedded store was not using `<from>/secret.key`
        #[arg(long, env = "HERALD_SECRET_KEY", hide_env_values = true)]
        secret_key: Option<String>,
    },
    /// Re-seal every stream secret and destination credential with the configured
    /// `secret_key`, which becomes the store's current key; the key the store used until now
    /// must be in `previous_secret_keys`. Runs beside the nodes; safe to run again.
    #[command(
        after_help = "Example (the same configuration as the nodes):\n  HERALD_SECRET_KEY=<new> HERALD_PREVIOUS_SECRET_KEYS=<old> herald rotate-secret-key --database-url postgres://..."
    )]
    RotateSecretKey {
        /// Configuration file [default: ./herald.toml, if present]
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Copy the embedded store into FILE, consistently, while Herald runs on it. The secret
    /// key is not in the copy: keep `<data-dir>/secret.key` (or `secret_key`) safe separately.
    Backup {
        /// Data directory of the embedded store
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
        data_dir: PathBuf,
        /// The file to write
        #[arg(long)]
        to: PathBuf,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Make a backup the store of a data directory (Herald must not be running on it).
    Restore {
        /// A file written by `herald backup`
        #[arg(long)]
        from: PathBuf,
        /// Data directory to restore into
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
        data_dir: PathBuf,
        /// Replace the store the data directory holds (it is lost)
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Client(herald::cli::Command),
    /// Print a shell completion script for `herald`.
    #[command(after_help = "Example:\n  herald completions bash > /etc/bash_completion.d/herald")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    match cli.command {
        Command::Serve { config, overrides } => {
            // The configuration first: it says where spans go.
            let config = match Config::load(config, &overrides) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("herald: {e}");
                    return ExitCode::from(2);
                }
            };
            // Outside the runtime: the span exporter's client blocks.
            let telemetry =
                match Telemetry::install(cli.log_format, config.otlp_endpoint.as_deref()) {
                    Ok(telemetry) => telemetry,
                    Err(e) => {
                        eprintln!("herald: {e}");
                        return ExitCode::from(2);
                    }
                };
            let code = runtime.block_on(serve(config));
            telemetry.shutdown();
            code
        }
        Command::Migrate { database_url } => {
            Telemetry::logs(cli.log_format);
            runtime.block_on(migrate(&database_url))
        }
        Command::MigrateStore {
            from,
            to,
            secret_key,
        } => {
            Telemetry::logs(cli.log_format);
            runtime.block_on(migrate_store(&from, &to, secret_key.as_deref()))
        }
        Command::RotateSecretKey { config, overrides } => {
            Telemetry::logs(cli.log_format);
            match Config::load(config, &overrides) {
                Ok(config) => runtime.block_on(rotate_secret_key(config)),
                Err(e) => {
                    eprintln!("herald: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Backup {
            data_dir,
            to,
            force,
        } => backup(&data_dir, &to, force),
        Command::Restore {
            from,
            data_dir,
            force,
        } => restore(&from, &data_dir, force),
        Command::Client(command) => runtime.block_on(herald::cli::run(command)),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "herald", &mut script);
            herald::cli::output::write_all(&script);
            ExitCode::SUCCESS
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let app = match App::build(config, Arc::new(herald::clock::SystemClock)).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    let new_token = app.new_admin_token();
    if let Some(token) = &new_token {
        println!(
            "Created the platform admin token. It is shown only this once; keep it safe:\n\n    {token}\n"
        );
    }
    if let Some(addr) = app.metrics_addr() {
        println!("herald serving metrics on http://{addr}/metrics");
    }
    println!("herald listening on http://{}", app.local_addr());
    let with = if new_token.is_some() {
        "the token above"
    } else {
        "an API token"
    };
    println!(
        "Open the console at http://{}/ and sign in with {with}.",
        app.local_addr()
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: the server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(url: &str) -> ExitCode {
    match PgStore::migrate_database(url).await {
        Ok(0) => println!("the schema is up to date"),
        Ok(n) => println!("applied {n} migration(s); the schema is up to date"),
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

async fn migrate_store(from: &Path, to: &str, secret_key: Option<&str>) -> ExitCode {
    let key_file = from.join("secret.key");
    let cipher = match secret_key {
        Some(key) => Cipher::from_base64(key),
        None if key_file.exists() => Cipher::load_or_create(&key_file),
        None => {
            eprintln!(
                "herald: {} has no secret.key; pass the key the embedded store used with --secret-key",
                from.display()
            );
            return ExitCode::from(2);
        }
    };
    let cipher = match cipher {
        Ok(cipher) => cipher,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    // Refused before the target records a key.
    let sqlite = from.join(herald::config::DATABASE_FILE);
    if let Err(e) = herald::store::postgres::check_source_key(&sqlite, &cipher) {
        eprintln!("herald: nothing was copied: {e}");
        return ExitCode::from(2);
    }
    let target = match PgStore::connect(to, cipher, 2).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    match herald::store::postgres::import_sqlite(&sqlite, &target).await {
        Ok(report) => {
            println!("copied into {}:", herald::store::postgres::redact_url(to));
            for (table, rows) in report.tables {
                println!("  {table:<16} {rows:>10} rows");
            }
            if secret_key.is_none() {
                println!(
                    "\nEvery node must run with the same secret key: set HERALD_SECRET_KEY to the \
                     contents of {}.",
                    key_file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: nothing was copied: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn rotate_secret_key(config: Config) -> ExitCode {
    let cipher = match config.cipher(false) {
        Ok(cipher) => cipher,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let rotated = match &config.database_url {
        Some(url) => match PgStore::connect(url.expose(), cipher, 2).await {
            Ok(store) => store.rotate_secret_key(None).await,
            Err(e) => Err(e),
        },
        None => {
            let path = config.database_path();
            tokio::task::spawn_blocking(move || {
                herald::store::sqlite::rotate_secret_key(&path, &cipher, None)
            })
            .await
            .expect("the rotation does not panic")
        }
    };
    match rotated {
        Ok(report) => {
            if report.recorded {
                println!(
                    "The store's current secret key is now `secret_key`: every node seals with it."
                );
            } else {
                println!(
                    "The store's current secret key already was `secret_key` (an earlier run recorded it)."
                );
            }
            println!(
                "Re-sealed {} stream destination(s) and {} stream secret(s); every secret is now sealed \
                 with the new key.\nOnce every node runs with the new `secret_key`, remove the old key \
                 from `previous_secret_keys`.",
                report.destinations, report.stream_secrets
            );
            ExitCode::SUCCESS
        }
        Err(e @ herald::store::StoreError::Open { .. }) => {
            eprintln!(
                "herald: {e}\nTo rotate, set `secret_key` to the new key and put the key the store \
                 uses now in `previous_secret_keys` (HERALD_PREVIOUS_SECRET_KEYS)."
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("herald: the rotation stopped; run it again to finish: {e}");
            ExitCode::FAILURE
        }
    }
}

fn backup(data_dir: &Path, to: &Path, force: bool) -> ExitCode {
    let db = data_dir.join(herald::config::DATABASE_FILE);
    match herald::store::sqlite::backup(&db, to, force) {
        Ok(copied) => {
            println!(
                "Wrote {} ({} bytes in {} steps, schema version {}, {} events).\nThe secret key is not in it: \
                 keep {} (or your `secret_key`) safe separately; without it the copy's stream \
                 secrets cannot be opened.",
                to.display(),
                copied.bytes,
                copied.steps,
                copied.schema_version,
                copied.events,
                data_dir.join(herald::config::KEY_FILE).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => backup_failed(e),
    }
}

fn restore(from: &Path, data_dir: &Path, force: bool) -> ExitCode {
    match herald::store::sqlite::restore(from, data_dir, force) {
        Ok(copied) => {
            println!(
                "Restored {} into {} ({} events, schema version {}).",
                from.display(),
                data_dir.display(),
                copied.events,
                copied.schema_version
            );
            let key_file = data_dir.join(herald::config::KEY_FILE);
            if !key_file.exists() {
                println!(
                    "Before `herald serve`, put the secret key the store was using in {} (or \
                     set `secret_key`): the restored secrets open with it alone.",
                    key_file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => backup_failed(e),
    }
}

fn backup_failed(e: herald::store::sqlite::BackupError) -> ExitCode {
    use herald::store::sqlite::BackupError;
    eprintln!("herald: {e}");
    match e {
        BackupError::Io { .. } | BackupError::Database(_) => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing requests and deliveries under way");
    shutdown.cancel();
}
