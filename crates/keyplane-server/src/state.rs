//! The state every handler shares.

use std::sync::Arc;

use keyplane_store::Database;

use crate::config::Settings;

/// Shared by every handler through `State`; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database pool (and the embedded server behind it, if any).
    pub db: Database,
    /// The validated settings this process runs with.
    pub settings: Arc<Settings>,
}
