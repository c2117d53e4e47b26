//! The live credentials keyplane keeps in memory: few enough to hold whole.

use sqlx::PgExecutor;

use crate::StoreError;

/// The digests of every live admin key and every live node key.
pub async fn live_digests(
    db: impl PgExecutor<'_> + Copy,
) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), StoreError> {
    let admin = sqlx::query_scalar::<_, Vec<u8>>(
        r#"select digest from admin_keys where revoked_at is null and expires_at > now()"#,
    )
    .fetch_all(db)
    .await?;
    let nodes = sqlx::query_scalar::<_, Vec<u8>>(
        r#"select digest from nodes where retired_at is null and expires_at > now()"#,
    )
    .fetch_all(db)
    .await?;
    Ok((admin, nodes))
}
