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

/// Shared by every handler through `State`; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
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
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
}
