//! Connections of their own for introspection's lookups of keys no cache
//! holds.
//!
//! sqlx pings a connection each time it goes back to its pool (a second
//! round trip, and as much CPU as the lookup itself, for a query of one
//! round trip). Lookups borrow from a few connections kept here instead,
//! detached from the pool, and wait their turn for one as they would for
//! the pool's: a connection goes back only after a lookup that completed,
//! so one left in an unknown state (an error, a request dropped mid-query)
//! is closed and replaced; one idle for a while is pinged first, as the
//! pool does. With a small pool (the embedded database has one connection)
//! lookups use the pool.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keyplane_store::StoreError;
use keyplane_store::introspection::{self, KeyFacts, NodeFacts};
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The most connections kept for lookups (beside the pool's own).
const MOST: usize = 8;
/// A connection idle this long is pinged before it is used again.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Runs `$query(executor, $digest)` (a lookup of `keyplane_store::introspection`)
/// on a connection lent by `$lookups`, or on the pool when none are kept. A
/// connection kept here that broke (a failover, a restart) is closed, and
/// the lookup tried once more on a new one, as the pool's ping before use
/// would have. A macro, because the lookups differ only in their query
/// and what it answers.
macro_rules! look_up {
    ($lookups:ident, $query:path, $digest:expr) => {{
        let mut fresh = false;
        loop {
            let mut lent = $lookups.lend(fresh).await?;
            let facts = match lent.as_mut().and_then(Lent::connection) {
                Some(connection) => $query(connection, $digest).await,
                None => return $query(&$lookups.pool, $digest).await,
            };
            match facts {
                Ok(facts) => {
                    if let Some(lent) = lent {
                        lent.give_back();
                    }
                    return Ok(facts);
                }
                Err(StoreError::Unavailable(_)) if !fresh && lent.is_some_and(|l| l.reused) => {
                    fresh = true;
                }
                Err(err) => return Err(err),
            }
        }
    }};
}

/// The connections kept for lookups.
pub struct Lookups {
    pool: PgPool,
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    /// One for each connection there may be: lent, idle or yet to open.
    turns: Semaphore,
    most: usize,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("lent", &(self.most - self.turns.available_permits()))
            .field("most", &self.most)
            .finish()
    }
}

impl Lookups {
    /// Up to half as many connections as `pool` may open (at most
    /// [`MOST`]), none when it may open fewer than four.
    pub fn new(pool: PgPool) -> Arc<Lookups> {
        let max = usize::try_from(pool.options().get_max_connections()).unwrap_or(0);
        let most = if max >= 4 { (max / 2).min(MOST) } else { 0 };
        Arc::new(Lookups {
            pool,
            idle: Mutex::default(),
            turns: Semaphore::new(most),
            most,
        })
    }

    /// The facts about the key of `digest`.
    pub async fn key_facts(&self, digest: &[u8]) -> Result<Option<KeyFacts>, StoreError> {
        look_up!(self, introspection::key_facts, digest)
    }

    /// The facts about the node whose key has `digest`.
    pub async fn node_facts(&self, digest: &[u8]) -> Result<Option<NodeFacts>, StoreError> {
        look_up!(self, introspection::node_facts, digest)
    }

    /// A connection for one lookup, once it is this lookup's turn (within
    /// the pool's acquire timeout): an idle one (unless `fresh`), or a new
    /// one. None when lookups use the pool.
    async fn lend(&self, fresh: bool) -> Result<Option<Lent<'_>>, StoreError> {
        if self.most == 0 {
            return Ok(None);
        }
        let wait = self.pool.options().get_acquire_timeout();
        let turn = match tokio::time::timeout(wait, self.turns.acquire()).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_closed)) => return Ok(None),
            Err(_) => return Err(sqlx::Error::PoolTimedOut.into()),
        };
        // Reused unless asked for a fresh one.
        while let Some((mut connection, since)) = (!fresh)
            .then(|| {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop()
            })
            .flatten()
        {
            // One that fails the ping (broken while it waited: a failover,
            // a restart) is closed.
            if since.elapsed() < PING_WHEN_IDLE_FOR
                || sqlx::Connection::ping(&mut connection).await.is_ok()
            {
                return Ok(Some(Lent {
                    connection: Some(connection),
                    reused: true,
                    lookups: self,
                    _turn: turn,
                }));
            }
        }
        // Opened through the pool (its settings, its wait for a slot), then
        // detached from it.
        let pooled = self.pool.acquire().await?;
        Ok(Some(Lent {
            connection: Some(pooled.detach()),
            reused: false,
            lookups: self,
            _turn: turn,
        }))
    }
}

/// A connection lent for one lookup. Dropped without being given back, it
/// is closed (what state it is in is not known), and its turn passes on.
struct Lent<'a> {
    connection: Option<PgConnection>,
    /// Whether it served an earlier lookup (and may have broken since).
    reused: bool,
    lookups: &'a Lookups,
    _turn: SemaphorePermit<'a>,
}

impl Lent<'_> {
    fn connection(&mut self) -> Option<&mut PgConnection> {
        self.connection.as_mut()
    }

    fn give_back(mut self) {
        if let Some(connection) = self.connection.take() {
            self.lookups
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((connection, Instant::now()));
        }
    }
}
