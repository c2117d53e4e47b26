//! The state every handler shares.

use std::sync::Arc;

use keyplane_domain::RouteMap;
use keyplane_store::Database;

use crate::burst::BurstWatch;
use crate::clock::Clock;
use crate::config::Settings;
use crate::events::Events;
use crate::introspection::Introspector;
use crate::metrics::Metrics;
use crate::pagination::CursorKey;
use crate::signing::Signer;

/// Shared by every handler through `State`: one reference count, because
/// axum clones it for every request (and cloning each field was a measurable
/// share of the introspection hot path).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps what every handler shares.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
    /// The database pool (and the embedded server behind it, if any).
    pub db: Database,
    /// The validated settings this process runs with.
    pub settings: Arc<Settings>,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Signs and checks pagination cursors.
    pub cursors: Arc<CursorKey>,
    /// Change events: published with transactions, followed by caches and streams.
    pub events: Events,
    /// The introspection cache.
    pub introspector: Introspector,
    /// The `iss` of introspection answers.
    pub issuer: Arc<str>,
    /// Which scope each inference route needs.
    pub routes: Arc<RouteMap>,
    /// Signs introspection answers.
    pub signer: Signer,
    /// Flags bursts of inactive answers per node.
    pub probes: BurstWatch<uuid::Uuid>,
    /// Flags bursts of failed operator authentications per address.
    pub auth_failures: BurstWatch<std::net::IpAddr>,
    /// Rate limits per address, credential, admin key, node and instance.
    pub limits: crate::limits::Limits,
    /// The digests of every live admin and node key.
    pub credentials: crate::credentials::KnownCredentials,
    /// Lets the first refusal per operator per minute into the audit log.
    pub policy_refusals: BurstWatch<String>,
    /// Lets the first refused forward-auth call per node per minute into the audit log.
    pub forward_auth_refusals: BurstWatch<uuid::Uuid>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Turns true when the server starts shutting down, so that endless
    /// answers (the revocation stream) end instead of holding shutdown up.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Where webhook deliveries may go.
    pub destinations: crate::destinations::Destinations,
    /// Seals webhook secrets at rest.
    pub master: crate::signing::MasterKey,
    /// Revocation streams open per node, bounded.
    pub streams: Arc<crate::streams::StreamSlots>,
    /// The revocation log's new rows, read once for every stream.
    pub revocation_tail: crate::streams::RevocationTail,
    /// True while this process runs the scheduler.
    pub scheduler_leader: Arc<std::sync::atomic::AtomicBool>,
    /// When (Unix seconds, by keyplane's clock) the scheduler last finished
    /// a run that began then; 0 before the first.
    pub scheduler_ran: Arc<std::sync::atomic::AtomicI64>,
    /// The organisation's identity provider, when people sign in with one.
    pub identity: Option<Arc<crate::oidc::IdentityProvider>>,
}

impl Shared {
    /// Completes once the server is shutting down.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }
}
