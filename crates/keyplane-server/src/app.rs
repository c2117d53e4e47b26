//! Building and running the server, so that `main` and the tests start it the
//! same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use keyplane_store::Database;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::timeout::TimeoutLayer;

use crate::clock::{Clock, SystemClock};
use crate::config::{Settings, describe_location};
use crate::error::ApiError;
use crate::pagination::CursorKey;
use crate::request::request_context;
use crate::routes;
use crate::state::AppState;

/// A built server: database connected and migrated, listener bound.
pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl App {
    /// Connects to the database (starting the embedded one if so configured),
    /// applies migrations and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        App::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// [`App::build`] with an injected clock, for tests of expiry and rotation.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<App> {
        let db = Database::connect(&settings.database, &settings.pool)
            .await
            .context("connecting to the database")?;
        db.migrate().await.context("applying migrations")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        tracing::info!(
            mode = %settings.mode,
            listen = %listener.local_addr()?,
            database = %describe_location(&settings.database),
            "keyplane ready"
        );
        let cursors = Arc::new(CursorKey::new(
            keyplane_store::cursor_secret(db.pool()).await?,
        ));
        let state = AppState {
            db,
            settings: Arc::new(settings),
            clock,
            cursors,
        };
        Ok(App {
            router: http_service(state.clone()),
            listener,
            state,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.settings.listen)
    }

    /// The shared state, for tests that look behind the HTTP surface.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting connections,
    /// lets in-flight requests finish (for at most the shutdown grace) and
    /// closes the database.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stopping = Arc::new(Notify::new());
        let signal = {
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: finishing in-flight requests");
                stopping.notify_one();
            }
        };
        let grace = self.state.settings.shutdown_grace;
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, service).with_graceful_shutdown(signal);
        let served = tokio::select! {
            served = serve.into_future() => served.context("serving HTTP"),
            () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace over; dropping unfinished requests");
                Ok(())
            }
        };
        self.state.db.close().await;
        tracing::info!("stopped");
        served
    }
}

/// The router with every cross-cutting layer, outermost last: request id,
/// span and problem bodies; timeout; body limits.
fn http_service(state: AppState) -> Router {
    let settings = state.settings.clone();
    routes::router(state)
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(middleware::from_fn_with_state(
            settings.body_limit,
            refuse_oversized,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(middleware::from_fn(request_context))
}

/// Answers 413 before reading a body whose declared length is over the limit;
/// a body without a length is cut off at the limit by `DefaultBodyLimit`.
async fn refuse_oversized(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => ApiError::PayloadTooLarge.into_response(),
        _ => next.run(request).await,
    }
}
