//! `/v1/admin-keys`: operators' keys, one management role each.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use keyplane_domain::{KeyKind, KeySecret, ManagementRole, Name, Permission};
use keyplane_store::{admin_keys, audit};
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
use crate::routes::keys::{RevokeKeyRequest, created, policy_expiry, reason};
use crate::state::AppState;

page_type!(AdminKeyPage, AdminKeyResponse);

/// An admin key's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminKeyResponse {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// Its management role: `admin`, `operator`, `auditor` or `viewer`.
    pub role: String,
    /// The key, masked.
    #[schema(example = "kpa_…c0de")]
    pub masked_key: String,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// When it was last used.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<admin_keys::AdminKey> for AdminKeyResponse {
    fn from(row: admin_keys::AdminKey) -> Self {
        AdminKeyResponse {
            id: row.id,
            name: row.name,
            role: row.role,
            masked_key: row.masked,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            revoked_reason: row.revoked_reason,
            last_used_at: row.last_used_at,
        }
    }
}

/// An admin key just made, with the key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAdminKeyResponse {
    /// The key's metadata.
    #[serde(flatten)]
    pub key: AdminKeyResponse,
    /// The whole key. Shown only in this response.
    pub secret: String,
    /// Anything keyplane changed from what was asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Creates an admin key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminKeyRequest {
    /// A name for people.
    pub name: String,
    /// `admin`, `operator`, `auditor` or `viewer`.
    pub role: String,
    /// Lifetime in seconds (default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
    pub expires_in: Option<i64>,
}

/// Paging for admin keys.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAdminKeysParams {
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const LIST: &str = "admin-keys";

/// Makes and stores an admin key, with its audit entry, in the caller's
/// transaction; the API and `keyplane admin-key create` both use it.
pub async fn issue(
    tx: &mut PgConnection,
    name: &Name,
    role: ManagementRole,
    expires_at: DateTime<Utc>,
    audit: audit::NewEntry,
) -> Result<(admin_keys::AdminKey, KeySecret), ApiError> {
    let secret = KeySecret::generate(KeyKind::Admin).map_err(|e| ApiError::Internal(e.into()))?;
    let row = admin_keys::insert(
        &mut *tx,
        &admin_keys::AdminKey {
            id: Uuid::new_v4(),
            name: name.as_str().to_owned(),
            role: role.as_str().to_owned(),
            digest: secret.digest().as_bytes().to_vec(),
            masked: secret.masked(),
            created_by: audit.actor.clone(),
            created_at: audit.at,
            expires_at,
            revoked_at: None,
            revoked_reason: None,
            last_used_at: None,
        },
    )
    .await?;
    let entry = audit::NewEntry {
        target_id: Some(row.id.to_string()),
        details: json!({ "name": row.name, "role": row.role, "masked": row.masked, "expires_at": row.expires_at }),
        ..audit
    };
    audit::append(tx, &entry).await?;
    Ok((row, secret))
}

/// Create an admin key; the key is in this response only.
#[utoipa::path(
    post, path = "/v1/admin-keys", operation_id = "create_admin_key", tag = "admin-keys",
    request_body = CreateAdminKeyRequest,
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = CreatedAdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_admin_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateAdminKeyRequest>,
) -> Result<Response, ApiError> {
    operator.require(Permission::AdminKeysWrite)?;
    let name = input::name("name", &body.name)?;
    let role: ManagementRole =
        body.role
            .parse()
            .map_err(|err: keyplane_domain::ManagementRoleError| {
                ApiError::invalid("role", err.to_string())
            })?;
    let now = state.clock.now();
    let (expires_at, warnings) = policy_expiry(&state, now, body.expires_in, None)?;
    let audit =
        Audit::new(&operator, meta, now).entry("admin_key.create", "admin_key", "", json!({}));

    let mut tx = state.db.pool().begin().await?;
    let (row, secret) = issue(&mut tx, &name, role, expires_at, audit).await?;
    state.events.commit(tx, &[Event::AdminKeys]).await?;
    state
        .credentials
        .set_admin(secret.digest().as_bytes(), true);
    Ok(created(CreatedAdminKeyResponse {
        key: row.into(),
        secret: secret.expose().to_owned(),
        warnings,
    }))
}

/// List admin keys' metadata.
#[utoipa::path(
    get, path = "/v1/admin-keys", operation_id = "list_admin_keys", tag = "admin-keys",
    params(ListAdminKeysParams),
    responses(
        (status = 200, description = "A page of admin keys", body = AdminKeyPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_admin_keys(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<ListAdminKeysParams>,
) -> Result<Json<AdminKeyPage>, ApiError> {
    operator.require(Permission::AdminKeysRead)?;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let (limit, after) = page.resolve(&state.cursors, LIST)?;
    let (rows, next) = admin_keys::list(state.db.pool(), after, limit).await?;
    Ok(Json(AdminKeyPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor: next.map(|after| state.cursors.encode(LIST, after)),
    }))
}

/// Revoke an admin key.
#[utoipa::path(
    post, path = "/v1/admin-keys/{id}/revoke", operation_id = "revoke_admin_key", tag = "admin-keys",
    params(("id" = Uuid, Path, description = "The admin key's id")),
    request_body(content = RevokeKeyRequest, description = "Optional"),
    responses(
        (status = 200, description = "The revoked admin key", body = AdminKeyResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_admin_key(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeKeyRequest>,
) -> Result<Json<AdminKeyResponse>, ApiError> {
    operator.require(Permission::AdminKeysWrite)?;
    let reason = reason(body.reason)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);
    let mut tx = state.db.pool().begin().await?;
    let row = admin_keys::revoke(&mut tx, id, reason.as_deref(), now)
        .await?
        .ok_or_else(|| ApiError::NotFound("no admin key with this id".to_owned()))?;
    audit::append(
        &mut tx,
        &audit.entry(
            "admin_key.revoke",
            "admin_key",
            id,
            json!({ "masked": row.masked, "reason": row.revoked_reason }),
        ),
    )
    .await?;
    state.events.commit(tx, &[Event::AdminKeys]).await?;
    state.credentials.set_admin(&row.digest, false);
    Ok(Json(row.into()))
}
