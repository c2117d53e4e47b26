//! Who is calling: extractors that authenticate and do nothing else. Each
//! handler's first line states the permission it needs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use keyplane_domain::{KeyDigest, KeyKind, KeySecret, ManagementRole, Permission};
use keyplane_store::{admin_keys, audit};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::error::ApiError;
use crate::request::{CallerSlot, RequestId};
use crate::state::AppState;

/// Who did something, as written in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The bootstrap token from the environment.
    Bootstrap,
    /// An admin key.
    AdminKey(Uuid),
    /// `keyplane admin-key create`, working on the database directly.
    Cli,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Bootstrap => f.write_str("bootstrap"),
            Actor::AdminKey(id) => write!(f, "admin_key:{id}"),
            Actor::Cli => f.write_str("cli"),
        }
    }
}

/// An authenticated operator: the bootstrap token or a live admin key.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Who it is.
    pub actor: Actor,
    /// What it may do.
    pub role: ManagementRole,
}

impl Operator {
    /// Refuses with 403 unless the operator's role grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the {} role does not allow this",
                self.role
            )))
        }
    }
}

const MISSING: ApiError = ApiError::Unauthorized {
    code: "missing_credentials",
    detail: "send an admin key as Authorization: Bearer kpa_…",
};

fn invalid() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_credentials",
        detail: "the credential is not a live admin key",
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let address = peer(parts);
        let token = bearer(parts).ok_or(MISSING)?;
        let admin_key = KeySecret::parse_as(KeyKind::Admin, token).ok();
        // A live admin key is checked whatever its address did before; any
        // other credential (the bootstrap token, a guess) is refused unseen
        // once it, or its address, keeps failing.
        let known = admin_key
            .as_ref()
            .is_some_and(|key| state.credentials.admin(key.digest().as_bytes()));
        if !known {
            state.limits.check_unknown(address, token)?;
        }
        let operator = authenticate(token, admin_key, state).await;
        match &operator {
            Err(ApiError::Unauthorized { .. }) => {
                state.limits.note_failure(address, Some(token));
                note_failure(parts, state);
            }
            Ok(operator) => {
                if let Some(slot) = parts.extensions.get::<CallerSlot>() {
                    slot.set(operator.actor.to_string());
                }
                state.limits.check_operator(&operator.actor.to_string())?;
            }
            Err(_) => {}
        }
        operator
    }
}

/// The bearer credential of `kind` an instance presents (an enrollment
/// token, its API key). A malformed one is a failure; a well-formed one that
/// is not known to be live is refused unseen once it, or its address, keeps
/// failing (the handler counts the failure when it turns out not to be good).
pub async fn instance_bearer(
    parts: &Parts,
    state: &AppState,
    kind: KeyKind,
    refusal: fn() -> ApiError,
) -> Result<KeySecret, ApiError> {
    let address = peer(parts);
    let token = bearer(parts);
    let key = token.and_then(|token| KeySecret::parse_as(kind, token).ok());
    let Some(key) = key else {
        state.limits.check_address(address)?;
        state.limits.note_failure(address, token);
        return Err(refusal());
    };
    if !state.introspector.knows_key(key.digest().as_bytes()).await {
        state.limits.check_unknown(address, key.expose())?;
    }
    Ok(key)
}

/// The address a request came from.
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// Counts a failed authentication; a burst from one address writes one
/// `auth.failed` audit entry per minute (never the credential that was tried).
fn note_failure(parts: &Parts, state: &AppState) {
    let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
        return;
    };
    let now = state.clock.now();
    let Some(failures) = state.auth_failures.count(peer.ip(), now) else {
        return;
    };
    tracing::warn!(client_ip = %peer.ip(), failures, "repeated failed operator authentication");
    let entry = audit::NewEntry {
        at: now,
        actor: "anonymous".to_owned(),
        action: "auth.failed",
        target_type: "management_api",
        target_id: None,
        outcome: "denied",
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.as_str().to_owned()),
        client_ip: Some(peer.ip().to_string()),
        details: serde_json::json!({ "failures_within_a_minute": failures }),
    };
    let pool = state.db.pool().clone();
    tokio::spawn(async move {
        if let Err(err) = audit::append_alone(&pool, &entry).await {
            tracing::warn!(error = %err, "could not audit failed authentications");
        }
    });
}

/// The operator a bearer token stands for: the bootstrap token, or a live
/// admin key (`admin_key`, the token parsed as one, if it is).
async fn authenticate(
    token: &str,
    admin_key: Option<KeySecret>,
    state: &AppState,
) -> Result<Operator, ApiError> {
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
    let key = admin_key.ok_or_else(invalid)?;
    let stored = admin_keys::find_by_digest(state.db.pool(), key.digest().as_bytes())
        .await?
        .ok_or_else(invalid)?;
    let now = state.clock.now();
    if stored.revoked_at.is_some() || stored.expires_at <= now {
        return Err(invalid());
    }
    let role = stored.role.parse().map_err(|_| invalid())?;
    Ok(Operator {
        actor: Actor::AdminKey(stored.id),
        role,
    })
}

/// Where a request came from, for the audit log.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The request's id.
    pub request_id: String,
    /// The peer's address (the proxy's, behind one).
    pub client_ip: Option<IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestMeta {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            client_ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        })
    }
}

/// Builds audit entries for the changes one operator makes in one request.
#[derive(Debug, Clone)]
pub struct Audit {
    actor: String,
    meta: RequestMeta,
    at: DateTime<Utc>,
}

impl Audit {
    /// Entries by `operator`, for the request `meta`, at `at`.
    pub fn new(operator: &Operator, meta: RequestMeta, at: DateTime<Utc>) -> Audit {
        Audit::by(operator.actor.to_string(), meta, at)
    }

    /// Entries by `actor` (e.g. `api_key:<id>` for an instance acting on
    /// its own key), for the request `meta`, at `at`.
    pub fn by(actor: String, meta: RequestMeta, at: DateTime<Utc>) -> Audit {
        Audit { actor, meta, at }
    }

    /// An entry: `action` on the `target_type` named `target_id`, with a
    /// masked summary in `details`.
    pub fn entry(
        &self,
        action: &'static str,
        target_type: &'static str,
        target_id: impl fmt::Display,
        details: serde_json::Value,
    ) -> audit::NewEntry {
        audit::NewEntry {
            at: self.at,
            actor: self.actor.clone(),
            action,
            target_type,
            target_id: Some(target_id.to_string()),
            outcome: "success",
            request_id: Some(self.meta.request_id.clone()),
            client_ip: self.meta.client_ip.map(|ip| ip.to_string()),
            details,
        }
    }

    /// [`Audit::entry`] for an `action` that was refused.
    pub fn denied(
        &self,
        action: &'static str,
        target_type: &'static str,
        target_id: impl fmt::Display,
        details: serde_json::Value,
    ) -> audit::NewEntry {
        audit::NewEntry {
            outcome: "denied",
            ..self.entry(action, target_type, target_id, details)
        }
    }
}
