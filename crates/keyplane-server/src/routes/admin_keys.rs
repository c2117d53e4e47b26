//! `/v1/admin-keys`: operators' keys, one management role each.

use axum::Json;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::ops::admin_keys::{
    AdminKeyPage, AdminKeyResponse, CreateAdminKeyRequest, CreatedAdminKeyResponse,
};
use crate::ops::keys::{RevokeKeyRequest, RotateKeyRequest};
use crate::ops::self_service::SelfRotateRequest;
use crate::ops::{Apply, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::created;

/// Paging for admin keys.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAdminKeysParams {
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Create an admin key; the key is in this response only.
#[utoipa::path(
    post, path = "/v1/admin-keys", operation_id = "create_admin_key", tag = "admin-keys",
    request_body = CreateAdminKeyRequest,
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = CreatedAdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_admin_key(
    ops: Ops<Operator>,
    ApiJson(body): ApiJson<CreateAdminKeyRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.create_admin_key(Apply, body).await?))
}

/// List admin keys' metadata.
#[utoipa::path(
    get, path = "/v1/admin-keys", operation_id = "list_admin_keys", tag = "admin-keys",
    params(ListAdminKeysParams),
    responses(
        (status = 200, description = "A page of admin keys", body = AdminKeyPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_admin_keys(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ListAdminKeysParams>,
) -> Result<Json<AdminKeyPage>, ApiError> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    Ok(Json(ops.list_admin_keys(page).await?))
}

/// Rotate an admin key: its successor (same name and role) is shown in
/// this response only; the old key keeps working for `grace_seconds`
/// (default 3600).
#[utoipa::path(
    post, path = "/v1/admin-keys/{id}/rotate", operation_id = "rotate_admin_key", tag = "admin-keys",
    params(("id" = Uuid, Path, description = "The admin key's id")),
    request_body(content = RotateKeyRequest, description = "Optional"),
    responses(
        (status = 201, description = "The successor; `secret` is shown only here", body = CreatedAdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_admin_key(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RotateKeyRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_admin_key(Apply, id, body).await?))
}

/// The calling admin key's own metadata, whatever its role.
#[utoipa::path(
    get, path = "/v1/admin-keys/self", operation_id = "get_own_admin_key", tag = "admin-keys",
    responses(
        (status = 200, description = "The calling key", body = AdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_own_admin_key(ops: Ops<Operator>) -> Result<Json<AdminKeyResponse>, ApiError> {
    Ok(Json(ops.get_own_admin_key().await?))
}

/// Rotate the calling admin key, whatever its role: the successor is shown
/// in this response only; the calling key keeps working for
/// `grace_seconds` (default 3600, at most a day).
#[utoipa::path(
    post, path = "/v1/admin-keys/self/rotate", operation_id = "rotate_own_admin_key", tag = "admin-keys",
    request_body(content = SelfRotateRequest, description = "Optional"),
    responses(
        (status = 201, description = "The successor; `secret` is shown only here", body = CreatedAdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_own_admin_key(
    ops: Ops<Operator>,
    OptionalJson(body): OptionalJson<SelfRotateRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_own_admin_key(Apply, body).await?))
}

/// Revoke an admin key.
#[utoipa::path(
    post, path = "/v1/admin-keys/{id}/revoke", operation_id = "revoke_admin_key", tag = "admin-keys",
    params(("id" = Uuid, Path, description = "The admin key's id")),
    request_body(content = RevokeKeyRequest, description = "Optional"),
    responses(
        (status = 200, description = "The revoked admin key", body = AdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_admin_key(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeKeyRequest>,
) -> Result<Json<AdminKeyResponse>, ApiError> {
    Ok(Json(ops.revoke_admin_key(Apply, id, body).await?))
}
