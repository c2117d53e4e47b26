use std::path::PathBuf;

use pglite_oxide::PgliteServer;

use crate::StoreError;

/// The embedded PostgreSQL (PGlite, PostgreSQL 17 compiled to WASM), served on
/// a loopback port so sqlx talks to it like to any other server.
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
        let dir = data_dir.clone();
        // Starting installs the runtime and may run initdb: blocking work.
        let server = tokio::task::spawn_blocking(move || {
            PgliteServer::builder()
                .path(dir)
                .tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .start()
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

    /// The URL sqlx connects to.
    pub(crate) fn database_url(&self) -> String {
        self.server
            .as_ref()
            .map(PgliteServer::database_url)
            .unwrap_or_default()
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
