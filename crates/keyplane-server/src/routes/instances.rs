//! `/v1/instances`: the registry of client instances.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ops::instances::{
    CreateInstanceRequest, InstancePage, InstanceResponse, InstanceStatus, UpdateInstanceRequest,
};
use crate::ops::{Apply, DryRun, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::{DryRunParams, planned};

/// Filters for listing instances.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListInstancesParams {
    /// Only instances in this status (decommissioned ones are listed only when asked for).
    pub status: Option<InstanceStatus>,
    /// Only instances whose labels match, e.g. `env=prod,team!=ml` or `tier in (gpu,cpu)`.
    pub selector: Option<String>,
    /// Only the instance of this name.
    pub name: Option<String>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Register an instance.
#[utoipa::path(
    post, path = "/v1/instances", operation_id = "create_instance", tag = "instances",
    request_body = CreateInstanceRequest,
    responses(
        (status = 201, description = "Registered", body = InstanceResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_instance(
    ops: Ops<Operator>,
    ApiJson(body): ApiJson<CreateInstanceRequest>,
) -> Result<(StatusCode, Json<InstanceResponse>), ApiError> {
    let instance = ops.create_instance(Apply, body).await?;
    Ok((StatusCode::CREATED, Json(instance)))
}

/// List instances.
#[utoipa::path(
    get, path = "/v1/instances", operation_id = "list_instances", tag = "instances",
    params(ListInstancesParams),
    responses(
        (status = 200, description = "A page of instances", body = InstancePage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_instances(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ListInstancesParams>,
) -> Result<Json<InstancePage>, ApiError> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    Ok(Json(
        ops.list_instances(
            params.status,
            params.selector.as_deref(),
            params.name.as_deref(),
            page,
        )
        .await?,
    ))
}

/// Get one instance.
#[utoipa::path(
    get, path = "/v1/instances/{id}", operation_id = "get_instance", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's id")),
    responses(
        (status = 200, description = "The instance", body = InstanceResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_instance(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<InstanceResponse>, ApiError> {
    Ok(Json(ops.get_instance(id).await?))
}

/// Change an instance: name, description, labels, ceiling, CIDRs, or status
/// (`active` / `suspended`). Suspending stops all its keys at once.
#[utoipa::path(
    patch, path = "/v1/instances/{id}", operation_id = "update_instance", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's id"), DryRunParams),
    request_body = UpdateInstanceRequest,
    responses(
        (status = 200, description = "The changed instance (or, with `dry_run=true`, a `PlanResponse`)", body = InstanceResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn update_instance(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(run): ApiQuery<DryRunParams>,
    ApiJson(body): ApiJson<UpdateInstanceRequest>,
) -> Result<Response, ApiError> {
    if run.planning() {
        return Ok(planned(ops.update_instance(DryRun, id, body).await?));
    }
    Ok(Json(ops.update_instance(Apply, id, body).await?).into_response())
}

/// Decommission an instance: it and all its keys stop working at once, in one
/// transaction. Its name becomes free again.
#[utoipa::path(
    delete, path = "/v1/instances/{id}", operation_id = "decommission_instance", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's id")),
    responses(
        (status = 204, description = "Decommissioned"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn decommission_instance(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    ops.decommission_instance(Apply, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
