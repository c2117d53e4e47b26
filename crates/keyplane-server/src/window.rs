//! Counting events per source in fixed time windows, at a fixed cost.
//!
//! A table of a fixed number of slots, each an atomic word holding a window
//! number and a count: counting is one hash and one compare-and-swap, and
//! neither time nor memory grows with the number of sources seen (a flood of
//! addresses cannot make the limiter itself the bottleneck). Sources that
//! hash to one slot share its count; the hash is keyed per process, so no
//! one can aim at a victim's slot.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per table: a collision is rare among the sources active in one window.
const SLOTS: usize = 16_384;

/// Counts events per source; a source that has spent past `budget` in the
/// current window is over it until the window ends.
#[derive(Debug)]
pub struct WindowCounter {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    budget: u32,
    window: Duration,
    epoch: Instant,
}

impl WindowCounter {
    /// A counter allowing `budget` events per source per `window`.
    pub fn new(budget: u32, window: Duration) -> WindowCounter {
        WindowCounter {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            budget: budget.max(1),
            window: window.max(Duration::from_millis(1)),
            epoch: Instant::now(),
        }
    }

    /// The current window's number, and how long until the next begins.
    fn now(&self) -> (u32, Duration) {
        let elapsed = self.epoch.elapsed();
        let window = self.window.as_nanos().max(1);
        let number = elapsed.as_nanos() / window;
        let left = window - elapsed.as_nanos() % window;
        (
            u32::try_from(number % u128::from(u32::MAX)).unwrap_or(0),
            Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX)),
        )
    }

    fn slot(&self, source: impl Hash) -> &AtomicU64 {
        let index = usize::try_from(self.hasher.hash_one(source)).unwrap_or(0) % self.slots.len();
        &self.slots[index]
    }

    /// The count of `source`'s slot in the current window.
    fn count(&self, slot: &AtomicU64, window: u32) -> u32 {
        let word = slot.load(Ordering::Relaxed);
        match (word >> 32) as u32 == window {
            true => word as u32,
            false => 0,
        }
    }

    /// When `source` has spent past its budget: how long until the window ends.
    pub fn over(&self, source: impl Hash) -> Option<Duration> {
        let (window, left) = self.now();
        (self.count(self.slot(source), window) > self.budget).then_some(left)
    }

    /// Counts one event of `source`, whatever its budget; answers the count
    /// in this window so far.
    pub fn count_one(&self, source: impl Hash) -> u32 {
        let (window, _) = self.now();
        let slot = self.slot(source);
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let count = match (word >> 32) as u32 == window {
                true => word as u32,
                false => 0,
            };
            let next = (u64::from(window) << 32) | u64::from(count.saturating_add(1));
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return count.saturating_add(1),
                Err(actual) => word = actual,
            }
        }
    }

    /// The budget per window.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// Counts one event of `source` within its budget; past it, the event is
    /// refused (and not counted): how long until the window ends.
    pub fn spend(&self, source: impl Hash) -> Result<(), Duration> {
        let (window, left) = self.now();
        let slot = self.slot(source);
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let count = match (word >> 32) as u32 == window {
                true => word as u32,
                false => 0,
            };
            if count >= self.budget {
                return Err(left);
            }
            let next = (u64::from(window) << 32) | u64::from(count + 1);
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => word = actual,
            }
        }
    }
}

/// An address as one source: IPv4 as is, IPv6 by its /64 (the block one
/// subscriber holds), so a host cannot dodge a limit by changing addresses.
pub fn source_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_over_its_budget_until_the_window_ends() {
        let counter = WindowCounter::new(3, Duration::from_secs(3600));
        for _ in 0..3 {
            assert!(counter.spend("a").is_ok());
        }
        let wait = counter.spend("a").unwrap_err();
        assert!(wait <= Duration::from_secs(3600) && wait > Duration::ZERO);
        assert!(counter.over("a").is_none(), "at its budget, not past it");
        assert_eq!(counter.count_one("a"), 4);
        assert!(counter.over("a").is_some());
        assert!(counter.over("b").is_none(), "counted per source");
        assert!(counter.spend("b").is_ok());
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let counter = WindowCounter::new(1, Duration::from_millis(20));
        assert!(counter.spend("a").is_ok());
        assert!(counter.spend("a").is_err());
        std::thread::sleep(Duration::from_millis(25));
        assert!(counter.spend("a").is_ok());
    }

    #[test]
    fn memory_stays_fixed_under_a_flood_of_sources() {
        let counter = WindowCounter::new(1, Duration::from_secs(60));
        for i in 0..200_000u32 {
            let _ = counter.spend(i);
        }
        assert_eq!(counter.slots.len(), SLOTS);
    }

    #[test]
    fn an_ipv6_host_is_one_source_across_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
