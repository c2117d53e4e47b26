//! The scope catalog: the built-in scopes and those operators define.

use chrono::{DateTime, Utc};
use keyplane_domain::{Permission, SCOPE_CATALOG, Scope};
use keyplane_store::scopes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::ops::roles::Put;
use crate::ops::{Apply, Operator, Ops, Refusal, input};

/// A scope keys can be granted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScopeResponse {
    /// `resource:action`.
    #[schema(example = "inference:rerank")]
    pub name: String,
    /// What it allows.
    pub description: String,
    /// True for keyplane's own scopes (which cannot be changed or removed).
    pub built_in: bool,
    /// When an operator defined it (null for built-in ones).
    pub created_at: Option<DateTime<Utc>>,
}

/// Every scope, built in first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScopeList {
    /// The scopes.
    pub items: Vec<ScopeResponse>,
}

/// Defines a scope, or describes it anew.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutScopeRequest {
    /// What it allows (at most 1024 characters).
    pub description: Option<String>,
}

/// What a built-in scope allows.
fn built_in_description(name: &str) -> String {
    let (resource, action) = name.split_once(':').unwrap_or((name, ""));
    let what = match resource {
        "inference" => format!("{action} inference requests"),
        "process" => "stopping the server's processes".to_owned(),
        "system" if action == "admin" => "stopping the server and changing it".to_owned(),
        other => format!("{other}: {action}"),
    };
    let mut text = what;
    if let Some(first) = text.get(..1) {
        text = first.to_uppercase() + &text[1..];
    }
    text
}

fn defined_name(name: &str) -> Result<Scope, Refusal> {
    let scope =
        Scope::well_formed(name).map_err(|err| Refusal::invalid("name", err.to_string()))?;
    if scope.is_built_in() {
        return Err(Refusal::Conflict(format!(
            "{name} is built in; built-in scopes cannot be changed"
        )));
    }
    Ok(scope)
}

impl Ops<Operator> {
    /// The catalog: built-in scopes, then those operators defined.
    pub async fn list_scopes(&self) -> Result<ScopeList, Refusal> {
        self.actor.require(Permission::RolesRead)?;
        let defined = scopes::list(self.state.db.pool()).await?;
        let built_in = SCOPE_CATALOG.iter().map(|name| ScopeResponse {
            name: (*name).to_owned(),
            description: built_in_description(name),
            built_in: true,
            created_at: None,
        });
        let defined = defined.into_iter().map(|row| ScopeResponse {
            name: row.name,
            description: row.description,
            built_in: false,
            created_at: Some(row.created_at),
        });
        Ok(ScopeList {
            items: built_in.chain(defined).collect(),
        })
    }

    /// Defines a scope (`resource:action`) that keys, roles and instances'
    /// ceilings can then name, and nodes' route rules require.
    pub async fn put_scope(
        &self,
        name: &str,
        input: PutScopeRequest,
    ) -> Result<(Put, ScopeResponse), Refusal> {
        self.actor.require(Permission::RolesWrite)?;
        let scope = defined_name(name)?;
        let description = input::description(input.description)?;
        let now = self.now();
        let mut change = self.begin(Apply, now).await?;
        let (row, new) = scopes::put(change.db(), scope.as_str(), &description, now).await?;
        let action = if new {
            "scope.define"
        } else {
            "scope.describe"
        };
        change
            .audit(
                action,
                "scope",
                scope.as_str(),
                json!({ "description": description }),
            )
            .await?;
        change.finish(()).await?;
        let put = if new { Put::Created } else { Put::Replaced };
        Ok((
            put,
            ScopeResponse {
                name: row.name,
                description: row.description,
                built_in: false,
                created_at: Some(row.created_at),
            },
        ))
    }

    /// Removes a defined scope that nothing grants any more.
    pub async fn delete_scope(&self, name: &str) -> Result<(), Refusal> {
        self.actor.require(Permission::RolesWrite)?;
        let scope = defined_name(name)?;
        let now = self.now();
        let mut change = self.begin(Apply, now).await?;
        let uses = scopes::uses(change.db(), scope.as_str()).await?;
        if uses > 0 {
            return Err(Refusal::Conflict(format!(
                "{uses} key(s), role(s), instance(s) or enrollment token(s) name this scope; remove it from them first"
            )));
        }
        if !scopes::delete(change.db(), scope.as_str()).await? {
            return Err(Refusal::NotFound("no scope with this name".to_owned()));
        }
        change
            .audit("scope.delete", "scope", scope.as_str(), json!({}))
            .await?;
        change.finish(()).await
    }
}

#[cfg(test)]
mod tests {
    use super::built_in_description;

    #[test]
    fn built_in_scopes_say_what_they_allow() {
        assert_eq!(
            built_in_description("inference:chat"),
            "Chat inference requests"
        );
        assert_eq!(built_in_description("engines:write"), "Engines: write");
        assert_eq!(
            built_in_description("process:admin"),
            "Stopping the server's processes"
        );
    }
}
