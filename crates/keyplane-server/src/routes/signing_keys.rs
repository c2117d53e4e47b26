//! `/v1/signing-keys`: rotating the key that signs introspection answers.

use axum::Json;
use axum::extract::State;
use keyplane_domain::Permission;
use keyplane_store::audit;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::error::{ApiError, Problem};
use crate::events::Event;
use crate::state::AppState;

/// The signing key now in use.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeyResponse {
    /// Its key id, as in the JWKS and the `kid` of signed answers.
    pub kid: String,
}

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
pub async fn rotate_signing_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
) -> Result<Json<SigningKeyResponse>, ApiError> {
    operator.require(Permission::SigningKeysWrite)?;
    let audit = Audit::new(&operator, meta, state.clock.now());
    let mut tx = state.db.pool().begin().await?;
    let kid = state.signer.add_key(&mut tx).await?;
    audit::append(
        &mut tx,
        &audit.entry("signing_key.rotate", "signing_key", &kid, json!({})),
    )
    .await?;
    state.events.commit(tx, &[Event::SigningKeys]).await?;
    state.signer.reload(state.db.pool()).await?;
    Ok(Json(SigningKeyResponse { kid }))
}
