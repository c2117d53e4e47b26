//! Noticing bursts without flooding: count events per source in a window and
//! speak up once per source per window.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The most sources tracked at once; past it, finished windows are dropped
/// (so a flood of distinct sources cannot grow memory without bound).
const MAX_SOURCES: usize = 10_000;

/// Counts events per source and flags `threshold` of them within `window`.
#[derive(Debug, Clone)]
pub struct BurstWatch<K> {
    threshold: u64,
    window: chrono::Duration,
    sources: Arc<Mutex<HashMap<K, Window>>>,
}

#[derive(Debug)]
struct Window {
    started: DateTime<Utc>,
    count: u64,
    reported: bool,
}

impl<K: Eq + Hash> BurstWatch<K> {
    /// Flags `threshold` events from one source within `window`.
    pub fn new(threshold: u64, window: Duration) -> BurstWatch<K> {
        BurstWatch {
            threshold: threshold.max(1),
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::minutes(1)),
            sources: Arc::default(),
        }
    }

    /// Counts one event from `source`; answers the window's count when this
    /// event reaches the threshold (once per source per window).
    pub fn count(&self, source: K, now: DateTime<Utc>) -> Option<u64> {
        let mut sources = self.sources.lock().ok()?;
        if sources.len() >= MAX_SOURCES {
            let window = self.window;
            sources.retain(|_, w| now - w.started < window);
        }
        let fresh = Window {
            started: now,
            count: 0,
            reported: false,
        };
        let window = sources.entry(source).or_insert(fresh);
        if now - window.started >= self.window {
            *window = Window {
                started: now,
                count: 0,
                reported: false,
            };
        }
        window.count += 1;
        if window.count >= self.threshold && !window.reported {
            window.reported = true;
            return Some(window.count);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_flagged_once_per_source_per_window() {
        let watch = BurstWatch::new(3, Duration::from_secs(60));
        let start = Utc::now();
        assert_eq!(watch.count("a", start), None);
        assert_eq!(watch.count("a", start), None);
        assert_eq!(watch.count("a", start), Some(3));
        assert_eq!(watch.count("a", start), None, "once per window");
        assert_eq!(watch.count("b", start), None, "counted per source");
        let later = start + chrono::Duration::seconds(61);
        assert_eq!(
            watch.count("a", later),
            None,
            "a new window starts from zero"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_sources() {
        let watch = BurstWatch::new(2, Duration::from_secs(1));
        let start = Utc::now();
        for i in 0..MAX_SOURCES {
            watch.count(i, start);
        }
        watch.count(usize::MAX, start + chrono::Duration::seconds(5));
        assert!(watch.sources.lock().map(|s| s.len()).unwrap_or(usize::MAX) < 10);
    }
}
