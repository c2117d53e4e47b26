//! How an [`Introspector`](crate::Introspector) reaches keyplane and how long
//! it trusts what it heard.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyplane_domain::Mode;
use secrecy::SecretString;

/// Where keyplane is, who this node is, and the cache's bounds.
#[derive(Debug, Clone)]
pub struct Config {
    /// keyplane's base URL, e.g. `https://keyplane.internal:8443`, or the
    /// URLs of several replicas separated by commas (a replica that fails
    /// is skipped, with backoff).
    pub url: String,
    /// This node's `kpn_` key.
    pub node_key: SecretString,
    /// The mode this node runs in; it decides what happens while keyplane is away.
    pub mode: Mode,
    /// The longest a positive answer is trusted, whatever keyplane's `cache_ttl` says.
    pub cache_ttl_cap: Duration,
    /// How long a refusal is remembered.
    pub negative_ttl: Duration,
    /// While the revocation stream is down (so a revocation may be missed),
    /// positive answers are trusted for at most this long.
    pub stream_down_ttl: Duration,
    /// In `mixed`, how long past its TTL a positive answer may still be served
    /// while keyplane cannot be reached. Ignored in `dev` and `prod`.
    pub stale_window: Duration,
    /// How many answers the cache holds.
    pub capacity: u64,
    /// How long one call to keyplane may take.
    pub timeout: Duration,
    /// A PEM bundle of CAs to trust for keyplane's certificate, in addition
    /// to the system's. There is no option to skip verification.
    pub ca_bundle: Option<PathBuf>,
    /// A client certificate and its key (PEM files) presented to keyplane,
    /// for a keyplane that checks them (`KEYPLANE_TLS_CLIENT_CA`); it must
    /// name this node, and is sent as well as the node key.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Whether keys imported from before keyplane (no prefix, no checksum)
    /// are sent for introspection (`KEYPLANE_ACCEPT_LEGACY_KEYS`). Off, only
    /// `kpi_` keys ever leave the process.
    pub accept_legacy_keys: bool,
    /// Adds headers to each call to keyplane, e.g. the caller's trace
    /// context (`traceparent`), so a request and its introspection share a trace.
    pub outgoing_headers: Option<HeaderHook>,
}

/// A function that adds headers to outgoing calls.
#[derive(Clone)]
pub struct HeaderHook(pub Arc<dyn Fn(&mut reqwest::header::HeaderMap) + Send + Sync>);

impl std::fmt::Debug for HeaderHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderHook")
    }
}

impl Config {
    /// The defaults: answers trusted for at most 30 s (2 s while the stream is
    /// down), refusals for 5 s, a 5-minute stale window in `mixed`, 100,000 entries.
    pub fn new(url: impl Into<String>, node_key: SecretString, mode: Mode) -> Config {
        Config {
            url: url.into(),
            node_key,
            mode,
            cache_ttl_cap: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            stream_down_ttl: Duration::from_secs(2),
            stale_window: Duration::from_secs(300),
            capacity: 100_000,
            timeout: Duration::from_secs(2),
            ca_bundle: None,
            client_identity: None,
            accept_legacy_keys: false,
            outgoing_headers: None,
        }
    }

    /// The stale window that applies in this mode.
    pub(crate) fn effective_stale_window(&self) -> Duration {
        match self.mode {
            Mode::Mixed => self.stale_window,
            Mode::Dev | Mode::Prod => Duration::ZERO,
        }
    }
}

/// Outside `dev`, keyplane is reached over HTTPS (keys travel in those
/// calls), unless it is on this very host.
pub fn require_https(mode: Mode, url: &str) -> Result<(), ConfigError> {
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    if mode == Mode::Dev || !url.starts_with("http://") || loopback {
        return Ok(());
    }
    Err(ConfigError::Plaintext(mode))
}

/// A configuration the client cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not an http(s) URL.
    #[error("KEYPLANE_URL must be an http:// or https:// URL, got {0:?}")]
    Url(String),
    /// Plain HTTP to another host outside `dev`.
    #[error("{0} mode talks to keyplane over HTTPS only (https://…)")]
    Plaintext(Mode),
    /// The node key is not a well-formed `kpn_` key.
    #[error("KEYPLANE_NODE_KEY is not a node key (kpn_…)")]
    NodeKey,
    /// The CA bundle cannot be read or holds no certificate.
    #[error("cannot use the CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client certificate or its key cannot be read or used.
    #[error("cannot use the client certificate {path}: {reason}")]
    ClientIdentity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_dev_or_this_host_only() {
        for (mode, url, ok) in [
            (Mode::Dev, "http://keyplane.internal:8080", true),
            (Mode::Prod, "https://keyplane.internal:8080", true),
            (Mode::Prod, "http://127.0.0.1:8080", true),
            (Mode::Mixed, "http://localhost/", true),
            (Mode::Prod, "http://[::1]:8080", true),
            (Mode::Prod, "http://keyplane.internal:8080", false),
            (Mode::Mixed, "http://127.0.0.1.evil.example/", false),
            (Mode::Prod, "http://user@10.0.0.5/", false),
        ] {
            assert_eq!(require_https(mode, url).is_ok(), ok, "{mode} {url}");
        }
    }
}
