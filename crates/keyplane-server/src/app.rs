//! Building and running the server, so that `main` and the tests start it the
//! same way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::response::Response;
use keyplane_store::Database;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tower::Service;
use tower_http::timeout::TimeoutLayer;

use crate::burst::BurstWatch;
use crate::clock::{Clock, SystemClock};
use crate::config::{Settings, describe_location};
use crate::events::{Event, Events};
use crate::introspection::Introspector;
use crate::metrics::Metrics;
use crate::pagination::CursorKey;
use crate::routes;
use crate::signing::{MasterKey, Signer};
use crate::state::{AppState, Shared};

/// How often the TLS files are checked for a renewal (SIGHUP reloads at once).
const CERTIFICATE_CHECK: Duration = Duration::from_secs(30);

/// A built server: database connected and migrated, listener bound.
pub struct App {
    listener: TcpListener,
    state: AppState,
    /// Background work (event listener, cache follower, usage flusher).
    tasks: Tasks,
}

/// Background tasks, stopped when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// How often last-use times are written.
const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Audit checkpoints are signed every this many entries...
const CHECKPOINT_EVERY_ENTRIES: i64 = 1000;
/// ...or this many minutes, whichever comes first.
const CHECKPOINT_EVERY_MINUTES: i64 = 10;

/// Failed operator authentications from one address within a minute that
/// write an `auth.failed` audit entry (one per address per minute).
const AUTH_FAILURES_AUDITED_AFTER: u64 = 5;

/// The master key: from the settings, or in `dev` the one kept in the data
/// directory (made on first start, readable by this user only).
pub fn master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Some(key) = &settings.master_key {
        let key = MasterKey::parse(key.expose_secret())?;
        return Ok(match &settings.master_key_previous {
            Some(previous) => key.replacing(MasterKey::parse(previous.expose_secret())?),
            None => key,
        });
    }
    let path = settings.data_dir.join("master.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return MasterKey::parse(&text)
            .with_context(|| format!("{} is not a master key", path.display()));
    }
    let generated =
        MasterKey::generate().map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
    keyplane_client::write_private(&path, generated.as_bytes())?;
    tracing::warn!(path = %path.display(), "no KEYPLANE_MASTER_KEY: generated a dev master key");
    Ok(MasterKey::parse(&generated)?)
}

/// How often the log repeats that the bootstrap token outlives its purpose.
const BOOTSTRAP_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// Reads `/metrics`' database-backed figures (and `/healthz`' warnings)
/// every `metrics_refresh`, and says in the log, at start and then hourly,
/// when the bootstrap token outlives its purpose.
fn refresh_gauges(state: &AppState) -> JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let mut warned: Option<std::time::Instant> = None;
        let mut every = tokio::time::interval(state.settings.metrics_refresh);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            state
                .metrics
                .refresh_gauges(state.db.pool(), state.clock.now())
                .await;
            let lingers = state.metrics.credentials().is_some_and(|credentials| {
                crate::ops::health::bootstrap_lingers(&state, credentials.live_admin_keys)
            });
            if lingers && warned.is_none_or(|at| at.elapsed() >= BOOTSTRAP_WARNING_EVERY) {
                tracing::warn!("{}", crate::ops::health::BOOTSTRAP_LINGERS);
                warned = Some(std::time::Instant::now());
            }
        }
    })
}

/// How often each process looks whether its signing key view went stale
/// (the next key starts signing, a retired one leaves the JWKS).
const SIGNING_KEY_CHECK: Duration = Duration::from_secs(1);

/// Reloads the signing keys when another replica makes one, and when the
/// schedule moves on.
fn follow_signing_keys(
    signer: &Signer,
    events: &Events,
    pool: sqlx::PgPool,
    clock: Arc<dyn Clock>,
) -> JoinHandle<()> {
    let mut receiver = events.subscribe();
    let signer = signer.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SIGNING_KEY_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stale = tokio::select! {
                _ = every.tick() => signer.stale(clock.now()),
                event = receiver.recv() => match event {
                    Ok(Event::SigningKeys | Event::Resync) | Err(RecvError::Lagged(_)) => true,
                    Ok(_) => false,
                    Err(RecvError::Closed) => return,
                },
            };
            if stale && let Err(err) = signer.reload(&pool, clock.now()).await {
                tracing::warn!(error = %format!("{err:#}"), "could not reload the signing keys");
            }
        }
    })
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
        let chained = keyplane_store::audit::chain_unchained(db.pool())
            .await
            .context("chaining earlier audit entries")?;
        if chained > 0 {
            tracing::info!(
                entries = chained,
                "chained audit entries written before the log was chained"
            );
        }
        for scope in settings.routes.scopes_not_built_in() {
            tracing::warn!(%scope, "a route rule names a scope that is not built in: keys hold it only once an operator defines it (PUT /v1/scopes/{{name}})");
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        tracing::info!(
            mode = %settings.mode,
            listen = %listener.local_addr()?,
            https = settings.tls.is_some(),
            database = %describe_location(&settings.database),
            "keyplane ready"
        );
        let cursors = Arc::new(CursorKey::new(
            keyplane_store::cursor_secret(db.pool()).await?,
        ));
        let issuer: Arc<str> = match &settings.issuer {
            Some(issuer) => issuer.as_str().into(),
            None => format!(
                "urn:keyplane:{}",
                keyplane_store::deployment_id(db.pool()).await?
            )
            .into(),
        };
        let master = master_key(&settings)?;
        let signer = Signer::load(
            db.pool(),
            master.clone(),
            crate::signing::Schedule::default(),
            clock.now(),
        )
        .await?;
        let events = Events::new(!db.is_embedded());
        let standby = settings
            .database_read
            .as_ref()
            .map(|url| keyplane_store::Database::standby(url, &settings.pool))
            .transpose()
            .context("DATABASE_READ_URL")?;
        let introspector =
            Introspector::new(db.pool().clone(), settings.introspection_cache_capacity)
                .accepting_legacy_keys(settings.accept_legacy_keys)
                .reading_from_standby(standby);
        let credentials = crate::credentials::KnownCredentials::default();
        credentials
            .refresh(db.pool(), clock.now())
            .await
            .context("reading the live admin and node keys")?;
        let revocation_tail = crate::streams::RevocationTail::default();
        let mut tasks = vec![
            revocation_tail.follow(&events, db.pool().clone()),
            introspector.follow(&events),
            credentials.follow(&events, db.pool().clone(), clock.clone()),
            introspector.flush_every(USAGE_FLUSH_EVERY),
            follow_signing_keys(&signer, &events, db.pool().clone(), clock.clone()),
        ];
        if !db.is_embedded() {
            tasks.push(events.listen(db.pool().clone()));
        }
        if let Some(tls) = &settings.tls {
            tasks.push(tls.certificates.watch(CERTIFICATE_CHECK));
        }
        let probes = BurstWatch::new(settings.probe_threshold, settings.probe_window);
        let auth_failures = BurstWatch::new(AUTH_FAILURES_AUDITED_AFTER, Duration::from_secs(60));
        let limits = crate::limits::Limits::new(settings.limits);
        let destinations = crate::destinations::Destinations::new(
            settings.webhook_allow_networks.clone(),
            settings.mode == keyplane_domain::Mode::Dev,
        );
        let identity = match settings.oidc.clone() {
            Some(oidc) => Some(Arc::new(crate::oidc::IdentityProvider::new(oidc)?)),
            None => None,
        };
        let state = AppState::new(Shared {
            routes: Arc::new(settings.routes.clone()),
            db,
            settings: Arc::new(settings),
            clock,
            cursors,
            events,
            introspector,
            issuer,
            signer,
            probes,
            auth_failures,
            policy_refusals: BurstWatch::new(1, Duration::from_secs(60)),
            forward_auth_refusals: BurstWatch::new(1, Duration::from_secs(60)),
            limits,
            credentials,
            destinations,
            metrics: Arc::new(Metrics::for_routes(routes::documented_routes())),
            stopping: tokio::sync::watch::Sender::new(false),
            master,
            scheduler_leader: Arc::default(),
            scheduler_ran: Arc::default(),
            streams: Arc::default(),
            revocation_tail,
            identity,
        });
        tasks.push(crate::ops::audit::checkpoint_periodically(
            state.clone(),
            CHECKPOINT_EVERY_ENTRIES,
            chrono::Duration::minutes(CHECKPOINT_EVERY_MINUTES),
        ));
        tasks.push(crate::scheduler::spawn(state.clone()));
        tasks.push(refresh_gauges(&state));
        Ok(App {
            listener,
            state,
            tasks: Tasks(tasks),
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
            let state = self.state.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: finishing in-flight requests");
                state.stopping.send_replace(true);
                stopping.notify_one();
            }
        };
        let grace = self.state.settings.shutdown_grace;
        let serve = keyplane_tls::serve(
            self.listener,
            self.state
                .settings
                .tls
                .as_ref()
                .map(|tls| tls.certificates.clone()),
            http_service(self.state.clone()),
            self.state.settings.connections,
            signal,
        );
        let served: anyhow::Result<()> = tokio::select! {
            () = serve => Ok(()),
            () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace over; dropping unfinished requests");
                Ok(())
            }
        };
        drop(self.tasks);
        self.state.introspector.flush_usage().await;
        // The last holder of the database closes it (and stops the embedded server).
        let db = self.state.db.clone();
        drop(self.state);
        db.close().await;
        tracing::info!("stopped");
        served
    }
}

/// The router inside every cross-cutting layer, outermost first: request
/// id, span and problem bodies; CORS; timeout; body limits. The layers wrap
/// the router once: `Router::layer` would wrap each route in each of them,
/// and every request would pay a boxed clone per layer. Served as it is,
/// not as a router's fallback, which cost every request a second route
/// lookup and a boxed clone.
fn http_service(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    let settings = state.settings.clone();
    let cors = (!settings.cors_origins.is_empty()).then(|| cors(&settings.cors_origins));
    tower::ServiceBuilder::new()
        .layer(crate::envelope::EnvelopeLayer {
            body_limit: settings.body_limit,
            https: settings.tls.is_some(),
        })
        .option_layer(cors)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .service(routes::router(state))
}

/// CORS for the configured origins only: browsers elsewhere get no CORS
/// headers, and so no answers they can read.
fn cors(origins: &[header::HeaderValue]) -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins.to_vec())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(Duration::from_secs(600))
}
