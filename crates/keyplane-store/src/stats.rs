//! Counts for `/metrics`, read at scrape time.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgExecutor;

use crate::StoreError;

/// How many instance keys are in each status at `now`.
pub async fn keys_by_status(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as::<_, (String, i64)>(
        r#"select api_key_status(k, $1) as status, count(*) from api_keys k group by 1 order by 1"#,
    )
    .bind(now)
    .fetch_all(db)
    .await?)
}

/// How many working keys expire within `within` of `now`.
pub async fn keys_expiring(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
    within: Duration,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        r#"select count(*) from api_keys k
            where api_key_status(k, $1) in ('active', 'rotating') and expires_at < $2"#,
    )
    .bind(now)
    .bind(now + within)
    .fetch_one(db)
    .await?)
}

/// The audit chain's length.
pub async fn audit_length(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>(r#"select max(seq) from audit_log"#)
            .fetch_one(db)
            .await?
            .unwrap_or(0),
    )
}

/// Of one kind of credential (see the `credential_expiries` view): the
/// nearest expiry, and how many that lived more than 7 days now expire
/// within 7 days without a successor.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Expiries {
    /// `node_key`, `admin_key`, `enrollment_token` or `api_key`.
    pub kind: String,
    /// The nearest expiry of a working credential of this kind.
    pub nearest: DateTime<Utc>,
    /// How many expire within 7 days, of those made to live longer.
    pub within_7d: i64,
}

/// [`Expiries`] of every kind that has a working credential at `now`.
pub async fn credential_expiries(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<Expiries>, StoreError> {
    Ok(sqlx::query_as::<_, Expiries>(
        r#"select kind, min(expires_at) as nearest,
                  count(*) filter (where expires_at <= $1 + interval '7 days'
                                     and expires_at - created_at > interval '7 days') as within_7d
             from credential_expiries
            where expires_at > $1 and created_at <= $1
            group by kind order by kind"#,
    )
    .bind(now)
    .fetch_all(db)
    .await?)
}

/// How many admin keys work at `now`.
pub async fn live_admin_keys(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        r#"select count(*) from admin_keys
            where revoked_at is null and expires_at > $1 and (grace_until is null or grace_until > $1)"#,
    )
    .bind(now)
    .fetch_one(db)
    .await?)
}
