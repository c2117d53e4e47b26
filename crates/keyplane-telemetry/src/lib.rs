//! Logs and traces for keyplane's processes (the server and the gate).
//!
//! Logs go to standard error, readable or as JSON. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! set, spans are also exported over OTLP/HTTP, and W3C `traceparent` headers
//! join a caller's trace ([`set_parent_from`]) and carry it on
//! ([`inject_current`]). Without it, tracing costs nothing more than the logs.

use axum::http::HeaderMap;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

/// Flushes and stops the trace exporter when dropped: keep it until exit.
#[must_use = "dropping it stops the trace export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Whether the environment names an OTLP endpoint for traces.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Installs the global subscriber: `RUST_LOG` (else `default_filter`), logs
/// to standard error (JSON when `json`), and OTLP export as `service` when
/// configured. A second call keeps the first subscriber (tests start several
/// servers in one process).
pub fn init(service: &'static str, json: bool, default_filter: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match json {
        true => logs.json().flatten_event(true).boxed(),
        false => logs.boxed(),
    };
    let mut telemetry = Telemetry::default();
    let traces = match otlp_configured() {
        true => match exporter(service) {
            Ok(provider) => {
                let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
                telemetry.provider = Some(provider);
                Some(layer)
            }
            Err(err) => {
                eprintln!("{service}: OpenTelemetry export is off: {err}");
                None
            }
        },
        false => None,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    telemetry
}

fn exporter(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|err| err.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` part of the trace named by the `traceparent` in `headers`,
/// if there is one (and tracing is exported).
pub fn set_parent_from(span: &Span, headers: &HeaderMap) {
    if headers.contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        });
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context (`traceparent`) into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}
