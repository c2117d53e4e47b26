//! Fleet-wide operations: the keys of every instance a label selector
//! matches, rotated or revoked, or those instances suspended, in one
//! request; each takes `?dry_run=true` to answer the plan instead.

use axum::Json;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::ops::fleet::{
    BulkRevokeRequest, BulkRevoked, BulkRotateRequest, BulkRotated, BulkSuspendRequest,
    BulkSuspended,
};
use crate::ops::{Apply, DryRun, Operator, Ops};
use crate::routes::{DryRunParams, PlanResponse, created, planned};

/// Rotate every live key of the instances whose labels match `selector`:
/// each successor's secret is in this response only; each old key keeps
/// working for `grace_seconds`. At most 10,000 keys at once.
#[utoipa::path(
    post, path = "/v1/keys/rotate", operation_id = "rotate_keys", tag = "keys",
    params(DryRunParams),
    request_body = BulkRotateRequest,
    responses(
        (status = 201, description = "Rotated; every `secret` is shown only here", body = BulkRotated),
        (status = 200, description = "With `dry_run=true`: what would change", body = PlanResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_keys(
    ops: Ops<Operator>,
    ApiQuery(run): ApiQuery<DryRunParams>,
    ApiJson(body): ApiJson<BulkRotateRequest>,
) -> Result<Response, ApiError> {
    if run.planning() {
        return Ok(planned(ops.rotate_keys(DryRun, body).await?));
    }
    Ok(created(ops.rotate_keys(Apply, body).await?))
}

/// Revoke every live key of the instances whose labels match `selector`.
/// At most 10,000 keys at once.
#[utoipa::path(
    post, path = "/v1/keys/revoke", operation_id = "revoke_keys", tag = "keys",
    params(DryRunParams),
    request_body = BulkRevokeRequest,
    responses(
        (status = 200, description = "Revoked (or, with `dry_run=true`, a `PlanResponse`)", body = BulkRevoked),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_keys(
    ops: Ops<Operator>,
    ApiQuery(run): ApiQuery<DryRunParams>,
    ApiJson(body): ApiJson<BulkRevokeRequest>,
) -> Result<Response, ApiError> {
    if run.planning() {
        return Ok(planned(ops.revoke_keys(DryRun, body).await?));
    }
    Ok(Json(ops.revoke_keys(Apply, body).await?).into_response())
}

/// Suspend every active instance whose labels match `selector`: each one's
/// keys stop at once. At most 10,000 instances at once.
#[utoipa::path(
    post, path = "/v1/instances/suspend", operation_id = "suspend_instances", tag = "instances",
    params(DryRunParams),
    request_body = BulkSuspendRequest,
    responses(
        (status = 200, description = "Suspended (or, with `dry_run=true`, a `PlanResponse`)", body = BulkSuspended),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn suspend_instances(
    ops: Ops<Operator>,
    ApiQuery(run): ApiQuery<DryRunParams>,
    ApiJson(body): ApiJson<BulkSuspendRequest>,
) -> Result<Response, ApiError> {
    if run.planning() {
        return Ok(planned(ops.suspend_instances(DryRun, body).await?));
    }
    Ok(Json(ops.suspend_instances(Apply, body).await?).into_response())
}
