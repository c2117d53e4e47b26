//! `/v1/keys` and `/v1/instances/{id}/keys`: instance API keys.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::ops::keys::{
    CreateKeyRequest, CreatedKeyResponse, KeyFilter, KeyPage, KeyResponse, KeyStatus,
    RevokeKeyRequest, RotateKeyRequest, UpdateKeyRequest,
};
use crate::ops::legacy::{ImportLegacyKeysRequest, ImportedKeysResponse};
use crate::ops::{Apply, DryRun, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::{DryRunParams, created, planned};

/// Filters for listing keys.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeysParams {
    /// Only the keys of this instance.
    pub instance_id: Option<Uuid>,
    /// Only keys in this status.
    pub status: Option<KeyStatus>,
    /// Only keys of instances whose labels match, e.g. `env=prod,team!=ml`.
    pub selector: Option<String>,
    /// Only legacy keys (`true`: imported from before keyplane) or only `kpi_` keys (`false`).
    pub legacy: Option<bool>,
    /// Only idle keys: still working, and not accepted by any node for this
    /// long (e.g. `30d`; seconds or a number with a unit). A key never used
    /// counts from its issue.
    pub idle_for: Option<String>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Issue an API key for an instance. The key is in this response only.
#[utoipa::path(
    post, path = "/v1/instances/{id}/keys", operation_id = "create_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The instance's id")),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Issued; `secret` is shown only here", body = CreatedKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_key(
    ops: Ops<Operator>,
    ApiPath(instance_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.issue_key(Apply, instance_id, body).await?))
}

/// Import static keys from before keyplane (Cortex's `apiKeys`) as legacy
/// keys of an instance: hashed, short-lived, accepted only where
/// KEYPLANE_ACCEPT_LEGACY_KEYS is on, and replaced with `kpi_` keys by rotating them.
#[utoipa::path(
    post, path = "/v1/instances/{id}/keys/import", operation_id = "import_legacy_keys", tag = "keys",
    params(("id" = Uuid, Path, description = "The instance's id"), DryRunParams),
    request_body = ImportLegacyKeysRequest,
    responses(
        (status = 201, description = "Imported (or, with `dry_run=true`, a `PlanResponse`)", body = ImportedKeysResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn import_legacy_keys(
    ops: Ops<Operator>,
    ApiPath(instance_id): ApiPath<Uuid>,
    ApiQuery(run): ApiQuery<DryRunParams>,
    ApiJson(body): ApiJson<ImportLegacyKeysRequest>,
) -> Result<Response, ApiError> {
    if run.planning() {
        return Ok(planned(
            ops.import_legacy_keys(DryRun, instance_id, body).await?,
        ));
    }
    let imported = ops.import_legacy_keys(Apply, instance_id, body).await?;
    Ok((StatusCode::CREATED, Json(imported)).into_response())
}

/// List keys' metadata, by instance and status.
#[utoipa::path(
    get, path = "/v1/keys", operation_id = "list_keys", tag = "keys",
    params(ListKeysParams),
    responses(
        (status = 200, description = "A page of keys", body = KeyPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_keys(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ListKeysParams>,
) -> Result<Json<KeyPage>, ApiError> {
    let filter = KeyFilter {
        instance_id: params.instance_id,
        status: params.status,
        selector: params.selector,
        legacy: params.legacy,
        idle_for: params.idle_for,
    };
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    Ok(Json(ops.list_keys(filter, page).await?))
}

/// Get one key's metadata.
#[utoipa::path(
    get, path = "/v1/keys/{id}", operation_id = "get_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key's metadata", body = KeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_key(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<KeyResponse>, ApiError> {
    Ok(Json(ops.get_key(id).await?))
}

/// Rename a key, or disable / enable it.
#[utoipa::path(
    patch, path = "/v1/keys/{id}", operation_id = "update_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The changed key", body = KeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn update_key(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    Ok(Json(ops.update_key(Apply, id, body).await?))
}

/// Rotate a key: issue its successor (same instance, scopes, roles, audience
/// and name) and keep the old key working for `grace_seconds`, never past its
/// own expiry. Of two rotations racing, one wins and the other gets 409.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", operation_id = "rotate_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body(content = RotateKeyRequest, description = "Optional"),
    responses(
        (status = 201, description = "The successor; `secret` is shown only here", body = CreatedKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_key(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RotateKeyRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_key(Apply, id, body).await?))
}

/// Revoke a key, for good. Revoking a revoked key changes nothing.
#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", operation_id = "revoke_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body(content = RevokeKeyRequest, description = "Optional"),
    responses(
        (status = 200, description = "The revoked key", body = KeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_key(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    Ok(Json(ops.revoke_key(Apply, id, body).await?))
}
