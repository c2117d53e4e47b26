//! Rate limits that hold up under abuse without locking out the healthy:
//!
//! - an address that keeps failing operator authentication is refused (429)
//!   before its next credential is even checked, so guessing stays slow;
//! - each admin key, and each node, has its own budget, so one busy or
//!   runaway client cannot starve the others. A node's budget is keyed by its
//!   authenticated id: nobody without its key can spend it, and failures from
//!   a node's address never block its (good) key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::error::ApiError;

/// The most addresses remembered as blocked; past it, expired ones are dropped.
const MAX_BLOCKED: usize = 100_000;

/// How much each client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Failed operator authentications tolerated per address per minute; the
    /// one past them gets the address refused until the budget refills.
    pub auth_failures_per_minute: u32,
    /// Management requests per admin key per minute.
    pub operator_per_minute: u32,
    /// Node requests (introspection, forward auth) per node per second.
    pub node_per_second: u32,
    /// Self-service requests (`/v1/self`, `/v1/self/rotate`) per instance per minute.
    pub self_service_per_minute: u32,
    /// Self-rotations per instance per hour: a holder rotating in a loop
    /// would flood keys, audit entries, webhooks and revocation events.
    pub self_rotations_per_hour: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            auth_failures_per_minute: 30,
            operator_per_minute: 1_200,
            node_per_second: 50_000,
            self_service_per_minute: 60,
            self_rotations_per_hour: 12,
        }
    }
}

/// The limiters one keyplane process keeps.
#[derive(Debug)]
pub struct Limits {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    operators: DefaultKeyedRateLimiter<String>,
    nodes: DefaultKeyedRateLimiter<Uuid>,
    self_service: DefaultKeyedRateLimiter<Uuid>,
    self_rotations: DefaultKeyedRateLimiter<Uuid>,
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn too_many(wait: Duration) -> ApiError {
    ApiError::TooManyRequests {
        retry_after: wait.as_secs().max(1),
    }
}

impl Limits {
    /// Limiters with these budgets.
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            failures: RateLimiter::keyed(Quota::per_minute(at_least_one(
                settings.auth_failures_per_minute,
            ))),
            blocked: Mutex::default(),
            operators: RateLimiter::keyed(Quota::per_minute(at_least_one(
                settings.operator_per_minute,
            ))),
            nodes: RateLimiter::keyed(Quota::per_second(at_least_one(settings.node_per_second))),
            self_service: RateLimiter::keyed(Quota::per_minute(at_least_one(
                settings.self_service_per_minute,
            ))),
            self_rotations: RateLimiter::keyed(Quota::per_hour(at_least_one(
                settings.self_rotations_per_hour,
            ))),
        }
    }

    /// Refuses an address that failed too often, before its credential is checked.
    pub fn check_address(&self, address: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let Ok(blocked) = self.blocked.lock() else {
            return Ok(());
        };
        match blocked.get(&address) {
            Some(until) if *until > now => Err(too_many(*until - now)),
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `address`; past the budget, the
    /// address is refused until the budget refills.
    pub fn note_failure(&self, address: IpAddr) {
        // Addresses whose budget has refilled need no memory: forget them
        // once many are held, so a flood of addresses cannot grow it.
        if self.failures.len() >= MAX_BLOCKED {
            self.failures.retain_recent();
            self.failures.shrink_to_fit();
        }
        let Err(not_until) = self.failures.check_key(&address) else {
            return;
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        if let Ok(mut blocked) = self.blocked.lock() {
            let now = Instant::now();
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(address, now + wait);
        }
    }

    /// Spends one of an admin key's (or the bootstrap token's) requests.
    pub fn check_operator(&self, actor: &str) -> Result<(), ApiError> {
        spend(&self.operators, &actor.to_owned())
    }

    /// Spends one of a node's requests.
    pub fn check_node(&self, node: Uuid) -> Result<(), ApiError> {
        spend(&self.nodes, &node)
    }

    /// Spends one of an instance's self-service requests.
    pub fn check_self_service(&self, instance: Uuid) -> Result<(), ApiError> {
        spend(&self.self_service, &instance)
    }

    /// Spends one of an instance's self-rotations.
    pub fn check_self_rotation(&self, instance: Uuid) -> Result<(), ApiError> {
        spend(&self.self_rotations, &instance)
    }
}

/// Spends one request of `key`'s budget in `limiter`; a budget spent is a
/// 429 saying when the next request may come.
fn spend<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    // Keys whose budget has refilled need no memory (see `note_failure`).
    if limiter.len() >= MAX_BLOCKED {
        limiter.retain_recent();
    }
    limiter
        .check_key(key)
        .map_err(|not_until| too_many(not_until.wait_time_from(DefaultClock::default().now())))
}
