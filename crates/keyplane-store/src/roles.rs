//! Roles: named sets of scopes that keys can carry.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::StoreError;

/// A role as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Role {
    /// Its name (a slug).
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

/// Every role, by name.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Role>, StoreError> {
    Ok(
        sqlx::query_as::<_, Role>(r#"select * from roles order by name"#)
            .fetch_all(db)
            .await?,
    )
}

/// A page of roles by name, after `after`; and the last name of the page
/// when there is a next one.
pub async fn page(
    db: impl PgExecutor<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Role>, Option<String>), StoreError> {
    let mut rows = sqlx::query_as::<_, Role>(
        r#"select * from roles where ($1::text is null or name > $1) order by name limit $2"#,
    )
    .bind(after)
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let limit = usize::try_from(limit).unwrap_or(0);
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|r| r.name.clone())
    });
    Ok((rows, next.flatten()))
}

/// The roles among `names` that exist.
pub async fn get_many(db: impl PgExecutor<'_>, names: &[String]) -> Result<Vec<Role>, StoreError> {
    Ok(
        sqlx::query_as::<_, Role>(r#"select * from roles where name = any($1) order by name"#)
            .bind(names)
            .fetch_all(db)
            .await?,
    )
}

/// One role, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<Option<Role>, StoreError> {
    Ok(
        sqlx::query_as::<_, Role>(r#"select * from roles where name = $1 for update"#)
            .bind(name)
            .fetch_optional(conn)
            .await?,
    )
}

/// Creates or replaces a role.
pub async fn upsert(conn: &mut PgConnection, role: &Role) -> Result<Role, StoreError> {
    Ok(sqlx::query_as::<_, Role>(
        r#"insert into roles (name, description, scopes, created_at, updated_at)
           values ($1, $2, $3, $4, $4)
           on conflict (name) do update
              set description = excluded.description, scopes = excluded.scopes,
                  updated_at = excluded.updated_at
           returning *"#,
    )
    .bind(&role.name)
    .bind(&role.description)
    .bind(&role.scopes)
    .bind(role.updated_at)
    .fetch_one(conn)
    .await?)
}

/// Deletes a role; answers whether it existed.
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<bool, StoreError> {
    let done = sqlx::query(r#"delete from roles where name = $1"#)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
