//! Change events: what makes cached introspection answers stale.
//!
//! A change publishes its events with its transaction. On a PostgreSQL
//! server they travel by `NOTIFY` (sent by PostgreSQL at commit, to every
//! keyplane process); on the embedded database, which allows neither a
//! second connection nor `LISTEN`, there is only one process, and they travel
//! in-process after the commit. Either way every subscriber in this process
//! receives them from one broadcast channel. A listener that loses its
//! connection sends [`Event::Resync`], since notifications may have been
//! missed while it was down.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The PostgreSQL channel events are sent on.
pub const CHANNEL: &str = "keyplane_events";

/// Something changed that cached answers may depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A key changed (revoked, disabled, enabled, rotated, renamed).
    Key {
        /// The key.
        id: Uuid,
    },
    /// An instance changed (status, ceiling, networks) or was decommissioned.
    Instance {
        /// The instance.
        id: Uuid,
    },
    /// A role changed: any key may carry it.
    Roles,
    /// An admin key was made, rotated or revoked.
    AdminKeys,
    /// A node was registered, changed or retired.
    Node {
        /// The node.
        id: Uuid,
    },
    /// Rows were added to the revocation log.
    Revocations,
    /// A new signing key was made.
    SigningKeys,
    /// Events may have been missed: drop everything cached.
    Resync,
}

/// Publishes events with transactions and hands them to subscribers.
#[derive(Debug, Clone)]
pub struct Events {
    local: broadcast::Sender<Event>,
    via_postgres: bool,
}

impl Events {
    /// Events for a database that supports `LISTEN/NOTIFY` (`via_postgres`)
    /// or for the embedded one.
    pub fn new(via_postgres: bool) -> Events {
        let (local, _) = broadcast::channel(4096);
        Events {
            local,
            via_postgres,
        }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Commits `tx` with `events`. On PostgreSQL they are also sent by
    /// `NOTIFY`, which PostgreSQL delivers to every process at commit and never
    /// before the change is visible. This process hears them at once, right
    /// after the commit, without waiting for its own notification to come back.
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        if self.via_postgres {
            for event in events {
                let payload = serde_json::to_string(event).unwrap_or_default();
                sqlx::query(r#"select pg_notify($1, $2)"#)
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        for event in events {
            let _ = self.local.send(event.clone());
        }
        Ok(())
    }

    /// Listens for other processes' (and this one's) notifications and hands
    /// them to subscribers; reconnects when the connection drops, announcing a
    /// [`Event::Resync`] for whatever it may have missed.
    pub fn listen(&self, pool: PgPool) -> JoinHandle<()> {
        let local = self.local.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %err, "event listener cannot connect; retrying");
                        let _ = local.send(Event::Resync);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if let Err(err) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %err, "event listener cannot subscribe; retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                backoff = Duration::from_millis(100);
                // Anything may have changed while no listener was connected.
                let _ = local.send(Event::Resync);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            match serde_json::from_str::<Event>(notification.payload()) {
                                Ok(event) => {
                                    let _ = local.send(event);
                                }
                                Err(_) => tracing::warn!("ignoring a malformed event notification"),
                            }
                        }
                        // The connection was lost; the listener reconnects on the next call.
                        Ok(None) => {
                            tracing::warn!("event listener lost its connection; resubscribing");
                            let _ = local.send(Event::Resync);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "event listener failed; reconnecting");
                            let _ = local.send(Event::Resync);
                            break;
                        }
                    }
                }
            }
        })
    }
}
