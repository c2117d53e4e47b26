//! Who is calling, as HTTP says it: extractors that read a request's
//! credential and origin and hand them to the operations layer, which
//! decides what they may do.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, USER_AGENT};
use axum::http::request::Parts;
use keyplane_domain::{KeyKind, KeySecret};

use crate::error::ApiError;
use crate::ops::denials::{self, Denial};
use crate::ops::enrollment::bad_token;
use crate::ops::leaks::Reporter;
use crate::ops::people::csrf_token;
use crate::ops::self_service::bad_key;
use crate::ops::{Actor, Enrollee, Holder, Operator, Ops, Refusal, Visitor, authn};
use crate::request::{CallerSlot, origin};
use crate::state::AppState;

const MISSING: ApiError = ApiError::Unauthorized {
    code: "missing_credentials",
    detail: "send an admin key as Authorization: Bearer kpa_…",
};

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The address a request came from.
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// Operations on behalf of whoever the request's credential says, from
/// where it came.
impl<A> FromRequestParts<AppState> for Ops<A>
where
    A: FromRequestParts<AppState, Rejection = ApiError> + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let actor = A::from_request_parts(parts, state).await?;
        Ok(Ops::new(state.clone(), actor, origin(&parts.extensions)))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (token, from_cookie) = match bearer(parts) {
            Some(token) => (token.to_owned(), false),
            None => (session_cookie(&parts.headers, state).ok_or(MISSING)?, true),
        };
        let credential = match from_cookie {
            true => {
                if !parts.method.is_safe() {
                    check_csrf(parts, &token)?;
                }
                Credential::Session
            }
            false => Credential::Any,
        };
        authenticate(parts, state, &token, credential).await
    }
}

/// Which credentials a token may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A person's session only (a session cookie).
    Session,
    /// A session, an admin key or the bootstrap token.
    Any,
}

/// The operator `token` stands for, under the limits on unknown
/// credentials; a failure counts against the token and its address. (A
/// browser's changes must have passed their CSRF check already.)
pub async fn authenticate(
    parts: &Parts,
    state: &AppState,
    token: &str,
    credential: Credential,
) -> Result<Operator, ApiError> {
    let address = peer(parts);
    let session = KeySecret::parse_as(KeyKind::Session, token).ok();
    let admin_key = KeySecret::parse_as(KeyKind::Admin, token).ok();
    // A live admin key is checked whatever its address did before; any
    // other credential (a session, the bootstrap token, a guess) is
    // refused unseen once it, or its address, keeps failing.
    let known = admin_key
        .as_ref()
        .is_some_and(|key| state.credentials.admin(key.digest().as_bytes()));
    if !known {
        state.limits.check_unknown(address, token)?;
    }
    let operator = match session {
        Some(session) => authn::person(state, &session).await,
        None if credential == Credential::Session => Err(authn::no_session()),
        None => authn::operator(state, token, admin_key).await,
    };
    match &operator {
        Err(Refusal::Unauthenticated { .. }) => {
            state.limits.note_failure(address, Some(token));
            note_failure(parts, state);
        }
        Ok(operator) => {
            if let Some(slot) = parts.extensions.get::<CallerSlot>() {
                slot.set(operator.actor.clone());
            }
            state.limits.check_operator(&operator.actor.to_string())?;
        }
        Err(_) => {}
    }
    Ok(operator?)
}

/// The session cookie's name: `__Host-` prefixed (HTTPS only, this host
/// only, path `/`) when browsers reach keyplane over HTTPS.
pub fn session_cookie_name(state: &AppState) -> &'static str {
    match state
        .settings
        .oidc
        .as_ref()
        .is_some_and(|o| o.secure_cookies())
    {
        true => "__Host-keyplane_session",
        false => "keyplane_session",
    }
}

/// The sign-in cookie's name (the PKCE verifier, while a sign-in is out).
pub fn sign_in_cookie_name(state: &AppState) -> &'static str {
    match state
        .settings
        .oidc
        .as_ref()
        .is_some_and(|o| o.secure_cookies())
    {
        true => "__Host-keyplane_sign_in",
        false => "keyplane_sign_in",
    }
}

/// The value of the cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|value| !value.is_empty() && value.len() <= 512)
}

/// The browser session's token, from its cookie.
pub fn session_cookie(headers: &HeaderMap, state: &AppState) -> Option<String> {
    state.settings.oidc.as_ref()?;
    cookie(headers, session_cookie_name(state))
}

/// A state-changing request from a browser session carries the session's
/// CSRF token in `X-CSRF-Token` (another site can make the browser send
/// the cookie, never read the token).
fn check_csrf(parts: &Parts, token: &str) -> Result<(), ApiError> {
    let sent = parts
        .headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if csrf_matches(sent, token) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "a change made with a browser session needs its X-CSRF-Token header \
             (GET /v1/auth/session answers it)"
                .to_owned(),
        ))
    }
}

/// Whether `sent` is the CSRF token of the session (or console sign-in)
/// `token`, compared in constant time.
pub fn csrf_matches(sent: &str, token: &str) -> bool {
    let expected = csrf_token(token);
    sent.len() == expected.len()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            sent.as_bytes(),
            expected.as_bytes(),
        ))
}

/// The bearer credential of `kind` an instance presents (an enrollment
/// token, its API key). A malformed one is a failure; a well-formed one that
/// is not known to be live is refused unseen once it, or its address, keeps
/// failing (the operation counts the failure when it turns out not to be good).
async fn instance_bearer(
    parts: &Parts,
    state: &AppState,
    kind: KeyKind,
    refusal: fn() -> Refusal,
) -> Result<KeySecret, ApiError> {
    let address = peer(parts);
    let token = bearer(parts);
    let key = token.and_then(|token| KeySecret::parse_as(kind, token).ok());
    let Some(key) = key else {
        state.limits.check_address(address)?;
        state.limits.note_failure(address, token);
        return Err(refusal().into());
    };
    if !state.introspector.knows_key(key.digest().as_bytes()).await {
        state.limits.check_unknown(address, key.expose())?;
    }
    Ok(key)
}

/// Anyone may report a leak; a signed report names its key and signature.
impl FromRequestParts<AppState> for Reporter {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let signature = match (
            header("github-public-key-identifier"),
            header("github-public-key-signature"),
        ) {
            (None, None) => None,
            (Some(id), Some(signature)) => Some((id, signature)),
            _ => {
                return Err(ApiError::Unauthorized {
                    code: "invalid_signature",
                    detail: "a signed report carries both Github-Public-Key-Identifier and \
                             Github-Public-Key-Signature",
                });
            }
        };
        Ok(Reporter { signature })
    }
}

/// Anyone: a browser signing in, a terminal asking for a token.
impl FromRequestParts<AppState> for Visitor {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| {
                keyplane_domain::scrub_keys(agent)
                    .chars()
                    .take(200)
                    .collect()
            });
        Ok(Visitor { user_agent })
    }
}

impl FromRequestParts<AppState> for Holder {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = instance_bearer(parts, state, KeyKind::Instance, bad_key).await?;
        Ok(Holder { key })
    }
}

impl FromRequestParts<AppState> for Enrollee {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = instance_bearer(parts, state, KeyKind::Enrollment, bad_token).await?;
        Ok(Enrollee { token })
    }
}

/// Counts a failed authentication; a burst from one address writes one
/// `auth.failed` audit entry per minute (never the credential that was tried).
fn note_failure(parts: &Parts, state: &AppState) {
    let origin = origin(&parts.extensions);
    let Some(address) = origin.client_ip else {
        return;
    };
    let now = state.clock.now();
    let Some(failures) = state.auth_failures.count(address, now) else {
        return;
    };
    tracing::warn!(client_ip = %address, failures, "repeated failed operator authentication");
    denials::record(
        state,
        Denial {
            at: now,
            actor: &Actor::Anonymous,
            action: "auth.failed",
            target_type: "management_api",
            target_id: None,
            origin: Some(&origin),
            details: serde_json::json!({ "failures_within_a_minute": failures }),
        },
    );
}
