//! Instance self-service: a key holder reads its own key and rotates it.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use chrono::{DateTime, Utc};
use keyplane_domain::{KeyKind, KeySecret};
use keyplane_store::{audit, instances, keys, revocations};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Audit, RequestMeta, instance_bearer};
use crate::error::{ApiError, Problem};
use crate::extract::OptionalJson;
use crate::routes::keys::{
    CreatedKeyResponse, KeyResponse, RotatedBy, created, finish_rotation, rotate, view_one,
};
use crate::state::AppState;

/// The grace window of a self-rotation unless asked otherwise.
const DEFAULT_GRACE_SECONDS: i64 = 3600;
/// The longest grace window a holder may give its old key.
const MAX_GRACE_SECONDS: i64 = 86_400;
/// How long after its own rotation a holder that lost the answer may ask again.
const RETRY_SECONDS: i64 = 600;

/// The calling key's own metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelfResponse {
    /// The key (never the key itself).
    #[serde(flatten)]
    pub key: KeyResponse,
    /// Its instance's name.
    pub instance_name: String,
    /// True once `rotation_due_at` has passed: rotate now.
    pub rotation_due: bool,
}

/// Rotates the calling key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfRotateRequest {
    /// How long the old key keeps working, in seconds (default 3600, at most
    /// a day; never past its own expiry).
    pub grace_seconds: Option<i64>,
}

fn bad_key() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_credentials",
        detail: "send a live API key as Authorization: Bearer kpi_…",
    }
}

/// A live instance key presented by its holder, with its instance's name.
pub struct InstanceKey {
    key: KeySecret,
}

impl FromRequestParts<AppState> for InstanceKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = instance_bearer(parts, state, KeyKind::Instance, bad_key).await?;
        Ok(InstanceKey { key })
    }
}

/// Whether `address` may use a key of `instance`: anywhere when it names no
/// networks; an unknown address is refused when it does.
fn from_allowed_network(instance: &instances::Instance, address: Option<std::net::IpAddr>) -> bool {
    instance.allowed_cidrs.is_empty()
        || address.is_some_and(|address| {
            instance
                .allowed_cidrs
                .iter()
                .filter_map(|cidr| cidr.parse::<ipnet::IpNet>().ok())
                .any(|network| network.contains(&address))
        })
}

/// The key and its instance, locked, if the key works (active, or rotated
/// and within its grace window), its instance is active, and the request
/// comes from the instance's networks (as nodes require).
async fn live_key(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    meta: &RequestMeta,
    caller: &KeySecret,
    now: DateTime<Utc>,
) -> Result<(keys::ApiKey, instances::Instance), ApiError> {
    let digest = caller.digest();
    let found = match keys::lock_by_digest(&mut *conn, digest.as_bytes(), now).await? {
        Some(key) if matches!(key.status.as_str(), "active" | "rotating") => {
            instances::lock(&mut *conn, key.instance_id)
                .await?
                .filter(|instance| instance.status == "active")
                .filter(|instance| from_allowed_network(instance, meta.client_ip))
                .map(|instance| (key, instance))
        }
        _ => None,
    };
    let (key, instance) = found.ok_or_else(|| {
        state
            .limits
            .note_failure(meta.client_ip, Some(caller.expose()));
        bad_key()
    })?;
    // One runaway key holder cannot flood keys, audit entries, webhooks and
    // stream events: self-service is budgeted per instance.
    state.limits.check_self_service(instance.id)?;
    // The holder has shown it has this key: a rotation retried with its
    // predecessor must not take it away (see `retry_rotation`).
    keyplane_store::introspection::touch_keys(&mut *conn, &[key.id], &[now]).await?;
    Ok((key, instance))
}

/// A holder asking to rotate a key it already rotated lost the answer (a
/// dropped connection, a failed write): if that rotation was its own, made
/// through this route within the last [`RETRY_SECONDS`], and the successor
/// was never used, the successor is revoked and the rotation made again, so
/// the holder is never left without a key it knows. Anything else is final
/// (409): an operator's rotation, often made because the old key leaked, must
/// not be undone by whoever else holds the old key.
async fn retry_rotation(
    tx: &mut sqlx::PgConnection,
    old: &keys::ApiKey,
    now: DateTime<Utc>,
) -> Result<keys::ApiKey, ApiError> {
    let rotated =
        || ApiError::Conflict("this key has already been rotated: use its successor".to_owned());
    let own_and_recent = old.rotated_by.as_deref() == Some(RotatedBy::Holder.as_str())
        && old
            .rotated_at
            .is_some_and(|at| now - at <= chrono::Duration::seconds(RETRY_SECONDS));
    if !own_and_recent {
        return Err(rotated());
    }
    let successor_id = old.rotated_to.ok_or_else(rotated)?;
    let mut successor = keys::lock(&mut *tx, successor_id, now)
        .await?
        .filter(|s| s.status == "active" && s.last_used_at.is_none())
        .ok_or_else(rotated)?;
    successor.revoked_at = Some(now);
    successor.revoked_reason = Some("replaced: its rotation was asked for again".to_owned());
    keys::save(&mut *tx, &successor, now).await?;
    revocations::record(&mut *tx, &[successor.id], "revoked", now).await?;
    let mut old = old.clone();
    old.rotated_to = None;
    old.grace_until = None;
    old.rotated_at = None;
    old.rotated_by = None;
    Ok(keys::save(&mut *tx, &old, now).await?)
}

/// Audits a refused self-rotation (the transaction that found it is rolled
/// back first) and answers the refusal.
async fn refused(
    state: &AppState,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    audit: &Audit,
    key: &keys::ApiKey,
    refusal: ApiError,
) -> ApiError {
    drop(tx);
    let entry = audit.denied(
        "key.rotate",
        "api_key",
        key.id,
        json!({ "masked": key.masked, "by": "holder", "refused": refusal.to_string() }),
    );
    if let Err(err) = audit::append_alone(state.db.pool(), &entry).await {
        tracing::warn!(error = %err, "could not audit a refused self-rotation");
    }
    refusal
}

/// The calling key's metadata: its instance, scopes, expiry and when it
/// should be rotated.
#[utoipa::path(
    get, path = "/v1/self", operation_id = "get_self", tag = "self-service",
    responses(
        (status = 200, description = "The calling key", body = SelfResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_self(
    State(state): State<AppState>,
    caller: InstanceKey,
    meta: RequestMeta,
) -> Result<Json<SelfResponse>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.db.pool().begin().await?;
    let (key, instance) = live_key(&mut tx, &state, &meta, &caller.key, now).await?;
    let key = view_one(&mut tx, key).await?;
    tx.commit().await?;
    Ok(Json(SelfResponse {
        rotation_due: key.rotation_due_at <= now,
        key,
        instance_name: instance.name,
    }))
}

/// Rotate the calling key: answers its successor's `secret`, once; the
/// calling key keeps working for the grace window. A key already rotated
/// gets 409 (use its successor).
#[utoipa::path(
    post, path = "/v1/self/rotate", operation_id = "rotate_self", tag = "self-service",
    request_body(content = SelfRotateRequest, description = "Optional"),
    responses(
        (status = 201, description = "The successor; `secret` is shown only here", body = CreatedKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_self(
    State(state): State<AppState>,
    caller: InstanceKey,
    meta: RequestMeta,
    OptionalJson(body): OptionalJson<SelfRotateRequest>,
) -> Result<Response, ApiError> {
    let grace = body.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(ApiError::invalid(
            "grace_seconds",
            format!("grace_seconds must be between 0 and {MAX_GRACE_SECONDS}"),
        ));
    }
    let now = state.clock.now();
    let mut tx = state.db.pool().begin().await?;
    let (mut old, instance) = live_key(&mut tx, &state, &meta, &caller.key, now).await?;
    // Audited with the caller's address, refused or not.
    let audit = Audit::by(format!("api_key:{}", old.id), meta, now);
    if !instance.self_rotation {
        let refusal = ApiError::Forbidden(
            "this instance's keys may not rotate themselves (self_rotation is off): ask an operator"
                .to_owned(),
        );
        return Err(refused(&state, tx, &audit, &old, refusal).await);
    }
    if let Err(limited) = state.limits.check_self_rotation(instance.id) {
        return Err(refused(&state, tx, &audit, &old, limited).await);
    }
    let replaced = match old.status.as_str() {
        "active" => None,
        _ => {
            let replaced = old.rotated_to;
            old = match retry_rotation(&mut tx, &old, now).await {
                Ok(old) => old,
                Err(refusal) => return Err(refused(&state, tx, &audit, &old, refusal).await),
            };
            replaced
        }
    };
    let (successor, secret) = rotate(&mut tx, &state, &old, grace, RotatedBy::Holder, now).await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "key.rotate",
            "api_key",
            old.id,
            json!({
                "successor": successor.id,
                "grace_seconds": grace,
                "masked": old.masked,
                "by": "holder",
                "replaced_unused_successor": replaced,
            }),
        ),
    )
    .await?;
    let key = view_one(&mut tx, successor).await?;
    finish_rotation(&state, tx, &old, &key, grace, replaced, now).await?;
    Ok(created(CreatedKeyResponse {
        key,
        secret: secret.expose().to_owned(),
        warnings: Vec::new(),
    }))
}
