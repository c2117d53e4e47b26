//! The introspection hot path: a cache of what decides whether a key is good,
//! keyed by the key's digest, so a hit never touches the database.
//!
//! The cache holds facts (scopes, audience, networks, expiry), not answers:
//! each request is judged against its own node, scope, address and time, so
//! expiry needs no invalidation. Changes drop entries through [`Events`];
//! unknown digests are remembered briefly too, and each digest is loaded by
//! one request at a time however many arrive at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use keyplane_domain::{
    ForwardAuthProxy, InstanceKey, KeyKind, KeySecret, Limits, Models, ScopeSet, effective_scopes,
};
use keyplane_store::introspection::{self, KeyFacts, NodeFacts};
use keyplane_store::nodes;
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::digest_cache::DigestCache;
use crate::events::{Event, Events};
use crate::lookups::Lookups;

/// How long an unknown digest is remembered as unknown.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The longest a known entry lives without an event, should one be missed.
const POSITIVE_TTL: Duration = Duration::from_secs(60);

/// Nodes held by the node caches, whatever the key cache's capacity: a
/// fleet's node credentials are few, and with the key cache off each lookup
/// then costs the one query it measures.
const NODES_CACHED: u64 = 10_000;

/// What keyplane knows about one instance key. A cache holds one for each
/// key in use (100,000 by default), so it is kept small: texts boxed to
/// their length, the scopes as the one text answers carry, and what most
/// keys lack (limits, models, an audience, networks) behind one pointer
/// that is null for them; times as integers. 112 bytes, 128 in its `Arc`
/// (one of mimalloc's size classes).
#[derive(Debug)]
pub struct CachedKey {
    /// The key.
    pub key_id: Uuid,
    /// Its instance.
    pub instance_id: Uuid,
    /// Its instance's name.
    pub instance_name: Box<str>,
    /// Its effective scopes, space-separated, in order, as answers carry them.
    pub scope_text: Box<str>,
    /// When it was issued, in Unix seconds.
    issued_at: i64,
    /// When it stops working (expiry, or the end of its grace window), in
    /// Unix milliseconds.
    ends_at_ms: i64,
    /// Its limits, models, audience and networks; None: it has none.
    bounds: Option<Box<Bounds>>,
    /// The last second it was accepted in, so use is noted once a second at most.
    used_second: AtomicI64,
    /// The node it was last accepted for (folded to 64 bits), so that which
    /// nodes saw it is noted when it changes, not on every request.
    last_node: AtomicU64,
    usable: bool,
}

/// What bounds a key beyond its scopes and its expiry.
#[derive(Debug, Default, PartialEq)]
struct Bounds {
    /// The tighter of its own limits and its instance's.
    limits: Limits,
    /// The models both it and its instance allow; None: every model.
    models: Option<Box<[String]>>,
    /// The nodes that may accept it; empty: any node.
    audience: Box<[Uuid]>,
    /// The networks its instance's clients may call from; empty: any.
    networks: Box<[IpNet]>,
}

/// No limits, for keys without bounds.
const UNLIMITED: Limits = Limits {
    rpm: None,
    tpm: None,
    daily_tokens: None,
    monthly_tokens: None,
};

impl CachedKey {
    /// What the facts read about a key mean for checking it.
    pub fn from_facts(facts: KeyFacts) -> CachedKey {
        let ceiling = ScopeSet::from_trusted(&facts.allowed_scopes);
        let scopes = effective_scopes(
            &ScopeSet::from_trusted(&facts.scopes),
            [&ScopeSet::from_trusted(&facts.role_scopes)],
            &ceiling,
        );
        let ends_at = facts
            .grace_until
            .map_or(facts.expires_at, |grace| grace.min(facts.expires_at));
        let key_models = facts.key_models.as_deref().map(Models::from_trusted);
        let instance_models = facts.instance_models.as_deref().map(Models::from_trusted);
        let bounds = Bounds {
            limits: facts.key_limits.0.tighter(&facts.instance_limits.0),
            models: Models::both(key_models.as_ref(), instance_models.as_ref())
                .map(|models| models.to_strings().into_boxed_slice()),
            audience: facts
                .audience
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            // A network that does not parse matches nothing: fail closed.
            networks: facts
                .allowed_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
        };
        CachedKey {
            key_id: facts.key_id,
            instance_id: facts.instance_id,
            instance_name: facts.instance_name.into_boxed_str(),
            scope_text: scopes.to_oauth().into_boxed_str(),
            issued_at: facts.created_at.timestamp(),
            ends_at_ms: ends_at.timestamp_millis(),
            bounds: (bounds != Bounds::default()).then(|| Box::new(bounds)),
            used_second: AtomicI64::new(0),
            last_node: AtomicU64::new(0),
            usable: facts.enabled && !facts.revoked && facts.instance_status == "active",
        }
    }

    /// When it was issued (to the second).
    pub fn issued_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.issued_at, 0).unwrap_or_default()
    }

    /// When it stops working (expiry, or the end of its grace window).
    pub fn ends_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.ends_at_ms).unwrap_or_default()
    }

    /// Its limits: the tighter of its own and its instance's.
    pub fn limits(&self) -> &Limits {
        self.bounds
            .as_ref()
            .map_or(&UNLIMITED, |bounds| &bounds.limits)
    }

    /// The models both it and its instance allow; None: every model.
    pub fn models(&self) -> Option<&[String]> {
        self.bounds
            .as_ref()
            .and_then(|bounds| bounds.models.as_deref())
    }

    /// The networks its instance's clients may call from; empty: any.
    fn networks(&self) -> &[IpNet] {
        self.bounds.as_ref().map_or(&[], |bounds| &bounds.networks)
    }

    /// Whether this key works at `now` (wherever its audience and its
    /// instance's networks let it be used).
    pub fn works_at(&self, now: DateTime<Utc>) -> bool {
        self.usable && now.timestamp_millis() < self.ends_at_ms
    }

    /// The scopes this key grants at `now`, wherever its audience and its
    /// instance's networks let it be used; none once it does not work.
    pub fn grants_at(&self, now: DateTime<Utc>) -> Option<ScopeSet> {
        let scopes: Vec<&str> = self.scope_text.split_ascii_whitespace().collect();
        self.works_at(now).then(|| ScopeSet::from_trusted(&scopes))
    }

    /// Whether it holds every scope in `wanted` (space-separated, as nodes
    /// ask for them): on the hot path, so no parsing and no allocation.
    pub fn holds_all(&self, wanted: &str) -> bool {
        wanted.split_ascii_whitespace().all(|scope| {
            self.scope_text
                .split_ascii_whitespace()
                .any(|held| held == scope)
        })
    }

    /// The nodes that may accept it; empty means any node.
    pub fn audience(&self) -> &[Uuid] {
        self.bounds.as_ref().map_or(&[], |bounds| &bounds.audience)
    }

    /// Whether this key is good for `node`, the scopes it wants, the
    /// client's address and the time.
    fn admits(
        &self,
        node: Uuid,
        wanted: &str,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> bool {
        let (audience, networks) = (self.audience(), self.networks());
        let in_audience = audience.is_empty() || audience.contains(&node);
        let from_allowed_network = networks.is_empty()
            || client_ip.is_some_and(|ip| networks.iter().any(|net| net.contains(&ip)));
        self.usable
            && now.timestamp_millis() < self.ends_at_ms
            && in_audience
            && from_allowed_network
            && self.holds_all(wanted)
    }
}

/// A good key, as judged for one request: the cached entry itself.
pub type Verdict = Arc<CachedKey>;

/// Notes `now` as a use of whatever `used_second` belongs to; answers whether
/// this is the first use in this second (only those are queued for writing).
fn first_use_this_second(used_second: &AtomicI64, now: DateTime<Utc>) -> bool {
    let second = now.timestamp();
    used_second.swap(second, Ordering::Relaxed) != second
}

/// A node, as its key authenticates it.
#[derive(Debug)]
pub struct CachedNode {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// When its key (or its registration, for a certificate) stops working.
    pub expires_at: DateTime<Utc>,
    retired: bool,
    /// Its own forward-auth proxy setting; None follows the deployment's.
    pub forward_auth_proxy: Option<ForwardAuthProxy>,
    /// Until when (Unix seconds) a client certificate naming it by DNS name
    /// stays valid, of those seen.
    certified_until: AtomicI64,
    used_second: AtomicI64,
    /// The digest of the node key it was found by (None for a certificate).
    pub key: Option<[u8; 32]>,
    /// Whether that key is its current one, not yet recorded as used (a
    /// retried self-rotation depends on it).
    unused_key: bool,
    use_noted: AtomicBool,
}

impl CachedNode {
    /// Whether a verified client certificate identifies this node: bound to
    /// its id (a URI SAN `urn:keyplane:node:<id>`), or naming it by DNS name.
    pub fn identified_by(&self, certificate: &keyplane_tls::ClientCertificate) -> bool {
        match certificate.node_id() {
            Some(id) => id.parse::<Uuid>().is_ok_and(|id| id == self.id),
            None => certificate.names(&self.name),
        }
    }

    /// Notes that `certificate` authenticated this node; answers whether it
    /// stays valid longer than any seen before (keyplane then records it:
    /// the node's name is not given to another node until it expires).
    pub fn note_certificate(&self, certificate: &keyplane_tls::ClientCertificate) -> bool {
        certificate.node_id().is_none()
            && self
                .certified_until
                .fetch_max(certificate.not_after, Ordering::Relaxed)
                < certificate.not_after
    }
}

impl CachedNode {
    /// The node found by its key of `digest`.
    fn of_key(facts: NodeFacts, digest: [u8; 32]) -> Self {
        CachedNode {
            key: Some(digest),
            unused_key: facts.current_key && !facts.key_used,
            ..CachedNode::from(facts)
        }
    }
}

impl From<NodeFacts> for CachedNode {
    fn from(facts: NodeFacts) -> Self {
        CachedNode {
            id: facts.id,
            name: facts.name,
            expires_at: facts.expires_at,
            retired: facts.retired,
            // The column's check constraint admits only names that parse.
            forward_auth_proxy: facts
                .forward_auth_proxy
                .and_then(|proxy| proxy.parse().ok()),
            certified_until: AtomicI64::new(
                facts
                    .certificate_valid_until
                    .map_or(0, |until| until.timestamp()),
            ),
            used_second: AtomicI64::new(0),
            key: None,
            unused_key: false,
            use_noted: AtomicBool::new(false),
        }
    }
}

/// Known entries live until an event drops them (or the safety-net TTL);
/// unknown ones only briefly.
fn digest_cache<V, E>(capacity: u64) -> Arc<DigestCache<V, E>>
where
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    Arc::new(DigestCache::new(capacity, POSITIVE_TTL, NEGATIVE_TTL))
}

/// The most last-use times one statement writes: a connection's buffer
/// grows to the largest statement it sent and keeps that size, and an
/// update holds its rows' locks until it ends.
const WRITE_BATCH: usize = 4096;

/// Writes `pending` (the record of `what`) with `write`, [`WRITE_BATCH`] at
/// a time; on the first failure, logs it, stops, and answers what was not
/// written, for the next flush (nothing, when all of it was).
async fn in_batches<K, F, W>(
    what: &str,
    pending: HashMap<K, DateTime<Utc>>,
    mut write: W,
) -> HashMap<K, DateTime<Utc>>
where
    K: std::hash::Hash + Eq + Copy,
    W: FnMut(&[(K, DateTime<Utc>)]) -> F,
    F: std::future::Future<Output = Result<(), keyplane_store::StoreError>>,
{
    let pending: Vec<(K, DateTime<Utc>)> = pending.into_iter().collect();
    for (done, batch) in pending.chunks(WRITE_BATCH).enumerate() {
        if let Err(err) = write(batch).await {
            tracing::warn!(error = %err, "could not record {what}; trying again at the next flush");
            return pending[done * WRITE_BATCH..].iter().copied().collect();
        }
    }
    HashMap::new()
}

/// Last-use times waiting to be written, so that a request never writes.
#[derive(Debug, Default)]
struct Usage {
    keys: HashMap<Uuid, DateTime<Utc>>,
    nodes: HashMap<Uuid, DateTime<Utc>>,
    /// Nodes' new keys, used for the first time.
    new_node_keys: Vec<(Uuid, [u8; 32], DateTime<Utc>)>,
    /// Which node was answered about which key (key, node), and when.
    sightings: HashMap<(Uuid, Uuid), DateTime<Utc>>,
}

impl Usage {
    /// Takes back what a flush could not write, beside what was noted
    /// meanwhile (the later time wins).
    fn take_back(&mut self, unwritten: Usage) {
        fn merge<K: std::hash::Hash + Eq>(
            into: &mut HashMap<K, DateTime<Utc>>,
            from: HashMap<K, DateTime<Utc>>,
        ) {
            for (key, at) in from {
                let kept = into.entry(key).or_insert(at);
                *kept = (*kept).max(at);
            }
        }
        merge(&mut self.keys, unwritten.keys);
        merge(&mut self.nodes, unwritten.nodes);
        merge(&mut self.sightings, unwritten.sightings);
        self.new_node_keys.extend(unwritten.new_node_keys);
    }
}

/// The introspection cache and the bookkeeping around it.
#[derive(Clone)]
pub struct Introspector {
    pool: PgPool,
    /// Connections of their own for lookups (see [`Lookups`]).
    connections: Arc<Lookups>,
    keys: Arc<DigestCache<CachedKey, Load>>,
    nodes: Arc<DigestCache<CachedNode, keyplane_store::StoreError>>,
    /// Nodes by the fingerprint of the client certificate naming them.
    certified: Arc<DigestCache<CachedNode, keyplane_store::StoreError>>,
    /// False when the capacity is 0: every request goes to the database.
    cached: bool,
    /// Whether legacy keys (no prefix, no checksum) are looked up.
    accept_legacy: bool,
    /// Events applied so far: a load that sees this change while it reads
    /// may have read what the event made stale.
    changes: Arc<AtomicU64>,
    /// Key lookups, and how many of them loaded from the database.
    lookups: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
    usage: Arc<Mutex<Usage>>,
    /// Held while a flush writes: a flush asked for meanwhile waits, so once
    /// it returns everything noted before it is in the database.
    flushing: Arc<tokio::sync::Mutex<()>>,
    /// A standby (`DATABASE_READ_URL`) asked for keys the cache lacks while
    /// the primary cannot answer.
    standby: Option<PgPool>,
    /// Lookups the standby answered.
    standby_reads: Arc<AtomicU64>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("keys", &self.keys.entry_count())
            .field("nodes", &self.nodes.entry_count())
            .finish()
    }
}

impl Introspector {
    /// An empty cache of `capacity` keys (and up to [`NODES_CACHED`] nodes) over `pool`.
    pub fn new(pool: PgPool, capacity: u64) -> Introspector {
        Introspector {
            connections: Lookups::new(pool.clone()),
            pool,
            keys: digest_cache(capacity),
            nodes: digest_cache(NODES_CACHED),
            certified: digest_cache(NODES_CACHED),
            cached: capacity > 0,
            accept_legacy: false,
            changes: Arc::default(),
            lookups: Arc::default(),
            loads: Arc::default(),
            usage: Arc::default(),
            flushing: Arc::default(),
            standby: None,
            standby_reads: Arc::default(),
        }
    }

    /// Asks `standby` for keys the cache lacks while the primary cannot
    /// answer (`DATABASE_READ_URL`), so nodes keep working through a failover.
    pub fn reading_from_standby(mut self, standby: Option<PgPool>) -> Introspector {
        self.standby = standby;
        self
    }

    /// Looks legacy keys up too (`KEYPLANE_ACCEPT_LEGACY_KEYS`): any text
    /// of their shape then costs a lookup, within the same budget as
    /// made-up `kpi_` keys.
    pub fn accepting_legacy_keys(mut self, accept: bool) -> Introspector {
        self.accept_legacy = accept;
        self
    }

    /// Judges `token` for `node`: None for anything but a good key that
    /// passes every check. Errors only when the database is needed and
    /// fails, or when a key no cache knows would be looked up past the
    /// node's or the client's budget of such lookups (`limits`).
    pub async fn introspect(
        &self,
        token: &str,
        node: Uuid,
        wanted: &str,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
        limits: &crate::limits::Limits,
    ) -> Result<Option<Verdict>, Lookup> {
        // Garbage and mistyped keys are refused without a lookup.
        let Ok(key) = InstanceKey::parse(token, self.accept_legacy) else {
            return Ok(None);
        };
        let digest = *key.digest().as_bytes();
        self.lookups.fetch_add(1, Ordering::Relaxed);
        // The hit path: a plain read, building no loader.
        let hit = match self.cached {
            true => self.keys.get(&digest),
            false => None,
        };
        let cached = match hit {
            Some(cached) => cached,
            None => {
                // Made-up keys (their checksum is public) cost a lookup
                // each: budgeted, so a flood cannot take the pool.
                limits.spend_miss(node, client_ip).map_err(Lookup::Busy)?;
                // Boxed: a load is a large future (the query), which every
                // hit would carry (and move) otherwise.
                Box::pin(self.load_key(digest)).await?
            }
        };
        let verdict = cached.filter(|key| key.admits(node, wanted, client_ip, now));
        if let Some(key) = &verdict {
            let (lo, hi) = node.as_u64_pair();
            let new_node = key.last_node.swap(lo ^ hi, Ordering::Relaxed) != lo ^ hi;
            let first_use = first_use_this_second(&key.used_second, now);
            if (new_node || first_use)
                && let Ok(mut usage) = self.usage.lock()
            {
                usage.keys.insert(key.key_id, now);
                usage.sightings.insert((key.key_id, node), now);
            }
        }
        Ok(verdict)
    }

    /// Loads what the cache lacks for `digest`: one load per digest, however
    /// many requests wait on it. A load that a change raced (an event
    /// applied while it read) is not kept: what it read may be what the
    /// change just ended, so it is read again, uncached.
    async fn load_key(&self, digest: [u8; 32]) -> Result<Option<Arc<CachedKey>>, Unavailable> {
        let read = move |connections: Arc<Lookups>, loads: Arc<AtomicU64>| async move {
            loads.fetch_add(1, Ordering::Relaxed);
            let facts = connections.key_facts(&digest).await?;
            Ok::<_, keyplane_store::StoreError>(facts.map(|f| Arc::new(CachedKey::from_facts(f))))
        };
        if !self.cached {
            return match read(self.connections.clone(), self.loads.clone()).await {
                Ok(loaded) => Ok(loaded),
                Err(err) if self.may_ask_standby(&err) => self.read_standby(digest).await,
                Err(err) => Err(unavailable(Arc::new(err))),
            };
        }
        let before = self.changes.load(Ordering::SeqCst);
        let load = {
            let (connections, loads, changes) = (
                self.connections.clone(),
                self.loads.clone(),
                self.changes.clone(),
            );
            async move {
                let started = changes.load(Ordering::SeqCst);
                let loaded = read(connections, loads).await.map_err(Load::Store)?;
                match changes.load(Ordering::SeqCst) == started {
                    true => Ok(loaded),
                    false => Err(Load::Raced),
                }
            }
        };
        match self.keys.try_get_with(digest, load).await {
            // A change between the load's last look and its insertion: drop
            // the entry and read again.
            Ok(loaded) if self.changes.load(Ordering::SeqCst) == before => Ok(loaded),
            Ok(_) => {
                self.keys.invalidate(&digest);
                self.read_fresh(digest).await
            }
            Err(err) => match &*err {
                Load::Raced => self.read_fresh(digest).await,
                Load::Store(store) if self.may_ask_standby(store) => {
                    self.read_standby(digest).await
                }
                Load::Store(_) => Err(unavailable_load(err)),
            },
        }
    }

    /// Reads `digest`'s facts without caching them.
    async fn read_fresh(&self, digest: [u8; 32]) -> Result<Option<Arc<CachedKey>>, Unavailable> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        match self.connections.key_facts(&digest).await {
            Ok(facts) => Ok(facts.map(|f| Arc::new(CachedKey::from_facts(f)))),
            Err(err) if self.may_ask_standby(&err) => self.read_standby(digest).await,
            Err(err) => Err(unavailable(Arc::new(err))),
        }
    }

    /// Whether a failed read may be asked of the standby: only when the
    /// primary is unavailable (never for a wrong query), and only with one.
    fn may_ask_standby(&self, err: &keyplane_store::StoreError) -> bool {
        self.standby.is_some() && matches!(err, keyplane_store::StoreError::Unavailable(_))
    }

    /// Reads `digest`'s facts from the standby, while the primary cannot
    /// answer; never cached, so an answer from a standby that may lag the
    /// primary lives for this one request only.
    async fn read_standby(&self, digest: [u8; 32]) -> Result<Option<Arc<CachedKey>>, Unavailable> {
        let Some(standby) = &self.standby else {
            return Err(Unavailable);
        };
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.standby_reads.fetch_add(1, Ordering::Relaxed);
        introspection::key_facts(standby, &digest)
            .await
            .map(|facts| facts.map(|f| Arc::new(CachedKey::from_facts(f))))
            .map_err(|err| unavailable(Arc::new(err)))
    }

    /// Key lookups answered by the standby while the primary could not.
    pub fn standby_reads(&self) -> u64 {
        self.standby_reads.load(Ordering::Relaxed)
    }

    /// Whether `digest` is a key the cache holds as live (a cheap look, no load).
    pub async fn knows_key(&self, digest: &[u8; 32]) -> bool {
        matches!(self.keys.get(digest), Some(Some(_)))
    }

    /// Key lookups so far, and how many of them missed the cache.
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.lookups.load(Ordering::Relaxed),
            self.loads.load(Ordering::Relaxed),
        )
    }

    /// The live node whose key `token` is, if any.
    pub async fn node(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<CachedNode>>, Unavailable> {
        let Ok(key) = KeySecret::parse_as(KeyKind::Node, token) else {
            return Ok(None);
        };
        let digest = *key.digest().as_bytes();
        let cached = match self.nodes.get(&digest) {
            Some(cached) => cached,
            // Boxed, as a key's load is.
            None => Box::pin(self.nodes.try_get_with(digest, {
                let connections = self.connections.clone();
                async move {
                    let facts = connections.node_facts(&digest).await?;
                    Ok::<_, keyplane_store::StoreError>(
                        facts.map(|f| Arc::new(CachedNode::of_key(f, digest))),
                    )
                }
            }))
            .await
            .map_err(unavailable)?,
        };
        Ok(self.live(cached, now))
    }

    /// `cached` if it is a live node, its use noted (once a second) for
    /// `last_seen_at`.
    fn live(&self, cached: Option<Arc<CachedNode>>, now: DateTime<Utc>) -> Option<Arc<CachedNode>> {
        let node = cached.filter(|node| !node.retired && now < node.expires_at);
        if let Some(node) = &node
            && first_use_this_second(&node.used_second, now)
            && let Ok(mut usage) = self.usage.lock()
        {
            usage.nodes.insert(node.id, now);
            if let Some(digest) = node.key
                && node.unused_key
                && !node.use_noted.swap(true, Ordering::Relaxed)
            {
                usage.new_node_keys.push((node.id, digest, now));
            }
        }
        node
    }

    /// The live node a verified client certificate identifies (see
    /// [`CachedNode::identified_by`]): the node of its id, or the one node
    /// its DNS names name.
    pub async fn certified_node(
        &self,
        certificate: &keyplane_tls::ClientCertificate,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<CachedNode>>, Unavailable> {
        let bound_id = match certificate.node_id() {
            Some(id) => match id.parse::<Uuid>() {
                Ok(id) => Some(id),
                Err(_) => return Ok(None),
            },
            None if certificate.dns_names.is_empty() => return Ok(None),
            None => None,
        };
        let cached = self
            .certified
            .try_get_with(certificate.fingerprint, {
                let pool = self.pool.clone();
                let certificate = certificate.clone();
                async move {
                    let facts = match bound_id {
                        Some(id) => introspection::node_facts_by_id(&pool, id).await?,
                        None => {
                            introspection::node_facts_by_names(&pool, &certificate.dns_names)
                                .await?
                        }
                    };
                    Ok::<_, keyplane_store::StoreError>(
                        facts
                            .map(|f| Arc::new(CachedNode::from(f)))
                            .filter(|node| node.identified_by(&certificate)),
                    )
                }
            })
            .await
            .map_err(unavailable)?;
        Ok(self.live(cached, now))
    }

    /// Drops what `event` makes stale.
    pub fn apply(&self, event: &Event) {
        // Counted first: a load in flight now must not keep what it read.
        self.changes.fetch_add(1, Ordering::SeqCst);
        match *event {
            Event::Key { id } => self
                .keys
                .invalidate_entries_if(|k| k.as_ref().is_some_and(|k| k.key_id == id)),
            Event::Instance { id } => self
                .keys
                .invalidate_entries_if(|k| k.as_ref().is_some_and(|k| k.instance_id == id)),
            Event::Node { id } => {
                // A new node may be named by a certificate refused before.
                self.certified.invalidate_all();
                self.nodes
                    .invalidate_entries_if(|n| n.as_ref().is_some_and(|n| n.id == id));
            }
            Event::Roles => self.keys.invalidate_all(),
            Event::Resync => {
                self.keys.invalidate_all();
                self.nodes.invalidate_all();
                self.certified.invalidate_all();
            }
            Event::Revocations | Event::SigningKeys | Event::AdminKeys => {}
        }
    }

    /// Applies every event from `events` until the process stops.
    pub fn follow(&self, events: &Events) -> JoinHandle<()> {
        let mut receiver = events.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => this.apply(&event),
                    // Too many events to keep up with: some were dropped.
                    Err(RecvError::Lagged(_)) => this.apply(&Event::Resync),
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Writes the last-use times (and which nodes saw which keys) gathered
    /// since the previous flush; once it returns, all of it is written.
    pub async fn flush_usage(&self) {
        let _flushing = self.flushing.lock().await;
        let usage = match self.usage.lock() {
            Ok(mut usage) => std::mem::take(&mut *usage),
            Err(_) => return,
        };
        // What could not be written (the database away, or failing over) is
        // kept for the next flush, not dropped.
        let mut unwritten = Usage::default();
        let pool = &self.pool;
        unwritten.keys = in_batches("when keys were last used", usage.keys, |batch| {
            let (ids, times): (Vec<_>, Vec<_>) = batch.iter().copied().unzip();
            async move { introspection::touch_keys(pool, &ids, &times).await }
        })
        .await;
        unwritten.nodes = in_batches("when nodes were last seen", usage.nodes, |batch| {
            let (ids, times): (Vec<_>, Vec<_>) = batch.iter().copied().unzip();
            async move { introspection::touch_nodes(pool, &ids, &times).await }
        })
        .await;
        let seen_by = "which nodes saw which keys";
        unwritten.sightings = in_batches(seen_by, usage.sightings, |batch| {
            let ((keys, nodes), times): ((Vec<_>, Vec<_>), Vec<_>) = batch.iter().copied().unzip();
            async move { keyplane_store::usage::note_sightings(pool, &keys, &nodes, &times).await }
        })
        .await;
        if !usage.new_node_keys.is_empty() {
            let (mut ids, mut digests, mut times) = (Vec::new(), Vec::new(), Vec::new());
            for (id, digest, at) in &usage.new_node_keys {
                ids.push(*id);
                digests.push(digest.to_vec());
                times.push(*at);
            }
            if let Err(err) = nodes::note_key_used(&self.pool, &ids, &digests, &times).await {
                tracing::warn!(error = %err, "could not record that nodes used their new keys; trying again at the next flush");
                unwritten.new_node_keys = usage.new_node_keys;
            }
        }
        if let Ok(mut usage) = self.usage.lock() {
            usage.take_back(unwritten);
        }
    }

    /// Flushes last-use times every `every` until the process stops.
    pub fn flush_every(&self, every: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                this.flush_usage().await;
            }
        })
    }
}

/// Why an introspection could not be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The database was needed and did not answer.
    Unavailable,
    /// A lookup past the budget of lookups of unknown keys; try again after this.
    Busy(Duration),
}

impl From<Unavailable> for Lookup {
    fn from(_: Unavailable) -> Self {
        Lookup::Unavailable
    }
}

/// The database was needed for a lookup and did not answer. The cause is
/// logged where it happened.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database is not available")]
pub struct Unavailable;

/// The cache shares a loader's error between every request that waited on it.
fn unavailable(err: Arc<keyplane_store::StoreError>) -> Unavailable {
    tracing::error!(error = %err, "introspection lookup failed");
    Unavailable
}

/// Why a cache load kept nothing.
#[derive(Debug)]
enum Load {
    /// The database failed.
    Store(keyplane_store::StoreError),
    /// A change was applied while it read.
    Raced,
}

fn unavailable_load(err: Arc<Load>) -> Unavailable {
    match &*err {
        Load::Store(err) => tracing::error!(error = %err, "introspection lookup failed"),
        Load::Raced => {}
    }
    Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_key_stays_in_the_allocators_128_byte_class() {
        // One of these per cached key (100,000 by default): a field more
        // moves every one of them to the next size class.
        let in_arc = std::mem::size_of::<CachedKey>() + 2 * std::mem::size_of::<usize>();
        assert!(in_arc <= 128, "CachedKey takes {in_arc} bytes in its Arc");
    }

    #[tokio::test]
    async fn usage_is_written_in_batches_and_what_a_failed_batch_left_is_kept() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let pending: HashMap<u32, DateTime<Utc>> = (0..10_000).map(|n| (n, at)).collect();
        let mut written = Vec::new();
        let left = in_batches("times", pending.clone(), |batch| {
            written.push(batch.len());
            async { Ok(()) }
        })
        .await;
        assert!(left.is_empty());
        assert_eq!(
            written,
            [WRITE_BATCH, WRITE_BATCH, 10_000 - 2 * WRITE_BATCH]
        );

        let mut calls = 0;
        let rest = in_batches("times", pending, |_| {
            calls += 1;
            let outcome = match calls {
                2 => Err(keyplane_store::StoreError::Unavailable(
                    sqlx::Error::PoolTimedOut,
                )),
                _ => Ok(()),
            };
            async move { outcome }
        })
        .await;
        assert_eq!(calls, 2, "no batch is tried after one failed");
        assert_eq!(rest.len(), 10_000 - WRITE_BATCH);
    }

    #[test]
    fn what_a_flush_could_not_write_is_kept_beside_what_came_since() {
        let (key, node) = (Uuid::new_v4(), Uuid::new_v4());
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default();
        let mut pending = Usage::default();
        pending.keys.insert(key, at(10));
        let mut unwritten = Usage::default();
        unwritten.keys.insert(key, at(5));
        unwritten.keys.insert(node, at(7));
        unwritten.sightings.insert((key, node), at(5));
        unwritten.new_node_keys.push((node, [1; 32], at(3)));
        pending.take_back(unwritten);
        assert_eq!(pending.keys[&key], at(10), "the later use wins");
        assert_eq!(pending.keys[&node], at(7));
        assert_eq!(pending.sightings[&(key, node)], at(5));
        assert_eq!(pending.new_node_keys.len(), 1);
    }
}
