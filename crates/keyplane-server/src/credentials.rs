//! The digests of every live admin key and node key, held in memory.
//!
//! There are few of them, and knowing them all lets keyplane tell a real
//! credential from a made-up one without a lookup: a known one is checked
//! whatever its address did before (so one bad client behind a NAT does not
//! lock out the operators and nodes there), and an unknown one from an
//! address that keeps failing costs no database work. The sets follow
//! changes through [`Events`] (and are read again every minute, for keys
//! that simply expired); a key made a moment ago on another replica, not yet
//! heard of, is looked up as before.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::events::{Event, Events};

/// How often the sets are read again regardless of events.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

type Digests = Arc<HashSet<[u8; 32]>>;

/// The live admin and node keys, by digest.
#[derive(Debug, Clone, Default)]
pub struct KnownCredentials {
    admin: Arc<RwLock<Digests>>,
    nodes: Arc<RwLock<Digests>>,
}

impl KnownCredentials {
    /// Whether `digest` is a live admin key's.
    pub fn admin(&self, digest: &[u8; 32]) -> bool {
        self.admin.read().is_ok_and(|set| set.contains(digest))
    }

    /// Whether `digest` is a live node key's.
    pub fn node(&self, digest: &[u8; 32]) -> bool {
        self.nodes.read().is_ok_and(|set| set.contains(digest))
    }

    /// Knows a key this process just made, or forgets one it just revoked,
    /// at once (other processes hear of it through the event).
    pub fn set_admin(&self, digest: &[u8], live: bool) {
        change(&self.admin, digest, live);
    }

    /// The same for a node key.
    pub fn set_node(&self, digest: &[u8], live: bool) {
        change(&self.nodes, digest, live);
    }

    /// Reads both sets from the database.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), keyplane_store::StoreError> {
        let (admin, nodes) = keyplane_store::credentials::live_digests(pool).await?;
        let into_set = |digests: Vec<Vec<u8>>| -> Digests {
            Arc::new(
                digests
                    .into_iter()
                    .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                    .collect(),
            )
        };
        if let Ok(mut slot) = self.admin.write() {
            *slot = into_set(admin);
        }
        if let Ok(mut slot) = self.nodes.write() {
            *slot = into_set(nodes);
        }
        Ok(())
    }

    /// Reads the sets again on every change to admin keys or nodes (and
    /// every minute) until the process stops.
    pub fn follow(&self, events: &Events, pool: PgPool) -> JoinHandle<()> {
        let mut receiver = events.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stale = tokio::select! {
                    _ = every.tick() => true,
                    event = receiver.recv() => match event {
                        Ok(Event::AdminKeys | Event::Node { .. } | Event::Resync)
                        | Err(RecvError::Lagged(_)) => true,
                        Ok(_) => false,
                        Err(RecvError::Closed) => return,
                    },
                };
                if stale && let Err(err) = this.refresh(&pool).await {
                    tracing::warn!(error = %err, "could not read the live admin and node keys");
                }
            }
        })
    }
}

fn change(set: &RwLock<Digests>, digest: &[u8], live: bool) {
    let (Ok(digest), Ok(mut slot)) = (<[u8; 32]>::try_from(digest), set.write()) else {
        return;
    };
    let mut changed = HashSet::clone(&slot);
    match live {
        true => changed.insert(digest),
        false => changed.remove(&digest),
    };
    *slot = Arc::new(changed);
}
