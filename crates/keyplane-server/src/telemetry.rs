//! Logging set-up.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is not set: keyplane at info, the chatty
/// dependencies at warn.
const DEFAULT_FILTER: &str = "info,sqlx=warn,pglite_oxide=warn,wasmer=warn,wasmer_wasix=warn";

/// Installs the global subscriber, writing to standard error so that commands
/// that print a result (`keyplane openapi`, `keyplane admin-key create`) keep
/// standard output clean.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second call (tests starting several servers) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
