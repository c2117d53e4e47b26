//! `/v1/scopes`: the scope catalog, built in and defined by operators.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, OptionalJson};
use crate::ops::roles::Put;
use crate::ops::scopes::{PutScopeRequest, ScopeList, ScopeResponse};
use crate::ops::{Operator, Ops};

/// List every scope keys can be granted: built in, then defined by operators.
#[utoipa::path(
    get, path = "/v1/scopes", operation_id = "list_scopes", tag = "roles",
    responses(
        (status = 200, description = "The catalog", body = ScopeList),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_scopes(ops: Ops<Operator>) -> Result<Json<ScopeList>, ApiError> {
    Ok(Json(ops.list_scopes().await?))
}

/// Define a scope (`resource:action`), or describe it anew; map routes to
/// it on nodes (`KEYPLANE_ROUTE_SCOPES`, e.g. `POST /v1/rerank=inference:rerank`).
#[utoipa::path(
    put, path = "/v1/scopes/{name}", operation_id = "put_scope", tag = "roles",
    params(("name" = String, Path, description = "The scope, `resource:action`")),
    request_body = PutScopeRequest,
    responses(
        (status = 200, description = "Described anew", body = ScopeResponse),
        (status = 201, description = "Defined", body = ScopeResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn put_scope(
    ops: Ops<Operator>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<PutScopeRequest>,
) -> Result<Response, ApiError> {
    let (put, scope) = ops.put_scope(&name, body).await?;
    let status = match put {
        Put::Created => StatusCode::CREATED,
        Put::Replaced => StatusCode::OK,
    };
    Ok((status, Json(scope)).into_response())
}

/// Remove a defined scope that no key, role, instance or enrollment token names.
#[utoipa::path(
    delete, path = "/v1/scopes/{name}", operation_id = "delete_scope", tag = "roles",
    params(("name" = String, Path, description = "The scope")),
    responses(
        (status = 204, description = "Removed"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_scope(
    ops: Ops<Operator>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    ops.delete_scope(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
