//! `/v1/roles`: named scope sets that keys can carry.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keyplane_domain::{Permission, RoleName};
use keyplane_store::{audit, keys, roles};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::error::{ApiError, Problem};
use crate::events::Event;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::state::AppState;

/// A role.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleResponse {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<roles::Role> for RoleResponse {
    fn from(row: roles::Role) -> Self {
        RoleResponse {
            name: row.name,
            description: row.description,
            scopes: row.scopes,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

page_type!(RolePage, RoleResponse);

const LIST: &str = "roles";

/// Creates or replaces a role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRoleRequest {
    /// Free text.
    pub description: Option<String>,
    /// Its scopes. Changing them changes the effective scopes of every key carrying the role.
    pub scopes: Vec<String>,
}

fn role_name(text: &str) -> Result<RoleName, ApiError> {
    RoleName::parse(text).map_err(|err| ApiError::invalid("name", err.to_string()))
}

/// List roles, by name.
#[utoipa::path(
    get, path = "/v1/roles", operation_id = "list_roles", tag = "roles",
    params(PageParams),
    responses(
        (status = 200, description = "A page of roles, by name", body = RolePage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_roles(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<RolePage>, ApiError> {
    operator.require(Permission::RolesRead)?;
    let limit = page.limit()?;
    let after = page
        .cursor
        .as_deref()
        .map(|cursor| state.cursors.decode_name(LIST, cursor))
        .transpose()?;
    let (rows, next) = roles::page(state.db.pool(), after.as_deref(), limit).await?;
    Ok(Json(RolePage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor: next.map(|name| state.cursors.encode_name(LIST, &name)),
    }))
}

/// Create or replace a role.
#[utoipa::path(
    put, path = "/v1/roles/{name}", operation_id = "put_role", tag = "roles",
    params(("name" = String, Path, description = "The role's name")),
    request_body = PutRoleRequest,
    responses(
        (status = 200, description = "Replaced", body = RoleResponse),
        (status = 201, description = "Created", body = RoleResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn put_role(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutRoleRequest>,
) -> Result<(StatusCode, Json<RoleResponse>), ApiError> {
    operator.require(Permission::RolesWrite)?;
    let name = role_name(&name)?;
    let description = input::description(body.description)?;
    let scopes = input::scopes("scopes", &body.scopes)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let before = roles::lock(&mut tx, name.as_str()).await?;
    let after = roles::upsert(
        &mut tx,
        &roles::Role {
            name: name.as_str().to_owned(),
            description,
            scopes: scopes.to_strings(),
            created_at: now,
            updated_at: now,
        },
    )
    .await?;
    let (action, status) = match &before {
        Some(_) => ("role.replace", StatusCode::OK),
        None => ("role.create", StatusCode::CREATED),
    };
    audit::append(
        &mut tx,
        &audit.entry(
            action,
            "role",
            name,
            json!({ "before": before.map(|r| r.scopes), "after": after.scopes }),
        ),
    )
    .await?;
    state.events.commit(tx, &[Event::Roles]).await?;
    Ok((status, Json(after.into())))
}

/// Delete a role that no live key carries.
#[utoipa::path(
    delete, path = "/v1/roles/{name}", operation_id = "delete_role", tag = "roles",
    params(("name" = String, Path, description = "The role's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_role(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    operator.require(Permission::RolesWrite)?;
    let name = role_name(&name)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let role = roles::lock(&mut tx, name.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound("no role with this name".to_owned()))?;
    let in_use = keys::count_naming_role(&mut *tx, name.as_str(), now).await?;
    if in_use > 0 {
        return Err(ApiError::Conflict(format!(
            "{in_use} live key(s) carry this role; revoke them or remove the role from them first"
        )));
    }
    roles::delete(&mut tx, name.as_str()).await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "role.delete",
            "role",
            name,
            json!({ "scopes": role.scopes }),
        ),
    )
    .await?;
    state.events.commit(tx, &[Event::Roles]).await?;
    Ok(StatusCode::NO_CONTENT)
}
