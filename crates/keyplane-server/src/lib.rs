//! The keyplane control plane.
//!
//! [`App::build`] turns validated [`Settings`] into a running server; `main`
//! and the tests both start it that way, the tests on port 0 with their own
//! shutdown signal.

pub mod app;
pub mod audit_trail;
pub mod auth;
pub mod burst;
pub mod clock;
pub mod config;
pub mod console;
pub mod credentials;
pub mod destinations;
pub mod digest_cache;
pub mod envelope;
pub mod error;
pub mod events;
pub mod extract;
pub mod introspection;
pub mod limits;
pub mod lookups;
pub mod metrics;
pub mod oidc;
pub mod ops;
pub mod pagination;
pub mod refusal;
pub mod reporters;
pub mod request;
pub mod routes;
pub mod scan;
pub mod scheduler;
pub mod signing;
pub mod state;
pub mod streams;
pub mod telemetry;
pub mod webhooks;
pub mod window;

pub use app::App;
pub use config::{ConfigError, Settings, SettingsArgs};
