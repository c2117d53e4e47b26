//! Instance API keys: issue, list, read, rename, disable, rotate, revoke.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{
    KeyKind, KeySecret, Mode, Permission, RoleName, ScopeSet, effective_scopes, format_duration,
};
use keyplane_store::{audit, instances, keys, nodes, revocations, roles};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::error::{ApiError, Problem};
use crate::events::Event;
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::state::AppState;

page_type!(KeyPage, KeyResponse);

/// What users see of a key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Works.
    Active,
    /// Switched off; can be switched on again.
    Disabled,
    /// Superseded by a rotation; works until its grace window ends.
    Rotating,
    /// Revoked for good.
    Revoked,
    /// Past its expiry or its grace window.
    Expired,
}

impl KeyStatus {
    fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Rotating => "rotating",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }

    fn of(text: &str) -> KeyStatus {
        match text {
            "active" => KeyStatus::Active,
            "disabled" => KeyStatus::Disabled,
            "rotating" => KeyStatus::Rotating,
            "revoked" => KeyStatus::Revoked,
            _ => KeyStatus::Expired,
        }
    }
}

/// An instance key's metadata. The key itself is shown only once, when it is made.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    /// Its id.
    pub id: Uuid,
    /// The instance it belongs to.
    pub instance_id: Uuid,
    /// A name for people.
    pub name: String,
    /// The key, masked: prefix and last four characters.
    #[schema(example = "kpi_…9f2c")]
    pub masked_key: String,
    /// Scopes granted directly.
    pub scopes: Vec<String>,
    /// Roles whose scopes it also gets.
    pub roles: Vec<String>,
    /// Its scopes plus its roles', cut down to the instance's ceiling.
    pub effective_scopes: Vec<String>,
    /// Node ids that may accept it; empty means any node.
    pub audience: Vec<String>,
    /// `active`, `disabled`, `rotating`, `revoked` or `expired`.
    pub status: KeyStatus,
    /// False while disabled.
    pub enabled: bool,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When a node last accepted it.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The key it succeeded.
    pub rotated_from: Option<Uuid>,
    /// The key that succeeded it.
    pub rotated_to: Option<Uuid>,
    /// After a rotation, when it stops working.
    pub grace_until: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Its rotation policy: rotate this many seconds after issue.
    pub rotate_after: Option<i64>,
    /// When its holder should rotate it: `rotate_after` past its issue, and
    /// never later than four fifths into its life (well before it expires).
    pub rotation_due_at: DateTime<Utc>,
}

/// A key just made: its metadata and, this once, the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    /// The key's metadata.
    #[serde(flatten)]
    pub key: KeyResponse,
    /// The whole key. Shown only in this response; keyplane keeps only its hash.
    pub secret: String,
    /// Anything keyplane changed from what was asked (e.g. a capped lifetime).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Issues a key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A name for people.
    pub name: String,
    /// Scopes, each within the instance's ceiling.
    pub scopes: Option<Vec<String>>,
    /// Roles whose scopes the key also gets.
    pub roles: Option<Vec<String>>,
    /// Lifetime in seconds (default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
    pub expires_in: Option<i64>,
    /// Expiry time, instead of `expires_in`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Node ids or names that may accept the key; empty means any node.
    pub audience: Option<Vec<String>>,
    /// Rotation policy: the holder should rotate it this many seconds after
    /// issue (`GET /v1/self` says when; the agent does it). Successors keep it.
    pub rotate_after: Option<i64>,
}

/// Renames, disables or enables a key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// A new name.
    pub name: Option<String>,
    /// False disables the key (reversibly); true enables it again.
    pub enabled: Option<bool>,
}

/// Rotates a key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working, in seconds (default 3600; 0 = stops at once).
    pub grace_seconds: Option<i64>,
}

/// Revokes a key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    /// Why, for the audit log (at most 512 characters).
    pub reason: Option<String>,
}

/// Filters for listing keys.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeysParams {
    /// Only the keys of this instance.
    pub instance_id: Option<Uuid>,
    /// Only keys in this status.
    pub status: Option<KeyStatus>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const LIST: &str = "keys";
const DEFAULT_GRACE_SECONDS: i64 = 3600;

fn not_found() -> ApiError {
    ApiError::NotFound("no key with this id".to_owned())
}

/// Answers a freshly made secret: 201, never cached.
pub fn created<T: Serialize>(body: T) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// When a new key expires, under the lifetime policy: too long is refused in
/// `prod` and `mixed`, capped with a warning in `dev`; every key expires.
pub fn policy_expiry(
    state: &AppState,
    now: DateTime<Utc>,
    expires_in: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(DateTime<Utc>, Vec<String>), ApiError> {
    let max_seconds = i64::try_from(state.settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX);
    let (field, seconds) = match (expires_in, expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_at",
                "give expires_in or expires_at, not both",
            ));
        }
        (Some(seconds), None) if seconds <= 0 => {
            return Err(ApiError::invalid(
                "expires_in",
                "expires_in must be a positive number of seconds",
            ));
        }
        (Some(seconds), None) => ("expires_in", seconds),
        (None, Some(at)) if at <= now => {
            return Err(ApiError::invalid(
                "expires_at",
                "expires_at must be in the future",
            ));
        }
        (None, Some(at)) => ("expires_at", (at - now).num_seconds().max(1)),
        (None, None) => return Ok((now + Duration::seconds(max_seconds), Vec::new())),
    };
    if seconds <= max_seconds {
        return Ok((now + Duration::seconds(seconds), Vec::new()));
    }
    let max = format_duration(state.settings.max_key_lifetime);
    if state.settings.mode != Mode::Dev {
        return Err(ApiError::policy(
            field,
            format!("keys may live at most {max} (KEYPLANE_MAX_KEY_LIFETIME)"),
        ));
    }
    let warning = format!("{field} exceeds the maximum key lifetime; capped to {max}");
    tracing::warn!(%field, %max, "key lifetime capped (dev mode)");
    Ok((now + Duration::seconds(max_seconds), vec![warning]))
}

/// Turns key rows into responses, with effective scopes worked out from
/// their roles and their instances' ceilings.
async fn view(
    conn: &mut PgConnection,
    rows: Vec<keys::ApiKey>,
) -> Result<Vec<KeyResponse>, ApiError> {
    let role_scopes: HashMap<String, ScopeSet> = roles::list(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.name, ScopeSet::from_trusted(&r.scopes)))
        .collect();
    let mut instance_ids: Vec<Uuid> = rows.iter().map(|k| k.instance_id).collect();
    instance_ids.dedup();
    let ceilings: HashMap<Uuid, ScopeSet> = instances::ceilings(&mut *conn, &instance_ids)
        .await?
        .into_iter()
        .map(|(id, scopes)| (id, ScopeSet::from_trusted(&scopes)))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let due = rotation_due(&row);
            let own = ScopeSet::from_trusted(&row.scopes);
            let ceiling = ceilings.get(&row.instance_id).cloned().unwrap_or_default();
            let effective = effective_scopes(
                &own,
                row.roles.iter().filter_map(|r| role_scopes.get(r)),
                &ceiling,
            );
            KeyResponse {
                id: row.id,
                instance_id: row.instance_id,
                name: row.name,
                masked_key: row.masked,
                scopes: row.scopes,
                roles: row.roles,
                effective_scopes: effective.to_strings(),
                audience: row.audience,
                status: KeyStatus::of(&row.status),
                enabled: row.enabled,
                created_at: row.created_at,
                expires_at: row.expires_at,
                last_used_at: row.last_used_at,
                rotated_from: row.rotated_from,
                rotated_to: row.rotated_to,
                grace_until: row.grace_until,
                rotation_due_at: due,
                rotate_after: row.rotate_after_seconds,
                revoked_at: row.revoked_at,
                revoked_reason: row.revoked_reason,
            }
        })
        .collect())
}

/// When a key's holder should rotate it (see [`KeyResponse::rotation_due_at`]).
pub fn rotation_due(row: &keys::ApiKey) -> DateTime<Utc> {
    let latest = row.created_at + (row.expires_at - row.created_at) * 4 / 5;
    match row.rotate_after_seconds {
        Some(seconds) => (row.created_at + Duration::seconds(seconds)).min(latest),
        None => latest,
    }
}

/// A rotation policy: between a second and the longest key lifetime.
pub fn rotate_after(state: &AppState, seconds: Option<i64>) -> Result<Option<i64>, ApiError> {
    let max_seconds = i64::try_from(state.settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX);
    match seconds {
        Some(seconds) if !(1..=max_seconds).contains(&seconds) => Err(ApiError::invalid(
            "rotate_after",
            format!("rotate_after must be between 1 and {max_seconds} seconds"),
        )),
        other => Ok(other),
    }
}

pub(crate) async fn view_one(
    conn: &mut PgConnection,
    row: keys::ApiKey,
) -> Result<KeyResponse, ApiError> {
    view(conn, vec![row]).await?.pop().ok_or_else(not_found)
}

/// What a new key is granted: its scopes and role names, checked; a key
/// with neither could do nothing and is refused.
pub fn grants(
    scopes: Option<Vec<String>>,
    roles: Option<Vec<String>>,
) -> Result<(ScopeSet, Vec<String>), ApiError> {
    let scopes = input::scopes("scopes", scopes.as_deref().unwrap_or_default())?;
    let role_names = roles.unwrap_or_default();
    input::bounded("roles", &role_names)?;
    for (index, role) in role_names.iter().enumerate() {
        RoleName::parse(role)
            .map_err(|err| ApiError::invalid(format!("roles[{index}]"), err.to_string()))?;
    }
    if scopes.is_empty() && role_names.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "give scopes and/or roles: a key with neither could do nothing",
        ));
    }
    Ok((scopes, role_names))
}

/// The roles named, each of which must exist (the first that does not is
/// named by its index).
pub async fn known_roles(
    conn: &mut PgConnection,
    names: &[String],
) -> Result<Vec<roles::Role>, ApiError> {
    let found = roles::get_many(&mut *conn, names).await?;
    match names
        .iter()
        .position(|name| !found.iter().any(|role| &role.name == name))
    {
        Some(index) => Err(ApiError::invalid(
            format!("roles[{index}]"),
            "no role with this name",
        )),
        None => Ok(found),
    }
}

/// Resolves audience entries (node ids or names) to the ids of live nodes.
async fn resolve_audience(
    conn: &mut PgConnection,
    entries: &[String],
) -> Result<Vec<String>, ApiError> {
    input::bounded("audience", entries)?;
    let ids: Vec<Uuid> = entries
        .iter()
        .filter_map(|e| Uuid::parse_str(e).ok())
        .collect();
    let names: Vec<String> = entries
        .iter()
        .filter(|e| Uuid::parse_str(e).is_err())
        .cloned()
        .collect();
    let found = nodes::find_live(&mut *conn, &ids, &names).await?;
    let mut resolved = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let node = found
            .iter()
            .find(|n| n.name == *entry || Uuid::parse_str(entry).is_ok_and(|id| id == n.id))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("audience[{index}]"),
                    "no registered node has this id or name",
                )
            })?;
        let id = node.id.to_string();
        if !resolved.contains(&id) {
            resolved.push(id);
        }
    }
    Ok(resolved)
}

/// Issue an API key for an instance. The key is in this response only.
#[utoipa::path(
    post, path = "/v1/instances/{id}/keys", operation_id = "create_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The instance's id")),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Issued; `secret` is shown only here", body = CreatedKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(instance_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    operator.require(Permission::KeysWrite)?;
    let name = input::name("name", &body.name)?;
    let (scopes, role_names) = grants(body.scopes, body.roles)?;
    let rotate_after = rotate_after(&state, body.rotate_after)?;
    let now = state.clock.now();
    let (expires_at, warnings) = policy_expiry(&state, now, body.expires_in, body.expires_at)?;
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    // Lock the instance: a concurrent decommission cannot slip a key past it.
    let instance = instances::lock(&mut tx, instance_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no instance with this id".to_owned()))?;
    match instance.status.as_str() {
        "active" => {}
        "suspended" => return Err(ApiError::Conflict("the instance is suspended".to_owned())),
        _ => return Err(ApiError::NotFound("no instance with this id".to_owned())),
    }
    let ceiling = ScopeSet::from_trusted(&instance.allowed_scopes);
    if let Some(outside) = scopes.outside(&ceiling).first() {
        return Err(ApiError::policy(
            "scopes",
            format!("scope {outside} is outside the instance's allowed_scopes"),
        ));
    }
    known_roles(&mut tx, &role_names).await?;
    let audience = resolve_audience(&mut tx, body.audience.as_deref().unwrap_or_default()).await?;

    let secret =
        KeySecret::generate(KeyKind::Instance).map_err(|e| ApiError::Internal(e.into()))?;
    let row = keys::insert(
        &mut tx,
        &keys::ApiKey {
            id: Uuid::new_v4(),
            instance_id,
            name: name.into_string(),
            digest: secret.digest().as_bytes().to_vec(),
            masked: secret.masked(),
            scopes: scopes.to_strings(),
            roles: role_names,
            audience,
            enabled: true,
            created_at: now,
            expires_at,
            revoked_at: None,
            revoked_reason: None,
            rotated_from: None,
            rotated_to: None,
            grace_until: None,
            rotated_at: None,
            rotated_by: None,
            last_used_at: None,
            rotate_after_seconds: rotate_after,
            status: String::new(),
        },
        now,
    )
    .await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "key.create",
            "api_key",
            row.id,
            json!({ "after": summary(&row) }),
        ),
    )
    .await?;
    let key = view_one(&mut tx, row).await?;
    tx.commit().await?;
    Ok(created(CreatedKeyResponse {
        key,
        secret: secret.expose().to_owned(),
        warnings,
    }))
}

/// List keys' metadata, by instance and status.
#[utoipa::path(
    get, path = "/v1/keys", operation_id = "list_keys", tag = "keys",
    params(ListKeysParams),
    responses(
        (status = 200, description = "A page of keys", body = KeyPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<ListKeysParams>,
) -> Result<Json<KeyPage>, ApiError> {
    operator.require(Permission::KeysRead)?;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let (limit, after) = page.resolve(&state.cursors, LIST)?;
    let now = state.clock.now();
    let mut conn = state.db.pool().acquire().await?;
    let status = params.status.map(KeyStatus::as_str);
    let (rows, next) =
        keys::list(&mut *conn, params.instance_id, status, after, limit, now).await?;
    Ok(Json(KeyPage {
        items: view(&mut conn, rows).await?,
        next_cursor: next.map(|after| state.cursors.encode(LIST, after)),
    }))
}

/// Get one key's metadata.
#[utoipa::path(
    get, path = "/v1/keys/{id}", operation_id = "get_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key's metadata", body = KeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_key(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<KeyResponse>, ApiError> {
    operator.require(Permission::KeysRead)?;
    let mut conn = state.db.pool().acquire().await?;
    let row = keys::get(&mut *conn, id, state.clock.now())
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view_one(&mut conn, row).await?))
}

/// Rename a key, or disable / enable it.
#[utoipa::path(
    patch, path = "/v1/keys/{id}", operation_id = "update_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The changed key", body = KeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn update_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    operator.require(Permission::KeysWrite)?;
    let name = body
        .name
        .as_deref()
        .map(|n| input::name("name", n))
        .transpose()?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let before = keys::lock(&mut tx, id, now).await?.ok_or_else(not_found)?;
    if body.enabled.is_some()
        && matches!(
            KeyStatus::of(&before.status),
            KeyStatus::Revoked | KeyStatus::Expired
        )
    {
        return Err(ApiError::Conflict(format!("the key is {}", before.status)));
    }
    let mut after = before.clone();
    if let Some(name) = name {
        after.name = name.into_string();
    }
    if let Some(enabled) = body.enabled {
        after.enabled = enabled;
    }
    let after = keys::save(&mut tx, &after, now).await?;
    let mut events = vec![Event::Key { id }];
    if before.enabled && !after.enabled {
        revocations::record(&mut tx, &[id], "disabled", now).await?;
        events.push(Event::Revocations);
    }
    let action = match (before.enabled, after.enabled) {
        (true, false) => "key.disable",
        (false, true) => "key.enable",
        _ => "key.update",
    };
    audit::append(
        &mut tx,
        &audit.entry(
            action,
            "api_key",
            id,
            json!({ "before": summary(&before), "after": summary(&after) }),
        ),
    )
    .await?;
    let key = view_one(&mut tx, after).await?;
    state.events.commit(tx, &events).await?;
    Ok(Json(key))
}

/// Rotate a key: issue its successor (same instance, scopes, roles, audience
/// and name) and keep the old key working for `grace_seconds`, never past its
/// own expiry. Of two rotations racing, one wins and the other gets 409.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", operation_id = "rotate_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body(content = RotateKeyRequest, description = "Optional"),
    responses(
        (status = 201, description = "The successor; `secret` is shown only here", body = CreatedKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RotateKeyRequest>,
) -> Result<Response, ApiError> {
    operator.require(Permission::KeysWrite)?;
    let max_seconds = i64::try_from(state.settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX);
    let grace = body.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=max_seconds).contains(&grace) {
        return Err(ApiError::invalid(
            "grace_seconds",
            format!("grace_seconds must be between 0 and {max_seconds}"),
        ));
    }
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    // The row lock makes a second, concurrent rotation wait here and then see
    // the first one's successor.
    let old = keys::lock(&mut tx, id, now).await?.ok_or_else(not_found)?;
    match KeyStatus::of(&old.status) {
        KeyStatus::Active => {}
        KeyStatus::Rotating => {
            return Err(ApiError::Conflict(
                "this key has already been rotated".to_owned(),
            ));
        }
        other => return Err(ApiError::Conflict(format!("the key is {}", other.as_str()))),
    }
    let (successor, secret) =
        rotate(&mut tx, &state, &old, grace, RotatedBy::Operator, now).await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "key.rotate",
            "api_key",
            id,
            json!({ "successor": successor.id, "grace_seconds": grace, "masked": old.masked }),
        ),
    )
    .await?;
    let key = view_one(&mut tx, successor).await?;
    finish_rotation(&state, tx, &old, &key, grace, None, now).await?;
    Ok(created(CreatedKeyResponse {
        key,
        secret: secret.expose().to_owned(),
        warnings: Vec::new(),
    }))
}

/// Announces a rotation (a `key.rotated` webhook; with no grace, the old key
/// on the revocation stream; a `replaced` earlier successor dropped
/// everywhere) and commits it.
pub async fn finish_rotation(
    state: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    old: &keys::ApiKey,
    successor: &KeyResponse,
    grace_seconds: i64,
    replaced: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    crate::webhooks::notify(
        &mut tx,
        "key.rotated",
        json!({
            "key_id": old.id,
            "successor_id": successor.id,
            "instance_id": old.instance_id,
            "masked_key": old.masked,
            "grace_seconds": grace_seconds,
        }),
        now,
    )
    .await?;
    let mut events = vec![Event::Key { id: old.id }];
    if let Some(id) = replaced {
        events.extend([Event::Key { id }, Event::Revocations]);
    }
    if grace_seconds == 0 {
        revocations::record(&mut tx, &[old.id], "rotated", now).await?;
        events.push(Event::Revocations);
    }
    state.events.commit(tx, &events).await?;
    Ok(())
}

/// Who rotated a key. Its holder may ask again for a rotation whose answer
/// it lost (see `self_service`); an operator's rotation is final for the old
/// key, since operators rotate keys that may be in the wrong hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotatedBy {
    /// The key itself, through `POST /v1/self/rotate`.
    Holder,
    /// An operator, through `POST /v1/keys/{id}/rotate`.
    Operator,
}

impl RotatedBy {
    /// As stored in `api_keys.rotated_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            RotatedBy::Holder => "holder",
            RotatedBy::Operator => "operator",
        }
    }
}

/// Issues `old`'s successor and marks `old` as rotated by `by`, inside the
/// caller's transaction (which holds `old`'s row lock).
pub async fn rotate(
    tx: &mut PgConnection,
    state: &AppState,
    old: &keys::ApiKey,
    grace_seconds: i64,
    by: RotatedBy,
    now: DateTime<Utc>,
) -> Result<(keys::ApiKey, KeySecret), ApiError> {
    let lifetime = (old.expires_at - old.created_at).min(Duration::seconds(
        i64::try_from(state.settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX),
    ));
    let secret =
        KeySecret::generate(KeyKind::Instance).map_err(|e| ApiError::Internal(e.into()))?;
    let successor = keys::insert(
        &mut *tx,
        &keys::ApiKey {
            id: Uuid::new_v4(),
            digest: secret.digest().as_bytes().to_vec(),
            masked: secret.masked(),
            created_at: now,
            expires_at: now + lifetime,
            rotated_from: Some(old.id),
            rotated_to: None,
            grace_until: None,
            rotated_at: None,
            rotated_by: None,
            revoked_at: None,
            revoked_reason: None,
            last_used_at: None,
            enabled: true,
            ..old.clone()
        },
        now,
    )
    .await?;
    let mut retired = old.clone();
    retired.rotated_to = Some(successor.id);
    retired.grace_until = Some((now + Duration::seconds(grace_seconds)).min(old.expires_at));
    retired.rotated_at = Some(now);
    retired.rotated_by = Some(by.as_str().to_owned());
    keys::save(&mut *tx, &retired, now).await?;
    Ok((successor, secret))
}

/// Revoke a key, for good. Revoking a revoked key changes nothing.
#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", operation_id = "revoke_key", tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body(content = RevokeKeyRequest, description = "Optional"),
    responses(
        (status = 200, description = "The revoked key", body = KeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    operator.require(Permission::KeysWrite)?;
    let reason = reason(body.reason)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let mut key = keys::lock(&mut tx, id, now).await?.ok_or_else(not_found)?;
    if key.revoked_at.is_none() {
        key.revoked_at = Some(now);
        key.revoked_reason = reason;
        key = keys::save(&mut tx, &key, now).await?;
        revocations::record(&mut tx, &[id], "revoked", now).await?;
        audit::append(
            &mut tx,
            &audit.entry(
                "key.revoke",
                "api_key",
                id,
                json!({ "masked": key.masked, "reason": key.revoked_reason }),
            ),
        )
        .await?;
        crate::webhooks::notify(
            &mut tx,
            "key.revoked",
            json!({
                "key_id": id,
                "instance_id": key.instance_id,
                "masked_key": key.masked,
                "reason": key.revoked_reason,
            }),
            now,
        )
        .await?;
    }
    let view = view_one(&mut tx, key).await?;
    state
        .events
        .commit(tx, &[Event::Key { id }, Event::Revocations])
        .await?;
    Ok(Json(view))
}

/// A revocation reason: at most 512 characters, no control characters.
pub fn reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    match reason {
        Some(text) if text.chars().count() > 512 || text.chars().any(char::is_control) => {
            Err(ApiError::invalid(
                "reason",
                "reason must be at most 512 characters, without control characters",
            ))
        }
        other => Ok(other),
    }
}

/// What the audit log keeps of a key: never the key, only its masked form.
fn summary(row: &keys::ApiKey) -> serde_json::Value {
    json!({
        "masked": row.masked,
        "instance_id": row.instance_id,
        "name": row.name,
        "scopes": row.scopes,
        "roles": row.roles,
        "audience": row.audience,
        "enabled": row.enabled,
        "expires_at": row.expires_at,
    })
}
