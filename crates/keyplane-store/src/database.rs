use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Uuid;
use tokio::time::{Instant, sleep, timeout};

use crate::{MIGRATOR, StoreError};

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum DatabaseLocation {
    /// A PostgreSQL server (14 or newer) at this URL.
    Url(SecretString),
    /// The embedded PostgreSQL, storing its files in this directory (`dev` only).
    #[cfg(feature = "embedded")]
    Embedded(PathBuf),
}

/// How the pool behaves.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The most connections the pool opens (the embedded database always gets 1).
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// How long start-up keeps retrying an unreachable database before giving up.
    pub startup_wait: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            startup_wait: Duration::from_secs(30),
        }
    }
}

/// What `/readyz` reports about the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Reachable, every migration applied; carries the deployment's id.
    Ready {
        /// The id created with the database (stable across restarts).
        deployment_id: String,
    },
    /// The database did not answer in time.
    Unreachable,
    /// The database answered, but its schema is behind this build.
    MigrationsPending,
    /// The database answered, but takes no writes (a standby, or a primary
    /// demoted while its cluster fails over).
    ReadOnly,
}

/// The connection pool, and the embedded server behind it when there is one.
///
/// Cheap to clone. Call [`Database::close`] on shutdown so the embedded server
/// stops only after every connection to it is closed.
#[derive(Clone, Debug)]
pub struct Database {
    pool: PgPool,
    #[cfg(feature = "embedded")]
    embedded: Option<Arc<crate::embedded::Embedded>>,
    #[cfg(not(feature = "embedded"))]
    embedded: Option<Arc<()>>,
}

impl Database {
    /// Connects (starting the embedded server first where asked), retrying an
    /// unreachable server with backoff for `settings.startup_wait`.
    pub async fn connect(
        location: &DatabaseLocation,
        settings: &PoolSettings,
    ) -> Result<Database, StoreError> {
        match location {
            DatabaseLocation::Url(url) => {
                let options = PgConnectOptions::from_str(url.expose_secret())?;
                let pool = connect_with_retry(options, settings).await?;
                Ok(Database {
                    pool,
                    embedded: None,
                })
            }
            #[cfg(feature = "embedded")]
            DatabaseLocation::Embedded(data_dir) => {
                let embedded = crate::embedded::Embedded::start(data_dir.clone()).await?;
                let options = embedded.connect_options();
                // The embedded server serves one connection at a time: a second
                // connection would wait for the first to close, forever.
                let settings = PoolSettings {
                    max_connections: 1,
                    ..settings.clone()
                };
                let pool = connect_with_retry(options, &settings).await?;
                Ok(Database {
                    pool,
                    embedded: Some(Arc::new(embedded)),
                })
            }
        }
    }

    /// A pool for a standby at `url`, connecting only when first asked (a
    /// standby down at start-up must not stop keyplane).
    pub fn standby(url: &SecretString, settings: &PoolSettings) -> Result<PgPool, StoreError> {
        let options = PgConnectOptions::from_str(url.expose_secret())?;
        Ok(pool_options(settings).connect_lazy_with(options))
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether this database is the embedded one (one connection, one process).
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Applies every pending migration. Safe to run from several processes at
    /// once: the migrator holds an advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Checks that the database answers within `within` and that its schema is
    /// current.
    pub async fn readiness(&self, within: Duration) -> Readiness {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let probe = sqlx::query_as::<_, (Option<i64>, Option<Uuid>, bool)>(
            r#"select (select max(version) from _sqlx_migrations where success),
                      (select id from deployment),
                      pg_is_in_recovery() or current_setting('transaction_read_only') = 'on'"#,
        )
        .fetch_one(&self.pool);
        match timeout(within, probe).await {
            Err(_elapsed) => Readiness::Unreachable,
            Ok(Err(err)) if crate::error::unavailable(&err) => Readiness::Unreachable,
            Ok(Err(sqlx::Error::Database(_))) => Readiness::MigrationsPending,
            Ok(Err(_)) => Readiness::Unreachable,
            Ok(Ok((_, _, true))) => Readiness::ReadOnly,
            Ok(Ok((applied, deployment_id, false))) => match (applied, deployment_id) {
                (Some(applied), Some(id)) if applied >= latest => Readiness::Ready {
                    deployment_id: id.to_string(),
                },
                _ => Readiness::MigrationsPending,
            },
        }
    }

    /// Closes every connection, then stops the embedded server if there is one.
    pub async fn close(self) {
        self.pool.close().await;
        #[cfg(feature = "embedded")]
        if let Some(embedded) = self.embedded {
            match Arc::try_unwrap(embedded) {
                Ok(embedded) => embedded.stop().await,
                // Another clone is still alive; the last one to drop stops it.
                Err(_shared) => {}
            }
        }
    }
}

/// Names a database for logs and errors: host, port and database, never the
/// password.
pub fn describe_url(url: &SecretString) -> String {
    match PgConnectOptions::from_str(url.expose_secret()) {
        Ok(options) => describe(&options),
        Err(_) => "an unparsable DATABASE_URL".to_owned(),
    }
}

fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// How every pool is built.
fn pool_options(settings: &PoolSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
}

async fn connect_with_retry(
    options: PgConnectOptions,
    settings: &PoolSettings,
) -> Result<PgPool, StoreError> {
    let target = describe(&options);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = pool_options(settings).connect_with(options.clone()).await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(err) if !is_transient(&err) => {
                return Err(StoreError::Refused {
                    target,
                    source: err,
                });
            }
            Err(err) if started.elapsed() + backoff > settings.startup_wait => {
                return Err(StoreError::Unreachable {
                    target,
                    waited_secs: started.elapsed().as_secs(),
                    source: err,
                });
            }
            Err(err) => {
                tracing::warn!(%target, error = %err, retry_in_ms = backoff.as_millis() as u64,
                    "database not reachable yet");
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Errors worth waiting out at start-up: the server is not there yet, is still
/// starting, or a proxy in front of it dropped the connection (seen as a
/// protocol error). Bad credentials or a missing database will not fix
/// themselves.
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut => true,
        // 57P03: cannot_connect_now (the server is starting up or shutting down).
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}
