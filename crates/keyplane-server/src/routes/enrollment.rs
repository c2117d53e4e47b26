//! Enrollment: operators mint short-lived `kpe_` tokens; a new instance
//! spends one to register itself and receive its first key, so no one copies
//! a key by hand.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{KeyKind, KeySecret, Permission, ScopeSet};
use keyplane_store::{audit, enrollment, instances, keys};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Audit, Operator, RequestMeta, instance_bearer};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::routes::instances::{InstanceResponse, InstanceStatus};
use crate::routes::keys::{
    CreatedKeyResponse, created, grants, known_roles, policy_expiry, rotate_after, view_one,
};
use crate::state::AppState;

page_type!(EnrollmentTokenPage, EnrollmentTokenResponse);

/// The most instances one token may enroll.
const MAX_USES: i32 = 1000;
/// A token lives an hour unless asked otherwise, and never more than a week.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
const MAX_TOKEN_SECONDS: i64 = 7 * 86_400;
const LIST: &str = "enrollment-tokens";

/// Mints an enrollment token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentTokenRequest {
    /// A name for people.
    pub name: String,
    /// Scopes of each enrolled instance's first key.
    pub scopes: Option<Vec<String>>,
    /// Roles of that key.
    pub roles: Option<Vec<String>>,
    /// Labels each enrolled instance gets (its own labels are added).
    pub labels: Option<BTreeMap<String, String>>,
    /// The enrolled instances' ceiling; by default the scopes plus the roles' scopes.
    pub allowed_scopes: Option<Vec<String>>,
    /// Lifetime of the first key, in seconds (default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
    pub key_expires_in: Option<i64>,
    /// The first key's rotation policy, in seconds.
    pub rotate_after: Option<i64>,
    /// How many instances may enroll with it (default 1, at most 1000).
    pub uses: Option<i32>,
    /// How long the token works, in seconds (default 3600, at most a week).
    pub expires_in: Option<i64>,
}

/// An enrollment token's metadata; the token itself is shown only once.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenResponse {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// The token, masked.
    #[schema(example = "kpe_…3b7a")]
    pub masked_token: String,
    /// Scopes of the first key.
    pub scopes: Vec<String>,
    /// Roles of the first key.
    pub roles: Vec<String>,
    /// Labels of the enrolled instances.
    pub labels: serde_json::Value,
    /// The enrolled instances' ceiling.
    pub allowed_scopes: Vec<String>,
    /// Lifetime of the first key, in seconds.
    pub key_expires_in: i64,
    /// The first key's rotation policy, in seconds.
    pub rotate_after: Option<i64>,
    /// How many instances it may enroll in all.
    pub uses: i32,
    /// How many more.
    pub uses_left: i32,
    /// `active`, `spent`, `expired` or `revoked`.
    pub status: String,
    /// When it was minted.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A token just minted: its metadata and, this once, the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentTokenResponse {
    /// The token's metadata.
    #[serde(flatten)]
    pub token: EnrollmentTokenResponse,
    /// The whole token. Shown only in this response.
    pub secret: String,
    /// Anything keyplane changed from what was asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Registers the calling instance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The instance's unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Its own labels, added to the token's.
    pub labels: Option<BTreeMap<String, String>>,
}

/// The enrolled instance and its first key, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolledResponse {
    /// The instance just registered.
    pub instance: InstanceResponse,
    /// Its first key, `secret` included.
    #[serde(flatten)]
    pub key: CreatedKeyResponse,
}

/// Pagination of the token list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListEnrollmentTokensParams {
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn view(row: enrollment::EnrollmentToken, now: DateTime<Utc>) -> EnrollmentTokenResponse {
    let status = if row.revoked_at.is_some() {
        "revoked"
    } else if row.uses_left == 0 {
        "spent"
    } else if row.expires_at <= now {
        "expired"
    } else {
        "active"
    };
    EnrollmentTokenResponse {
        id: row.id,
        name: row.name,
        masked_token: row.masked,
        scopes: row.scopes,
        roles: row.roles,
        labels: row.labels.0,
        allowed_scopes: row.allowed_scopes,
        key_expires_in: row.key_lifetime_seconds,
        rotate_after: row.rotate_after_seconds,
        uses: row.uses_total,
        uses_left: row.uses_left,
        status: status.to_owned(),
        created_at: row.created_at,
        expires_at: row.expires_at,
    }
}

/// Mint an enrollment token (`kpe_…`), shown only in this response.
#[utoipa::path(
    post, path = "/v1/enrollment-tokens", operation_id = "create_enrollment_token", tag = "enrollment",
    request_body = CreateEnrollmentTokenRequest,
    responses(
        (status = 201, description = "Minted; `secret` is shown only here", body = CreatedEnrollmentTokenResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_enrollment_token(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateEnrollmentTokenRequest>,
) -> Result<Response, ApiError> {
    operator.require(Permission::EnrollmentWrite)?;
    let name = input::name("name", &body.name)?;
    let (scopes, role_names) = grants(body.scopes, body.roles)?;
    let labels = input::labels(body.labels)?;
    let uses = body.uses.unwrap_or(1);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(ApiError::invalid(
            "uses",
            format!("uses must be between 1 and {MAX_USES}"),
        ));
    }
    let token_seconds = body.expires_in.unwrap_or(DEFAULT_TOKEN_SECONDS);
    if !(1..=MAX_TOKEN_SECONDS).contains(&token_seconds) {
        return Err(ApiError::invalid(
            "expires_in",
            format!("expires_in must be between 1 and {MAX_TOKEN_SECONDS} seconds"),
        ));
    }
    let rotate_after = rotate_after(&state, body.rotate_after)?;
    let now = state.clock.now();
    let (key_expires_at, warnings) = policy_expiry(&state, now, body.key_expires_in, None)
        .map_err(|err| err.renamed("expires_in", "key_expires_in"))?;
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let found = known_roles(&mut tx, &role_names).await?;
    let ceiling = match &body.allowed_scopes {
        Some(allowed) => {
            let ceiling = input::scopes("allowed_scopes", allowed)?;
            if let Some(outside) = scopes.outside(&ceiling).first() {
                return Err(ApiError::policy(
                    "scopes",
                    format!("scope {outside} is outside allowed_scopes"),
                ));
            }
            ceiling.to_strings()
        }
        None => {
            let mut all = scopes.to_strings();
            all.extend(found.iter().flat_map(|r| r.scopes.iter().cloned()));
            all.sort();
            all.dedup();
            all
        }
    };
    let secret =
        KeySecret::generate(KeyKind::Enrollment).map_err(|e| ApiError::Internal(e.into()))?;
    let row = enrollment::insert(
        &mut tx,
        &enrollment::EnrollmentToken {
            id: Uuid::new_v4(),
            name: name.into_string(),
            digest: secret.digest().as_bytes().to_vec(),
            masked: secret.masked(),
            scopes: scopes.to_strings(),
            roles: role_names,
            labels: sqlx::types::Json(labels),
            allowed_scopes: ceiling,
            key_lifetime_seconds: (key_expires_at - now).num_seconds(),
            rotate_after_seconds: rotate_after,
            uses_total: uses,
            uses_left: uses,
            created_by: operator.actor.to_string(),
            created_at: now,
            expires_at: now + Duration::seconds(token_seconds),
            revoked_at: None,
        },
    )
    .await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "enrollment_token.create",
            "enrollment_token",
            row.id,
            json!({
                "masked": row.masked,
                "scopes": row.scopes,
                "roles": row.roles,
                "uses": row.uses_total,
                "expires_at": row.expires_at,
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(created(CreatedEnrollmentTokenResponse {
        token: view(row, now),
        secret: secret.expose().to_owned(),
        warnings,
    }))
}

/// List enrollment tokens (never the tokens themselves).
#[utoipa::path(
    get, path = "/v1/enrollment-tokens", operation_id = "list_enrollment_tokens", tag = "enrollment",
    params(ListEnrollmentTokensParams),
    responses(
        (status = 200, description = "A page of tokens", body = EnrollmentTokenPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_enrollment_tokens(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<ListEnrollmentTokensParams>,
) -> Result<Json<EnrollmentTokenPage>, ApiError> {
    operator.require(Permission::KeysRead)?;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let (limit, after) = page.resolve(&state.cursors, LIST)?;
    let (rows, next) = enrollment::list(state.db.pool(), after, limit).await?;
    let now = state.clock.now();
    Ok(Json(EnrollmentTokenPage {
        items: rows.into_iter().map(|row| view(row, now)).collect(),
        next_cursor: next.map(|after| state.cursors.encode(LIST, after)),
    }))
}

/// Revoke an enrollment token: no further instance can enroll with it.
#[utoipa::path(
    post, path = "/v1/enrollment-tokens/{id}/revoke", operation_id = "revoke_enrollment_token", tag = "enrollment",
    params(("id" = Uuid, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The revoked token", body = EnrollmentTokenResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_enrollment_token(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EnrollmentTokenResponse>, ApiError> {
    operator.require(Permission::EnrollmentWrite)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);
    let mut tx = state.db.pool().begin().await?;
    let row = enrollment::revoke(&mut tx, id, now)
        .await?
        .ok_or_else(|| ApiError::NotFound("no enrollment token with this id".to_owned()))?;
    audit::append(
        &mut tx,
        &audit.entry(
            "enrollment_token.revoke",
            "enrollment_token",
            id,
            json!({ "masked": row.masked }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(view(row, now)))
}

/// The enrollment token a request carries, after the per-address limit on
/// failed attempts.
pub struct EnrollmentBearer(KeySecret);

fn bad_token() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_enrollment_token",
        detail: "send a live enrollment token as Authorization: Bearer kpe_…",
    }
}

impl FromRequestParts<AppState> for EnrollmentBearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        instance_bearer(parts, state, KeyKind::Enrollment, bad_token)
            .await
            .map(EnrollmentBearer)
    }
}

/// Enroll: spend one use of an enrollment token to register this instance
/// and receive its first API key, shown only in this response. A spent,
/// expired or revoked token gets 401; of two instances racing for a token's
/// last use, one wins.
#[utoipa::path(
    post, path = "/v1/enroll", operation_id = "enroll", tag = "enrollment",
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "Enrolled; `secret` is shown only here", body = EnrolledResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn enroll(
    State(state): State<AppState>,
    EnrollmentBearer(token): EnrollmentBearer,
    meta: RequestMeta,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    let name = input::name("name", &body.name)?;
    let description = input::description(body.description)?;
    let own_labels = input::labels(body.labels)?;
    let now = state.clock.now();

    let mut tx = state.db.pool().begin().await?;
    // One use spent under the row lock; if anything below fails, the
    // transaction rolls back and the use is not lost.
    let Some(spent) = enrollment::spend(&mut tx, token.digest().as_bytes(), now).await? else {
        state
            .limits
            .note_failure(meta.client_ip, Some(token.expose()));
        return Err(bad_token());
    };
    // The instance's own labels are added; the operator's (the token's) win
    // a clash, and together they stay within the label limit.
    let mut labels: HashMap<String, serde_json::Value> = match own_labels {
        serde_json::Value::Object(own) => own.into_iter().collect(),
        _ => HashMap::new(),
    };
    labels.extend(
        serde_json::from_value::<HashMap<String, serde_json::Value>>(spent.labels.0.clone())
            .unwrap_or_default(),
    );
    if labels.len() > input::MAX_LIST {
        return Err(ApiError::invalid(
            "labels",
            format!(
                "with the enrollment token's, at most {} labels",
                input::MAX_LIST
            ),
        ));
    }
    let instance = instances::insert(
        &mut tx,
        &instances::Instance {
            id: Uuid::new_v4(),
            name: name.into_string(),
            description,
            labels: sqlx::types::Json(json!(labels)),
            allowed_scopes: spent.allowed_scopes.clone(),
            allowed_cidrs: Vec::new(),
            status: InstanceStatus::Active.as_str().to_owned(),
            created_at: now,
            updated_at: now,
            decommissioned_at: None,
            // An enrolled instance is one that looks after its own key.
            self_rotation: true,
        },
    )
    .await?;
    let secret =
        KeySecret::generate(KeyKind::Instance).map_err(|e| ApiError::Internal(e.into()))?;
    let key = keys::insert(
        &mut tx,
        &keys::ApiKey {
            id: Uuid::new_v4(),
            instance_id: instance.id,
            name: "enrolled".to_owned(),
            digest: secret.digest().as_bytes().to_vec(),
            masked: secret.masked(),
            scopes: ScopeSet::from_trusted(&spent.scopes).to_strings(),
            roles: spent.roles.clone(),
            audience: Vec::new(),
            enabled: true,
            created_at: now,
            expires_at: now + Duration::seconds(spent.key_lifetime_seconds),
            revoked_at: None,
            revoked_reason: None,
            rotated_from: None,
            rotated_to: None,
            grace_until: None,
            rotated_at: None,
            rotated_by: None,
            last_used_at: None,
            rotate_after_seconds: spent.rotate_after_seconds,
            status: String::new(),
        },
        now,
    )
    .await?;
    let audit = Audit::by(format!("enrollment_token:{}", spent.id), meta, now);
    audit::append(
        &mut tx,
        &audit.entry(
            "instance.enroll",
            "instance",
            instance.id,
            json!({
                "name": instance.name,
                "key_id": key.id,
                "masked": key.masked,
                "token": spent.masked,
                "uses_left": spent.uses_left,
            }),
        ),
    )
    .await?;
    let key = view_one(&mut tx, key).await?;
    tx.commit().await?;
    Ok(created(EnrolledResponse {
        instance: instance.into(),
        key: CreatedKeyResponse {
            key,
            secret: secret.expose().to_owned(),
            warnings: Vec::new(),
        },
    }))
}
