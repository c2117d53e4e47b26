//! Scopes operators define, beside the built-in catalog.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::StoreError;

/// A scope an operator defined.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DefinedScope {
    /// `resource:action`.
    pub name: String,
    /// What it allows, for people.
    pub description: String,
    /// When it was defined.
    pub created_at: DateTime<Utc>,
}

/// Every defined scope, by name.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<DefinedScope>, StoreError> {
    Ok(
        sqlx::query_as::<_, DefinedScope>("select * from scopes order by name")
            .fetch_all(db)
            .await?,
    )
}

/// The names of the defined scopes.
pub async fn names(db: impl PgExecutor<'_>) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar::<_, String>("select name from scopes order by name")
            .fetch_all(db)
            .await?,
    )
}

/// Defines `name` (or describes it anew); answers it and whether it is new.
pub async fn put(
    conn: &mut PgConnection,
    name: &str,
    description: &str,
    now: DateTime<Utc>,
) -> Result<(DefinedScope, bool), StoreError> {
    let before =
        sqlx::query_scalar::<_, String>("select name from scopes where name = $1 for update")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let row = sqlx::query_as::<_, DefinedScope>(
        r#"insert into scopes (name, description, created_at) values ($1, $2, $3)
           on conflict (name) do update set description = excluded.description
           returning *"#,
    )
    .bind(name)
    .bind(description)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok((row, before.is_none()))
}

/// Where `name` is granted: keys (unrevoked), roles, instances' ceilings
/// and enrollment tokens, counted.
pub async fn uses(conn: &mut PgConnection, name: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        r#"select (select count(*) from api_keys where $1 = any(scopes) and revoked_at is null)
                + (select count(*) from roles where $1 = any(scopes))
                + (select count(*) from instances
                    where $1 = any(allowed_scopes) and status <> 'decommissioned')
                + (select count(*) from enrollment_tokens
                    where $1 = any(scopes) or $1 = any(allowed_scopes))"#,
    )
    .bind(name)
    .fetch_one(conn)
    .await?)
}

/// Removes `name`; answers whether it was defined.
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("delete from scopes where name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}
