//! People: signing in with the organisation's identity provider, their
//! sessions, and terminals that sign in through a browser (RFC 8628).
//!
//! A sign-in proves MFA (`KEYPLANE_OIDC_REQUIRE_AMR` / `_ACR`) and maps the
//! person's groups to one management role, or it is refused, audited with
//! the subject; it is never downgraded. A session's `kps_` token is shown
//! once (the cookie's value, or a terminal's token) and stored as a hash.
//! Dangerous operations ask for a recent MFA sign-in ([`Ops::step_up`]).
//!
//! [`sign_in`] holds the browser's sign-in, [`device`] a terminal's (the
//! device flow), [`sessions`] what people and admins do with sessions.

pub mod device;
pub mod sessions;
pub mod sign_in;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::oidc::{Identity, IdentityProvider};
use crate::ops::{Actor, Person, Refusal};
use crate::state::AppState;

pub use device::{DeviceAuthorization, DevicePoll, DeviceToken, DeviceWait, normalize_user_code};
pub use sessions::{
    RevokeAllRequest, RevokedSessions, SessionPage, SessionResponse, WhoAmI, csrf_token,
};
pub use sign_in::{Callback, Purpose, SignInStarted, SignedIn, safe_return_to};

/// How long a sign-in may take at the provider.
const SIGN_IN_TTL: i64 = 600;

/// Random text for a secret: `bytes` bytes from the OS, base64url.
fn random_text(bytes: usize) -> Result<String, Refusal> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|_| anyhow::anyhow!("the random source failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(buffer))
}

/// SHA-256 of `text`, for what is stored in place of a secret.
fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// The identity provider, or the refusal of a deployment without one.
fn identity_provider(state: &AppState) -> Result<&IdentityProvider, Refusal> {
    state.identity.as_deref().ok_or_else(|| {
        Refusal::NotFound(
            "sign-in with an identity provider is not set up here (KEYPLANE_OIDC_ISSUER)"
                .to_owned(),
        )
    })
}

/// `identity` acting in session `session` (nil while it has none).
fn person(identity: &Identity, session: Uuid) -> Actor {
    Actor::Person(Person {
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        session,
        authenticated_at: identity.auth_time,
    })
}

/// Why a sign-in was refused, as its page says.
fn refused(detail: &str) -> Refusal {
    Refusal::Forbidden(detail.to_owned())
}
