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
}

/// Registers `instance`.
pub async fn insert(conn: &mut PgConnection, instance: &Instance) -> Result<Instance, StoreError> {
    let row = sqlx::query_as::<_, Instance>(
        r#"insert into instances
               (id, name, description, labels, allowed_scopes, allowed_cidrs, status,
                created_at, updated_at, decommissioned_at, self_rotation)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
                  self_rotation = $10
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
    status: Option<&str>,
    labels: Option<&LabelQuery>,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<Instance>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, Instance>(
        r#"select * from instances
            where (($1::text is null and status <> 'decommissioned') or status = $1)
              and ($5::jsonb is null or (labels @> $5 and labels_match(labels, $6)))
              and ($2::timestamptz is null or (created_at, id) > ($2, $3))
            order by created_at, id
            limit $4"#,
    )
    .bind(status)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .bind(labels.map(|l| &l.contains))
    .bind(labels.map(|l| &l.requirements))
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |i| After {
        created_at: i.created_at,
        id: i.id,
    }))
}

/// The active instances whose labels match, in creation order.
pub async fn active_matching(
    db: impl PgExecutor<'_>,
    labels: &LabelQuery,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"select id from instances
            where status = 'active' and labels @> $1 and labels_match(labels, $2)
            order by created_at, id"#,
    )
    .bind(&labels.contains)
    .bind(&labels.requirements)
    .fetch_all(db)
    .await?)
}

/// A label selector as the database asks it: the labels an instance must
/// have (answered by the index), and the other requirements (checked by
/// `labels_match`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelQuery {
    /// `{"env": "prod"}`: what `labels @>` must hold.
    pub contains: serde_json::Value,
    /// `[{"op": "in", "key": "tier", "values": ["gpu"]}, ...]`.
    pub requirements: serde_json::Value,
}

impl From<&keyplane_domain::Selector> for LabelQuery {
    fn from(selector: &keyplane_domain::Selector) -> LabelQuery {
        use keyplane_domain::Requirement;
        use serde_json::json;
        let (equal, others) = selector.split();
        let requirements = others
            .into_iter()
            .map(|requirement| match requirement {
                Requirement::Equals(key, value) => {
                    // A second `key=` for a key already required equal.
                    json!({"op": "in", "key": key, "values": [value]})
                }
                Requirement::NotEquals(key, value) => {
                    json!({"op": "ne", "key": key, "values": [value]})
                }
                Requirement::In(key, values) => json!({"op": "in", "key": key, "values": values}),
                Requirement::NotIn(key, values) => {
                    json!({"op": "notin", "key": key, "values": values})
                }
                Requirement::Exists(key) => json!({"op": "exists", "key": key}),
                Requirement::Absent(key) => json!({"op": "absent", "key": key}),
            })
            .collect();
        LabelQuery {
            contains: json!(equal),
            requirements: serde_json::Value::Array(requirements),
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
