//! The introspector: offline checks, a bounded cache of keyplane's answers,
//! one request per key in flight, and what to do while keyplane is away.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyplane_domain::{InstanceKey, KeyKind, KeySecret, Limits, Models};
use moka::Expiry;
use moka::future::Cache;
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{Config, ConfigError};
use crate::endpoints::Endpoints;
use crate::net::without_url;
use crate::node_key::NodeKey;
use crate::stream::{self, Follower, StreamState};

/// Who a good key belongs to, as keyplane vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's id (never the key).
    pub key_id: Uuid,
    /// The instance it belongs to.
    pub instance_id: Uuid,
    /// That instance's name.
    pub instance_name: String,
    /// Its effective scopes.
    pub scopes: BTreeSet<String>,
    /// When it stops working (Unix seconds).
    pub expires_at: u64,
    /// Its rate limits and token budgets, for the node to enforce.
    pub limits: Limits,
    /// The models it may use; None: every model.
    pub models: Option<Models>,
}

impl Identity {
    /// Whether the key holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// Whether the key may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.allows(model))
    }

    fn expired(&self) -> bool {
        unix_now() >= self.expires_at
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Missing, malformed, unknown, revoked, expired or otherwise not good here.
    #[error("the API key is not valid")]
    InvalidKey,
    /// A good key without the scope the route needs.
    #[error("the API key lacks the scope {0}")]
    MissingScope(String),
    /// No route rule allows the request.
    #[error("no route rule allows this request")]
    RouteDenied,
    /// The path hides its shape (an encoded slash, a dot segment): what it
    /// names depends on who decodes it, so it is refused, not guessed at.
    #[error("{0}")]
    BadPath(keyplane_domain::PathError),
    /// keyplane cannot be reached and no answer may be trusted: fail closed.
    #[error("the key cannot be checked now: keyplane is unreachable")]
    Unavailable,
}

/// Counters, for a node's own metrics page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Answers served from the cache.
    pub hits: u64,
    /// Lookups that asked keyplane (or waited on a request already asking).
    pub misses: u64,
    /// Keys refused without a network call (bad prefix or checksum).
    pub offline_rejects: u64,
    /// Positive answers served past their TTL while keyplane was unreachable (`mixed`).
    pub stale_serves: u64,
    /// Requests refused because keyplane was unreachable.
    pub unavailable: u64,
    /// Keys evicted by the revocation stream.
    pub evictions: u64,
    /// Times the revocation stream was (re)connected.
    pub stream_connects: u64,
    /// The revocation stream's state now.
    pub stream: StreamState,
}

impl Metrics {
    /// The counters in Prometheus' text format, named `{prefix}_…`.
    pub fn prometheus(&self, prefix: &str) -> String {
        let counters = [
            (
                "cache_hits_total",
                "Answers served from the cache.",
                self.hits,
            ),
            (
                "cache_misses_total",
                "Lookups that asked keyplane.",
                self.misses,
            ),
            (
                "offline_rejects_total",
                "Keys refused without a network call.",
                self.offline_rejects,
            ),
            (
                "stale_serves_total",
                "Positive answers served past their TTL while keyplane was unreachable.",
                self.stale_serves,
            ),
            (
                "unavailable_total",
                "Requests refused because keyplane was unreachable.",
                self.unavailable,
            ),
            (
                "revocation_evictions_total",
                "Keys evicted by the revocation stream.",
                self.evictions,
            ),
            (
                "revocation_stream_connects_total",
                "Connections of the revocation stream.",
                self.stream_connects,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} counter\n{prefix}_{name} {value}\n"
            ));
        }
        let up = u8::from(self.stream == StreamState::Up);
        out.push_str(&format!(
            "# HELP {prefix}_revocation_stream_up Whether the revocation stream is connected.\n\
             # TYPE {prefix}_revocation_stream_up gauge\n{prefix}_revocation_stream_up {up}\n"
        ));
        out
    }
}

/// The digest of a key and the client address it was judged for (keyplane's
/// answer depends on both when the instance has network limits).
type CacheKey = ([u8; 32], Option<IpAddr>);

#[derive(Debug, Clone)]
enum Answer {
    Active {
        identity: Arc<Identity>,
        fetched: Instant,
        ttl: Duration,
    },
    Inactive,
}

/// A positive answer kept for `mixed`'s stale window.
#[derive(Debug, Clone)]
struct Stale {
    identity: Arc<Identity>,
    trusted_until: Instant,
}

struct Lifetimes {
    negative_ttl: Duration,
}

impl Expiry<CacheKey, Answer> for Lifetimes {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Answer,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Answer::Active { ttl, .. } => *ttl,
            Answer::Inactive => self.negative_ttl,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    offline_rejects: AtomicU64,
    stale_serves: AtomicU64,
    unavailable: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) stream_connects: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// The key presented to keyplane (starting as `config.node_key`).
    node_key: NodeKey,
    pub(crate) http: reqwest::Client,
    pub(crate) endpoints: Endpoints,
    fresh: Cache<CacheKey, Answer>,
    stale: Cache<CacheKey, Stale>,
    stream_state: AtomicU8,
    pub(crate) counters: Counters,
    /// Bumped by every eviction: an answer whose request began before an
    /// eviction may predate the revocation behind it, so it is not kept.
    evictions_seen: AtomicU64,
}

impl Follower for Inner {
    fn set_stream_state(&self, state: StreamState) {
        self.stream_state.store(state as u8, Ordering::Relaxed);
    }

    fn stream_state(&self) -> StreamState {
        StreamState::from_u8(self.stream_state.load(Ordering::Relaxed))
    }

    /// Drops every answer about `key_id`, fresh or stale.
    fn evict(&self, key_id: Uuid) {
        self.evictions_seen.fetch_add(1, Ordering::SeqCst);
        let about = move |answer_key: Option<Uuid>| answer_key == Some(key_id);
        let fresh = self.fresh.invalidate_entries_if(move |_, answer| {
            about(match answer {
                Answer::Active { identity, .. } => Some(identity.key_id),
                Answer::Inactive => None,
            })
        });
        let stale = self
            .stale
            .invalidate_entries_if(move |_, stale| stale.identity.key_id == key_id);
        if fresh.is_err() || stale.is_err() {
            // Cannot happen (both caches support closures); fail closed anyway.
            self.forget_all();
        }
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops every answer: used when revocations may have been missed.
    fn forget_all(&self) {
        self.evictions_seen.fetch_add(1, Ordering::SeqCst);
        self.fresh.invalidate_all();
        self.stale.invalidate_all();
    }

    fn connected(&self) {
        self.counters
            .stream_connects
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// Whether an answer fetched at `fetched` may still be trusted: while the
    /// revocation stream is down, only for the short floor.
    fn trusted(&self, fetched: Instant, now: Instant) -> bool {
        self.stream_state() == StreamState::Up
            || now.duration_since(fetched) < self.config.stream_down_ttl
    }
}

/// Validates keys against keyplane; cheap to clone (clones share the cache
/// and the revocation stream, which ends when the last clone is dropped).
#[derive(Clone)]
pub struct Introspector {
    inner: Arc<Inner>,
    _stream: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("urls", &self.inner.endpoints.all())
            .field("mode", &self.inner.config.mode)
            .field("entries", &self.inner.fresh.entry_count())
            .finish()
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What keyplane answers `POST /v1/introspect`; only what a node needs.
#[derive(Debug, Deserialize)]
struct IntrospectAnswer {
    active: bool,
    key_id: Option<Uuid>,
    client_id: Option<Uuid>,
    instance_name: Option<String>,
    scope: Option<String>,
    exp: Option<u64>,
    cache_ttl: Option<u64>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    models: Option<Vec<String>>,
}

/// keyplane did not give an answer.
#[derive(Debug, Clone)]
struct Unreachable;

impl Introspector {
    /// Checks `config`, builds the HTTP client and starts following the
    /// revocation stream (on the current tokio runtime).
    pub fn start(config: Config) -> Result<Introspector, ConfigError> {
        if KeySecret::parse_as(KeyKind::Node, config.node_key.expose_secret()).is_err() {
            return Err(ConfigError::NodeKey);
        }
        let endpoints = Endpoints::parse(&config.url, config.mode)?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .user_agent(concat!("keyplane-client/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_bundle {
            let bad = |reason: String| ConfigError::CaBundle {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
            if certificates.is_empty() {
                return Err(bad("no certificate in it".to_owned()));
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        if let Some((cert, key)) = &config.client_identity {
            let bad = |path: &std::path::Path, reason: String| ConfigError::ClientIdentity {
                path: path.to_path_buf(),
                reason,
            };
            let mut pem = std::fs::read(cert).map_err(|e| bad(cert, e.to_string()))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| bad(key, e.to_string()))?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| bad(cert, e.to_string()))?;
            http = http.identity(identity);
        }
        let http = http.build().map_err(|e| ConfigError::Http(e.to_string()))?;
        let fresh = Cache::builder()
            .max_capacity(config.capacity)
            .expire_after(Lifetimes {
                negative_ttl: config.negative_ttl,
            })
            .support_invalidation_closures()
            .build();
        let stale = Cache::builder()
            .max_capacity(config.capacity)
            .time_to_live(config.cache_ttl_cap + config.effective_stale_window())
            .support_invalidation_closures()
            .build();
        let inner = Arc::new(Inner {
            node_key: NodeKey::new(config.node_key.clone()),
            endpoints,
            config,
            http,
            fresh,
            stale,
            stream_state: AtomicU8::new(StreamState::Connecting as u8),
            evictions_seen: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let source = stream::Source {
            http: inner.http.clone(),
            endpoints: inner.endpoints.clone(),
            node_key: inner.node_key.clone(),
        };
        let follower = tokio::spawn(stream::follow(source, inner.clone()));
        Ok(Introspector {
            inner,
            _stream: Arc::new(AbortOnDrop(follower)),
        })
    }

    /// The mode this node runs in.
    pub fn mode(&self) -> keyplane_domain::Mode {
        self.inner.config.mode
    }

    /// Judges `token` for a request that needs `scope` (None: any good key),
    /// from `client_ip` when the node knows it.
    pub async fn check(
        &self,
        token: &str,
        scope: Option<&str>,
        client_ip: Option<IpAddr>,
    ) -> Result<Arc<Identity>, Refusal> {
        let counters = &self.inner.counters;
        // Garbage, typos and other kinds of keys never leave the process;
        // nor, unless accepted, do keys of a legacy key's shape.
        let accept_legacy = self.inner.config.accept_legacy_keys;
        let Ok(key) = InstanceKey::parse(token.trim(), accept_legacy) else {
            counters.offline_rejects.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::InvalidKey);
        };
        let cache_key = (*key.digest().as_bytes(), client_ip);
        let identity = self.lookup(cache_key, key).await.inspect_err(|refusal| {
            if *refusal == Refusal::Unavailable {
                counters.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        match scope {
            Some(scope) if !identity.has_scope(scope) => {
                Err(Refusal::MissingScope(scope.to_owned()))
            }
            _ => Ok(identity),
        }
    }

    async fn lookup(
        &self,
        cache_key: CacheKey,
        key: InstanceKey,
    ) -> Result<Arc<Identity>, Refusal> {
        let inner = &self.inner;
        let kept_too_long = match inner.fresh.get(&cache_key).await {
            Some(Answer::Inactive) => {
                inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::InvalidKey);
            }
            Some(Answer::Active {
                identity, fetched, ..
            }) if inner.trusted(fetched, Instant::now()) && !identity.expired() => {
                inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(identity);
            }
            Some(Answer::Active { .. }) => true,
            None => false,
        };
        // Asking keyplane is a large future; boxed, it is not part of (and
        // moved with) every request's future, most of which are hits.
        Box::pin(self.ask(cache_key, key, kept_too_long)).await
    }

    /// A miss: asks keyplane, or, while it cannot be asked, serves what
    /// may be served stale.
    async fn ask(
        &self,
        cache_key: CacheKey,
        key: InstanceKey,
        kept_too_long: bool,
    ) -> Result<Arc<Identity>, Refusal> {
        let inner = &self.inner;
        if kept_too_long {
            // Kept past what may be trusted now: ask again.
            inner.fresh.invalidate(&cache_key).await;
        }
        inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        let masked = key.masked();
        let answer = inner
            .fresh
            .try_get_with(cache_key, fetch(inner.clone(), cache_key, key))
            .await;
        match answer {
            Ok(Answer::Active { identity, .. }) => Ok(identity),
            Ok(Answer::Inactive) => Err(Refusal::InvalidKey),
            Err(_) => self.serve_stale(&cache_key, &masked).await,
        }
    }

    /// While keyplane is unreachable: in `mixed`, a positive answer within the
    /// stale window; otherwise (and after it) fail closed.
    async fn serve_stale(
        &self,
        cache_key: &CacheKey,
        masked: &str,
    ) -> Result<Arc<Identity>, Refusal> {
        let inner = &self.inner;
        let window = inner.config.effective_stale_window();
        match inner.stale.get(cache_key).await {
            Some(stale)
                if Instant::now() < stale.trusted_until + window && !stale.identity.expired() =>
            {
                inner.counters.stale_serves.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = masked, key_id = %stale.identity.key_id,
                    "keyplane unreachable: serving a cached answer past its TTL (mixed mode's stale window)");
                Ok(stale.identity)
            }
            _ => {
                tracing::warn!(
                    key = masked,
                    "keyplane unreachable: refusing the request (fail closed)"
                );
                Err(Refusal::Unavailable)
            }
        }
    }

    /// The counters and the revocation stream's state.
    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Metrics {
            hits: load(&c.hits),
            misses: load(&c.misses),
            offline_rejects: load(&c.offline_rejects),
            stale_serves: load(&c.stale_serves),
            unavailable: load(&c.unavailable),
            evictions: load(&c.evictions),
            stream_connects: load(&c.stream_connects),
            stream: self.inner.stream_state(),
        }
    }

    /// The base URL of the keyplane replica to call now (the one that
    /// answered last, unless it is being skipped after failing).
    pub fn base_url(&self) -> String {
        self.inner.endpoints.current().to_owned()
    }

    /// keyplane's replicas: tell them when one fails
    /// ([`Endpoints::failed`]) so that the next call goes elsewhere.
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// The HTTP client (with the configured CAs), for other calls to keyplane.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// This node's key now, for other calls to keyplane.
    pub fn node_key(&self) -> secrecy::SecretString {
        self.inner.node_key.get()
    }

    /// Presents `key` (this node's new key, after a rotation) from the next
    /// call on; requests in flight finish with the old one, and the
    /// revocation stream reconnects with the new one at once, resuming where
    /// it was (nothing is missed, and cached answers stay trusted).
    pub fn set_node_key(&self, key: secrecy::SecretString) -> Result<(), ConfigError> {
        if KeySecret::parse_as(KeyKind::Node, key.expose_secret()).is_err() {
            return Err(ConfigError::NodeKey);
        }
        self.inner.node_key.replace(key);
        Ok(())
    }
}

/// Asks keyplane about one key; runs once per key however many wait on it.
async fn fetch(
    inner: Arc<Inner>,
    cache_key: CacheKey,
    key: InstanceKey,
) -> Result<Answer, Unreachable> {
    let evictions_before = inner.evictions_seen.load(Ordering::SeqCst);
    let mut form = vec![("token", key.expose().to_owned())];
    if let Some(ip) = cache_key.1 {
        form.push(("client_ip", ip.to_string()));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(hook) = &inner.config.outgoing_headers {
        (hook.0)(&mut headers);
    }
    // The replica that answered last first; one that cannot be reached or
    // fails (5xx) is skipped for a while, and the next one asked.
    let mut answered = None;
    for base in inner.endpoints.order() {
        let sent = inner
            .http
            .post(format!("{base}/v1/introspect"))
            .headers(headers.clone())
            .bearer_auth(inner.node_key.get().expose_secret())
            .timeout(inner.config.timeout)
            .form(&form)
            .send()
            .await;
        match sent {
            Ok(response) if !response.status().is_server_error() => {
                inner.endpoints.answered(base);
                answered = Some(response);
                break;
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), keyplane = base, "keyplane could not introspect a key");
                inner.endpoints.failed(base);
            }
            Err(err) => {
                tracing::warn!(error = %without_url(err), keyplane = base, "cannot reach keyplane to introspect a key");
                inner.endpoints.failed(base);
            }
        }
    }
    let Some(response) = answered else {
        return Err(Unreachable);
    };
    let status = response.status();
    if !status.is_success() {
        if status == reqwest::StatusCode::UNAUTHORIZED {
            tracing::error!(
                "keyplane refused this node's key (KEYPLANE_NODE_KEY): is the node retired or its key expired?"
            );
        } else {
            tracing::warn!(%status, "keyplane could not introspect a key");
        }
        return Err(Unreachable);
    }
    let answer: IntrospectAnswer = response.json().await.map_err(|err| {
        tracing::warn!(error = %without_url(err), "keyplane's introspection answer does not read");
        Unreachable
    })?;
    let answer = match answer {
        IntrospectAnswer {
            active: true,
            key_id: Some(key_id),
            client_id: Some(instance_id),
            instance_name,
            scope,
            exp: Some(expires_at),
            cache_ttl,
            limits,
            models,
        } => {
            let left = Duration::from_secs(expires_at.saturating_sub(unix_now()));
            // An eviction while this request was out may have been for this
            // very key (moka's invalidation only reaches entries already in
            // the cache): answer the waiting requests, but keep nothing.
            let raced = inner.evictions_seen.load(Ordering::SeqCst) != evictions_before;
            let ttl = match raced {
                true => Duration::ZERO,
                false => Duration::from_secs(cache_ttl.unwrap_or(0))
                    .min(inner.config.cache_ttl_cap)
                    .min(left),
            };
            let identity = Arc::new(Identity {
                key_id,
                instance_id,
                instance_name: instance_name.unwrap_or_default(),
                scopes: scope
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect(),
                expires_at,
                limits: limits.unwrap_or_default(),
                models: models.as_deref().map(Models::from_trusted),
            });
            let fetched = Instant::now();
            if !raced && !inner.config.effective_stale_window().is_zero() {
                inner
                    .stale
                    .insert(
                        cache_key,
                        Stale {
                            identity: identity.clone(),
                            trusted_until: fetched + ttl,
                        },
                    )
                    .await;
            }
            Answer::Active {
                identity,
                fetched,
                ttl,
            }
        }
        // Inactive, or an active answer missing what a node needs: refuse.
        _ => {
            // A refusal is never undone by an older positive answer.
            inner.stale.invalidate(&cache_key).await;
            Answer::Inactive
        }
    };
    Ok(answer)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
