//! `/v1/audit`: reading, verifying and exporting the hash-chained audit log.

use axum::Json;
use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

pub use crate::audit_trail::AuditEntry;
use crate::audit_trail::CheckpointResponse;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;
use crate::ops::audit::{AuditFilter, AuditPage, AuditVerification, CheckpointList};
use crate::ops::{Operator, Ops};
use crate::pagination::PageParams;

/// Filters for the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this actor (e.g. `bootstrap`, `admin_key:<id>`).
    pub actor: Option<String>,
    /// Only this action (e.g. `key.revoke`).
    pub action: Option<String>,
    /// Only entries about this target id.
    pub target: Option<String>,
    /// From this time on (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Only with this outcome: `success` or `denied`.
    pub outcome: Option<String>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Read the audit log, oldest first.
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "list_audit_entries", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_audit_entries(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let filter = AuditFilter {
        actor: params.actor,
        action: params.action,
        target: params.target,
        since: params.since,
        until: params.until,
        outcome: params.outcome,
    };
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    Ok(Json(ops.list_audit_entries(filter, page).await?))
}

/// Re-check the whole chain (streamed) against every signed checkpoint, and
/// name the first entry that was edited, removed or moved, a chain
/// rewritten (its checkpoints disagree), cut short at either end, or a
/// checkpoint signed by a key this keyplane did not seal.
#[utoipa::path(
    get, path = "/v1/audit/verify", operation_id = "verify_audit_log", tag = "audit",
    responses(
        (status = 200, description = "The result", body = AuditVerification),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn verify_audit_log(ops: Ops<Operator>) -> Result<Json<AuditVerification>, ApiError> {
    Ok(Json(ops.verify_audit_log().await?))
}

/// A time range for an export.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// From this time on (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// Export entries as NDJSON with their chain fields, streamed, followed by
/// the checkpoints of the range (`{"checkpoint": …}`), the keys that signed
/// them (`{"signing_key": …}`) and a signed trailer (`{"export": …}`)
/// stating where the export starts and ends; check the file offline with
/// `keyplane audit verify FILE --trust KEYS`.
#[utoipa::path(
    get, path = "/v1/audit/export", operation_id = "export_audit_log", tag = "audit",
    params(ExportParams),
    responses(
        (status = 200, description = "One AuditEntry per line", body = AuditEntry, content_type = "application/x-ndjson"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn export_audit_log(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    let lines = ops.export_audit_log(params.since, params.until)?;
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// The newest signed checkpoints of the chain's head.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints", operation_id = "list_audit_checkpoints", tag = "audit",
    responses(
        (status = 200, description = "Newest first", body = CheckpointList),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_audit_checkpoints(ops: Ops<Operator>) -> Result<Json<CheckpointList>, ApiError> {
    Ok(Json(ops.list_audit_checkpoints().await?))
}

/// Sign the chain's head now (checkpoints are also made every 1,000 entries
/// or 10 minutes).
#[utoipa::path(
    post, path = "/v1/audit/checkpoints", operation_id = "create_audit_checkpoint", tag = "audit",
    responses(
        (status = 200, description = "The checkpoint of the current head", body = CheckpointResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_audit_checkpoint(
    ops: Ops<Operator>,
) -> Result<Json<CheckpointResponse>, ApiError> {
    Ok(Json(ops.create_audit_checkpoint().await?))
}
