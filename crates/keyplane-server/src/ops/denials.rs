//! Security-relevant denials, written to the audit log off the request's
//! path: a refused request is answered without waiting for the chain's lock.
//! Callers decide how often (a burst from one place writes one entry per
//! window), so that a flood cannot flood the log.

use serde_json::Value;

use crate::ops::{Actor, Origin};
use crate::state::AppState;

/// A request refused, as the audit log records it.
#[derive(Debug)]
pub struct Denial<'a> {
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who was refused.
    pub actor: &'a Actor,
    /// What was refused, e.g. `auth.failed`.
    pub action: &'static str,
    /// What kind of thing it was about.
    pub target_type: &'static str,
    /// Which one, when there is one.
    pub target_id: Option<String>,
    /// Where the request came from, when it is known.
    pub origin: Option<&'a Origin>,
    /// What was wrong (never a credential).
    pub details: Value,
}

/// Appends `denial` to the audit log, in the background.
pub fn record(state: &AppState, denial: Denial<'_>) {
    let entry = keyplane_store::audit::NewEntry {
        at: denial.at,
        actor: denial.actor.to_string(),
        action: denial.action,
        target_type: denial.target_type,
        target_id: denial.target_id,
        outcome: "denied",
        request_id: denial.origin.and_then(|origin| origin.request_id.clone()),
        client_ip: denial
            .origin
            .and_then(|origin| origin.client_ip)
            .map(|ip| ip.to_string()),
        details: denial.details,
    };
    let pool = state.db.pool().clone();
    tokio::spawn(async move {
        if let Err(err) = keyplane_store::audit::append_alone(&pool, &entry).await {
            tracing::warn!(error = %err, action = entry.action, "could not audit a denial");
        }
    });
}
