//! Whether this process can serve, and the figures `/metrics` shows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keyplane_domain::Mode;
use keyplane_store::Readiness;
use serde::Serialize;
use utoipa::ToSchema;

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
        Readiness::ReadOnly => Err(Refusal::Unavailable {
            code: "database_read_only",
            detail: "the database takes no writes (a standby, or a primary demoted in a failover): no writable primary".to_owned(),
        }),
        Readiness::MigrationsPending => Err(Refusal::Unavailable {
            code: "migrations_pending",
            detail: "the database schema is behind this build; run `keyplane migrate`".to_owned(),
        }),
    }
}

/// Something an operator should act on, though keyplane serves.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Warning {
    /// What it is about: a kind of credential (`node_key`, `admin_key`,
    /// `enrollment_token`, `webhook_secret`, `api_key`), `bootstrap_token`
    /// or `legacy_keys`.
    #[schema(example = "node_key")]
    pub kind: &'static str,
    /// What to do, for people.
    pub message: String,
    /// For credentials: how many expire within 7 days without a successor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// For credentials: seconds until the nearest of them expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
}

/// The kinds of credential warned about, with how people name them.
const KINDS: [(&str, &str); 5] = [
    ("node_key", "node keys"),
    ("admin_key", "admin keys"),
    ("enrollment_token", "enrollment tokens"),
    ("webhook_secret", "webhook secrets"),
    ("api_key", "instance keys"),
];

/// What operators should act on, from the last background read (no
/// database work here): credentials made to live longer than 7 days that
/// expire within 7 days without a successor; in `prod`, a bootstrap
/// token still set once an admin key exists; legacy keys accepted.
pub fn warnings(state: &AppState) -> Vec<Warning> {
    let mut warnings = state
        .metrics
        .credentials()
        .map(|credentials| credential_warnings(state, &credentials))
        .unwrap_or_default();
    if state.settings.accept_legacy_keys {
        warnings.push(Warning {
            kind: "legacy_keys",
            message: LEGACY_ACCEPTED.to_owned(),
            count: None,
            expires_in_seconds: None,
        });
    }
    warnings
}

/// The warnings of the last background read of credentials.
fn credential_warnings(
    state: &AppState,
    credentials: &crate::metrics::Credentials,
) -> Vec<Warning> {
    let mut warnings: Vec<Warning> = credentials
        .expiries
        .iter()
        .filter(|expiry| expiry.within_7d > 0)
        .filter_map(|expiry| {
            let (kind, people) = KINDS.iter().find(|(kind, _)| *kind == expiry.kind)?;
            Some(Warning {
                kind,
                message: format!(
                    "{} {people} expire within 7 days without a successor: rotate them",
                    expiry.within_7d
                ),
                count: Some(expiry.within_7d),
                expires_in_seconds: Some((expiry.nearest - credentials.at).num_seconds()),
            })
        })
        .collect();
    if bootstrap_lingers(state, credentials.live_admin_keys) {
        warnings.push(Warning {
            kind: "bootstrap_token",
            message: BOOTSTRAP_LINGERS.to_owned(),
            count: None,
            expires_in_seconds: None,
        });
    }
    warnings
}

/// What keyplane says while legacy keys are accepted.
pub const LEGACY_ACCEPTED: &str = "KEYPLANE_ACCEPT_LEGACY_KEYS is on: keys without a prefix or \
     checksum are looked up. Rotate the imported legacy keys (GET /v1/keys?legacy=true) into \
     kpi_ keys, then turn it off";

/// What keyplane says while the bootstrap token outlives its purpose.
pub const BOOTSTRAP_LINGERS: &str = "KEYPLANE_BOOTSTRAP_TOKEN is still set though admin keys \
     exist: it never expires and is not tied to a person; remove it from the environment and \
     restart";

/// Whether, in `prod`, the bootstrap token is still set though `live_admin_keys`
/// admin keys exist to use instead.
pub fn bootstrap_lingers(state: &AppState, live_admin_keys: i64) -> bool {
    state.settings.mode == Mode::Prod
        && state.settings.bootstrap_token.is_some()
        && live_admin_keys > 0
}

/// Every metric, in Prometheus' text format; reads no database.
pub fn metrics(state: &AppState) -> String {
    let pool = state.db.pool();
    state.metrics.render(Scrape {
        lookups: state.introspector.lookups(),
        scheduler_leader: state.scheduler_leader.load(Ordering::Relaxed),
        scheduler_ran: state.scheduler_ran.load(Ordering::Relaxed),
        pool: (pool.num_idle(), pool.size()),
        streams: state.streams.open(),
    })
}
