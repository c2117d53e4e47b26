//! keyplane's PostgreSQL store.
//!
//! [`Database`] owns the connection pool and, in `dev` without a
//! `DATABASE_URL`, the embedded PostgreSQL it runs on. Each module holds the
//! queries of one table; they take `impl PgExecutor<'_>` or a
//! `&mut PgConnection`, so the caller chooses the transaction.

pub mod admin_keys;
pub mod audit;
pub mod credentials;
mod database;
#[cfg(feature = "embedded")]
mod embedded;
pub mod enrollment;
mod error;
pub mod instances;
pub mod introspection;
pub mod keys;
pub mod nodes;
mod page;
pub mod people;
pub mod revocations;
pub mod roles;
pub mod scheduler;
pub mod scopes;
pub mod signing_keys;
pub mod stats;
pub mod usage;
pub mod webhooks;

pub use database::{Database, DatabaseLocation, PoolSettings, Readiness, describe_url};
pub use error::StoreError;
pub use page::{After, MAX_PAGE};

/// The migrations in the repository's `migrations/` folder, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The secret that signs pagination cursors, created with the database.
pub async fn cursor_secret(db: impl sqlx::PgExecutor<'_>) -> Result<Vec<u8>, StoreError> {
    Ok(
        sqlx::query_scalar::<_, Vec<u8>>(r#"select cursor_secret from deployment"#)
            .fetch_one(db)
            .await?,
    )
}

/// The id created with the database (stable across restarts and replicas).
pub async fn deployment_id(db: impl sqlx::PgExecutor<'_>) -> Result<uuid::Uuid, StoreError> {
    Ok(
        sqlx::query_scalar::<_, uuid::Uuid>(r#"select id from deployment"#)
            .fetch_one(db)
            .await?,
    )
}
