//! The gate's settings: flags, then the environment; secrets only from the
//! environment (or `*_FILE`). Anything insecure for the mode is refused here,
//! before a socket is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use keyplane_client::secret_from_env;
use keyplane_domain::{Mode, RouteMap, parse_duration};
use secrecy::SecretString;

/// Whether keys are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthSwitch {
    /// Every keyed route needs a good key (the default).
    Enabled,
    /// No key is checked: `dev` on loopback only.
    Disabled,
}

/// keyplane-gate: puts keyplane in front of an OpenAI-compatible server.
#[derive(Debug, Parser)]
#[command(name = "keyplane-gate", version, about)]
pub struct Args {
    /// Where the gate listens.
    #[arg(long, env = "KEYPLANE_GATE_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// keyplane's base URL, or several replicas' separated by commas (a replica
    /// that fails is skipped, with backoff).
    #[arg(long, env = "KEYPLANE_URL")]
    pub url: Option<String>,
    /// The server the gate protects, e.g. http://127.0.0.1:39281 for Cortex.
    #[arg(long, env = "KEYPLANE_GATE_UPSTREAM")]
    pub upstream: String,
    /// dev, mixed or prod.
    #[arg(long, env = "KEYPLANE_MODE", default_value = "dev")]
    pub mode: String,
    /// `disabled` turns key checks off (dev, loopback only).
    #[arg(long, env = "KEYPLANE_AUTH", value_enum, default_value = "enabled")]
    pub auth: AuthSwitch,
    /// Route rules checked before the defaults, e.g. "GET /v1/models=public".
    #[arg(long, env = "KEYPLANE_ROUTE_SCOPES")]
    pub route_scopes: Option<String>,
    /// Whether keys imported from before keyplane (`keyplanectl import
    /// cortex`: no prefix, no checksum) are checked with keyplane: true or
    /// false (default, every key that is not a kpi_ key refused here).
    #[arg(long, env = "KEYPLANE_ACCEPT_LEGACY_KEYS", default_value_t = false, action = clap::ArgAction::Set)]
    pub accept_legacy_keys: bool,
    /// The longest a positive answer is cached, e.g. 30s.
    #[arg(long, env = "KEYPLANE_GATE_CACHE_TTL", default_value = "30s")]
    pub cache_ttl: String,
    /// In mixed mode, how long cached answers may be served while keyplane is unreachable.
    #[arg(long, env = "KEYPLANE_GATE_STALE_WINDOW", default_value = "5m")]
    pub stale_window: String,
    /// The largest request body passed upstream, in bytes.
    #[arg(long, env = "KEYPLANE_GATE_MAX_BODY", default_value_t = 16 * 1024 * 1024)]
    pub max_body: u64,
    /// How often the gate reports usage (requests and tokens by key, model
    /// and minute) to keyplane.
    #[arg(long, env = "KEYPLANE_GATE_USAGE_REPORT_EVERY", default_value = "10s")]
    pub usage_report_every: String,
    /// How often the gate reports itself to keyplane.
    #[arg(long, env = "KEYPLANE_GATE_HEARTBEAT", default_value = "30s")]
    pub heartbeat: String,
    /// How long a client has to send its request headers; also how long a
    /// new connection has to ask for anything at all.
    #[arg(long, env = "KEYPLANE_GATE_HEADER_TIMEOUT", default_value = "10s")]
    pub header_timeout: String,
    /// How long a connection with no request in flight stays open.
    #[arg(long, env = "KEYPLANE_GATE_IDLE_TIMEOUT", default_value = "2m")]
    pub idle_timeout: String,
    /// The most client connections open at once; past it, new ones wait.
    #[arg(long, env = "KEYPLANE_GATE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// The longest the upstream may take to start answering a request.
    #[arg(long, env = "KEYPLANE_GATE_REQUEST_TIMEOUT", default_value = "10m")]
    pub request_timeout: String,
    /// The most requests passed upstream at once (a streamed answer counts
    /// until it ends); past it, 503 with Retry-After.
    #[arg(long, env = "KEYPLANE_GATE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// PEM certificate chain for HTTPS.
    #[arg(long, env = "KEYPLANE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "KEYPLANE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CAs to trust for keyplane's certificate, besides the system's.
    #[arg(long, env = "KEYPLANE_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// PEM client certificate naming this node, for a keyplane that checks
    /// client certificates (sent as well as the node key).
    #[arg(long, env = "KEYPLANE_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of KEYPLANE_CLIENT_CERT.
    #[arg(long, env = "KEYPLANE_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
}

/// What the gate needs to reach keyplane.
#[derive(Debug)]
pub struct Keyplane {
    /// Its base URL.
    pub url: String,
    /// This gate's node key.
    pub node_key: SecretString,
    /// The file it came from (`KEYPLANE_NODE_KEY_FILE`), which the gate
    /// then keeps: it rotates the key itself and picks up a key put there.
    pub node_key_file: Option<PathBuf>,
}

/// Validated settings.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The mode.
    pub mode: Mode,
    /// keyplane, unless auth is disabled.
    pub keyplane: Option<Keyplane>,
    /// The upstream's base URL, without a trailing slash.
    pub upstream: String,
    /// The upstream's own key.
    pub upstream_key: Option<SecretString>,
    /// Route rules (configured ones first, then the defaults).
    pub routes: RouteMap,
    /// The configured rules that make a route public, as reported to keyplane.
    pub public_routes: Vec<String>,
    /// Whether legacy keys are sent for introspection.
    pub accept_legacy_keys: bool,
    /// The positive cache cap.
    pub cache_ttl: Duration,
    /// The stale window (mixed).
    pub stale_window: Duration,
    /// The body cap.
    pub max_body: u64,
    /// The heartbeat period.
    pub heartbeat: Duration,
    /// How often usage is reported.
    pub usage_report_every: Duration,
    /// Deadlines and the bound on client connections.
    pub connections: keyplane_tls::ConnectionLimits,
    /// The longest the upstream may take to start answering.
    pub request_timeout: Duration,
    /// The most requests passed upstream at once.
    pub max_in_flight: usize,
    /// Certificate and key, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Extra CAs for keyplane's certificate.
    pub ca_bundle: Option<PathBuf>,
    /// The client certificate and key presented to keyplane.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// A setting the gate refuses to start with: names it and what is expected.
pub fn refuse(setting: &str, expected: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{setting}: {expected}")
}

fn duration(setting: &str, text: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|err| refuse(setting, err))
}

fn positive(setting: &str, duration: Duration) -> anyhow::Result<Duration> {
    match duration.is_zero() {
        true => Err(refuse(setting, "expected more than 0s")),
        false => Ok(duration),
    }
}

/// keyplane's URL, or its replicas' separated by commas; outside `dev`,
/// each is reached over HTTPS (keys travel in those calls), unless it is on
/// this very host.
fn keyplane_url(mode: Mode, text: &str) -> anyhow::Result<String> {
    let endpoints = keyplane_client::Endpoints::parse(text, mode).map_err(|err| match err {
        keyplane_client::ConfigError::Url(_) => refuse(
            "KEYPLANE_URL",
            "expected an http:// or https:// URL, or up to 16 separated by commas",
        ),
        other => refuse("KEYPLANE_URL", other),
    })?;
    Ok(endpoints.all().join(","))
}

fn http_url(setting: &str, text: &str) -> anyhow::Result<String> {
    let url = text.trim().trim_end_matches('/');
    let ok =
        (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len();
    if !ok {
        return Err(refuse(setting, "expected an http:// or https:// URL"));
    }
    Ok(url.to_owned())
}

impl Settings {
    /// Validates `args` and the secrets in the environment.
    pub fn from_args(args: Args) -> anyhow::Result<Settings> {
        let mode: Mode = args
            .mode
            .parse()
            .map_err(|err| refuse("KEYPLANE_MODE", err))?;
        let configured = args.route_scopes.unwrap_or_default();
        let routes = RouteMap::parse(&configured)
            .map_err(|err| refuse("KEYPLANE_ROUTE_SCOPES", err))?
            .then(RouteMap::defaults());
        let public_routes: Vec<String> = configured
            .split([',', '\n'])
            .map(str::trim)
            .filter(|rule| rule.ends_with("=public"))
            .map(str::to_owned)
            .collect();
        if mode == Mode::Prod && !public_routes.is_empty() {
            return Err(refuse(
                "KEYPLANE_ROUTE_SCOPES",
                "prod serves no route without a key; public routes need mixed",
            ));
        }
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(refuse(
                    "KEYPLANE_TLS_CERT",
                    "set both KEYPLANE_TLS_CERT and KEYPLANE_TLS_KEY, or neither",
                ));
            }
        };
        let client_identity = match (args.client_cert, args.client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(refuse(
                    "KEYPLANE_CLIENT_CERT",
                    "set both KEYPLANE_CLIENT_CERT and KEYPLANE_CLIENT_KEY, or neither",
                ));
            }
        };
        // mixed serves its keyed routes as prod does: keys never cross in
        // clear. (Auth disabled outside dev is refused below, by name.)
        if mode != Mode::Dev && tls.is_none() && args.auth == AuthSwitch::Enabled {
            return Err(refuse(
                "KEYPLANE_TLS_CERT",
                format!("{mode} serves HTTPS only: set KEYPLANE_TLS_CERT and KEYPLANE_TLS_KEY"),
            ));
        }
        let env = |err: keyplane_client::EnvError| refuse(&err.variable, err.reason);
        let keyplane = match args.auth {
            AuthSwitch::Disabled => {
                if mode != Mode::Dev {
                    return Err(refuse("KEYPLANE_AUTH", "disabled is allowed in dev only"));
                }
                if !args.listen.ip().is_loopback() {
                    return Err(refuse(
                        "KEYPLANE_AUTH",
                        "disabled is allowed only while listening on loopback",
                    ));
                }
                None
            }
            AuthSwitch::Enabled => {
                let url = args
                    .url
                    .ok_or_else(|| refuse("KEYPLANE_URL", "required: keyplane's base URL"))?;
                let node_key = secret_from_env("KEYPLANE_NODE_KEY")
                    .map_err(env)?
                    .ok_or_else(|| refuse("KEYPLANE_NODE_KEY", "required: this gate's kpn_ key"))?;
                Some(Keyplane {
                    url: keyplane_url(mode, &url)?,
                    node_key,
                    node_key_file: std::env::var_os("KEYPLANE_NODE_KEY_FILE")
                        .filter(|path| !path.is_empty())
                        .map(PathBuf::from),
                })
            }
        };
        Ok(Settings {
            listen: args.listen,
            mode,
            keyplane,
            upstream: http_url("KEYPLANE_GATE_UPSTREAM", &args.upstream)?,
            upstream_key: secret_from_env("KEYPLANE_GATE_UPSTREAM_KEY").map_err(env)?,
            routes,
            public_routes,
            accept_legacy_keys: args.accept_legacy_keys,
            cache_ttl: duration("KEYPLANE_GATE_CACHE_TTL", &args.cache_ttl)?,
            stale_window: duration("KEYPLANE_GATE_STALE_WINDOW", &args.stale_window)?,
            max_body: args.max_body,
            heartbeat: duration("KEYPLANE_GATE_HEARTBEAT", &args.heartbeat)?
                .max(Duration::from_secs(1)),
            usage_report_every: duration(
                "KEYPLANE_GATE_USAGE_REPORT_EVERY",
                &args.usage_report_every,
            )?
            .max(Duration::from_millis(200)),
            connections: keyplane_tls::ConnectionLimits {
                header_timeout: positive(
                    "KEYPLANE_GATE_HEADER_TIMEOUT",
                    duration("KEYPLANE_GATE_HEADER_TIMEOUT", &args.header_timeout)?,
                )?,
                idle_timeout: positive(
                    "KEYPLANE_GATE_IDLE_TIMEOUT",
                    duration("KEYPLANE_GATE_IDLE_TIMEOUT", &args.idle_timeout)?,
                )?,
                max_connections: match args.max_connections {
                    0 => {
                        return Err(refuse(
                            "KEYPLANE_GATE_MAX_CONNECTIONS",
                            "expected at least 1",
                        ));
                    }
                    n => n,
                },
            },
            request_timeout: positive(
                "KEYPLANE_GATE_REQUEST_TIMEOUT",
                duration("KEYPLANE_GATE_REQUEST_TIMEOUT", &args.request_timeout)?,
            )?,
            max_in_flight: match args.max_in_flight {
                0 => return Err(refuse("KEYPLANE_GATE_MAX_IN_FLIGHT", "expected at least 1")),
                n => n,
            },
            tls,
            ca_bundle: args.ca_bundle,
            client_identity,
        })
    }
}
