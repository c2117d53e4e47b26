//! The state every handler shares.

use std::sync::Arc;

use keyplane_store::Database;

use crate::clock::Clock;
use crate::config::Settings;
use crate::pagination::CursorKey;

/// Shared by every handler through `State`; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database pool (and the embedded server behind it, if any).
    pub db: Database,
    /// The validated settings this process runs with.
    pub settings: Arc<Settings>,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Signs and checks pagination cursors.
    pub cursors: Arc<CursorKey>,
}
