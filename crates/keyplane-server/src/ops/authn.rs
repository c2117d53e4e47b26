//! Who a credential stands for.

use keyplane_domain::{KeyDigest, KeySecret, ManagementRole};
use keyplane_store::admin_keys;
use secrecy::ExposeSecret;

use crate::ops::{Actor, Operator, Refusal};
use crate::state::AppState;

/// The refusal of a credential that is no operator's.
pub fn not_an_operator() -> Refusal {
    Refusal::Unauthenticated {
        code: "invalid_credentials",
        detail: "the credential is not a live admin key",
    }
}

/// The operator a bearer token stands for: the bootstrap token, or a live
/// admin key (`admin_key`, the token read as one, if it is).
pub async fn operator(
    state: &AppState,
    token: &str,
    admin_key: Option<KeySecret>,
) -> Result<Operator, Refusal> {
    if let Some(bootstrap) = &state.settings.bootstrap_token {
        // Digests have a fixed length, so comparing them in constant time
        // leaks neither the token's bytes nor its length.
        if KeyDigest::of(token) == KeyDigest::of(bootstrap.expose_secret()) {
            return Ok(Operator {
                actor: Actor::Bootstrap,
                role: ManagementRole::Admin,
            });
        }
    }
    let key = admin_key.ok_or_else(not_an_operator)?;
    let stored = admin_keys::find_by_digest(state.db.pool(), key.digest().as_bytes())
        .await?
        .ok_or_else(not_an_operator)?;
    let now = state.clock.now();
    if !stored.works_at(now) {
        return Err(not_an_operator());
    }
    let role = stored.role.parse().map_err(|_| not_an_operator())?;
    // Shows the key in use (a holder's retried rotation must not take away
    // a successor that is).
    admin_keys::touch(state.db.pool(), stored.id, now).await?;
    Ok(Operator {
        actor: Actor::AdminKey(stored.id),
        role,
    })
}
