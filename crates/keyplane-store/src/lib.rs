//! keyplane's PostgreSQL store.
//!
//! [`Database`] owns the connection pool and, in `dev` without a
//! `DATABASE_URL`, the embedded PostgreSQL it runs on. Queries live next to the
//! code that uses them and take `impl PgExecutor<'_>`, so callers choose the
//! transaction.

mod database;
#[cfg(feature = "embedded")]
mod embedded;
mod error;

pub use database::{Database, DatabaseLocation, PoolSettings, Readiness, describe_url};
pub use error::StoreError;

/// The migrations in the repository's `migrations/` folder, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
