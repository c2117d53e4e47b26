//! The revocation log behind `GET /v1/revocations/stream`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;

/// One key that stopped working.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Revocation {
    /// The event id (`id:` in the stream).
    pub id: i64,
    /// The key.
    pub key_id: Uuid,
    /// `revoked`, `disabled`, `rotated`, `suspended` or `decommissioned`.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Logs that `key_ids` stopped working for `reason`.
///
/// Readers follow the log by id ("after the last one I read"), so ids must
/// be committed in order: one taken by a transaction that commits after a
/// reader has read a higher one would never be read. The ids are therefore
/// taken under the audit chain's append lock, which every change holds
/// until it commits (and which a change that revokes takes anyway).
pub async fn record(
    conn: &mut PgConnection,
    key_ids: &[Uuid],
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    crate::audit::hold_append_lock(conn).await?;
    sqlx::query(
        r#"insert into revocations (key_id, reason, at) select unnest($1::uuid[]), $2, $3"#,
    )
    .bind(key_ids)
    .bind(reason)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` revocations after event `after`, oldest first.
pub async fn after(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<Revocation>, StoreError> {
    Ok(sqlx::query_as::<_, Revocation>(
        r#"select * from revocations where id > $1 order by id limit $2"#,
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The newest event id (0 when there is none).
pub async fn latest(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>(r#"select max(id) from revocations"#)
            .fetch_one(db)
            .await?
            .unwrap_or(0),
    )
}

/// The active keys of an instance (those a suspension stops).
pub async fn live_keys_of_instance(
    db: impl PgExecutor<'_>,
    instance_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"select id from api_keys k
            where instance_id = $1 and api_key_status(k, $2) in ('active', 'rotating')"#,
    )
    .bind(instance_id)
    .bind(now)
    .fetch_all(db)
    .await?)
}
