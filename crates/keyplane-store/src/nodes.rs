//! Nodes: Cortex nodes and gates that introspect keys.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// A node as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Node {
    /// Its id.
    pub id: Uuid,
    /// Unique among nodes that are not retired.
    pub name: String,
    /// Free text.
    pub description: String,
    /// SHA-256 of its node key.
    pub digest: Vec<u8>,
    /// Its node key, masked.
    pub masked: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its node key stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was retired.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it last called keyplane.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Registers a node.
pub async fn insert(conn: &mut PgConnection, node: &Node) -> Result<Node, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"insert into nodes (id, name, description, digest, masked, created_at, expires_at)
           values ($1, $2, $3, $4, $5, $6, $7)
           returning *"#,
    )
    .bind(node.id)
    .bind(&node.name)
    .bind(&node.description)
    .bind(&node.digest)
    .bind(&node.masked)
    .bind(node.created_at)
    .bind(node.expires_at)
    .fetch_one(conn)
    .await?)
}

/// One node.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Node>, StoreError> {
    Ok(
        sqlx::query_as::<_, Node>(r#"select * from nodes where id = $1"#)
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// The nodes, not retired, whose id or name is among `refs`.
pub async fn find_live(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    names: &[String],
) -> Result<Vec<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"select * from nodes where retired_at is null and (id = any($1) or name = any($2))"#,
    )
    .bind(ids)
    .bind(names)
    .fetch_all(db)
    .await?)
}

/// Retires a node; its key stops working. Answers the node, or None when it
/// does not exist or was already retired.
pub async fn retire(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"update nodes set retired_at = $2 where id = $1 and retired_at is null returning *"#,
    )
    .bind(id)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// A page of nodes; retired ones only when asked for.
pub async fn list(
    db: impl PgExecutor<'_>,
    include_retired: bool,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<Node>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, Node>(
        r#"select * from nodes
            where ($1 or retired_at is null)
              and ($2::timestamptz is null or (created_at, id) > ($2, $3))
            order by created_at, id
            limit $4"#,
    )
    .bind(include_retired)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |n| After {
        created_at: n.created_at,
        id: n.id,
    }))
}
