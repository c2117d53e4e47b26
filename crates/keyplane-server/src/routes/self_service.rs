//! `/v1/self`: a key holder reads its own key and rotates it.

use axum::Json;
use axum::response::Response;

use crate::error::{ApiError, Problem};
use crate::extract::OptionalJson;
use crate::ops::keys::CreatedKeyResponse;
use crate::ops::self_service::{SelfResponse, SelfRotateRequest};
use crate::ops::{Apply, Holder, Ops};
use crate::routes::created;

/// The calling key's metadata: its instance, scopes, expiry and when it
/// should be rotated.
#[utoipa::path(
    get, path = "/v1/self", operation_id = "get_self", tag = "self-service",
    responses(
        (status = 200, description = "The calling key", body = SelfResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_self(ops: Ops<Holder>) -> Result<Json<SelfResponse>, ApiError> {
    Ok(Json(ops.get_self().await?))
}

/// Rotate the calling key: answers its successor's `secret`, once; the
/// calling key keeps working for the grace window. A key already rotated
/// gets 409 (use its successor).
#[utoipa::path(
    post, path = "/v1/self/rotate", operation_id = "rotate_self", tag = "self-service",
    request_body(content = SelfRotateRequest, description = "Optional"),
    responses(
        (status = 201, description = "The successor; `secret` is shown only here", body = CreatedKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_self(
    ops: Ops<Holder>,
    OptionalJson(body): OptionalJson<SelfRotateRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_self(Apply, body).await?))
}
