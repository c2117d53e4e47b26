//! `keyplane-gate`: a reverse proxy that puts keyplane in front of any
//! OpenAI-compatible server (Cortex, llama.cpp server, Ollama, vLLM) without
//! changing it. See the README's "The gate" section.

mod heartbeat;
mod metering;
mod proxy;
mod settings;
mod upstream;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use keyplane_client::{Budgets, Config, Introspector, KeyplaneLayer, UsageRecorder};
use keyplane_domain::Mode;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::net::TcpListener;

use crate::proxy::Gate;
use crate::settings::{Args, Settings};

/// Proxying allocates per request (headers, buffers); mimalloc serves small
/// allocations from thread-local pages instead of glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The most keys whose rate limits are tracked at once (least recently
/// used go first; their buckets would be full again by then anyway).
const LIMITED_KEYS: u64 = 100_000;

/// Shared by the gate's own routes.
struct Status {
    gate: Arc<Gate>,
    introspector: Option<Introspector>,
    mode: Mode,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::from_args(args) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("keyplane-gate: cannot start: {err:#}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = keyplane_telemetry::init("keyplane-gate", settings.mode != Mode::Dev, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("keyplane-gate: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("keyplane-gate stopped: {err:#}");
            eprintln!("keyplane-gate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let tls = match &settings.tls {
        Some((cert, key)) => {
            let certificates = keyplane_tls::Certificates::load(cert, key)?;
            // Renewed files are picked up (at once on SIGHUP) without a restart.
            let _watch = certificates.watch(Duration::from_secs(30));
            Some(certificates)
        }
        None => None,
    };
    for scope in settings.routes.scopes_not_built_in() {
        tracing::warn!(%scope, "a route rule names a scope that is not built in: keys hold it only once an operator defines it at keyplane");
    }
    let introspector = match &settings.keyplane {
        Some(keyplane) => {
            let mut config = Config::new(&keyplane.url, keyplane.node_key.clone(), settings.mode);
            config.cache_ttl_cap = settings.cache_ttl;
            config.stale_window = settings.stale_window;
            config.ca_bundle = settings.ca_bundle.clone();
            config.client_identity = settings.client_identity.clone();
            config.accept_legacy_keys = settings.accept_legacy_keys;
            if settings.accept_legacy_keys {
                tracing::warn!(
                    "KEYPLANE_ACCEPT_LEGACY_KEYS is on: keys without a prefix or checksum are checked with keyplane"
                );
            }
            // The introspection joins the trace of the request that needed it.
            config.outgoing_headers = Some(keyplane_client::HeaderHook(Arc::new(
                keyplane_telemetry::inject_current,
            )));
            Some(Introspector::start(config)?)
        }
        None => None,
    };
    let upstream_authorization = match &settings.upstream_key {
        Some(key) => {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                .context("KEYPLANE_GATE_UPSTREAM_KEY: not a valid header value")?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let gate = Arc::new(Gate {
        guard: introspector
            .clone()
            .map(|i| KeyplaneLayer::new(i, settings.routes.clone())),
        upstream: upstream::Upstream::new(&settings.upstream)?,
        upstream_authorization,
        max_body: settings.max_body,
        request_timeout: settings.request_timeout,
        in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
        forwarded: Default::default(),
        refused: Default::default(),
        limiter: keyplane_client::Limiter::new(LIMITED_KEYS),
        metering: introspector.clone().map(|introspector| {
            let usage = UsageRecorder::new();
            proxy::Metering {
                budgets: Budgets::new(introspector, usage.clone(), LIMITED_KEYS),
                usage,
            }
        }),
    });
    // Usage goes to keyplane in batches, and once more on the way out.
    let reporting = match (&introspector, &gate.metering) {
        (Some(introspector), Some(metering)) => Some((
            metering
                .usage
                .report_every(introspector.clone(), settings.usage_report_every),
            metering.usage.clone(),
            introspector.clone(),
        )),
        _ => None,
    };
    let status = Arc::new(Status {
        gate: gate.clone(),
        introspector: introspector.clone(),
        mode: settings.mode,
    });
    let mut app = Router::new()
        .route(
            "/_keyplane/healthz",
            get(healthz).with_state(status.clone()),
        )
        .route("/_keyplane/metrics", get(metrics).with_state(status))
        .fallback(proxy::forward)
        .with_state(gate);
    if introspector.is_none() {
        app = app.layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async {
                response
                    .headers_mut()
                    .insert("x-keyplane-auth", HeaderValue::from_static("disabled"));
                response
            },
        ));
        let warn = || {
            tracing::warn!("KEYPLANE_AUTH=disabled: this gate checks no key (dev, loopback only)");
        };
        warn();
        tokio::spawn(async move {
            let minute = Duration::from_secs(60);
            let mut every_minute =
                tokio::time::interval_at(tokio::time::Instant::now() + minute, minute);
            loop {
                every_minute.tick().await;
                warn();
            }
        });
    }
    if let (Some(introspector), Some(keyplane)) = (&introspector, &settings.keyplane) {
        tokio::spawn(heartbeat::run(
            introspector.clone(),
            settings.public_routes.clone(),
            settings.heartbeat,
            keyplane.node_key_file.clone(),
        ));
    }

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(
        listen = %local,
        https = tls.is_some(),
        mode = %settings.mode,
        upstream = %settings.upstream,
        keyplane = settings.keyplane.as_ref().map_or("(auth disabled)", |k| k.url.as_str()),
        public_routes = ?settings.public_routes,
        version = env!("CARGO_PKG_VERSION"),
        "keyplane-gate serving"
    );
    keyplane_tls::serve(listener, tls, app, settings.connections, shutdown()).await;
    if let Some((every, usage, introspector)) = reporting {
        every.abort();
        if let Err(err) = usage.report(&introspector).await {
            tracing::warn!(error = %err, "could not report the last usage");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn healthz(State(status): State<Arc<Status>>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "mode": status.mode,
        "auth": if status.introspector.is_some() { "enabled" } else { "disabled" },
        "version": env!("CARGO_PKG_VERSION"),
        "revocation_stream": status.introspector.as_ref().map(|i| format!("{:?}", i.metrics().stream).to_lowercase()),
    }))
}

async fn metrics(State(status): State<Arc<Status>>) -> impl IntoResponse {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "keyplane_gate_forwarded_total",
            "Requests passed to the upstream.",
            status.gate.forwarded.load(Ordering::Relaxed),
        ),
        (
            "keyplane_gate_refused_total",
            "Requests refused by the gate.",
            status.gate.refused.load(Ordering::Relaxed),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    if let Some(introspector) = &status.introspector {
        out.push_str(&introspector.metrics().prometheus("keyplane_gate"));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}
