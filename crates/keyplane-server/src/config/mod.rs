//! Settings: flags win over the environment, the environment over the optional
//! configuration file (`KEYPLANE_CONFIG`, TOML, no secrets), and that over the
//! defaults. Everything is validated here, once, into [`Settings`]; a bad value
//! is a [`ConfigError`] naming the variable and what it expects.
//!
//! Each concern reads its own settings (`server`, `tls`, `database`,
//! `policy`, `rates`, `webhooks`, `secrets`), all through [`sources`], the
//! one place that merges flags, environment and file.

mod args;
mod database;
mod people;
mod policy;
mod rates;
mod secrets;
mod server;
mod sources;
mod tls;
mod webhooks;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderValue;
use keyplane_domain::{ForwardAuthProxy, Mode, RouteMap, format_duration};
use keyplane_store::{DatabaseLocation, PoolSettings};
use secrecy::SecretString;

pub use args::SettingsArgs;
pub use database::describe_location;
pub use people::{AdminKeys, OidcSettings};
pub use sources::secret_from_env;
pub use tls::TlsSettings;

use crate::limits::LimitSettings;

/// A setting that could not be accepted. Printed as one line; the process
/// then exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {expected}")]
pub struct ConfigError {
    /// The environment variable (and flag) at fault.
    pub setting: String,
    /// What it expects, and what it got when that is not a secret.
    pub expected: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.to_owned(),
            expected: expected.into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Validated settings for every `keyplane` command.
#[derive(Clone)]
pub struct Settings {
    /// How strictly keyplane guards itself.
    pub mode: Mode,
    /// The address the HTTP server binds.
    pub listen: SocketAddr,
    /// HTTPS, when configured: the files and what was read from them.
    pub tls: Option<TlsSettings>,
    /// Origins allowed to call the API from a browser; empty = CORS off.
    pub cors_origins: Vec<HeaderValue>,
    /// Where the data lives.
    pub database: DatabaseLocation,
    /// A standby of it (`DATABASE_READ_URL`), asked for keys the
    /// introspection cache lacks while the primary cannot answer.
    pub database_read: Option<SecretString>,
    /// Connection pool limits and the start-up wait.
    pub pool: PoolSettings,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How long a client has to send its request headers before the
    /// connection is closed, how long connections may sit idle, and how
    /// many may be open.
    pub connections: keyplane_tls::ConnectionLimits,
    /// How often the scheduler runs.
    pub scheduler_interval: Duration,
    /// How often `/metrics`' database-backed figures are read (never at
    /// scrape time).
    pub metrics_refresh: Duration,
    /// The first retry delay of a failed webhook delivery.
    pub webhook_retry_base: Duration,
    /// Internal networks webhook deliveries may reach.
    pub webhook_allow_networks: Vec<ipnet::IpNet>,
    /// The public keys that sign leak reports (GitHub's secret scanning).
    pub leak_report_keys: crate::reporters::ReporterKeys,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The token that authenticates as the built-in `admin` operator, if set.
    pub bootstrap_token: Option<SecretString>,
    /// The longest life any key may have.
    pub max_key_lifetime: Duration,
    /// Whether legacy keys (imported from before keyplane, without a
    /// checksum) are looked up at introspection.
    pub accept_legacy_keys: bool,
    /// The longest life of an imported legacy key.
    pub legacy_key_lifetime: Duration,
    /// How long hourly usage rollups are kept.
    pub usage_hourly_retention: Duration,
    /// How long daily usage rollups are kept (budgets need the month).
    pub usage_daily_retention: Duration,
    /// How long nodes may cache a positive introspection answer.
    pub introspection_cache_ttl: Duration,
    /// How many keys the introspection cache holds; 0 turns it off.
    pub introspection_cache_capacity: u64,
    /// Inactive answers to one node within `probe_window` that are audited as a probe.
    pub probe_threshold: u64,
    /// The window for `probe_threshold`.
    pub probe_window: Duration,
    /// Rate limits per address, admin key and node.
    pub limits: LimitSettings,
    /// Which scope each inference route needs (configured rules, then the defaults).
    pub routes: RouteMap,
    /// The proxy whose headers forward auth believes, for nodes that name none.
    pub forward_auth_proxy: ForwardAuthProxy,
    /// The `iss` of introspection answers; defaults to `urn:keyplane:<deployment id>`.
    pub issuer: Option<String>,
    /// Seals signing keys at rest; in `dev` without one, a key is kept in
    /// `data_dir/master.key`.
    pub master_key: Option<SecretString>,
    /// The master key being rotated away from: it still opens what it
    /// sealed, and never seals (`keyplane master-key rotate`).
    pub master_key_previous: Option<SecretString>,
    /// Where `dev` keeps local state (the embedded database, the dev master key).
    pub data_dir: PathBuf,
    /// Signing people in with the organisation's identity provider, if set up.
    pub oidc: Option<OidcSettings>,
    /// Whether admin keys and the bootstrap token are accepted.
    pub admin_keys: AdminKeys,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Dev,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            cors_origins: Vec::new(),
            database: database::default_location(PathBuf::from("keyplane-data")),
            database_read: None,
            pool: PoolSettings::default(),
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            connections: keyplane_tls::ConnectionLimits::default(),
            scheduler_interval: Duration::from_secs(5),
            metrics_refresh: Duration::from_secs(15),
            webhook_retry_base: Duration::from_secs(10),
            webhook_allow_networks: Vec::new(),
            leak_report_keys: crate::reporters::ReporterKeys::default(),
            log_format: LogFormat::Text,
            bootstrap_token: None,
            max_key_lifetime: Duration::from_secs(90 * 86_400),
            accept_legacy_keys: false,
            legacy_key_lifetime: Duration::from_secs(30 * 86_400),
            usage_hourly_retention: Duration::from_secs(31 * 86_400),
            usage_daily_retention: Duration::from_secs(400 * 86_400),
            introspection_cache_ttl: Duration::from_secs(30),
            introspection_cache_capacity: 100_000,
            probe_threshold: 100,
            probe_window: Duration::from_secs(60),
            limits: LimitSettings::default(),
            routes: RouteMap::defaults(),
            forward_auth_proxy: ForwardAuthProxy::Nginx,
            issuer: None,
            master_key: None,
            master_key_previous: None,
            data_dir: PathBuf::from("keyplane-data"),
            oidc: None,
            admin_keys: AdminKeys::Enabled,
        }
    }
}

impl Settings {
    /// Validates the given arguments, the configuration file they name and the
    /// secrets in the environment into settings.
    pub fn load(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let sources = sources::Sources::read(args)?;
        let mut settings = Settings::default();
        if let Some(mode) = sources.parsed("KEYPLANE_MODE", &args.mode, Mode::from_str)? {
            settings.mode = mode;
        }
        server::read(&sources, &mut settings)?;
        database::read(&sources, &mut settings)?;
        tls::read(&sources, &mut settings)?;
        policy::read(&sources, &mut settings)?;
        rates::read(&sources, &mut settings)?;
        webhooks::read(&sources, &mut settings)?;
        people::read(&sources, &mut settings)?;
        secrets::read(&mut settings)?;
        Ok(settings)
    }

    /// One line per setting, secrets masked, for the start-up log.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        vec![
            ("mode", self.mode.to_string()),
            ("listen", self.listen.to_string()),
            (
                "tls",
                self.tls
                    .as_ref()
                    .map_or("off (plain HTTP)".to_owned(), |tls| {
                        let mut text = format!("{} with {}", tls.cert.display(), tls.key.display());
                        if let Some(ca) = &tls.client_ca {
                            text.push_str(&format!("; client certificates from {}", ca.display()));
                        }
                        text
                    }),
            ),
            (
                "cors_origins",
                if self.cors_origins.is_empty() {
                    "off".to_owned()
                } else {
                    self.cors_origins
                        .iter()
                        .filter_map(|origin| origin.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ),
            ("database", describe_location(&self.database)),
            (
                "database_read",
                self.database_read
                    .as_ref()
                    .map_or("none".to_owned(), |url| {
                        format!("postgres {}", keyplane_store::describe_url(url))
                    }),
            ),
            ("db_max_connections", self.pool.max_connections.to_string()),
            ("body_limit", self.body_limit.to_string()),
            ("request_timeout", format_duration(self.request_timeout)),
            ("max_key_lifetime", format_duration(self.max_key_lifetime)),
            (
                "legacy_keys",
                match self.accept_legacy_keys {
                    true => format!(
                        "accepted, living at most {}",
                        format_duration(self.legacy_key_lifetime)
                    ),
                    false => "refused".to_owned(),
                },
            ),
            (
                "introspection_cache_ttl",
                format_duration(self.introspection_cache_ttl),
            ),
            ("forward_auth_proxy", self.forward_auth_proxy.to_string()),
            (
                "bootstrap_token",
                if self.bootstrap_token.is_some() {
                    "set (hidden)"
                } else {
                    "not set"
                }
                .to_owned(),
            ),
            (
                "oidc",
                self.oidc.as_ref().map_or("off".to_owned(), |oidc| {
                    format!(
                        "{} as {}; requires amr {:?} acr {:?}",
                        oidc.issuer, oidc.client_id, oidc.require_amr, oidc.require_acr
                    )
                }),
            ),
            (
                "admin_keys",
                match self.admin_keys {
                    AdminKeys::Enabled => "enabled",
                    AdminKeys::Disabled => "disabled",
                }
                .to_owned(),
            ),
            (
                "master_key",
                if self.master_key.is_some() {
                    "set (hidden)"
                } else {
                    "dev key in data_dir"
                }
                .to_owned(),
            ),
        ]
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Settings");
        for (name, value) in self.summary() {
            out.field(name, &value);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_mode_names_its_variable_and_the_choices() {
        let args = SettingsArgs {
            mode: Some("production".into()),
            ..SettingsArgs::default()
        };
        let err = Settings::load(&args).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(r#"KEYPLANE_MODE: expected one of dev, mixed, prod, got "production""#)
        );
    }

    #[test]
    fn a_secret_in_the_configuration_file_is_refused_without_echoing_it() {
        let dir = std::env::temp_dir().join(format!("keyplane-config-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("keyplane.toml");
        let written = std::fs::write(
            &path,
            "mode = \"dev\"\nbootstrap_token = \"do-not-print-me-0123456789abcdef\"\n",
        );
        assert!(written.is_ok());
        let args = SettingsArgs {
            config: Some(path),
            ..SettingsArgs::default()
        };
        let err = Settings::load(&args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("KEYPLANE_CONFIG: `bootstrap_token` is a secret"),
            "{err}"
        );
        assert!(!err.contains("do-not-print-me"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn legacy_keys_are_off_by_default_and_never_outlive_the_policy() {
        let defaults = Settings::load(&SettingsArgs::default()).unwrap();
        assert!(!defaults.accept_legacy_keys);
        assert_eq!(
            defaults.legacy_key_lifetime,
            Duration::from_secs(30 * 86_400)
        );
        let shorter_policy = Settings::load(&SettingsArgs {
            max_key_lifetime: Some("7d".into()),
            accept_legacy_keys: Some("true".into()),
            ..SettingsArgs::default()
        })
        .unwrap();
        assert!(shorter_policy.accept_legacy_keys);
        assert_eq!(
            shorter_policy.legacy_key_lifetime,
            Duration::from_secs(7 * 86_400)
        );
        for (args, setting) in [
            (
                SettingsArgs {
                    legacy_key_lifetime: Some("91d".into()),
                    ..SettingsArgs::default()
                },
                "KEYPLANE_LEGACY_KEY_LIFETIME",
            ),
            (
                SettingsArgs {
                    accept_legacy_keys: Some("yes please".into()),
                    ..SettingsArgs::default()
                },
                "KEYPLANE_ACCEPT_LEGACY_KEYS",
            ),
        ] {
            let err = Settings::load(&args).err().map(|e| e.setting);
            assert_eq!(err.as_deref(), Some(setting));
        }
    }

    #[test]
    fn a_client_ca_without_https_is_refused() {
        let args = SettingsArgs {
            tls_client_ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..SettingsArgs::default()
        };
        let err = Settings::load(&args).err().map(|e| e.setting);
        assert_eq!(err.as_deref(), Some("KEYPLANE_TLS_CLIENT_CA"));
    }

    fn with_file(text: &str, args: SettingsArgs) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyplane.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(&SettingsArgs {
            config: Some(path),
            ..args
        })
    }

    #[test]
    fn the_file_fills_in_what_flags_leave_and_flags_win() {
        let file = "listen = \"127.0.0.1:9999\"\nbody_limit = 2048\nrequest_timeout = \"5s\"\n\
                    db_max_connections = 7\nrate_operator = \"600\"\n";
        let settings = with_file(
            file,
            SettingsArgs {
                listen: Some("127.0.0.1:7777".into()),
                ..SettingsArgs::default()
            },
        )
        .unwrap();
        assert_eq!(settings.listen.port(), 7777, "the flag wins");
        assert_eq!(settings.body_limit, 2048, "a bare number");
        assert_eq!(settings.request_timeout, Duration::from_secs(5));
        assert_eq!(settings.pool.max_connections, 7);
        assert_eq!(settings.limits.operator_per_minute, 600, "a quoted number");
        assert_eq!(
            settings.max_key_lifetime,
            Settings::default().max_key_lifetime
        );
    }

    #[test]
    fn an_unknown_or_malformed_setting_in_the_file_is_named() {
        let err = with_file(
            "listen = \"127.0.0.1:9999\"\nlisten_port = 1\n",
            SettingsArgs::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "KEYPLANE_CONFIG");
        assert!(err.expected.contains("`listen_port`"), "{err}");
        let err = with_file("body_limit = [1, 2]\n", SettingsArgs::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KEYPLANE_CONFIG: `body_limit` must be a string or a number"
        );
        let err = with_file("request_timeout = \"soon\"\n", SettingsArgs::default()).unwrap_err();
        assert_eq!(err.setting, "KEYPLANE_REQUEST_TIMEOUT");
    }
}
