//! The registry of client instances.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyplane_domain::{Permission, ScopeSet};
use keyplane_store::introspection::KeysOf;
use keyplane_store::{instances, keys, revocations};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::Event;
use crate::ops::limits::{self, LimitsBody};
use crate::ops::{Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};

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
    /// Rate limits and token budgets for each of its keys (a key's own
    /// apply too: the tighter wins).
    pub limits: LimitsBody,
    /// The models its keys may use (names, or prefixes ending in `*`);
    /// null: every model.
    pub models: Option<Vec<String>>,
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
            limits: row.limits.0.into(),
            models: row.models,
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
    /// Rate limits and token budgets for each of its keys.
    pub limits: Option<LimitsBody>,
    /// The models its keys may use: names, or prefixes ending in `*`
    /// (e.g. `llama3*`); absent: every model.
    pub models: Option<Vec<String>>,
}

/// Changes an instance; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
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
    /// New limits for each of its keys, replacing the old ones (`{}`:
    /// none). Nodes drop their cached answers at once.
    pub limits: Option<LimitsBody>,
    /// A new model allow-list; null: every model.
    #[serde(default, deserialize_with = "input::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<Option<Vec<String>>>,
}

const LIST: &str = "instances";

fn not_found() -> Refusal {
    Refusal::NotFound("no instance with this id".to_owned())
}

/// What the audit log keeps of an instance.
pub(crate) fn summary(row: &instances::Instance) -> serde_json::Value {
    json!({
        "name": row.name,
        "status": row.status,
        "allowed_scopes": row.allowed_scopes,
        "allowed_cidrs": row.allowed_cidrs,
        "labels": row.labels.0,
        "self_rotation": row.self_rotation,
        "limits": row.limits.0,
        "models": row.models,
    })
}

/// A new instance's row: active, with no networks.
pub(crate) fn new_instance_row(
    name: String,
    description: String,
    labels: serde_json::Value,
    allowed_scopes: Vec<String>,
    now: DateTime<Utc>,
) -> instances::Instance {
    instances::Instance {
        id: Uuid::new_v4(),
        name,
        description,
        labels: sqlx::types::Json(labels),
        allowed_scopes,
        allowed_cidrs: Vec::new(),
        status: InstanceStatus::Active.as_str().to_owned(),
        created_at: now,
        updated_at: now,
        decommissioned_at: None,
        self_rotation: true,
        limits: sqlx::types::Json(keyplane_domain::Limits::default()),
        models: None,
    }
}

impl Ops<Operator> {
    /// Registers an instance.
    pub async fn create_instance<R: Run>(
        &self,
        run: R,
        input: CreateInstanceRequest,
    ) -> Result<R::Answer<InstanceResponse>, Refusal> {
        self.actor.require(Permission::InstancesWrite)?;
        let name = input::name("name", &input.name)?;
        let description = input::description(input.description)?;
        let labels = input::labels(input.labels)?;
        let ceiling = match &input.allowed_scopes {
            Some(scopes) => input::scopes("allowed_scopes", scopes, &self.defined_scopes().await?)?,
            None => ScopeSet::parse(&DEFAULT_CEILING)
                .map_err(|_| Refusal::Internal(anyhow::anyhow!("bad default ceiling")))?,
        };
        let cidrs = input::cidrs(&input.allowed_cidrs.unwrap_or_default())?;
        let limits = limits::limits(input.limits)?;
        let models = limits::models(input.models.as_deref())?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let row = instances::Instance {
            allowed_cidrs: cidrs,
            self_rotation: input.self_rotation.unwrap_or(true),
            limits: sqlx::types::Json(limits),
            models,
            ..new_instance_row(
                name.into_string(),
                description,
                labels,
                ceiling.to_strings(),
                now,
            )
        };
        let row = instances::insert(change.db(), &row).await?;
        change
            .audit(
                "instance.create",
                "instance",
                row.id,
                json!({ "after": summary(&row) }),
            )
            .await?;
        change.finish(row.into()).await
    }

    /// A page of instances; decommissioned ones only when asked for by status.
    pub async fn list_instances(
        &self,
        status: Option<InstanceStatus>,
        selector: Option<&str>,
        name: Option<&str>,
        page: PageParams,
    ) -> Result<InstancePage, Refusal> {
        self.actor.require(Permission::InstancesRead)?;
        let labels = selector
            .map(|text| input::selector("selector", text))
            .transpose()?;
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        let filter = instances::ListFilter {
            status: status.map(InstanceStatus::as_str),
            labels: labels.as_ref(),
            name,
        };
        let (rows, next) = instances::list(self.state.db.pool(), &filter, after, limit).await?;
        Ok(InstancePage {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// One instance.
    pub async fn get_instance(&self, id: Uuid) -> Result<InstanceResponse, Refusal> {
        self.actor.require(Permission::InstancesRead)?;
        let row = instances::get(self.state.db.pool(), id)
            .await?
            .ok_or_else(not_found)?;
        Ok(row.into())
    }

    /// Changes an instance: name, description, labels, ceiling, networks, or
    /// status (active / suspended). Suspending stops all its keys at once.
    pub async fn update_instance<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: UpdateInstanceRequest,
    ) -> Result<R::Answer<InstanceResponse>, Refusal> {
        self.actor.require(Permission::InstancesWrite)?;
        if input.status == Some(InstanceStatus::Suspended) {
            // A suspension revokes every key of the instance at once.
            self.dangerous::<R>()?;
        }
        if input.status == Some(InstanceStatus::Decommissioned) {
            return Err(Refusal::invalid(
                "status",
                "status may be active or suspended; decommission with DELETE /v1/instances/{id}",
            ));
        }
        let name = input
            .name
            .as_deref()
            .map(|n| input::name("name", n))
            .transpose()?;
        let description = input
            .description
            .map(|d| input::description(Some(d)))
            .transpose()?;
        let labels = input.labels.map(|l| input::labels(Some(l))).transpose()?;
        let ceiling = match input.allowed_scopes.as_deref() {
            Some(s) => Some(input::scopes(
                "allowed_scopes",
                s,
                &self.defined_scopes().await?,
            )?),
            None => None,
        };
        let cidrs = input
            .allowed_cidrs
            .as_deref()
            .map(input::cidrs)
            .transpose()?;
        let new_limits = input.limits.map(|l| limits::limits(Some(l))).transpose()?;
        let new_models = input
            .models
            .map(|m| limits::models(m.as_deref()))
            .transpose()?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let before = instances::lock(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        if before.status == InstanceStatus::Decommissioned.as_str() {
            return Err(Refusal::Conflict(
                "the instance is decommissioned".to_owned(),
            ));
        }
        change.concerns(KeysOf::Instance(id)).await?;
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
        if let Some(status) = input.status {
            after.status = status.as_str().to_owned();
        }
        if let Some(self_rotation) = input.self_rotation {
            after.self_rotation = self_rotation;
        }
        if let Some(limits) = new_limits {
            after.limits = sqlx::types::Json(limits);
        }
        if let Some(models) = new_models {
            after.models = models;
        }
        after.updated_at = now;
        let after = instances::save(change.db(), &after).await?;
        change.publish(Event::Instance { id });
        if before.status == "active" && after.status == "suspended" {
            let stopped = revocations::live_keys_of_instance(change.db(), id, now).await?;
            change.revoke(&stopped, "suspended").await?;
        } else if before.limits != after.limits || before.models != after.models {
            let live = revocations::live_keys_of_instance(change.db(), id, now).await?;
            change.changed(&live).await?;
        }
        let action = match (before.status.as_str(), after.status.as_str()) {
            ("active", "suspended") => "instance.suspend",
            ("suspended", "active") => "instance.resume",
            _ => "instance.update",
        };
        change
            .audit(
                action,
                "instance",
                id,
                json!({ "before": summary(&before), "after": summary(&after) }),
            )
            .await?;
        change.finish(after.into()).await
    }

    /// Decommissions an instance: it and all its keys stop working at once,
    /// in one transaction. Its name becomes free again.
    pub async fn decommission_instance<R: Run>(
        &self,
        run: R,
        id: Uuid,
    ) -> Result<R::Answer<()>, Refusal> {
        self.actor.require(Permission::InstancesWrite)?;
        self.dangerous::<R>()?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let mut instance = instances::lock(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        if instance.status == InstanceStatus::Decommissioned.as_str() {
            return Err(not_found());
        }
        change.concerns(KeysOf::Instance(id)).await?;
        change.publish(Event::Instance { id });
        instance.status = InstanceStatus::Decommissioned.as_str().to_owned();
        instance.updated_at = now;
        instance.decommissioned_at = Some(now);
        instances::save(change.db(), &instance).await?;
        let revoked =
            keys::revoke_all_of_instance(change.db(), id, "instance decommissioned", now).await?;
        change.revoke(&revoked, "decommissioned").await?;
        change
            .audit(
                "instance.decommission",
                "instance",
                id,
                json!({ "name": instance.name, "revoked_keys": revoked }),
            )
            .await?;
        change
            .notify(
                "instance.decommissioned",
                json!({ "instance_id": id, "name": instance.name, "revoked_keys": revoked }),
            )
            .await?;
        change.finish(()).await
    }
}
