//! `/healthz`, `/readyz` and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::ops::health::{self, Warning};
use crate::state::AppState;

/// The process is up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process serves, warnings or not.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// What operators should act on: credentials expiring within 7 days
    /// without a successor, a bootstrap token left set in `prod`.
    pub warnings: Vec<Warning>,
    /// The mode this process runs in: `dev`, `mixed` or `prod`.
    #[schema(example = "dev")]
    pub mode: String,
    /// This build's version.
    #[schema(example = "0.1.0")]
    pub version: &'static str,
}

/// The process is ready to serve.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// The id of the deployment whose data this process serves (stable across restarts).
    pub deployment_id: String,
}

/// Liveness: answers as long as the process runs; touches nothing else (its
/// warnings come from the last background read of the database).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "get_health",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Health)),
)]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        warnings: health::warnings(&state),
        mode: state.settings.mode.to_string(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: the database answers, takes writes (not a standby, nor a
/// primary demoted in a failover) and every migration is applied.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "get_readiness",
    tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Ready),
        (status = 503, description = "The database is unreachable (`database_unavailable`), read-only (`database_read_only`) or behind (`migrations_pending`)", body = Problem,
            content_type = "application/problem+json"),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let deployment_id = health::readiness(&state).await?;
    Ok(Json(Ready {
        status: "ready",
        deployment_id,
    }))
}

/// The metrics, for Prometheus.
#[utoipa::path(
    get, path = "/metrics", operation_id = "get_metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        health::metrics(&state),
    )
}
