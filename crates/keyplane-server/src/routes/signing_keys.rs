//! `/v1/signing-keys`: rotating the key that signs introspection answers.

use axum::Json;

use crate::error::{ApiError, Problem};
use crate::ops::signing_keys::SigningKeyResponse;
use crate::ops::{Apply, Operator, Ops};

/// Make a new signing key. It signs from now on; the previous key stays in
/// the JWKS so answers signed a moment ago still verify.
#[utoipa::path(
    post, path = "/v1/signing-keys/rotate", operation_id = "rotate_signing_key", tag = "admin-keys",
    responses(
        (status = 200, description = "The new current key", body = SigningKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_signing_key(ops: Ops<Operator>) -> Result<Json<SigningKeyResponse>, ApiError> {
    Ok(Json(ops.rotate_signing_key(Apply).await?))
}
