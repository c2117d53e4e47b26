//! Who a credential stands for.

use chrono::Duration;
use keyplane_domain::{KeyDigest, KeySecret, ManagementRole};
use keyplane_store::{admin_keys, people};
use secrecy::ExposeSecret;

use crate::config::AdminKeys;
use crate::ops::{Actor, Operator, Person, Refusal};
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
    if state.settings.admin_keys == AdminKeys::Disabled {
        return Err(Refusal::Unauthenticated {
            code: "admin_keys_disabled",
            detail: "admin keys are disabled here (KEYPLANE_ADMIN_KEYS): sign in with the \
                     identity provider",
        });
    }
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

/// The refusal of a session token that does not work.
pub fn no_session() -> Refusal {
    Refusal::Unauthenticated {
        code: "session_ended",
        detail: "the session has ended, expired or never existed: sign in again",
    }
}

/// The person a session token (`kps_…`) stands for: a live session, not
/// idle too long (browsers), with sign-in still set up.
pub async fn person(state: &AppState, token: &KeySecret) -> Result<Operator, Refusal> {
    let Some(oidc) = &state.settings.oidc else {
        return Err(no_session());
    };
    let session = people::session_by_digest(state.db.pool(), token.digest().as_bytes())
        .await?
        .ok_or_else(no_session)?;
    let now = state.clock.now();
    let idle = Duration::from_std(oidc.session_idle).unwrap_or(Duration::minutes(30));
    let idle_too_long = session.kind == "browser" && now - session.last_seen_at > idle;
    if session.revoked_at.is_some() || now >= session.expires_at || idle_too_long {
        return Err(no_session());
    }
    let role: ManagementRole = session.role.parse().map_err(|_| no_session())?;
    people::touch_session(state.db.pool(), session.id, now).await?;
    Ok(Operator {
        actor: Actor::Person(Person {
            subject: session.subject,
            email: session.email,
            session: session.id,
            authenticated_at: session.authenticated_at,
        }),
        role,
    })
}
