//! Roles: named scope sets that keys can carry.

use chrono::{DateTime, Utc};
use keyplane_domain::{Permission, RoleName};
use keyplane_store::introspection::KeysOf;
use keyplane_store::{keys, roles};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::events::Event;
use crate::ops::{Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};

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

/// Whether a role was made or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// There was no role of this name.
    Created,
    /// There was, and it was replaced.
    Replaced,
}

fn role_name(text: &str) -> Result<RoleName, Refusal> {
    RoleName::parse(text).map_err(|err| Refusal::invalid("name", err.to_string()))
}

impl Ops<Operator> {
    /// A page of roles, by name.
    pub async fn list_roles(&self, page: PageParams) -> Result<RolePage, Refusal> {
        self.actor.require(Permission::RolesRead)?;
        let cursors = &self.state.cursors;
        let limit = page.limit()?;
        let after = page
            .cursor
            .as_deref()
            .map(|cursor| cursors.decode_name(LIST, cursor))
            .transpose()?;
        let (rows, next) = roles::page(self.state.db.pool(), after.as_deref(), limit).await?;
        Ok(RolePage {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor: next.map(|name| cursors.encode_name(LIST, &name)),
        })
    }

    /// Creates or replaces a role; every key carrying it changes with it.
    pub async fn put_role<R: Run>(
        &self,
        run: R,
        name: &str,
        input: PutRoleRequest,
    ) -> Result<R::Answer<(Put, RoleResponse)>, Refusal> {
        self.actor.require(Permission::RolesWrite)?;
        self.dangerous::<R>()?;
        let name = role_name(name)?;
        let description = input::description(input.description)?;
        let scopes = input::scopes("scopes", &input.scopes, &self.defined_scopes().await?)?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let before = roles::lock(change.db(), name.as_str()).await?;
        change.concerns(KeysOf::Role(name.as_str())).await?;
        let after = roles::upsert(
            change.db(),
            &roles::Role {
                name: name.as_str().to_owned(),
                description,
                scopes: scopes.to_strings(),
                created_at: now,
                updated_at: now,
            },
        )
        .await?;
        let (action, put) = match &before {
            Some(_) => ("role.replace", Put::Replaced),
            None => ("role.create", Put::Created),
        };
        change
            .audit(
                action,
                "role",
                name,
                json!({ "before": before.map(|r| r.scopes), "after": after.scopes }),
            )
            .await?;
        change.publish(Event::Roles);
        change.finish((put, after.into())).await
    }

    /// Deletes a role that no live key carries.
    pub async fn delete_role<R: Run>(&self, run: R, name: &str) -> Result<R::Answer<()>, Refusal> {
        self.actor.require(Permission::RolesWrite)?;
        self.dangerous::<R>()?;
        let name = role_name(name)?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let role = roles::lock(change.db(), name.as_str())
            .await?
            .ok_or_else(|| Refusal::NotFound("no role with this name".to_owned()))?;
        let in_use = keys::count_naming_role(change.db(), name.as_str(), now).await?;
        if in_use > 0 {
            return Err(Refusal::Conflict(format!(
                "{in_use} live key(s) carry this role; revoke them or remove the role from them first"
            )));
        }
        roles::delete(change.db(), name.as_str()).await?;
        change
            .audit(
                "role.delete",
                "role",
                name,
                json!({ "scopes": role.scopes }),
            )
            .await?;
        change.publish(Event::Roles);
        change.finish(()).await
    }
}
