//! Client instances (each Jan instance, or any API consumer).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// An instance as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Instance {
    /// Its id.
    pub id: Uuid,
    /// Unique among instances that are not decommissioned.
    pub name: String,
    /// Free text.
    pub description: String,
    /// A JSON object of string labels.
    pub labels: sqlx::types::Json<Value>,
    /// The ceiling: no key of this instance gets a scope outside it.
    pub allowed_scopes: Vec<String>,
    /// The networks its keys may be used from; empty means anywhere.
    pub allowed_cidrs: Vec<String>,
    /// `active`, `suspended` or `decommissioned`.
    pub status: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was decommissioned.
    pub decommissioned_at: Option<DateTime<Utc>>,
    /// Whether its keys may rotate themselves (`POST /v1/self/rotate`).
    pub self_rotation: bool,
    /// Rate limits and token budgets for each of its keys.
    pub limits: sqlx::types::Json<keyplane_domain::Limits>,
    /// The models its keys may use; None: every model.
    pub models: Option<Vec<String>>,
}

/// Registers `instance`.
pub async fn insert(conn: &mut PgConnection, instance: &Instance) -> Result<Instance, StoreError> {
    let row = sqlx::query_as::<_, Instance>(
        r#"insert into instances
               (id, name, description, labels, allowed_scopes, allowed_cidrs, status,
                created_at, updated_at, decommissioned_at, self_rotation, limits, models)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           returning *"#,
    )
    .bind(instance.id)
    .bind(&instance.name)
    .bind(&instance.description)
    .bind(&instance.labels)
    .bind(&instance.allowed_scopes)
    .bind(&instance.allowed_cidrs)
    .bind(&instance.status)
    .bind(instance.created_at)
    .bind(instance.updated_at)
    .bind(instance.decommissioned_at)
    .bind(instance.self_rotation)
    .bind(instance.limits)
    .bind(&instance.models)
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// Writes every field of `instance` back.
pub async fn save(conn: &mut PgConnection, instance: &Instance) -> Result<Instance, StoreError> {
    let row = sqlx::query_as::<_, Instance>(
        r#"update instances
              set name = $2, description = $3, labels = $4, allowed_scopes = $5,
                  allowed_cidrs = $6, status = $7, updated_at = $8, decommissioned_at = $9,
                  self_rotation = $10, limits = $11, models = $12
            where id = $1
           returning *"#,
    )
    .bind(instance.id)
    .bind(&instance.name)
    .bind(&instance.description)
    .bind(&instance.labels)
    .bind(&instance.allowed_scopes)
    .bind(&instance.allowed_cidrs)
    .bind(&instance.status)
    .bind(instance.updated_at)
    .bind(instance.decommissioned_at)
    .bind(instance.self_rotation)
    .bind(instance.limits)
    .bind(&instance.models)
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// One instance.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Instance>, StoreError> {
    Ok(
        sqlx::query_as::<_, Instance>(r#"select * from instances where id = $1"#)
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// One instance, locked until the transaction ends (for read-modify-write).
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Instance>, StoreError> {
    Ok(
        sqlx::query_as::<_, Instance>(r#"select * from instances where id = $1 for update"#)
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// A page of instances in creation order; decommissioned ones only when
/// asked for by status.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &ListFilter<'_>,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<Instance>, Option<After>), StoreError> {
    let (status, labels) = (filter.status, filter.labels);
    let rows = sqlx::query_as::<_, Instance>(
        r#"select * from instances
            where (($1::text is null and status <> 'decommissioned') or status = $1)
              and ($5::jsonb is null or (labels @> $5 and labels @@ $6::jsonpath))
              and ($7::text is null or name = $7)
              and ($2::timestamptz is null or (created_at, id) > ($2, $3))
            order by created_at, id
            limit $4"#,
    )
    .bind(status)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .bind(labels.map(|l| &l.contains))
    .bind(labels.map(|l| &l.path))
    .bind(filter.name)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |i| After {
        created_at: i.created_at,
        id: i.id,
    }))
}

/// Which instances a list shows.
#[derive(Debug, Default, Clone, Copy)]
pub struct ListFilter<'a> {
    /// Only in this status; None: every status but `decommissioned`.
    pub status: Option<&'a str>,
    /// Only those whose labels match.
    pub labels: Option<&'a LabelQuery>,
    /// Only the one of this name.
    pub name: Option<&'a str>,
}

/// The active instances whose labels match, in creation order.
pub async fn active_matching(
    db: impl PgExecutor<'_>,
    labels: &LabelQuery,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"select id from instances
            where status = 'active' and labels @> $1 and labels @@ $2::jsonpath
            order by created_at, id"#,
    )
    .bind(&labels.contains)
    .bind(&labels.path)
    .fetch_all(db)
    .await?)
}

/// A label selector as the database asks it: the labels an instance must
/// have (a containment the index answers), and the whole selector as a
/// jsonpath predicate (`labels @@ path`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelQuery {
    /// `{"env": "prod"}`: what `labels @>` must hold.
    pub contains: serde_json::Value,
    /// `$."env" == "prod" && !exists($."legacy")`.
    pub path: String,
}

impl From<&keyplane_domain::Selector> for LabelQuery {
    fn from(selector: &keyplane_domain::Selector) -> LabelQuery {
        use keyplane_domain::Requirement;
        // Keys and values are written as JSON strings, which jsonpath reads
        // the same way: no text of the selector is ever jsonpath syntax.
        let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
        let equals = |key: &str, value: &str| format!("$.{} == {}", quoted(key), quoted(value));
        let any_of = |key: &str, values: &std::collections::BTreeSet<String>| {
            let each: Vec<String> = values.iter().map(|value| equals(key, value)).collect();
            format!("({})", each.join(" || "))
        };
        let predicates: Vec<String> = selector
            .requirements()
            .iter()
            .map(|requirement| match requirement {
                Requirement::Equals(key, value) => equals(key, value),
                Requirement::NotEquals(key, value) => format!("!({})", equals(key, value)),
                Requirement::In(key, values) => any_of(key, values),
                Requirement::NotIn(key, values) => format!("!{}", any_of(key, values)),
                Requirement::Exists(key) => format!("exists($.{})", quoted(key)),
                Requirement::Absent(key) => format!("!exists($.{})", quoted(key)),
            })
            .collect();
        let (equal, _) = selector.split();
        LabelQuery {
            contains: serde_json::json!(equal),
            path: predicates.join(" && "),
        }
    }
}

/// The ceilings (`allowed_scopes`) of the instances among `ids`.
pub async fn ceilings(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Vec<String>)>, StoreError> {
    Ok(sqlx::query_as::<_, (Uuid, Vec<String>)>(
        r#"select id, allowed_scopes from instances where id = any($1)"#,
    )
    .bind(ids)
    .fetch_all(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_becomes_a_containment_and_a_jsonpath_with_every_text_quoted() {
        let selector: keyplane_domain::Selector =
            r#"env=prod, team!=m"l, tier in (gpu,cpu), zone notin (edge), canary, !legacy"#
                .parse()
                .unwrap();
        let query = LabelQuery::from(&selector);
        assert_eq!(query.contains, serde_json::json!({"env": "prod"}));
        assert_eq!(
            query.path,
            r#"$."env" == "prod" && !($."team" == "m\"l") && ($."tier" == "cpu" || $."tier" == "gpu") && !($."zone" == "edge") && exists($."canary") && !exists($."legacy")"#
        );
    }
}
