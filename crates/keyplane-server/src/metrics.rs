//! Prometheus metrics: `GET /metrics` in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use keyplane_store::stats;
use uuid::Uuid;

use crate::state::AppState;

/// Counters kept by the request paths.
#[derive(Debug, Default)]
pub struct Metrics {
    introspections_active: AtomicU64,
    introspections_inactive: AtomicU64,
    inactive_by_node: Mutex<HashMap<Uuid, u64>>,
}

impl Metrics {
    /// Counts one introspection answer to `node`.
    pub fn introspected(&self, node: Uuid, active: bool) {
        if active {
            self.introspections_active.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.introspections_inactive.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut nodes) = self.inactive_by_node.lock() {
            *nodes.entry(node).or_default() += 1;
        }
    }
}

/// The metrics, for Prometheus.
#[utoipa::path(
    get, path = "/metrics", operation_id = "get_metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.metrics;
    let (lookups, loads) = state.introspector.lookups();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP keyplane_introspections_total Introspection answers, by outcome."
    );
    let _ = writeln!(out, "# TYPE keyplane_introspections_total counter");
    for (outcome, counter) in [
        ("active", &m.introspections_active),
        ("inactive", &m.introspections_inactive),
    ] {
        let _ = writeln!(
            out,
            "keyplane_introspections_total{{outcome=\"{outcome}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keyplane_introspections_inactive_by_node_total Inactive answers, by the node that asked."
    );
    let _ = writeln!(
        out,
        "# TYPE keyplane_introspections_inactive_by_node_total counter"
    );
    if let Ok(nodes) = m.inactive_by_node.lock() {
        for (node, count) in nodes.iter() {
            let _ = writeln!(
                out,
                "keyplane_introspections_inactive_by_node_total{{node=\"{node}\"}} {count}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP keyplane_introspection_cache_lookups_total Key lookups, and how many missed the cache."
    );
    let _ = writeln!(
        out,
        "# TYPE keyplane_introspection_cache_lookups_total counter"
    );
    let _ = writeln!(
        out,
        "keyplane_introspection_cache_lookups_total{{result=\"hit\"}} {}",
        lookups.saturating_sub(loads)
    );
    let _ = writeln!(
        out,
        "keyplane_introspection_cache_lookups_total{{result=\"miss\"}} {loads}"
    );
    let pool = state.db.pool();
    let now = state.clock.now();
    // Database-backed figures are left out when the database does not answer:
    // the metrics endpoint itself stays up.
    if let Ok(counts) = stats::keys_by_status(pool, now).await {
        let _ = writeln!(out, "# HELP keyplane_keys Instance keys, by status.");
        let _ = writeln!(out, "# TYPE keyplane_keys gauge");
        for (status, count) in counts {
            let _ = writeln!(out, "keyplane_keys{{status=\"{status}\"}} {count}");
        }
    }
    if let Ok(expiring) = stats::keys_expiring(pool, now, chrono::Duration::days(7)).await {
        let _ = writeln!(
            out,
            "# HELP keyplane_keys_expiring_7d Working keys that expire within 7 days."
        );
        let _ = writeln!(out, "# TYPE keyplane_keys_expiring_7d gauge");
        let _ = writeln!(out, "keyplane_keys_expiring_7d {expiring}");
    }
    if let Ok(length) = stats::audit_length(pool).await {
        let _ = writeln!(
            out,
            "# HELP keyplane_audit_chain_length Entries in the audit chain."
        );
        let _ = writeln!(out, "# TYPE keyplane_audit_chain_length gauge");
        let _ = writeln!(out, "keyplane_audit_chain_length {length}");
    }
    let _ = writeln!(
        out,
        "# HELP keyplane_db_pool_connections Database pool connections, by state."
    );
    let _ = writeln!(out, "# TYPE keyplane_db_pool_connections gauge");
    let _ = writeln!(
        out,
        "keyplane_db_pool_connections{{state=\"idle\"}} {}",
        pool.num_idle()
    );
    let _ = writeln!(
        out,
        "keyplane_db_pool_connections{{state=\"open\"}} {}",
        pool.size()
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
