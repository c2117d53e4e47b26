use std::path::{Path, PathBuf};

use pglite_oxide::PgliteServer;

use crate::StoreError;

/// The embedded PostgreSQL (PGlite, PostgreSQL 17 compiled to WASM), served
/// on a Unix socket inside the data directory so sqlx talks to it like to any
/// other server. PGlite asks for no password, so the socket is the lock: its
/// directory is readable by keyplane's user alone (mode 0700), and no TCP
/// port is opened that any local user could reach.
#[derive(Debug)]
pub(crate) struct Embedded {
    server: Option<PgliteServer>,
    data_dir: PathBuf,
}

impl Embedded {
    /// Starts the server on `data_dir`, creating the cluster on first use.
    pub(crate) async fn start(data_dir: PathBuf) -> Result<Embedded, StoreError> {
        let failed = |reason: String| StoreError::Embedded {
            data_dir: data_dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&data_dir).map_err(|err| failed(err.to_string()))?;
        let socket = private_socket(&data_dir).map_err(failed)?;
        let dir = data_dir.clone();
        // Starting installs the runtime and may run initdb: blocking work.
        let server = tokio::task::spawn_blocking(move || {
            PgliteServer::builder().path(dir).unix(socket).start()
        })
        .await
        .map_err(|err| failed(err.to_string()))?
        .map_err(|err| failed(format!("{err:#}")))?;
        tracing::info!(data_dir = %data_dir.display(), "embedded PostgreSQL started");
        Ok(Embedded {
            server: Some(server),
            data_dir,
        })
    }

    /// How sqlx connects: through the socket in the data directory, as
    /// PGlite's default user, to its default database.
    pub(crate) fn connect_options(&self) -> sqlx::postgres::PgConnectOptions {
        let dir = self
            .server
            .as_ref()
            .and_then(PgliteServer::socket_path)
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.data_dir.join(SOCKET_DIR));
        sqlx::postgres::PgConnectOptions::new()
            .socket(dir)
            .port(SOCKET_PORT)
            .username("postgres")
            .database("template1")
    }

    /// Stops the server; call only once every client connection is closed.
    pub(crate) async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            let result = tokio::task::spawn_blocking(move || server.shutdown()).await;
            match result {
                Ok(Ok(())) => {
                    tracing::info!(data_dir = %self.data_dir.display(), "embedded PostgreSQL stopped")
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %format!("{err:#}"), "embedded PostgreSQL stop failed")
                }
                Err(err) => tracing::warn!(error = %err, "embedded PostgreSQL stop failed"),
            }
        }
    }
}

/// The directory holding the embedded server's socket.
pub(crate) const SOCKET_DIR: &str = "socket";
/// The "port" in the socket's name, as PostgreSQL clients expect it.
const SOCKET_PORT: u16 = 5432;

/// The socket path inside `data_dir`, its directory made private first
/// (mode 0700, owner only; the data directory too).
fn private_socket(data_dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir.join(SOCKET_DIR);
    std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
    for private in [data_dir, dir.as_path()] {
        std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700))
            .map_err(|err| format!("cannot make {} private: {err}", private.display()))?;
    }
    let socket = std::path::absolute(dir.join(format!(".s.PGSQL.{SOCKET_PORT}")))
        .map_err(|err| err.to_string())?;
    // sun_path holds 107 bytes and a terminating NUL.
    if socket.as_os_str().len() > 107 {
        return Err(format!(
            "the socket path {} is longer than a Unix socket allows: choose a shorter KEYPLANE_DATA_DIR",
            socket.display()
        ));
    }
    Ok(socket)
}
