//! Settings: flags win over the environment, the environment over the optional
//! configuration file (`KEYPLANE_CONFIG`, TOML, no secrets), and that over the
//! defaults. Everything is validated here, once, into [`Settings`]; a bad value
//! is a [`ConfigError`] naming the variable and what it expects.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::limits::LimitSettings;
use std::time::Duration;

use axum::http::HeaderValue;
use clap::Args;
use keyplane_domain::{ForwardAuthProxy, Mode, RouteMap, format_duration, parse_duration};
use keyplane_store::{DatabaseLocation, PoolSettings, describe_url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::signing::MasterKey;

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
    fn new(setting: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.to_owned(),
            expected: expected.into(),
        }
    }
}

/// The settings as given on the command line or in the environment, before
/// validation. Secrets are not here: they are read from the environment only.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// A TOML file with non-secret settings.
    #[arg(long, env = "KEYPLANE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// dev, mixed or prod.
    #[arg(long, env = "KEYPLANE_MODE", global = true)]
    pub mode: Option<String>,
    /// The address the server listens on.
    #[arg(long, env = "KEYPLANE_LISTEN", global = true)]
    pub listen: Option<String>,
    /// PEM certificate chain: with KEYPLANE_TLS_KEY, keyplane serves HTTPS.
    #[arg(long, env = "KEYPLANE_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of KEYPLANE_TLS_CERT.
    #[arg(long, env = "KEYPLANE_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: nodes may then authenticate with a client certificate
    /// it issued, naming the node (a DNS name equal to the node's name).
    #[arg(long, env = "KEYPLANE_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,
    /// Origins browsers may call the API from (comma-separated, e.g.
    /// `https://console.example.com`); CORS is off without it.
    #[arg(long, env = "KEYPLANE_CORS_ORIGINS", global = true)]
    pub cors_origins: Option<String>,
    /// Where the embedded database keeps its files (dev without DATABASE_URL).
    #[arg(long, env = "KEYPLANE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The most database connections the pool opens.
    #[arg(long, env = "KEYPLANE_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<String>,
    /// How long start-up waits for an unreachable database (e.g. 30s).
    #[arg(long, env = "KEYPLANE_DB_STARTUP_WAIT", global = true)]
    pub db_startup_wait: Option<String>,
    /// The largest request body accepted, in bytes (or with KiB / MiB).
    #[arg(long, env = "KEYPLANE_BODY_LIMIT", global = true)]
    pub body_limit: Option<String>,
    /// How long one request may take before it is answered 408 (e.g. 30s).
    #[arg(long, env = "KEYPLANE_REQUEST_TIMEOUT", global = true)]
    pub request_timeout: Option<String>,
    /// How long a graceful shutdown waits for in-flight requests (e.g. 30s).
    #[arg(long, env = "KEYPLANE_SHUTDOWN_GRACE", global = true)]
    pub shutdown_grace: Option<String>,
    /// How long a client has to send its request headers (e.g. 10s); also
    /// how long a new connection has to ask for anything at all.
    #[arg(long, env = "KEYPLANE_HEADER_TIMEOUT", global = true)]
    pub header_timeout: Option<String>,
    /// How long a connection with no request in flight stays open (e.g. 60s).
    #[arg(long, env = "KEYPLANE_IDLE_TIMEOUT", global = true)]
    pub idle_timeout: Option<String>,
    /// The most connections open at once; past it, new ones wait.
    #[arg(long, env = "KEYPLANE_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<String>,
    /// How often the scheduler runs (expiry warnings, ends of keys, webhook
    /// deliveries), e.g. 5s.
    #[arg(long, env = "KEYPLANE_SCHEDULER_INTERVAL", global = true)]
    pub scheduler_interval: Option<String>,
    /// The first retry delay of a failed webhook delivery; each retry waits
    /// twice as long as the one before (at most an hour).
    #[arg(long, env = "KEYPLANE_WEBHOOK_RETRY_BASE", global = true)]
    pub webhook_retry_base: Option<String>,
    /// Internal networks webhook deliveries may reach (comma-separated CIDRs,
    /// e.g. 10.20.0.0/16): private, link-local and loopback addresses are
    /// refused otherwise (loopback is allowed in dev).
    #[arg(long, env = "KEYPLANE_WEBHOOK_ALLOW_NETWORKS", global = true)]
    pub webhook_allow_networks: Option<String>,
    /// text or json (the default in prod).
    #[arg(long, env = "KEYPLANE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// The longest life any key may have (seconds or e.g. 90d).
    #[arg(long, env = "KEYPLANE_MAX_KEY_LIFETIME", global = true)]
    pub max_key_lifetime: Option<String>,
    /// How long nodes may cache a positive introspection answer (e.g. 30s).
    #[arg(long, env = "KEYPLANE_INTROSPECTION_CACHE_TTL", global = true)]
    pub introspection_cache_ttl: Option<String>,
    /// How many keys the introspection cache holds (0 turns it off, for benchmarks).
    #[arg(long, env = "KEYPLANE_INTROSPECTION_CACHE_CAPACITY", global = true)]
    pub introspection_cache_capacity: Option<String>,
    /// Inactive introspection answers to one node, within the probe window,
    /// that are audited as a suspected probe.
    #[arg(long, env = "KEYPLANE_PROBE_THRESHOLD", global = true)]
    pub probe_threshold: Option<String>,
    /// The window for KEYPLANE_PROBE_THRESHOLD (e.g. 60s).
    #[arg(long, env = "KEYPLANE_PROBE_WINDOW", global = true)]
    pub probe_window: Option<String>,
    /// Failed authentications tolerated per address per minute; past them,
    /// unknown credentials from there get 429.
    #[arg(long, env = "KEYPLANE_RATE_AUTH_FAILURES", global = true)]
    pub rate_auth_failures: Option<String>,
    /// Failures tolerated per credential per minute (one client retrying one
    /// wrong or stale credential).
    #[arg(long, env = "KEYPLANE_RATE_CREDENTIAL_FAILURES", global = true)]
    pub rate_credential_failures: Option<String>,
    /// Lookups of keys no cache knows, per node per second.
    #[arg(long, env = "KEYPLANE_RATE_MISSES_NODE", global = true)]
    pub rate_misses_node: Option<String>,
    /// Lookups of keys no cache knows, per client address per second.
    #[arg(long, env = "KEYPLANE_RATE_MISSES_ADDRESS", global = true)]
    pub rate_misses_address: Option<String>,
    /// Management requests per admin key per minute.
    #[arg(long, env = "KEYPLANE_RATE_OPERATOR", global = true)]
    pub rate_operator: Option<String>,
    /// Introspection and forward-auth requests per node per second.
    #[arg(long, env = "KEYPLANE_RATE_NODE", global = true)]
    pub rate_node: Option<String>,
    /// Route rules checked before the defaults, e.g. "GET /v1/models=public".
    #[arg(long, env = "KEYPLANE_ROUTE_SCOPES", global = true)]
    pub route_scopes: Option<String>,
    /// The reverse proxy that calls forward auth (nginx, traefik, caddy or
    /// envoy), unless a node names its own: only its headers are believed.
    #[arg(long, env = "KEYPLANE_FORWARD_AUTH_PROXY", global = true)]
    pub forward_auth_proxy: Option<String>,
    /// The `iss` of introspection answers.
    #[arg(long, env = "KEYPLANE_ISSUER", global = true)]
    pub issuer: Option<String>,
}

/// The configuration file's shape: the same settings, without secrets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    mode: Option<String>,
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    cors_origins: Option<String>,
    data_dir: Option<PathBuf>,
    db_max_connections: Option<toml::Value>,
    db_startup_wait: Option<toml::Value>,
    body_limit: Option<toml::Value>,
    request_timeout: Option<toml::Value>,
    shutdown_grace: Option<toml::Value>,
    header_timeout: Option<toml::Value>,
    idle_timeout: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    scheduler_interval: Option<toml::Value>,
    webhook_retry_base: Option<toml::Value>,
    webhook_allow_networks: Option<String>,
    log_format: Option<String>,
    max_key_lifetime: Option<toml::Value>,
    introspection_cache_ttl: Option<toml::Value>,
    introspection_cache_capacity: Option<toml::Value>,
    probe_threshold: Option<toml::Value>,
    probe_window: Option<toml::Value>,
    rate_auth_failures: Option<toml::Value>,
    rate_credential_failures: Option<toml::Value>,
    rate_misses_node: Option<toml::Value>,
    rate_misses_address: Option<toml::Value>,
    rate_operator: Option<toml::Value>,
    rate_node: Option<toml::Value>,
    route_scopes: Option<String>,
    forward_auth_proxy: Option<String>,
    issuer: Option<String>,
}

/// Settings that are secrets and so may never come from the configuration file.
const SECRET_SETTINGS: [(&str, &str); 3] = [
    ("database_url", "DATABASE_URL"),
    ("bootstrap_token", "KEYPLANE_BOOTSTRAP_TOKEN"),
    ("master_key", "KEYPLANE_MASTER_KEY"),
];

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
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The token that authenticates as the built-in `admin` operator, if set.
    pub bootstrap_token: Option<SecretString>,
    /// The longest life any key may have.
    pub max_key_lifetime: Duration,
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
    /// Where `dev` keeps local state (the embedded database, the dev master key).
    pub data_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Dev,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            cors_origins: Vec::new(),
            database: default_database(PathBuf::from("keyplane-data")),
            pool: PoolSettings::default(),
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            connections: keyplane_tls::ConnectionLimits::default(),
            scheduler_interval: Duration::from_secs(5),
            metrics_refresh: Duration::from_secs(15),
            webhook_retry_base: Duration::from_secs(10),
            webhook_allow_networks: Vec::new(),
            log_format: LogFormat::Text,
            bootstrap_token: None,
            max_key_lifetime: Duration::from_secs(90 * 86_400),
            introspection_cache_ttl: Duration::from_secs(30),
            introspection_cache_capacity: 100_000,
            probe_threshold: 100,
            probe_window: Duration::from_secs(60),
            limits: LimitSettings::default(),
            routes: RouteMap::defaults(),
            forward_auth_proxy: ForwardAuthProxy::Nginx,
            issuer: None,
            master_key: None,
            data_dir: PathBuf::from("keyplane-data"),
        }
    }
}

#[cfg(feature = "embedded")]
fn default_database(data_dir: PathBuf) -> DatabaseLocation {
    DatabaseLocation::Embedded(data_dir)
}

#[cfg(not(feature = "embedded"))]
fn default_database(_data_dir: PathBuf) -> DatabaseLocation {
    DatabaseLocation::Url(SecretString::from(""))
}

/// Reads the secret `name` from `$name` or from the file `$name_FILE` names.
pub fn secret_from_env(name: &str) -> Result<Option<SecretString>, ConfigError> {
    keyplane_client::secret_from_env(name)
        .map_err(|err| ConfigError::new(&err.variable, err.reason))
}

impl Settings {
    /// Validates the given arguments, the configuration file they name and the
    /// secrets in the environment into settings.
    pub fn load(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let defaults = Settings::default();

        let mode = pick(&args.mode, &file.mode)
            .map(|v| parse_with("KEYPLANE_MODE", &v, Mode::from_str))
            .transpose()?
            .unwrap_or(defaults.mode);
        let listen = pick(&args.listen, &file.listen)
            .map(|v| {
                parse_with("KEYPLANE_LISTEN", &v, |s| {
                    SocketAddr::from_str(s)
                        .map_err(|_| "expected an address and port, e.g. 127.0.0.1:8080")
                })
            })
            .transpose()?
            .unwrap_or(defaults.listen);
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("keyplane-data"));
        let database = database_location(mode, data_dir.clone())?;
        let tls = tls_settings(
            mode,
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.tls_client_ca.clone().or(file.tls_client_ca),
        )?;
        let cors_origins = cors_origins(args.cors_origins.clone().or(file.cors_origins))?;

        let max_connections = number_setting(
            "KEYPLANE_DB_MAX_CONNECTIONS",
            &args.db_max_connections,
            &file.db_max_connections,
        )?
        .map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ConfigError::new("KEYPLANE_DB_MAX_CONNECTIONS", "expected 1 to 1000")
                })
        })
        .transpose()?
        .unwrap_or(defaults.pool.max_connections);
        let startup_wait = duration_setting(
            "KEYPLANE_DB_STARTUP_WAIT",
            &args.db_startup_wait,
            &file.db_startup_wait,
        )?
        .unwrap_or(defaults.pool.startup_wait);
        let body_limit = pick_value(&args.body_limit, &file.body_limit)
            .map(|v| parse_with("KEYPLANE_BODY_LIMIT", &v, parse_size))
            .transpose()?
            .unwrap_or(defaults.body_limit);
        let request_timeout = duration_setting(
            "KEYPLANE_REQUEST_TIMEOUT",
            &args.request_timeout,
            &file.request_timeout,
        )?
        .unwrap_or(defaults.request_timeout);
        let shutdown_grace = duration_setting(
            "KEYPLANE_SHUTDOWN_GRACE",
            &args.shutdown_grace,
            &file.shutdown_grace,
        )?
        .unwrap_or(defaults.shutdown_grace);
        let header_timeout = duration_setting(
            "KEYPLANE_HEADER_TIMEOUT",
            &args.header_timeout,
            &file.header_timeout,
        )?
        .filter(|t| !t.is_zero())
        .unwrap_or(defaults.connections.header_timeout);
        let idle_timeout = duration_setting(
            "KEYPLANE_IDLE_TIMEOUT",
            &args.idle_timeout,
            &file.idle_timeout,
        )?
        .filter(|t| !t.is_zero())
        .unwrap_or(defaults.connections.idle_timeout);
        let open_connections = number_setting(
            "KEYPLANE_MAX_CONNECTIONS",
            &args.max_connections,
            &file.max_connections,
        )?
        .map(|n| {
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    ConfigError::new("KEYPLANE_MAX_CONNECTIONS", "expected 1 to 1000000")
                })
        })
        .transpose()?
        .unwrap_or(defaults.connections.max_connections);
        let scheduler_interval = duration_setting(
            "KEYPLANE_SCHEDULER_INTERVAL",
            &args.scheduler_interval,
            &file.scheduler_interval,
        )?
        .filter(|t| !t.is_zero())
        .unwrap_or(defaults.scheduler_interval);
        let webhook_retry_base = duration_setting(
            "KEYPLANE_WEBHOOK_RETRY_BASE",
            &args.webhook_retry_base,
            &file.webhook_retry_base,
        )?
        .filter(|t| !t.is_zero())
        .unwrap_or(defaults.webhook_retry_base);
        let webhook_allow_networks =
            pick(&args.webhook_allow_networks, &file.webhook_allow_networks)
                .map(|text| {
                    text.split(',')
                        .map(str::trim)
                        .filter(|net| !net.is_empty())
                        .map(|net| {
                            parse_with("KEYPLANE_WEBHOOK_ALLOW_NETWORKS", net, |n| {
                                n.parse::<ipnet::IpNet>()
                                    .map_err(|_| "expected CIDR networks, e.g. 10.20.0.0/16")
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default();
        let log_format = pick(&args.log_format, &file.log_format)
            .map(|v| {
                parse_with("KEYPLANE_LOG_FORMAT", &v, |s| match s {
                    "text" => Ok(LogFormat::Text),
                    "json" => Ok(LogFormat::Json),
                    _ => Err("expected text or json"),
                })
            })
            .transpose()?
            .unwrap_or(if mode == Mode::Prod {
                LogFormat::Json
            } else {
                LogFormat::Text
            });
        let max_key_lifetime = duration_setting(
            "KEYPLANE_MAX_KEY_LIFETIME",
            &args.max_key_lifetime,
            &file.max_key_lifetime,
        )?
        .unwrap_or(defaults.max_key_lifetime);
        if max_key_lifetime < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "KEYPLANE_MAX_KEY_LIFETIME",
                "expected at least 60s",
            ));
        }

        let introspection_cache_ttl = duration_setting(
            "KEYPLANE_INTROSPECTION_CACHE_TTL",
            &args.introspection_cache_ttl,
            &file.introspection_cache_ttl,
        )?
        .unwrap_or(defaults.introspection_cache_ttl);
        if introspection_cache_ttl > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "KEYPLANE_INTROSPECTION_CACHE_TTL",
                "expected at most 1h",
            ));
        }
        let introspection_cache_capacity = number_setting(
            "KEYPLANE_INTROSPECTION_CACHE_CAPACITY",
            &args.introspection_cache_capacity,
            &file.introspection_cache_capacity,
        )?
        .unwrap_or(defaults.introspection_cache_capacity);
        let probe_threshold = number_setting(
            "KEYPLANE_PROBE_THRESHOLD",
            &args.probe_threshold,
            &file.probe_threshold,
        )?
        .filter(|n| *n > 0)
        .unwrap_or(defaults.probe_threshold);
        let probe_window = duration_setting(
            "KEYPLANE_PROBE_WINDOW",
            &args.probe_window,
            &file.probe_window,
        )?
        .unwrap_or(defaults.probe_window);
        let rate =
            |setting: &str, arg: &Option<String>, file: &Option<toml::Value>, default: u32| {
                number_setting(setting, arg, file)?
                    .map(|n| {
                        u32::try_from(n)
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| ConfigError::new(setting, "expected 1 to 4294967295"))
                    })
                    .transpose()
                    .map(|n| n.unwrap_or(default))
            };
        let limits = LimitSettings {
            auth_failures_per_minute: rate(
                "KEYPLANE_RATE_AUTH_FAILURES",
                &args.rate_auth_failures,
                &file.rate_auth_failures,
                defaults.limits.auth_failures_per_minute,
            )?,
            operator_per_minute: rate(
                "KEYPLANE_RATE_OPERATOR",
                &args.rate_operator,
                &file.rate_operator,
                defaults.limits.operator_per_minute,
            )?,
            node_per_second: rate(
                "KEYPLANE_RATE_NODE",
                &args.rate_node,
                &file.rate_node,
                defaults.limits.node_per_second,
            )?,
            credential_failures_per_minute: rate(
                "KEYPLANE_RATE_CREDENTIAL_FAILURES",
                &args.rate_credential_failures,
                &file.rate_credential_failures,
                defaults.limits.credential_failures_per_minute,
            )?,
            misses_per_node_per_second: rate(
                "KEYPLANE_RATE_MISSES_NODE",
                &args.rate_misses_node,
                &file.rate_misses_node,
                defaults.limits.misses_per_node_per_second,
            )?,
            misses_per_address_per_second: rate(
                "KEYPLANE_RATE_MISSES_ADDRESS",
                &args.rate_misses_address,
                &file.rate_misses_address,
                defaults.limits.misses_per_address_per_second,
            )?,
            ..defaults.limits
        };
        let routes = match pick(&args.route_scopes, &file.route_scopes) {
            Some(rules) => RouteMap::parse(&rules)
                .map_err(|err| ConfigError::new("KEYPLANE_ROUTE_SCOPES", err.to_string()))?
                .then(RouteMap::defaults()),
            None => defaults.routes,
        };
        if mode == Mode::Prod && routes.has_public() {
            return Err(ConfigError::new(
                "KEYPLANE_ROUTE_SCOPES",
                "prod serves no route without a key; public routes need mixed",
            ));
        }
        let forward_auth_proxy = pick(&args.forward_auth_proxy, &file.forward_auth_proxy)
            .map(|v| {
                parse_with(
                    "KEYPLANE_FORWARD_AUTH_PROXY",
                    &v,
                    ForwardAuthProxy::from_str,
                )
            })
            .transpose()?
            .unwrap_or(defaults.forward_auth_proxy);
        let issuer = pick(&args.issuer, &file.issuer);

        let bootstrap_token = secret_from_env("KEYPLANE_BOOTSTRAP_TOKEN")?;
        if bootstrap_token
            .as_ref()
            .is_some_and(|token| token.expose_secret().chars().count() < 32)
        {
            return Err(ConfigError::new(
                "KEYPLANE_BOOTSTRAP_TOKEN",
                "expected at least 32 characters",
            ));
        }

        // Only the gate can run without auth (dev, loopback); keyplane never can.
        if mode != Mode::Dev
            && std::env::var("KEYPLANE_AUTH").is_ok_and(|v| v.eq_ignore_ascii_case("disabled"))
        {
            return Err(ConfigError::new(
                "KEYPLANE_AUTH",
                format!("auth cannot be disabled in {mode} mode"),
            ));
        }

        let master_key = secret_from_env("KEYPLANE_MASTER_KEY")?;
        match &master_key {
            Some(key) => {
                MasterKey::parse(key.expose_secret())
                    .map_err(|err| ConfigError::new("KEYPLANE_MASTER_KEY", err.to_string()))?;
            }
            None if mode != Mode::Dev => {
                return Err(ConfigError::new(
                    "KEYPLANE_MASTER_KEY",
                    format!("required in {mode} mode (32 bytes, e.g. `openssl rand -base64 32`)"),
                ));
            }
            None => {}
        }

        Ok(Settings {
            mode,
            listen,
            tls,
            cors_origins,
            database,
            pool: PoolSettings {
                max_connections,
                startup_wait,
                ..defaults.pool
            },
            body_limit,
            request_timeout,
            shutdown_grace,
            connections: keyplane_tls::ConnectionLimits {
                header_timeout,
                idle_timeout,
                max_connections: open_connections,
            },
            scheduler_interval,
            metrics_refresh: defaults.metrics_refresh,
            webhook_retry_base,
            webhook_allow_networks,
            log_format,
            bootstrap_token,
            max_key_lifetime,
            introspection_cache_ttl,
            introspection_cache_capacity,
            probe_threshold,
            probe_window,
            limits,
            routes,
            forward_auth_proxy,
            issuer,
            master_key,
            data_dir,
        })
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
            ("db_max_connections", self.pool.max_connections.to_string()),
            ("body_limit", self.body_limit.to_string()),
            ("request_timeout", format_duration(self.request_timeout)),
            ("max_key_lifetime", format_duration(self.max_key_lifetime)),
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

/// Names the database for humans, never showing a password.
pub fn describe_location(location: &DatabaseLocation) -> String {
    match location {
        DatabaseLocation::Url(url) => format!("postgres {}", describe_url(url)),
        #[cfg(feature = "embedded")]
        DatabaseLocation::Embedded(dir) => format!("embedded in {}", dir.display()),
    }
}

/// keyplane's certificate and key.
#[derive(Clone)]
pub struct TlsSettings {
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// The CA bundle client certificates are checked against, if any.
    pub client_ca: Option<PathBuf>,
    /// The two, read and checked against each other (and re-read when
    /// renewed on disk or on SIGHUP).
    pub certificates: Arc<keyplane_tls::Certificates>,
}

/// HTTPS is required outside `dev` (`mixed` is `prod` for its keyed routes),
/// and the certificate and key must read and belong together.
fn tls_settings(
    mode: Mode,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsSettings>, ConfigError> {
    if client_ca.is_some() && cert.is_none() {
        return Err(ConfigError::new(
            "KEYPLANE_TLS_CLIENT_CA",
            "client certificates need HTTPS: set KEYPLANE_TLS_CERT and KEYPLANE_TLS_KEY",
        ));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let certificates =
                keyplane_tls::Certificates::load_with_client_ca(&cert, &key, client_ca.as_deref())
                    .map_err(|err| {
                        let text = format!("{err:#}");
                        let setting = ["KEYPLANE_TLS_KEY", "KEYPLANE_TLS_CLIENT_CA"]
                            .into_iter()
                            .find(|setting| text.starts_with(setting))
                            .unwrap_or("KEYPLANE_TLS_CERT");
                        let detail = text
                            .strip_prefix(&format!("{setting}: "))
                            .unwrap_or(&text)
                            .to_owned();
                        ConfigError::new(setting, detail)
                    })?;
            Ok(Some(TlsSettings {
                cert,
                key,
                client_ca,
                certificates,
            }))
        }
        (None, None) if mode == Mode::Dev => Ok(None),
        (None, None) => Err(ConfigError::new(
            "KEYPLANE_TLS_CERT",
            format!("required in {mode} mode with KEYPLANE_TLS_KEY: keyplane serves HTTPS only"),
        )),
        (Some(_), None) => Err(ConfigError::new(
            "KEYPLANE_TLS_KEY",
            "required with KEYPLANE_TLS_CERT",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "KEYPLANE_TLS_CERT",
            "required with KEYPLANE_TLS_KEY",
        )),
    }
}

/// The browser origins allowed by CORS: each `scheme://host[:port]`, with
/// no path, and never `*` (the API takes credentials).
fn cors_origins(setting: Option<String>) -> Result<Vec<HeaderValue>, ConfigError> {
    let Some(setting) = setting else {
        return Ok(Vec::new());
    };
    setting
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            let is_origin = origin.parse::<axum::http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri
                        .authority()
                        .is_some_and(|authority| !authority.as_str().contains('@'))
                    && uri.path_and_query().is_none_or(|path| path.as_str() == "/")
                    && !origin.ends_with('/')
            });
            match HeaderValue::from_str(origin) {
                Ok(value) if is_origin => Ok(value),
                _ => Err(ConfigError::new(
                    "KEYPLANE_CORS_ORIGINS",
                    format!("{origin} is not an origin like https://console.example.com (no wildcard, no path)"),
                )),
            }
        })
        .collect()
}

/// Outside `dev`, the database is reached over TLS that checks its
/// certificate (`sslmode=verify-full` or `verify-ca`), unless through a Unix socket.
fn require_database_tls(mode: Mode, url: &str) -> Result<(), ConfigError> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    // An unparsable URL is refused by the caller, which names it.
    let Ok(options) = PgConnectOptions::from_str(url) else {
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

fn database_location(mode: Mode, data_dir: PathBuf) -> Result<DatabaseLocation, ConfigError> {
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
            require_database_tls(mode, url.expose_secret())?;
            Ok(DatabaseLocation::Url(url))
        }
        None if mode != Mode::Dev => Err(ConfigError::new(
            "DATABASE_URL",
            format!("required in {mode} mode (the embedded database is for dev only)"),
        )),
        None => embedded_or_error(data_dir),
    }
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

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let setting = "KEYPLANE_CONFIG";
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(
            setting,
            format!("expected a readable file ({}: {err})", path.display()),
        )
    })?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|err| ConfigError::new(setting, format!("expected TOML ({})", err.message())))?;
    for (key, variable) in SECRET_SETTINGS {
        if table.contains_key(key) {
            return Err(ConfigError::new(
                setting,
                format!(
                    "`{key}` is a secret: set {variable} or {variable}_FILE in the environment instead"
                ),
            ));
        }
    }
    table.try_into().map_err(|err: toml::de::Error| {
        ConfigError::new(
            setting,
            format!("expected known settings ({})", err.message()),
        )
    })
}

fn pick(arg: &Option<String>, file: &Option<String>) -> Option<String> {
    arg.clone().or_else(|| file.clone())
}

/// Numbers and durations may be written bare or quoted in the file.
fn pick_value(arg: &Option<String>, file: &Option<toml::Value>) -> Option<String> {
    arg.clone().or_else(|| {
        file.as_ref().map(|v| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    })
}

fn parse_with<T, E: fmt::Display>(
    setting: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    parse(value.trim()).map_err(|err| {
        let shown: String = value.chars().take(64).collect();
        ConfigError::new(setting, format!("{err}, got {shown:?}"))
    })
}

fn number_setting(
    setting: &str,
    arg: &Option<String>,
    file: &Option<toml::Value>,
) -> Result<Option<u64>, ConfigError> {
    pick_value(arg, file)
        .map(|v| {
            parse_with(setting, &v, |s| {
                s.parse::<u64>().map_err(|_| "expected a whole number")
            })
        })
        .transpose()
}

fn duration_setting(
    setting: &str,
    arg: &Option<String>,
    file: &Option<toml::Value>,
) -> Result<Option<Duration>, ConfigError> {
    pick_value(arg, file)
        .map(|v| parse_with(setting, &v, parse_duration))
        .transpose()
}

/// Reads `65536`, `64KiB` or `1MiB`, between 1 KiB and 64 MiB.
fn parse_size(text: &str) -> Result<usize, &'static str> {
    const EXPECTED: &str = "expected bytes between 1KiB and 64MiB, e.g. 65536 or 64KiB";
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: usize = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        _ => return Err(EXPECTED),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
        .ok_or(EXPECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_bytes_and_binary_units_within_bounds() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2MiB"), Ok(2 * 1024 * 1024));
        for bad in [
            "",
            "12",
            "1GiB",
            "64 KiB",
            "-1",
            "KiB",
            "999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

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
    fn cors_origins_are_exact_origins_never_wildcards_or_paths() {
        let parsed = cors_origins(Some(
            "https://console.example.com, http://localhost:3000".to_owned(),
        ));
        assert_eq!(
            parsed.ok().map(|origins| origins.len()),
            Some(2),
            "two origins"
        );
        for bad in [
            "*",
            "https://console.example.com/",
            "https://console.example.com/admin",
            "console.example.com",
            "ftp://console.example.com",
            "https://user@console.example.com",
        ] {
            let err = cors_origins(Some(bad.to_owned())).err().map(|e| e.setting);
            assert_eq!(err.as_deref(), Some("KEYPLANE_CORS_ORIGINS"), "{bad}");
        }
        assert_eq!(cors_origins(None).ok().map(|o| o.len()), Some(0));
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
}
