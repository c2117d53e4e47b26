//! This node's key, which a rotation replaces while requests are in flight.

use std::sync::{Arc, RwLock};

use secrecy::SecretString;
use tokio::sync::watch;

/// The node key every call to keyplane presents. Replacing it takes effect
/// for the next call; the revocation stream reconnects with it at once.
#[derive(Debug, Clone)]
pub(crate) struct NodeKey {
    current: Arc<RwLock<SecretString>>,
    changed: Arc<watch::Sender<u64>>,
}

impl NodeKey {
    pub(crate) fn new(key: SecretString) -> NodeKey {
        NodeKey {
            current: Arc::new(RwLock::new(key)),
            changed: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The key now.
    pub(crate) fn get(&self) -> SecretString {
        match self.current.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Presents `key` from now on.
    pub(crate) fn replace(&self, key: SecretString) {
        match self.current.write() {
            Ok(mut slot) => *slot = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        self.changed.send_modify(|version| *version += 1);
    }

    /// Hears of each replacement.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
