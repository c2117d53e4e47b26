//! `/v1/usage`: what keys used, as nodes report it; budget leases for nodes.

use axum::Json;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::ops::usage::{
    LeaseRequest, LeaseResponse, UsageParams, UsageReport, UsageReportResponse, UsageResponse,
};
use crate::ops::{Node, Operator, Ops};

/// Usage rollups: requests, prompt and completion tokens and errors, by
/// instance, key, model and hour or day, oldest first.
#[utoipa::path(
    get, path = "/v1/usage", operation_id = "get_usage", tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "Usage rows", body = UsageResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_usage(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<UsageResponse>, ApiError> {
    Ok(Json(ops.usage(params).await?))
}

/// A node reports what keys used (by key, model and minute), in batches.
/// Items for keys this node was never answered about are refused and audited.
#[utoipa::path(
    post, path = "/v1/usage/reports", operation_id = "report_usage", tag = "usage",
    request_body = UsageReport,
    responses(
        (status = 200, description = "Counted", body = UsageReportResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn report_usage(
    ops: Ops<Node>,
    ApiJson(body): ApiJson<UsageReport>,
) -> Result<Json<UsageReportResponse>, ApiError> {
    Ok(Json(ops.report_usage(body).await?))
}

/// A node leases tokens of a key's daily and monthly budgets, to spend
/// without asking per request; what other nodes hold is never granted twice.
#[utoipa::path(
    post, path = "/v1/usage/leases", operation_id = "lease_budget", tag = "usage",
    request_body = LeaseRequest,
    responses(
        (status = 200, description = "The lease (granted 0: the budget is spent)", body = LeaseResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn lease_budget(
    ops: Ops<Node>,
    ApiJson(body): ApiJson<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    Ok(Json(ops.lease_budget(body).await?))
}
