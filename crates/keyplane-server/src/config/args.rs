//! The settings as given on the command line or in the environment, before
//! validation, by concern. Secrets are not here: they are read from the
//! environment only (see `sources::secret_from_env`).

use std::path::PathBuf;

use clap::Args;

/// Every non-secret setting, as a flag or its environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// A TOML file with non-secret settings.
    #[arg(long, env = "KEYPLANE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// dev, mixed or prod.
    #[arg(long, env = "KEYPLANE_MODE", global = true)]
    pub mode: Option<String>,

    // The server: where it listens, and how long and how much it serves.
    /// The address the server listens on.
    #[arg(long, env = "KEYPLANE_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Origins browsers may call the API from (comma-separated, e.g.
    /// `https://console.example.com`); CORS is off without it.
    #[arg(long, env = "KEYPLANE_CORS_ORIGINS", global = true)]
    pub cors_origins: Option<String>,
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
    /// text or json (the default in prod).
    #[arg(long, env = "KEYPLANE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    // TLS.
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

    // The database.
    /// Where the embedded database keeps its files (dev without DATABASE_URL).
    #[arg(long, env = "KEYPLANE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The most database connections the pool opens.
    #[arg(long, env = "KEYPLANE_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<String>,
    /// How long start-up waits for an unreachable database (e.g. 30s).
    #[arg(long, env = "KEYPLANE_DB_STARTUP_WAIT", global = true)]
    pub db_startup_wait: Option<String>,

    // Key policy and what nodes are told.
    /// The longest life any key may have (seconds or e.g. 90d).
    #[arg(long, env = "KEYPLANE_MAX_KEY_LIFETIME", global = true)]
    pub max_key_lifetime: Option<String>,
    /// Whether keys imported from before keyplane (`keyplanectl import
    /// cortex`) are looked up at introspection: true or false (default).
    #[arg(long, env = "KEYPLANE_ACCEPT_LEGACY_KEYS", global = true)]
    pub accept_legacy_keys: Option<String>,
    /// The longest life of an imported legacy key (default 30d, never more
    /// than KEYPLANE_MAX_KEY_LIFETIME).
    #[arg(long, env = "KEYPLANE_LEGACY_KEY_LIFETIME", global = true)]
    pub legacy_key_lifetime: Option<String>,
    /// How long hourly usage rollups are kept (default 31d).
    #[arg(long, env = "KEYPLANE_USAGE_HOURLY_RETENTION", global = true)]
    pub usage_hourly_retention: Option<String>,
    /// How long daily usage rollups are kept (default 400d).
    #[arg(long, env = "KEYPLANE_USAGE_DAILY_RETENTION", global = true)]
    pub usage_daily_retention: Option<String>,
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

    // Rate limits.
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
    /// Leak reports (`POST /v1/leaks`) per client address per minute.
    #[arg(long, env = "KEYPLANE_RATE_LEAK_REPORTS", global = true)]
    pub rate_leak_reports: Option<String>,

    // Webhooks.
    /// The first retry delay of a failed webhook delivery; each retry waits
    /// twice as long as the one before (at most an hour).
    #[arg(long, env = "KEYPLANE_WEBHOOK_RETRY_BASE", global = true)]
    pub webhook_retry_base: Option<String>,
    /// Internal networks webhook deliveries may reach (comma-separated CIDRs,
    /// e.g. 10.20.0.0/16): private, link-local and loopback addresses are
    /// refused otherwise (loopback is allowed in dev).
    #[arg(long, env = "KEYPLANE_WEBHOOK_ALLOW_NETWORKS", global = true)]
    pub webhook_allow_networks: Option<String>,

    // Leak reports.
    /// The public keys that sign leak reports, in the format of
    /// https://api.github.com/meta/public_keys/secret_scanning: a report
    /// carrying a signature must verify against one of them.
    #[arg(long, env = "KEYPLANE_LEAK_REPORT_KEYS", global = true)]
    pub leak_report_keys: Option<PathBuf>,

    // People: signing in with the identity provider.
    #[arg(long, env = "KEYPLANE_ADMIN_KEYS", global = true)]
    /// Whether admin keys and the bootstrap token are accepted: `enabled` or `disabled`.
    pub admin_keys: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_ISSUER", global = true)]
    /// The OpenID provider people sign in with (its issuer URL).
    pub oidc_issuer: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_CLIENT_ID", global = true)]
    /// keyplane's client id at the provider.
    pub oidc_client_id: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_REDIRECT_URL", global = true)]
    /// keyplane's `/v1/auth/oidc/callback`, as browsers reach it.
    pub oidc_redirect_url: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_SCOPES", global = true)]
    /// What keyplane asks the provider for (default `openid email profile groups`).
    pub oidc_scopes: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_REQUIRE_AMR", global = true)]
    /// `amr` values, any of which proves MFA (default `mfa`; `none` for no check).
    pub oidc_require_amr: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_REQUIRE_ACR", global = true)]
    /// `acr` values, any of which a sign-in must carry.
    pub oidc_require_acr: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_ROLE_CLAIM", global = true)]
    /// The ID token claim the role map reads (default `groups`).
    pub oidc_role_claim: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_ROLE_MAP", global = true)]
    /// `value=role` pairs, e.g. `keyplane-admins=admin,keyplane-ops=operator`.
    pub oidc_role_map: Option<String>,
    #[arg(long, env = "KEYPLANE_OIDC_STEP_UP", global = true)]
    /// How recent an MFA sign-in dangerous operations need (default `10m`).
    pub oidc_step_up: Option<String>,
    #[arg(long, env = "KEYPLANE_SESSION_TTL", global = true)]
    /// A browser session's life (default `8h`).
    pub session_ttl: Option<String>,
    #[arg(long, env = "KEYPLANE_SESSION_IDLE", global = true)]
    /// How long a browser session may sit unused (default `30m`).
    pub session_idle: Option<String>,
    #[arg(long, env = "KEYPLANE_DEVICE_TOKEN_TTL", global = true)]
    /// A terminal's token life (default `1h`).
    pub device_token_ttl: Option<String>,
}
