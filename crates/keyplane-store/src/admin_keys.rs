//! Operators' admin keys.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// An admin key's metadata.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminKey {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// Its management role: `admin`, `operator`, `auditor` or `viewer`.
    pub role: String,
    /// SHA-256 of the key.
    pub digest: Vec<u8>,
    /// Prefix and last four characters.
    pub masked: String,
    /// Who created it (`bootstrap`, `cli`, or an admin key's actor name).
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// When it was last used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// After a rotation, when it stops working (before `expires_at`).
    pub grace_until: Option<DateTime<Utc>>,
    /// The key it replaced by a rotation.
    pub rotated_from: Option<Uuid>,
    /// The key that replaced it.
    pub rotated_to: Option<Uuid>,
    /// When it was rotated.
    pub rotated_at: Option<DateTime<Utc>>,
    /// Who rotated it: `holder` (itself) or `operator`.
    pub rotated_by: Option<String>,
}

impl AdminKey {
    /// Whether it authenticates at `now`.
    pub fn works_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && now < self.expires_at
            && self.grace_until.is_none_or(|until| now < until)
    }
}

/// Stores a new admin key.
pub async fn insert(db: impl PgExecutor<'_>, key: &AdminKey) -> Result<AdminKey, StoreError> {
    Ok(sqlx::query_as::<_, AdminKey>(
        r#"insert into admin_keys
               (id, name, role, digest, masked, created_by, created_at, expires_at, rotated_from)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           returning *"#,
    )
    .bind(key.id)
    .bind(&key.name)
    .bind(&key.role)
    .bind(&key.digest)
    .bind(&key.masked)
    .bind(&key.created_by)
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(key.rotated_from)
    .fetch_one(db)
    .await?)
}

/// One admin key.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<AdminKey>, StoreError> {
    Ok(
        sqlx::query_as::<_, AdminKey>(r#"select * from admin_keys where id = $1"#)
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// An admin key, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<AdminKey>, StoreError> {
    Ok(
        sqlx::query_as::<_, AdminKey>(r#"select * from admin_keys where id = $1 for update"#)
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Writes back a key's rotation state (`rotated_to`, `grace_until`,
/// `rotated_at`, `rotated_by`) and revocation.
pub async fn save(conn: &mut PgConnection, key: &AdminKey) -> Result<AdminKey, StoreError> {
    Ok(sqlx::query_as::<_, AdminKey>(
        r#"update admin_keys
              set rotated_to = $2, grace_until = $3, rotated_at = $4, rotated_by = $5,
                  revoked_at = $6, revoked_reason = $7
            where id = $1
        returning *"#,
    )
    .bind(key.id)
    .bind(key.rotated_to)
    .bind(key.grace_until)
    .bind(key.rotated_at)
    .bind(&key.rotated_by)
    .bind(key.revoked_at)
    .bind(&key.revoked_reason)
    .fetch_one(conn)
    .await?)
}

/// Records that a key was used at `now` (at most once a minute).
pub async fn touch(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update admin_keys set last_used_at = $2
            where id = $1 and (last_used_at is null or last_used_at < $2 - interval '1 minute')"#,
    )
    .bind(id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// The admin key with this digest, if any (whatever its state).
pub async fn find_by_digest(
    db: impl PgExecutor<'_>,
    digest: &[u8],
) -> Result<Option<AdminKey>, StoreError> {
    Ok(
        sqlx::query_as::<_, AdminKey>(r#"select * from admin_keys where digest = $1"#)
            .bind(digest)
            .fetch_optional(db)
            .await?,
    )
}

/// Revokes the admin key whose digest this is if it works at `now`;
/// answers it, or None when no working admin key has this digest.
pub async fn revoke_live_by_digest(
    conn: &mut PgConnection,
    digest: &[u8],
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<AdminKey>, StoreError> {
    Ok(sqlx::query_as::<_, AdminKey>(
        r#"update admin_keys set revoked_at = $2, revoked_reason = $3
            where digest = $1 and revoked_at is null and expires_at > $2
              and (grace_until is null or grace_until > $2)
        returning *"#,
    )
    .bind(digest)
    .bind(now)
    .bind(reason)
    .fetch_optional(conn)
    .await?)
}

/// Revokes an admin key; None when it does not exist.
pub async fn revoke(
    conn: &mut PgConnection,
    id: Uuid,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<AdminKey>, StoreError> {
    Ok(sqlx::query_as::<_, AdminKey>(
        r#"update admin_keys
              set revoked_at = coalesce(revoked_at, $2),
                  revoked_reason = coalesce(revoked_reason, $3)
            where id = $1
           returning *"#,
    )
    .bind(id)
    .bind(now)
    .bind(reason)
    .fetch_optional(conn)
    .await?)
}

/// A page of admin keys.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<AdminKey>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, AdminKey>(
        r#"select * from admin_keys
            where ($1::timestamptz is null or (created_at, id) > ($1, $2))
            order by created_at, id
            limit $3"#,
    )
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |k| After {
        created_at: k.created_at,
        id: k.id,
    }))
}
