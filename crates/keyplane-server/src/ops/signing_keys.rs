//! The key that signs introspection answers and audit checkpoints.

use keyplane_domain::Permission;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::events::Event;
use crate::ops::{Operator, Ops, Refusal, Run};

/// The signing key now in use.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeyResponse {
    /// Its key id, as in the JWKS and the `kid` of signed answers.
    pub kid: String,
}

impl Ops<Operator> {
    /// Makes a new signing key that signs from now on (for when a key may
    /// be compromised; renewal on schedule needs nothing). The previous key
    /// stays in the JWKS so answers signed a moment ago still verify.
    pub async fn rotate_signing_key<R: Run>(
        &self,
        run: R,
    ) -> Result<R::Answer<SigningKeyResponse>, Refusal> {
        self.actor.require(Permission::SigningKeysWrite)?;
        self.dangerous::<R>()?;
        let signer = &self.state.signer;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let kid = signer.add_key(change.db(), now).await?;
        change
            .audit("signing_key.rotate", "signing_key", &kid, json!({}))
            .await?;
        change.publish(Event::SigningKeys);
        let answer = change.finish(SigningKeyResponse { kid }).await?;
        if !R::DRY {
            signer.reload(self.state.db.pool(), now).await?;
        }
        Ok(answer)
    }
}
