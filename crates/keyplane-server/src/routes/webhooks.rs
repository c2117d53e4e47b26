//! `/v1/webhooks`: operators register where events go, and see how each
//! delivery went.

use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::ops::keys::RotateKeyRequest;
use crate::ops::webhooks::{
    CreateWebhookRequest, CreatedWebhookResponse, DeliveryPage, WebhookPage,
};
use crate::ops::{Apply, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::created;

/// Register a webhook endpoint; its signing secret is in this response only.
#[utoipa::path(
    post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Registered; `secret` is shown only here", body = CreatedWebhookResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_webhook(
    ops: Ops<Operator>,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.create_webhook(Apply, body).await?))
}

/// List webhook endpoints.
#[utoipa::path(
    get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    params(PageParams),
    responses(
        (status = 200, description = "A page of endpoints", body = WebhookPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_webhooks(
    ops: Ops<Operator>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<WebhookPage>, ApiError> {
    Ok(Json(ops.list_webhooks(page).await?))
}

/// Give a webhook endpoint a new signing secret, shown in this response
/// only. For `grace_seconds` (default 3600) every delivery carries a
/// signature with each secret, so the receiver switches without missing an
/// event. A secret lives no longer than any key: rotate before
/// `secret_expires_at` (keyplane warns 14, 7 and 1 days ahead).
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/rotate-secret", operation_id = "rotate_webhook_secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    request_body(content = RotateKeyRequest, description = "Optional"),
    responses(
        (status = 201, description = "The endpoint with its new secret, shown only here", body = CreatedWebhookResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_webhook_secret(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RotateKeyRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_webhook_secret(Apply, id, body).await?))
}

/// Delete a webhook endpoint; its pending deliveries are dropped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_webhook(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    ops.delete_webhook(Apply, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An endpoint's deliveries, newest first, and how each went.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id"), PageParams),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = DeliveryPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_webhook_deliveries(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<DeliveryPage>, ApiError> {
    Ok(Json(ops.list_webhook_deliveries(id, page).await?))
}
