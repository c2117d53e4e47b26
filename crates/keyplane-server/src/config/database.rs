//! The database: where the data lives, how it is reached, and the pool.

use std::path::PathBuf;
use std::str::FromStr;

use keyplane_domain::Mode;
use keyplane_store::{DatabaseLocation, describe_url};
use secrecy::{ExposeSecret, SecretString};

use crate::config::sources::{Sources, secret_from_env};
use crate::config::{ConfigError, Settings};

/// Reads the database's settings into `settings`.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    if let Some(dir) = sources.path("KEYPLANE_DATA_DIR", &args.data_dir)? {
        settings.data_dir = dir;
    }
    settings.database = location(settings.mode, settings.data_dir.clone())?;
    settings.database_read = standby(settings.mode, &settings.database)?;
    let pool = &mut settings.pool;
    if let Some(n) = sources.number("KEYPLANE_DB_MAX_CONNECTIONS", &args.db_max_connections)? {
        pool.max_connections = u32::try_from(n)
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ConfigError::new("KEYPLANE_DB_MAX_CONNECTIONS", "expected 1 to 1000"))?;
    }
    if let Some(wait) = sources.duration("KEYPLANE_DB_STARTUP_WAIT", &args.db_startup_wait)? {
        pool.startup_wait = wait;
    }
    Ok(())
}

/// Names the database for humans, never showing a password.
pub fn describe_location(location: &DatabaseLocation) -> String {
    match location {
        DatabaseLocation::Url(url) => format!("postgres {}", describe_url(url)),
        #[cfg(feature = "embedded")]
        DatabaseLocation::Embedded(dir) => format!("embedded in {}", dir.display()),
    }
}

#[cfg(feature = "embedded")]
pub(super) fn default_location(data_dir: PathBuf) -> DatabaseLocation {
    DatabaseLocation::Embedded(data_dir)
}

#[cfg(not(feature = "embedded"))]
pub(super) fn default_location(_data_dir: PathBuf) -> DatabaseLocation {
    DatabaseLocation::Url(SecretString::from(""))
}

/// `DATABASE_URL`, or in `dev` without it the embedded database.
fn location(mode: Mode, data_dir: PathBuf) -> Result<DatabaseLocation, ConfigError> {
    match secret_from_env("DATABASE_URL")? {
        Some(url) => {
            let scheme_ok = ["postgres://", "postgresql://"]
                .iter()
                .any(|s| url.expose_secret().starts_with(s));
            if !scheme_ok || describe_url(&url).starts_with("an unparsable") {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "expected a PostgreSQL URL, e.g. postgres://user:password@host:5432/keyplane",
                ));
            }
            require_tls(mode, &url)?;
            Ok(DatabaseLocation::Url(url))
        }
        None if mode != Mode::Dev => Err(ConfigError::new(
            "DATABASE_URL",
            format!("required in {mode} mode (the embedded database is for dev only)"),
        )),
        None => embedded_or_error(data_dir),
    }
}

/// `DATABASE_READ_URL`: a standby of the database, checked as
/// `DATABASE_URL` is; only beside a `DATABASE_URL`.
fn standby(mode: Mode, primary: &DatabaseLocation) -> Result<Option<SecretString>, ConfigError> {
    let Some(url) = secret_from_env("DATABASE_READ_URL")? else {
        return Ok(None);
    };
    if !matches!(primary, DatabaseLocation::Url(_)) {
        return Err(ConfigError::new(
            "DATABASE_READ_URL",
            "a standby of DATABASE_URL, which is not set (the embedded database has none)",
        ));
    }
    let scheme_ok = ["postgres://", "postgresql://"]
        .iter()
        .any(|s| url.expose_secret().starts_with(s));
    if !scheme_ok || describe_url(&url).starts_with("an unparsable") {
        return Err(ConfigError::new(
            "DATABASE_READ_URL",
            "expected a PostgreSQL URL, e.g. postgres://user:password@standby:5432/keyplane",
        ));
    }
    require_tls(mode, &url).map_err(|err| ConfigError {
        setting: "DATABASE_READ_URL".to_owned(),
        ..err
    })?;
    Ok(Some(url))
}

/// Outside `dev`, the database is reached over TLS that checks its
/// certificate (`sslmode=verify-full` or `verify-ca`), unless through a Unix socket.
fn require_tls(mode: Mode, url: &SecretString) -> Result<(), ConfigError> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    // An unparsable URL is refused by the caller, which names it.
    let Ok(options) = PgConnectOptions::from_str(url.expose_secret()) else {
        return Ok(());
    };
    let verified = matches!(
        options.get_ssl_mode(),
        PgSslMode::VerifyFull | PgSslMode::VerifyCa
    );
    if mode == Mode::Dev || verified || options.get_socket().is_some() {
        return Ok(());
    }
    Err(ConfigError::new(
        "DATABASE_URL",
        format!(
            "{mode} mode talks to PostgreSQL over TLS: add sslmode=verify-full \
             (and sslrootcert=<CA file>) to the URL, or connect through a Unix socket"
        ),
    ))
}

#[cfg(feature = "embedded")]
fn embedded_or_error(data_dir: PathBuf) -> Result<DatabaseLocation, ConfigError> {
    Ok(DatabaseLocation::Embedded(data_dir))
}

#[cfg(not(feature = "embedded"))]
fn embedded_or_error(_data_dir: PathBuf) -> Result<DatabaseLocation, ConfigError> {
    Err(ConfigError::new(
        "DATABASE_URL",
        "required (this build has no embedded database)",
    ))
}
