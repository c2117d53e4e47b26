//! Enrollment tokens: what a new instance spends to register itself.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// An enrollment token as stored (its digest, never the token).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentToken {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// SHA-256 of the token.
    pub digest: Vec<u8>,
    /// Prefix and last four characters.
    pub masked: String,
    /// Scopes of the first key.
    pub scopes: Vec<String>,
    /// Roles of the first key.
    pub roles: Vec<String>,
    /// Labels of the instance.
    pub labels: sqlx::types::Json<Value>,
    /// The instance's ceiling.
    pub allowed_scopes: Vec<String>,
    /// The first key's lifetime.
    pub key_lifetime_seconds: i64,
    /// The first key's rotation policy.
    pub rotate_after_seconds: Option<i64>,
    /// How many instances it may enroll.
    pub uses_total: i32,
    /// How many more.
    pub uses_left: i32,
    /// The operator who minted it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new token.
pub async fn insert(
    conn: &mut PgConnection,
    token: &EnrollmentToken,
) -> Result<EnrollmentToken, StoreError> {
    Ok(sqlx::query_as::<_, EnrollmentToken>(
        r#"insert into enrollment_tokens
               (id, name, digest, masked, scopes, roles, labels, allowed_scopes,
                key_lifetime_seconds, rotate_after_seconds, uses_total, uses_left,
                created_by, created_at, expires_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14)
           returning *"#,
    )
    .bind(token.id)
    .bind(&token.name)
    .bind(&token.digest)
    .bind(&token.masked)
    .bind(&token.scopes)
    .bind(&token.roles)
    .bind(&token.labels)
    .bind(&token.allowed_scopes)
    .bind(token.key_lifetime_seconds)
    .bind(token.rotate_after_seconds)
    .bind(token.uses_total)
    .bind(&token.created_by)
    .bind(token.created_at)
    .bind(token.expires_at)
    .fetch_one(conn)
    .await?)
}

/// Spends one use of the live token with this digest, atomically: of two
/// callers racing for the last use, one gets the token and the other none.
pub async fn spend(
    conn: &mut PgConnection,
    digest: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<EnrollmentToken>, StoreError> {
    Ok(sqlx::query_as::<_, EnrollmentToken>(
        r#"update enrollment_tokens set uses_left = uses_left - 1
            where digest = $1 and uses_left > 0 and revoked_at is null and expires_at > $2
           returning *"#,
    )
    .bind(digest)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// A page of tokens, oldest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<EnrollmentToken>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, EnrollmentToken>(
        r#"select * from enrollment_tokens
            where ($1::timestamptz is null or (created_at, id) > ($1, $2))
            order by created_at, id limit $3"#,
    )
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |t| After {
        created_at: t.created_at,
        id: t.id,
    }))
}

/// Revokes a token; answers it, or None when there is no such token.
pub async fn revoke(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<EnrollmentToken>, StoreError> {
    Ok(sqlx::query_as::<_, EnrollmentToken>(
        r#"update enrollment_tokens set revoked_at = coalesce(revoked_at, $2)
            where id = $1 returning *"#,
    )
    .bind(id)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// Revokes the live token whose digest this is; answers it, or None when
/// there is no such token or it was spent, expired or revoked already.
pub async fn revoke_live_by_digest(
    conn: &mut PgConnection,
    digest: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<EnrollmentToken>, StoreError> {
    Ok(sqlx::query_as::<_, EnrollmentToken>(
        r#"update enrollment_tokens set revoked_at = $2
            where digest = $1 and revoked_at is null and uses_left > 0 and expires_at > $2
        returning *"#,
    )
    .bind(digest)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}
