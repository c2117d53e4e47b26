//! What nodes' calls write and read besides their answers: the client
//! certificates that authenticated them, suspected key probing and refused
//! forward-auth calls (audited, a burst at a time), and the revocation log
//! they follow.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyplane_domain::{ForwardAuthProxy, ForwardedError};
use keyplane_store::revocations::{self, Revocation};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::events::Event;
use crate::introspection::CachedNode;
use crate::ops::denials::{self, Denial};
use crate::ops::{Actor, Refusal};
use crate::state::AppState;
use crate::streams::LOG_BATCH;

/// Records, off the request's path, until when a certificate that
/// authenticated `node` stays valid (see `nodes::name_held_until`).
pub fn note_certificate(state: &AppState, node: Uuid, not_after: i64) {
    let Some(until) = DateTime::from_timestamp(not_after, 0) else {
        return;
    };
    let pool = state.db.pool().clone();
    tokio::spawn(async move {
        if let Err(err) = keyplane_store::nodes::note_certificate(&pool, node, until).await {
            tracing::warn!(error = %err, "could not record a node's client certificate");
        }
    });
}

/// Counts an inactive answer to `node`; a burst writes one
/// `introspection.probe_suspected` entry per node per window.
pub fn note_inactive(state: &AppState, node: &CachedNode, now: DateTime<Utc>) {
    let Some(count) = state.probes.count(node.id, now) else {
        return;
    };
    tracing::warn!(node = %node.id, inactive = count, "many inactive introspections: possible key probing");
    denials::record(
        state,
        Denial {
            at: now,
            actor: &Actor::Node(node.id),
            action: "introspection.probe_suspected",
            target_type: "node",
            target_id: Some(node.id.to_string()),
            origin: None,
            details: serde_json::json!({ "node": node.name, "inactive_answers": count }),
        },
    );
}

/// Refuses a forward-auth call that does not describe a request the way
/// the node's proxy does; audited once per node per minute, with what was
/// wrong, never with the headers' values.
pub fn refuse_forwarded(
    state: &AppState,
    node: &CachedNode,
    proxy: ForwardAuthProxy,
    err: ForwardedError,
) -> Refusal {
    let now = state.clock.now();
    if state.forward_auth_refusals.count(node.id, now).is_some() {
        tracing::warn!(node = %node.id, %proxy, reason = %err, "forward auth refused a call its proxy could not have made");
        denials::record(
            state,
            Denial {
                at: now,
                actor: &Actor::Node(node.id),
                action: "forward_auth.refused",
                target_type: "node",
                target_id: Some(node.id.to_string()),
                origin: None,
                details: serde_json::json!({
                    "node": node.name,
                    "forward_auth_proxy": proxy.as_str(),
                    "reason": err.to_string(),
                }),
            },
        );
    }
    Refusal::Forbidden(format!(
        "forward auth refused: {err} (this node's proxy is {proxy})"
    ))
}

/// The id of the newest revocation (0 when there is none): a feed that
/// starts from now starts after it.
pub async fn latest_revocation(state: &AppState) -> Result<i64, Refusal> {
    Ok(revocations::latest(state.db.pool()).await?)
}

/// What a node's revocation feed yields.
#[derive(Debug)]
pub enum FeedItem {
    /// A key that stopped working.
    Revoked(Revocation),
    /// Everything recorded up to `last` has been sent: from here on the feed
    /// is live. Sent once, after the replay, so a node trusts its cache again
    /// only once it has dropped what was revoked while it was away.
    CaughtUp {
        /// The newest event id sent (or the one the feed started after).
        last: i64,
    },
}

/// What a revocation feed listens to; taken before the feed's starting
/// point is read, so that nothing falls between the two.
pub struct Subscription {
    events: tokio::sync::broadcast::Receiver<Event>,
    tail: tokio::sync::broadcast::Receiver<Arc<[Revocation]>>,
}

/// Subscribes to what a revocation feed needs.
pub fn subscribe(state: &AppState) -> Subscription {
    Subscription {
        events: state.events.subscribe(),
        tail: state.revocation_tail.subscribe(),
    }
}

/// The revocations after `last`, for `node`: first those already in the log
/// (read by this feed), then [`FeedItem::CaughtUp`], then each one as the
/// replica's shared reader ([`crate::streams::RevocationTail`]) finds it. It
/// ends when the node is retired (a node only changed keeps it) or the log
/// cannot be read.
pub fn revocation_feed(
    state: &AppState,
    node: Uuid,
    subscription: Subscription,
    last: i64,
) -> impl futures_util::Stream<Item = FeedItem> + use<> {
    let pool = state.db.pool().clone();
    let feed = Feed {
        subscription,
        last,
        pending: VecDeque::new(),
        catch_up: true,
        announced: false,
    };
    futures_util::stream::unfold(feed, move |mut feed| {
        let pool = pool.clone();
        async move {
            loop {
                if let Some(row) = feed.pending.pop_front() {
                    if row.id <= feed.last {
                        continue; // read by this feed already
                    }
                    feed.last = row.id;
                    return Some((FeedItem::Revoked(row), feed));
                }
                if feed.catch_up {
                    match revocations::after(&pool, feed.last, LOG_BATCH).await {
                        Ok(rows) => {
                            feed.catch_up = rows.len() as i64 == LOG_BATCH;
                            feed.pending.extend(rows);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "revocation stream cannot read the log; closing it");
                            return None;
                        }
                    }
                    continue;
                }
                if !feed.announced {
                    feed.announced = true;
                    let last = feed.last;
                    return Some((FeedItem::CaughtUp { last }, feed));
                }
                let Subscription { events, tail } = &mut feed.subscription;
                tokio::select! {
                    batch = tail.recv() => match batch {
                        Ok(rows) => feed.pending.extend(rows.iter().cloned()),
                        // Fell behind the shared reader: read the log again.
                        Err(RecvError::Lagged(_)) => feed.catch_up = true,
                        Err(RecvError::Closed) => return None,
                    },
                    event = events.recv() => match event {
                        // Retired, or maybe (an event was lost): look.
                        Ok(Event::Node { id }) if id == node => {
                            if !still_follows(&pool, node).await {
                                return None;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {
                            if !still_follows(&pool, node).await {
                                return None;
                            }
                        }
                        Err(RecvError::Closed) => return None,
                        Ok(_) => {}
                    },
                }
            }
        }
    })
}

/// Whether `node` is still registered and not retired.
async fn still_follows(pool: &sqlx::PgPool, node: Uuid) -> bool {
    matches!(keyplane_store::nodes::get(pool, node).await, Ok(Some(node)) if node.retired_at.is_none())
}

/// A revocation feed's place.
struct Feed {
    subscription: Subscription,
    /// The newest event id sent (or the one the feed started after).
    last: i64,
    /// Read, not yet sent.
    pending: VecDeque<Revocation>,
    /// Whether the log may hold more than this feed has read itself (read
    /// it before following the shared reader).
    catch_up: bool,
    /// Whether [`FeedItem::CaughtUp`] was sent.
    announced: bool,
}
