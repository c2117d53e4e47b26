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
