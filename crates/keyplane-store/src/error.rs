/// What can go wrong between keyplane and its database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached within the start-up wait.
    #[error("database at {target} not reachable after {waited_secs}s: {source}")]
    Unreachable {
        /// Host, port and database name; never the password.
        target: String,
        /// How long keyplane kept trying.
        waited_secs: u64,
        /// The last connection error.
        #[source]
        source: sqlx::Error,
    },
    /// The database answered but refused us (bad credentials, no such database, ...).
    #[error("database at {target} refused the connection: {source}")]
    Refused {
        /// Host, port and database name; never the password.
        target: String,
        /// The database's answer.
        #[source]
        source: sqlx::Error,
    },
    /// The embedded PostgreSQL could not start.
    #[error("embedded database in {data_dir} could not start: {reason}")]
    Embedded {
        /// Where its data lives.
        data_dir: String,
        /// Why it failed (another process may own the directory).
        reason: String,
    },
    /// Applying migrations failed.
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A uniqueness rule was broken (a name already taken, ...).
    #[error("{0}")]
    Conflict(&'static str),
    /// The database is not there to do it: unreachable, shutting down,
    /// starting, or read-only (a standby, or a primary demoted in a
    /// failover). Worth trying again in a moment.
    #[error("the database is unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Any other database error.
    #[error(transparent)]
    Sqlx(sqlx::Error),
}

/// Each named constraint whose violation is the caller's conflict, not our
/// failure, with what to tell the caller. Matched by name, never by message.
const CONFLICTS: [(&str, &str); 5] = [
    (
        "instances_name_key",
        "an instance with this name already exists",
    ),
    ("nodes_name_key", "a node with this name already exists"),
    ("roles_pkey", "a role with this name already exists"),
    (
        "api_keys_rotated_to_key",
        "this key has already been rotated",
    ),
    ("api_keys_digest_key", "key collision; try again"),
];

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        let conflict = err
            .as_database_error()
            .and_then(|db| db.constraint())
            .and_then(|name| CONFLICTS.iter().find(|(c, _)| *c == name))
            .map(|(_, message)| *message);
        match conflict {
            Some(message) => StoreError::Conflict(message),
            None if unavailable(&err) => StoreError::Unavailable(err),
            None => StoreError::Sqlx(err),
        }
    }
}

/// Whether `err` says the database is not there to answer, rather than
/// that the query was wrong: no connection to be had, the connection lost,
/// a connection that broke mid-conversation (a protocol error), or
/// PostgreSQL refusing because of its state (SQLSTATE class 08
/// connection exceptions; 57P01-57P03 shutting down or starting; 53300 too
/// many connections; 25006 a read-only transaction, as on a standby).
pub fn unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "25006")
        }),
        _ => false,
    }
}
