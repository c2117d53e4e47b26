//! `/v1/enrollment-tokens` and `/v1/enroll`: operators mint short-lived
//! `kpe_` tokens; a new instance spends one to register itself and receive
//! its first key.

use axum::Json;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ops::enrollment::{
    CreateEnrollmentTokenRequest, CreatedEnrollmentTokenResponse, EnrollRequest, EnrolledResponse,
    EnrollmentTokenPage, EnrollmentTokenResponse,
};
use crate::ops::{Apply, Enrollee, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::created;

/// Pagination of the token list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListEnrollmentTokensParams {
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Mint an enrollment token (`kpe_…`), shown only in this response.
#[utoipa::path(
    post, path = "/v1/enrollment-tokens", operation_id = "create_enrollment_token", tag = "enrollment",
    request_body = CreateEnrollmentTokenRequest,
    responses(
        (status = 201, description = "Minted; `secret` is shown only here", body = CreatedEnrollmentTokenResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_enrollment_token(
    ops: Ops<Operator>,
    ApiJson(body): ApiJson<CreateEnrollmentTokenRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.create_enrollment_token(Apply, body).await?))
}

/// List enrollment tokens (never the tokens themselves).
#[utoipa::path(
    get, path = "/v1/enrollment-tokens", operation_id = "list_enrollment_tokens", tag = "enrollment",
    params(ListEnrollmentTokensParams),
    responses(
        (status = 200, description = "A page of tokens", body = EnrollmentTokenPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_enrollment_tokens(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ListEnrollmentTokensParams>,
) -> Result<Json<EnrollmentTokenPage>, ApiError> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    Ok(Json(ops.list_enrollment_tokens(page).await?))
}

/// Revoke an enrollment token: no further instance can enroll with it.
#[utoipa::path(
    post, path = "/v1/enrollment-tokens/{id}/revoke", operation_id = "revoke_enrollment_token", tag = "enrollment",
    params(("id" = Uuid, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The revoked token", body = EnrollmentTokenResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_enrollment_token(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EnrollmentTokenResponse>, ApiError> {
    Ok(Json(ops.revoke_enrollment_token(Apply, id).await?))
}

/// Enroll: spend one use of an enrollment token to register this instance
/// and receive its first API key, shown only in this response. A spent,
/// expired or revoked token gets 401; of two instances racing for a token's
/// last use, one wins.
#[utoipa::path(
    post, path = "/v1/enroll", operation_id = "enroll", tag = "enrollment",
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "Enrolled; `secret` is shown only here", body = EnrolledResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn enroll(
    ops: Ops<Enrollee>,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.enroll(Apply, body).await?))
}
