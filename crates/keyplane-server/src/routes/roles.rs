//! `/v1/roles`: named scope sets that keys can carry.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ops::roles::{Put, PutRoleRequest, RolePage, RoleResponse};
use crate::ops::{Apply, DryRun, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::{DryRunParams, planned};

/// List roles, by name.
#[utoipa::path(
    get, path = "/v1/roles", operation_id = "list_roles", tag = "roles",
    params(PageParams),
    responses(
        (status = 200, description = "A page of roles, by name", body = RolePage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_roles(
    ops: Ops<Operator>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<RolePage>, ApiError> {
    Ok(Json(ops.list_roles(page).await?))
}

/// Create or replace a role.
#[utoipa::path(
    put, path = "/v1/roles/{name}", operation_id = "put_role", tag = "roles",
    params(("name" = String, Path, description = "The role's name"), DryRunParams),
    request_body = PutRoleRequest,
    responses(
        (status = 200, description = "Replaced (or, with `dry_run=true`, a `PlanResponse`)", body = RoleResponse),
        (status = 201, description = "Created", body = RoleResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn put_role(
    ops: Ops<Operator>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(run): ApiQuery<DryRunParams>,
    ApiJson(body): ApiJson<PutRoleRequest>,
) -> Result<Response, ApiError> {
    if run.planning() {
        return Ok(planned(ops.put_role(DryRun, &name, body).await?));
    }
    let (put, role) = ops.put_role(Apply, &name, body).await?;
    let status = match put {
        Put::Created => StatusCode::CREATED,
        Put::Replaced => StatusCode::OK,
    };
    Ok((status, Json(role)).into_response())
}

/// Delete a role that no live key carries.
#[utoipa::path(
    delete, path = "/v1/roles/{name}", operation_id = "delete_role", tag = "roles",
    params(("name" = String, Path, description = "The role's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_role(
    ops: Ops<Operator>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    ops.delete_role(Apply, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
