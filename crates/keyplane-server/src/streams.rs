//! Revocation streams: how many each node holds open (a bound, so a node,
//! or whoever holds its key, cannot pile up endless streams), and the tail
//! of the revocation log that all of them share.

use std::sync::Arc;
use std::time::Duration;

use keyplane_store::revocations::{self, Revocation};
use sqlx::PgPool;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::events::{Event, Events};

/// The most revocation streams one node may hold open at once (a gate needs
/// one; a few more cover reconnects whose old connection has not closed yet).
pub const MAX_STREAMS_PER_NODE: usize = 8;

/// How many revocation streams each node holds open.
#[derive(Debug, Default)]
pub struct StreamSlots(std::sync::Mutex<std::collections::HashMap<Uuid, usize>>);

/// One node's open stream; gives its slot back when dropped.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    node: Uuid,
}

impl StreamSlots {
    /// A slot for one more stream of `node`, unless it holds the most already.
    pub fn take(self: &Arc<Self>, node: Uuid) -> Option<StreamSlot> {
        let mut open = self.0.lock().ok()?;
        let count = open.entry(node).or_default();
        if *count >= MAX_STREAMS_PER_NODE {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            slots: self.clone(),
            node,
        })
    }

    /// How many streams are open, over every node.
    pub fn open(&self) -> usize {
        self.0.lock().map_or(0, |open| open.values().sum())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.0.lock()
            && let Some(count) = open.get_mut(&self.node)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.node);
            }
        }
    }
}

/// Revocations read from the log at a time.
pub const LOG_BATCH: i64 = 500;
/// Batches kept for a stream that has not taken them yet; one further
/// behind reads the log itself.
const TAIL_BATCHES: usize = 1024;

/// The revocation log as this process reads it: one reader follows the log
/// for every stream, so a revocation costs one query per replica, not one
/// per node following it.
#[derive(Debug, Clone)]
pub struct RevocationTail {
    sender: broadcast::Sender<Arc<[Revocation]>>,
}

impl Default for RevocationTail {
    fn default() -> Self {
        RevocationTail {
            sender: broadcast::channel(TAIL_BATCHES).0,
        }
    }
}

impl RevocationTail {
    /// The rows read from now on, a batch at a time, in id order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Revocation]>> {
        self.sender.subscribe()
    }

    /// Reads the log whenever `events` say it grew (or may have: a resync),
    /// and hands what is new to subscribers.
    pub fn follow(&self, events: &Events, pool: PgPool) -> JoinHandle<()> {
        let sender = self.sender.clone();
        let mut receiver = events.subscribe();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                match read_new(&pool, &sender, &mut last).await {
                    Ok(()) => match receiver.recv().await {
                        Ok(Event::Revocations | Event::Resync) | Err(RecvError::Lagged(_)) => {}
                        Ok(_) => continue,
                        Err(RecvError::Closed) => return,
                    },
                    // The database is away: try again shortly (a failover
                    // also ends with a resync).
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the revocation log; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }
}

/// Reads the log after `last` (from its newest row when None) and sends the
/// rows. Only rows read here are announced, so a stream that reads the log
/// itself up to some row and then takes the tail's batches misses nothing.
async fn read_new(
    pool: &PgPool,
    sender: &broadcast::Sender<Arc<[Revocation]>>,
    last: &mut Option<i64>,
) -> Result<(), keyplane_store::StoreError> {
    let Some(mut after) = *last else {
        *last = Some(revocations::latest(pool).await?);
        return Ok(());
    };
    loop {
        let rows = revocations::after(pool, after, LOG_BATCH).await?;
        let full = rows.len() as i64 == LOG_BATCH;
        if let Some(newest) = rows.last() {
            after = newest.id;
            *last = Some(after);
            let _ = sender.send(rows.into());
        }
        if !full {
            return Ok(());
        }
    }
}
