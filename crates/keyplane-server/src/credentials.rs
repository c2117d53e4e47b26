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

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::events::{Event, Events};

/// How often the sets are read again regardless of events.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

type Digests = Arc<HashSet<[u8; 32]>>;

/// How often a read that a local change raced is made again before it is
/// kept anyway (the next event or minute corrects it).
const RACED_READS: usize = 3;

/// The live admin and node keys, by digest.
#[derive(Debug, Clone, Default)]
pub struct KnownCredentials {
    sets: Arc<RwLock<Sets>>,
}

#[derive(Debug, Default)]
struct Sets {
    admin: Digests,
    nodes: Digests,
    /// Counts this process's own changes, so a read from the database that
    /// one raced is not kept over it.
    changes: u64,
}

impl KnownCredentials {
    /// Whether `digest` is a live admin key's.
    pub fn admin(&self, digest: &[u8; 32]) -> bool {
        self.sets
            .read()
            .is_ok_and(|sets| sets.admin.contains(digest))
    }

    /// Whether `digest` is a live node key's.
    pub fn node(&self, digest: &[u8; 32]) -> bool {
        self.sets
            .read()
            .is_ok_and(|sets| sets.nodes.contains(digest))
    }

    /// Knows a key this process just made, or forgets one it just revoked,
    /// at once (other processes hear of it through the event).
    pub fn set_admin(&self, digest: &[u8], live: bool) {
        self.change(digest, live, |sets| &mut sets.admin);
    }

    /// The same for a node key.
    pub fn set_node(&self, digest: &[u8], live: bool) {
        self.change(digest, live, |sets| &mut sets.nodes);
    }

    fn change(&self, digest: &[u8], live: bool, set: impl FnOnce(&mut Sets) -> &mut Digests) {
        let (Ok(digest), Ok(mut sets)) = (<[u8; 32]>::try_from(digest), self.sets.write()) else {
            return;
        };
        sets.changes += 1;
        let slot = set(&mut sets);
        let mut changed = HashSet::clone(slot);
        match live {
            true => changed.insert(digest),
            false => changed.remove(&digest),
        };
        *slot = Arc::new(changed);
    }

    /// Reads both sets from the database: the keys live at `now`. A read
    /// that a change of this process's raced (a key made while it ran) is
    /// made again rather than kept over the change.
    pub async fn refresh(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
    ) -> Result<(), keyplane_store::StoreError> {
        let into_set = |digests: Vec<Vec<u8>>| -> Digests {
            Arc::new(
                digests
                    .into_iter()
                    .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                    .collect(),
            )
        };
        for attempt in 1..=RACED_READS {
            let before = self.sets.read().map_or(0, |sets| sets.changes);
            let (admin, nodes) = keyplane_store::credentials::live_digests(pool, now).await?;
            let Ok(mut sets) = self.sets.write() else {
                return Ok(());
            };
            if sets.changes == before || attempt == RACED_READS {
                sets.admin = into_set(admin);
                sets.nodes = into_set(nodes);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reads the sets again on every change to admin keys or nodes (and
    /// every minute) until the process stops.
    pub fn follow(&self, events: &Events, pool: PgPool, clock: Arc<dyn Clock>) -> JoinHandle<()> {
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
                if stale && let Err(err) = this.refresh(&pool, clock.now()).await {
                    tracing::warn!(error = %err, "could not read the live admin and node keys");
                }
            }
        })
    }
}
