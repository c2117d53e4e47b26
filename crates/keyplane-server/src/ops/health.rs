//! Whether this process can serve, and the figures `/metrics` shows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keyplane_store::Readiness;

use crate::metrics::Scrape;
use crate::ops::Refusal;
use crate::state::AppState;

/// How long readiness waits for the database before calling it unreachable.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The id of the deployment whose data this process serves, once the
/// database answers and every migration is applied.
pub async fn readiness(state: &AppState) -> Result<String, Refusal> {
    match state.db.readiness(READINESS_TIMEOUT).await {
        Readiness::Ready { deployment_id } => Ok(deployment_id),
        Readiness::Unreachable => Err(Refusal::Unavailable {
            code: "database_unavailable",
            detail: "the database is not reachable".to_owned(),
        }),
        Readiness::MigrationsPending => Err(Refusal::Unavailable {
            code: "migrations_pending",
            detail: "the database schema is behind this build; run `keyplane migrate`".to_owned(),
        }),
    }
}

/// Every metric, in Prometheus' text format; reads no database.
pub fn metrics(state: &AppState) -> String {
    let pool = state.db.pool();
    state.metrics.render(Scrape {
        lookups: state.introspector.lookups(),
        scheduler_leader: state.scheduler_leader.load(Ordering::Relaxed),
        pool: (pool.num_idle(), pool.size()),
    })
}
