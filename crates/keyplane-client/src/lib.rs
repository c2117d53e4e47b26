//! The node side of keyplane.
//!
//! An [`Introspector`] answers "is this key good for this route?" the way a
//! node must: garbage is refused offline (prefix and checksum), answers are
//! cached for a bounded time, one request per key goes to keyplane however
//! many arrive at once, and the revocation stream evicts a key the moment it
//! stops working. When keyplane cannot be reached it fails closed, except that
//! `mixed` may serve a cached positive answer for a bounded stale window; a
//! negative answer never turns positive.
//!
//! [`KeyplaneLayer`] puts it in front of any tower service (axum, tonic,
//! hyper), and [`Caller`] hands the verified identity to axum handlers.

mod budget;
mod cache;
mod config;
mod endpoints;
mod env;
mod error;
mod files;
mod layer;
mod limiter;
mod net;
mod node_key;
mod stream;
mod usage;

pub use budget::{BudgetRefusal, Budgets, Charge};
pub use cache::{Identity, Introspector, Metrics, Refusal};
pub use config::{Config, ConfigError, HeaderHook, require_https};
pub use endpoints::Endpoints;
pub use env::{EnvError, secret_from_env};
pub use error::openai_error;
pub use files::write_private;
pub use layer::{Caller, KeyplaneLayer, KeyplaneService};
pub use limiter::{Admission, Exceeded, Limited, Limiter, Window, reset_text, window_headers};
pub use stream::StreamState;
pub use usage::{ReportError, UsageRecorder, Used};
