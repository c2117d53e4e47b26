//! Signing keys, their private halves sealed with the master key.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::StoreError;

/// A signing key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKey {
    /// Its key id (`kid`).
    pub kid: String,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// The private key, sealed with the master key.
    pub sealed_private_key: Vec<u8>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it starts signing: the newest key active by then signs.
    pub active_from: DateTime<Utc>,
}

/// The newest `count` keys by when they start signing, newest first.
pub async fn newest(db: impl PgExecutor<'_>, count: i64) -> Result<Vec<SigningKey>, StoreError> {
    Ok(sqlx::query_as::<_, SigningKey>(
        r#"select * from signing_keys order by active_from desc, created_at desc, kid desc limit $1"#,
    )
    .bind(count)
    .fetch_all(db)
    .await?)
}

/// The newest key by when it starts signing, read with every other maker
/// of keys kept waiting until the transaction ends: whoever decides whether
/// a key is due reads the keys as committed, not as a cached view had them.
pub async fn newest_locked(conn: &mut PgConnection) -> Result<Option<SigningKey>, StoreError> {
    // Conflicts with itself and with inserts, never with readers.
    sqlx::query(r#"lock table signing_keys in share row exclusive mode"#)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as::<_, SigningKey>(
        r#"select * from signing_keys order by active_from desc, created_at desc, kid desc limit 1"#,
    )
    .fetch_optional(conn)
    .await?)
}

/// Stores a new key.
pub async fn insert(db: impl PgExecutor<'_>, key: &SigningKey) -> Result<(), StoreError> {
    sqlx::query(
        r#"insert into signing_keys (kid, public_key, sealed_private_key, created_at, active_from)
           values ($1, $2, $3, $4, $5)"#,
    )
    .bind(&key.kid)
    .bind(&key.public_key)
    .bind(&key.sealed_private_key)
    .bind(key.created_at)
    .bind(key.active_from)
    .execute(db)
    .await?;
    Ok(())
}

/// Every key, locked until the transaction ends: for re-sealing under a new
/// master key.
pub async fn lock_all(conn: &mut PgConnection) -> Result<Vec<SigningKey>, StoreError> {
    Ok(
        sqlx::query_as::<_, SigningKey>(r#"select * from signing_keys order by kid for update"#)
            .fetch_all(conn)
            .await?,
    )
}

/// Replaces a key's sealed private half (the same key, sealed anew).
pub async fn reseal(conn: &mut PgConnection, kid: &str, sealed: &[u8]) -> Result<(), StoreError> {
    sqlx::query(r#"update signing_keys set sealed_private_key = $2 where kid = $1"#)
        .bind(kid)
        .bind(sealed)
        .execute(conn)
        .await?;
    Ok(())
}
