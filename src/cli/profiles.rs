//! Named connection profiles: `herald login` checks a server, token and tenant against the
//! server and saves them under a name in a small TOML file only its owner may read
//! (`$HERALD_CONFIG`, else `$XDG_CONFIG_HOME/herald/config.toml`, else
//! `~/.config/herald/config.toml`); `herald logout` forgets one. Every client command then
//! takes its connection from the flags, then the environment, then the profile
//! (`--profile`/`HERALD_PROFILE`, `default` unless named), then the built-in defaults.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::Connection;
use super::client::{CliError, Client};

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
/// The server used when neither a flag, the environment nor a profile names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8470";

/// The whole configuration file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Where the configuration file is.
pub fn config_path() -> Result<PathBuf, CliError> {
    if let Some(path) = std::env::var_os("HERALD_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => {
                return Err(CliError::Usage(
                    "no configuration directory: set HERALD_CONFIG to the file to use".into(),
                ));
            }
        },
    };
    Ok(base.join("herald").join("config.toml"))
}

/// Reads the file; a missing one is an empty configuration.
pub fn load(path: &Path) -> Result<ConfigFile, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => {
            return Err(CliError::Usage(format!("reading {}: {e}", path.display())));
        }
    };
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "herald: warning: {} holds tokens and others may read it; run `chmod 600` on it",
                path.display()
            );
        }
    }
    toml::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is not a valid herald configuration: {e}",
            path.display()
        ))
    })
}

/// Writes the file whole, readable by its owner only (the directory too, when created), and
/// replaces the old one in one step so a failure never leaves half a file.
pub fn save(path: &Path, config: &ConfigFile) -> Result<(), CliError> {
    let failed = |e: std::io::Error| CliError::Usage(format!("writing {}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(failed)?;
    }
    let text = toml::to_string(config).expect("the configuration serializes as TOML");
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(failed(e));
    }
    Ok(())
}

/// The connection a command uses: each setting from the flag or environment variable when
/// given, else from the profile, else the default.
pub fn resolve(
    connection: &Connection,
) -> Result<(String, Option<String>, Option<String>), CliError> {
    let named = connection.profile.as_deref().filter(|p| !p.is_empty());
    let needs_profile = named.is_some()
        || connection.server.is_none()
        || connection.token.is_none()
        || connection.tenant.is_none();
    let mut profile = None;
    if needs_profile {
        let path = config_path()?;
        let mut config = load(&path)?;
        let name = named.unwrap_or(DEFAULT_PROFILE);
        profile = config.profiles.remove(name);
        if profile.is_none() && named.is_some() {
            return Err(CliError::NotFound(format!(
                "no profile `{name}` in {}; create it with `herald login --profile {name} --server URL --token -`",
                path.display()
            )));
        }
    }
    let server = connection
        .server
        .clone()
        .or_else(|| profile.as_ref().map(|p| p.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let token = connection
        .token
        .clone()
        .or_else(|| profile.as_ref().and_then(|p| p.token.clone()));
    let tenant = connection
        .tenant
        .clone()
        .or_else(|| profile.as_ref().and_then(|p| p.tenant.clone()));
    Ok((server, token, tenant))
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    printf '%s' \"$TOKEN\" | herald login --server https://herald.example.com --token -\n  \
    herald login --profile staging --server https://staging.example.com --token - --tenant acme")]
pub struct LoginArgs {
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  herald logout --profile staging")]
pub struct LogoutArgs {
    #[command(flatten)]
    pub connection: Connection,
}

/// `herald login`: checks the token, then saves the profile.
pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    let connection = args.connection;
    let name = connection
        .profile
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let Some(server) = connection.server.clone() else {
        return Err(CliError::Usage(
            "herald login needs --server URL (or HERALD_SERVER)".into(),
        ));
    };
    let token = match connection.token.as_deref() {
        // Read from stdin: kept out of process listings and shell history.
        Some("-") => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("API token for {server}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::Usage(format!("reading the token from stdin: {e}")))?;
            line.trim().to_owned()
        }
        Some(token) => token.trim().to_owned(),
        None => {
            return Err(CliError::Usage(
                "herald login needs a token: `--token -` reads it from stdin (kept out of \
                 process listings), or set HERALD_TOKEN"
                    .into(),
            ));
        }
    };
    if token.is_empty() {
        return Err(CliError::Usage("the token is empty".into()));
    }
    let tenant = connection.tenant.clone().filter(|t| !t.is_empty());
    let client = Client::new(&server, Some(token.clone()), tenant.clone())?;
    // Any valid token may read the catalog: this checks the token and the tenant, nothing more.
    if let Err(error) = client.get(&["v1", "event-types"], &[]).await {
        return Err(match error {
            CliError::Api { status: 401, .. } => CliError::Api {
                status: 401,
                code: "unauthorized".into(),
                message: format!("{server} rejected the token; nothing was saved"),
                details: None,
                request_id: None,
            },
            other => other,
        });
    }
    let path = config_path()?;
    let mut config = load(&path)?;
    config.profiles.insert(
        name.clone(),
        Profile {
            server: server.clone(),
            token: Some(token),
            tenant,
        },
    );
    save(&path, &config)?;
    crate::outln!("saved profile `{name}` for {server} in {}", path.display());
    Ok(())
}

/// `herald logout`: removes the profile, and the token with it.
pub async fn logout(args: LogoutArgs) -> Result<(), CliError> {
    let name = args
        .connection
        .profile
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let path = config_path()?;
    let mut config = load(&path)?;
    if config.profiles.remove(&name).is_none() {
        return Err(CliError::NotFound(format!(
            "no profile `{name}` in {}",
            path.display()
        )));
    }
    save(&path, &config)?;
    crate::outln!("removed profile `{name}` from {}", path.display());
    Ok(())
}
