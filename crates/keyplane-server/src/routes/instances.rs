//! `/v1/instances`: the registry of client instances.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keyplane_domain::{Permission, ScopeSet};
use keyplane_store::{audit, instances, keys, revocations};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::error::{ApiError, Problem};
use crate::events::Event;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::state::AppState;

page_type!(InstancePage, InstanceResponse);

/// The ceiling an instance gets when none is given: what a plain inference
/// client needs, nothing administrative.
const DEFAULT_CEILING: [&str; 3] = ["inference:chat", "inference:embeddings", "models:read"];

/// An instance's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Its keys work.
    Active,
    /// Its keys stop working until it is active again.
    Suspended,
    /// Gone for good; its keys were revoked.
    Decommissioned,
}

impl InstanceStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Active => "active",
            InstanceStatus::Suspended => "suspended",
            InstanceStatus::Decommissioned => "decommissioned",
        }
    }
}

/// A client instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceResponse {
    /// Its id.
    pub id: Uuid,
    /// Its unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// String labels.
    pub labels: BTreeMap<String, String>,
    /// The ceiling: no key of this instance gets a scope outside it.
    pub allowed_scopes: Vec<String>,
    /// Networks its keys may be used from; empty means anywhere.
    pub allowed_cidrs: Vec<String>,
    /// `active`, `suspended` or `decommissioned`.
    pub status: InstanceStatus,
    /// Whether its keys may rotate themselves (`POST /v1/self/rotate`).
    pub self_rotation: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<instances::Instance> for InstanceResponse {
    fn from(row: instances::Instance) -> Self {
        InstanceResponse {
            id: row.id,
            name: row.name,
            description: row.description,
            labels: serde_json::from_value(row.labels.0).unwrap_or_default(),
            allowed_scopes: row.allowed_scopes,
            allowed_cidrs: row.allowed_cidrs,
            status: match row.status.as_str() {
                "suspended" => InstanceStatus::Suspended,
                "decommissioned" => InstanceStatus::Decommissioned,
                _ => InstanceStatus::Active,
            },
            self_rotation: row.self_rotation,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Registers an instance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceRequest {
    /// Unique, 1 to 128 characters.
    pub name: String,
    /// Free text, at most 1024 characters.
    pub description: Option<String>,
    /// String labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// The ceiling (default: inference:chat, inference:embeddings, models:read).
    pub allowed_scopes: Option<Vec<String>>,
    /// Networks its keys may be used from (default: anywhere).
    pub allowed_cidrs: Option<Vec<String>>,
    /// Whether its keys may rotate themselves with `POST /v1/self/rotate`
    /// (default true).
    pub self_rotation: Option<bool>,
}

/// Changes an instance; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstanceRequest {
    /// A new unique name.
    pub name: Option<String>,
    /// New free text.
    pub description: Option<String>,
    /// New labels (replacing the old ones).
    pub labels: Option<BTreeMap<String, String>>,
    /// A new ceiling; narrowing it narrows every key of the instance at once.
    pub allowed_scopes: Option<Vec<String>>,
    /// New networks.
    pub allowed_cidrs: Option<Vec<String>>,
    /// `active` or `suspended` (decommission with DELETE).
    pub status: Option<InstanceStatus>,
    /// Whether its keys may rotate themselves.
    pub self_rotation: Option<bool>,
}

/// Filters for listing instances.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListInstancesParams {
    /// Only instances in this status (decommissioned ones are listed only when asked for).
    pub status: Option<InstanceStatus>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const LIST: &str = "instances";

fn not_found() -> ApiError {
    ApiError::NotFound("no instance with this id".to_owned())
}

/// Register an instance.
#[utoipa::path(
    post, path = "/v1/instances", operation_id = "create_instance", tag = "instances",
    request_body = CreateInstanceRequest,
    responses(
        (status = 201, description = "Registered", body = InstanceResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_instance(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateInstanceRequest>,
) -> Result<(StatusCode, Json<InstanceResponse>), ApiError> {
    operator.require(Permission::InstancesWrite)?;
    let name = input::name("name", &body.name)?;
    let description = input::description(body.description)?;
    let labels = input::labels(body.labels)?;
    let ceiling = match &body.allowed_scopes {
        Some(scopes) => input::scopes("allowed_scopes", scopes)?,
        None => ScopeSet::parse(&DEFAULT_CEILING)
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("bad default ceiling")))?,
    };
    let cidrs = input::cidrs(&body.allowed_cidrs.unwrap_or_default())?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let row = instances::insert(
        &mut tx,
        &instances::Instance {
            id: Uuid::new_v4(),
            name: name.into_string(),
            description,
            labels: sqlx::types::Json(labels),
            allowed_scopes: ceiling.to_strings(),
            allowed_cidrs: cidrs,
            status: InstanceStatus::Active.as_str().to_owned(),
            created_at: now,
            updated_at: now,
            decommissioned_at: None,
            self_rotation: body.self_rotation.unwrap_or(true),
        },
    )
    .await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "instance.create",
            "instance",
            row.id,
            json!({ "after": summary(&row) }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// List instances.
#[utoipa::path(
    get, path = "/v1/instances", operation_id = "list_instances", tag = "instances",
    params(ListInstancesParams),
    responses(
        (status = 200, description = "A page of instances", body = InstancePage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_instances(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<ListInstancesParams>,
) -> Result<Json<InstancePage>, ApiError> {
    operator.require(Permission::InstancesRead)?;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let (limit, after) = page.resolve(&state.cursors, LIST)?;
    let status = params.status.map(InstanceStatus::as_str);
    let (rows, next) = instances::list(state.db.pool(), status, after, limit).await?;
    Ok(Json(InstancePage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor: next.map(|after| state.cursors.encode(LIST, after)),
    }))
}

/// Get one instance.
#[utoipa::path(
    get, path = "/v1/instances/{id}", operation_id = "get_instance", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's id")),
    responses(
        (status = 200, description = "The instance", body = InstanceResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_instance(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<InstanceResponse>, ApiError> {
    operator.require(Permission::InstancesRead)?;
    let row = instances::get(state.db.pool(), id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(row.into()))
}

/// Change an instance: name, description, labels, ceiling, CIDRs, or status
/// (`active` / `suspended`). Suspending stops all its keys at once.
#[utoipa::path(
    patch, path = "/v1/instances/{id}", operation_id = "update_instance", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's id")),
    request_body = UpdateInstanceRequest,
    responses(
        (status = 200, description = "The changed instance", body = InstanceResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn update_instance(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateInstanceRequest>,
) -> Result<Json<InstanceResponse>, ApiError> {
    operator.require(Permission::InstancesWrite)?;
    if body.status == Some(InstanceStatus::Decommissioned) {
        return Err(ApiError::invalid(
            "status",
            "status may be active or suspended; decommission with DELETE /v1/instances/{id}",
        ));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| input::name("name", n))
        .transpose()?;
    let description = body
        .description
        .map(|d| input::description(Some(d)))
        .transpose()?;
    let labels = body.labels.map(|l| input::labels(Some(l))).transpose()?;
    let ceiling = body
        .allowed_scopes
        .as_deref()
        .map(|s| input::scopes("allowed_scopes", s))
        .transpose()?;
    let cidrs = body
        .allowed_cidrs
        .as_deref()
        .map(input::cidrs)
        .transpose()?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let before = instances::lock(&mut tx, id).await?.ok_or_else(not_found)?;
    if before.status == InstanceStatus::Decommissioned.as_str() {
        return Err(ApiError::Conflict(
            "the instance is decommissioned".to_owned(),
        ));
    }
    let mut after = before.clone();
    if let Some(name) = name {
        after.name = name.into_string();
    }
    if let Some(description) = description {
        after.description = description;
    }
    if let Some(labels) = labels {
        after.labels = sqlx::types::Json(labels);
    }
    if let Some(ceiling) = ceiling {
        after.allowed_scopes = ceiling.to_strings();
    }
    if let Some(cidrs) = cidrs {
        after.allowed_cidrs = cidrs;
    }
    if let Some(status) = body.status {
        after.status = status.as_str().to_owned();
    }
    if let Some(self_rotation) = body.self_rotation {
        after.self_rotation = self_rotation;
    }
    after.updated_at = now;
    let after = instances::save(&mut tx, &after).await?;
    let mut events = vec![Event::Instance { id }];
    if before.status == "active" && after.status == "suspended" {
        let stopped = revocations::live_keys_of_instance(&mut *tx, id, now).await?;
        revocations::record(&mut tx, &stopped, "suspended", now).await?;
        events.push(Event::Revocations);
    }
    let action = match (before.status.as_str(), after.status.as_str()) {
        ("active", "suspended") => "instance.suspend",
        ("suspended", "active") => "instance.resume",
        _ => "instance.update",
    };
    audit::append(
        &mut tx,
        &audit.entry(
            action,
            "instance",
            id,
            json!({ "before": summary(&before), "after": summary(&after) }),
        ),
    )
    .await?;
    state.events.commit(tx, &events).await?;
    Ok(Json(after.into()))
}

/// Decommission an instance: it and all its keys stop working at once, in one
/// transaction. Its name becomes free again.
#[utoipa::path(
    delete, path = "/v1/instances/{id}", operation_id = "decommission_instance", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's id")),
    responses(
        (status = 204, description = "Decommissioned"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn decommission_instance(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    operator.require(Permission::InstancesWrite)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    let mut instance = instances::lock(&mut tx, id).await?.ok_or_else(not_found)?;
    if instance.status == InstanceStatus::Decommissioned.as_str() {
        return Err(not_found());
    }
    instance.status = InstanceStatus::Decommissioned.as_str().to_owned();
    instance.updated_at = now;
    instance.decommissioned_at = Some(now);
    instances::save(&mut tx, &instance).await?;
    let revoked = keys::revoke_all_of_instance(&mut tx, id, "instance decommissioned", now).await?;
    revocations::record(&mut tx, &revoked, "decommissioned", now).await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "instance.decommission",
            "instance",
            id,
            json!({ "name": instance.name, "revoked_keys": revoked }),
        ),
    )
    .await?;
    crate::webhooks::notify(
        &mut tx,
        "instance.decommissioned",
        json!({ "instance_id": id, "name": instance.name, "revoked_keys": revoked }),
        now,
    )
    .await?;
    state
        .events
        .commit(tx, &[Event::Instance { id }, Event::Revocations])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the audit log keeps of an instance.
fn summary(row: &instances::Instance) -> serde_json::Value {
    json!({
        "name": row.name,
        "status": row.status,
        "allowed_scopes": row.allowed_scopes,
        "allowed_cidrs": row.allowed_cidrs,
        "labels": row.labels.0,
        "self_rotation": row.self_rotation,
    })
}
