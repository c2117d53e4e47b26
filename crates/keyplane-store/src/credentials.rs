//! The live credentials keyplane keeps in memory: few enough to hold whole.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::StoreError;

/// The digests of every admin key and every node key live at `now` (a
/// node's previous key too, within its grace window).
pub async fn live_digests(
    db: impl PgExecutor<'_> + Copy,
    now: DateTime<Utc>,
) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), StoreError> {
    let admin = sqlx::query_scalar::<_, Vec<u8>>(
        r#"select digest from admin_keys
            where revoked_at is null and expires_at > $1 and (grace_until is null or grace_until > $1)"#,
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    let nodes = sqlx::query_scalar::<_, Vec<u8>>(
        r#"select digest from nodes where retired_at is null and expires_at > $1
           union all
           select previous_digest from nodes where retired_at is null and previous_until > $1"#,
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    Ok((admin, nodes))
}
