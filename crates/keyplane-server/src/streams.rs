//! How many revocation streams each node holds open: a bound, so a node
//! (or whoever holds its key) cannot pile up endless streams.

use std::sync::Arc;

use uuid::Uuid;

/// The most revocation streams one node may hold open at once (a gate needs
/// one; a few more cover reconnects whose old connection has not closed yet).
pub const MAX_STREAMS_PER_NODE: usize = 8;

/// How many revocation streams each node holds open.
#[derive(Debug, Default)]
pub struct StreamSlots(std::sync::Mutex<std::collections::HashMap<Uuid, usize>>);

/// One node's open stream; gives its slot back when dropped.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    node: Uuid,
}

impl StreamSlots {
    /// A slot for one more stream of `node`, unless it holds the most already.
    pub fn take(self: &Arc<Self>, node: Uuid) -> Option<StreamSlot> {
        let mut open = self.0.lock().ok()?;
        let count = open.entry(node).or_default();
        if *count >= MAX_STREAMS_PER_NODE {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            slots: self.clone(),
            node,
        })
    }

    /// How many streams are open, over every node.
    pub fn open(&self) -> usize {
        self.0.lock().map_or(0, |open| open.values().sum())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.0.lock()
            && let Some(count) = open.get_mut(&self.node)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.node);
            }
        }
    }
}
