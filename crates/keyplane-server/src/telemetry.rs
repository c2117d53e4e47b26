//! Logging and tracing set-up (see `keyplane-telemetry`).

pub use keyplane_telemetry::Telemetry;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is not set: keyplane at info, the chatty
/// dependencies at warn.
const DEFAULT_FILTER: &str = "info,sqlx=warn,pglite_oxide=warn,wasmer=warn,wasmer_wasix=warn";

/// Installs the global subscriber, writing to standard error so that commands
/// that print a result (`keyplane openapi`, `keyplane admin-key create`) keep
/// standard output clean; exports spans over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Keep the answer until exit.
pub fn init(format: LogFormat) -> Telemetry {
    keyplane_telemetry::init("keyplane", format == LogFormat::Json, DEFAULT_FILTER)
}
