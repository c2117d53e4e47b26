//! Rate limits that hold up under abuse without locking out the healthy:
//!
//! - a credential keyplane knows (a live admin or node key) is checked
//!   whatever its address did: one bad client behind a NAT, a bastion or
//!   Docker's proxy cannot lock out every operator and node there;
//! - failures are counted per credential (a client retrying one stale key
//!   spends its own budget, not its address's) and per address (guessing
//!   many credentials from one place); past either budget, an unknown
//!   credential from there gets 429 without being looked at, so guessing
//!   stays slow (the bootstrap token above all) and costs no database work;
//! - lookups of keys no cache knows are budgeted per node and per client
//!   address, so a flood of made-up keys (their checksum is public) leaves
//!   the database to everyone else;
//! - each admin key, node and instance has its own request budget.
//!
//! Failure and miss counts live in fixed-size tables ([`WindowCounter`]):
//! their cost is the same however many addresses are seen.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::window::{WindowCounter, source_of};

/// The most authenticated clients remembered by a request budget before
/// those whose budget has refilled are forgotten.
const MAX_REMEMBERED: usize = 100_000;

/// How much each client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Failed authentications tolerated per address per minute; once one
    /// more fails, an unknown credential from there gets 429 until the
    /// minute ends.
    pub auth_failures_per_minute: u32,
    /// Failures tolerated per credential per minute (a client retrying the
    /// same stale or wrong credential).
    pub credential_failures_per_minute: u32,
    /// Management requests per admin key per minute.
    pub operator_per_minute: u32,
    /// Node requests (introspection, forward auth) per node per second.
    pub node_per_second: u32,
    /// Lookups of keys no cache knows, per node per second.
    pub misses_per_node_per_second: u32,
    /// Lookups of keys no cache knows, per client address per second.
    pub misses_per_address_per_second: u32,
    /// Self-service requests (`/v1/self`, `/v1/self/rotate`) per instance per minute.
    pub self_service_per_minute: u32,
    /// Self-rotations per instance per hour: a holder rotating in a loop
    /// would flood keys, audit entries, webhooks and revocation events.
    pub self_rotations_per_hour: u32,
    /// Leak reports per client address per minute (signed reports are
    /// not counted).
    pub leak_reports_per_minute: u32,
    /// Sign-ins and device authorizations begun per client address per
    /// minute (each stores a row until it finishes or expires).
    pub sign_ins_per_minute: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            auth_failures_per_minute: 30,
            credential_failures_per_minute: 10,
            operator_per_minute: 1_200,
            node_per_second: 50_000,
            misses_per_node_per_second: 500,
            misses_per_address_per_second: 20,
            self_service_per_minute: 60,
            self_rotations_per_hour: 12,
            leak_reports_per_minute: 60,
            sign_ins_per_minute: 60,
        }
    }
}

/// The limiters one keyplane process keeps.
#[derive(Debug)]
pub struct Limits {
    failures_by_address: WindowCounter,
    failures_by_credential: WindowCounter,
    misses_by_node: WindowCounter,
    misses_by_address: WindowCounter,
    operators: DefaultKeyedRateLimiter<String>,
    nodes: DefaultKeyedRateLimiter<Uuid>,
    self_service: DefaultKeyedRateLimiter<Uuid>,
    self_rotations: DefaultKeyedRateLimiter<Uuid>,
    leak_reports: WindowCounter,
    sign_ins: WindowCounter,
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// A budget is spent: try again after `retry_after` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests: try again in {retry_after} s")]
pub struct Limited {
    /// Whole seconds until the budget allows another request (at least 1).
    pub retry_after: u64,
}

fn too_many(wait: Duration) -> Limited {
    Limited {
        retry_after: wait.as_secs().max(1),
    }
}

/// What identifies a credential to the failure count: its first characters
/// (a whole stale key and its retries share them; they are hashed into the
/// table and never stored).
fn credential_source(credential: &str) -> &str {
    let end = credential
        .char_indices()
        .nth(12)
        .map_or(credential.len(), |(i, _)| i);
    &credential[..end]
}

const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

impl Limits {
    /// Limiters with these budgets.
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            failures_by_address: WindowCounter::new(settings.auth_failures_per_minute, MINUTE),
            failures_by_credential: WindowCounter::new(
                settings.credential_failures_per_minute,
                MINUTE,
            ),
            misses_by_node: WindowCounter::new(settings.misses_per_node_per_second, SECOND),
            misses_by_address: WindowCounter::new(settings.misses_per_address_per_second, SECOND),
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
            leak_reports: WindowCounter::new(settings.leak_reports_per_minute, MINUTE),
            sign_ins: WindowCounter::new(settings.sign_ins_per_minute, MINUTE),
        }
    }

    /// Refuses an unknown `credential` that keeps failing, or that
    /// comes from an address that does, before it is looked at.
    pub fn check_unknown(&self, address: Option<IpAddr>, credential: &str) -> Result<(), Limited> {
        if let Some(wait) = self
            .failures_by_credential
            .over(credential_source(credential))
        {
            return Err(too_many(wait));
        }
        self.check_address(address)
    }

    /// Refuses anything unknown from an address that keeps failing.
    pub fn check_address(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        match address.and_then(|a| self.failures_by_address.over(source_of(a))) {
            Some(wait) => Err(too_many(wait)),
            None => Ok(()),
        }
    }

    /// Counts a failed authentication with `credential` (if any) from
    /// `address`. A credential past its own budget no longer counts against
    /// its address: one client retrying one stale key locks out only itself.
    pub fn note_failure(&self, address: Option<IpAddr>, credential: Option<&str>) {
        if let Some(credential) = credential {
            let counter = &self.failures_by_credential;
            if counter.count_one(credential_source(credential)) > counter.budget() {
                return;
            }
        }
        if let Some(address) = address {
            self.failures_by_address.count_one(source_of(address));
        }
    }

    /// Spends one lookup of a key no cache knows, for `node` and the client
    /// at `address`; past either budget, how long to wait.
    pub fn spend_miss(&self, node: Uuid, address: Option<IpAddr>) -> Result<(), Duration> {
        // The client's budget first: a client past it spends none of its node's.
        if let Some(address) = address {
            self.misses_by_address.spend(source_of(address))?;
        }
        self.misses_by_node.spend(node)
    }

    /// Spends one of an admin key's (or the bootstrap token's) requests.
    pub fn check_operator(&self, actor: &str) -> Result<(), Limited> {
        spend(&self.operators, &actor.to_owned())
    }

    /// Spends one of a node's requests.
    pub fn check_node(&self, node: Uuid) -> Result<(), Limited> {
        spend(&self.nodes, &node)
    }

    /// Spends one of an instance's self-service requests.
    pub fn check_self_service(&self, instance: Uuid) -> Result<(), Limited> {
        spend(&self.self_service, &instance)
    }

    /// Spends one of an address's leak reports; an unknown address shares
    /// one budget.
    pub fn check_leak_report(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        self.leak_reports
            .spend(address.map(source_of))
            .map_err(too_many)
    }

    /// Spends one of an address's sign-ins (or device authorizations); an
    /// unknown address shares one budget.
    pub fn check_sign_in(&self, address: Option<IpAddr>) -> Result<(), Limited> {
        self.sign_ins
            .spend(address.map(source_of))
            .map_err(too_many)
    }

    /// Spends one of a holder's self-rotations (an instance's, for its keys;
    /// a node's, for its own key).
    pub fn check_self_rotation(&self, holder: Uuid) -> Result<(), Limited> {
        spend(&self.self_rotations, &holder)
    }
}

/// Spends one request of `key`'s budget in `limiter`; a budget spent says
/// when the next request may come. Keys are authenticated
/// clients, so their number is bounded; those whose budget has refilled are
/// forgotten once many are held.
fn spend<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), Limited> {
    if limiter.len() >= MAX_REMEMBERED {
        limiter.retain_recent();
    }
    limiter
        .check_key(key)
        .map_err(|not_until| too_many(not_until.wait_time_from(DefaultClock::default().now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(address: u32, credential: u32) -> Limits {
        Limits::new(LimitSettings {
            auth_failures_per_minute: address,
            credential_failures_per_minute: credential,
            ..LimitSettings::default()
        })
    }

    #[test]
    fn one_client_retrying_a_stale_key_locks_out_only_itself() {
        let limits = limits(5, 3);
        let office = Some("10.0.0.1".parse().unwrap());
        let stale = "kpa_StaleStaleStaleStaleStaleStaleSt000000";
        for _ in 0..20 {
            limits.note_failure(office, Some(stale));
        }
        assert!(
            limits.check_unknown(office, stale).is_err(),
            "the stale key waits"
        );
        assert!(
            limits
                .check_unknown(office, "kpa_SomebodyElse0000000000000000000000")
                .is_ok(),
            "the office does not"
        );
    }

    #[test]
    fn guessing_many_credentials_from_one_address_is_cut_off_there_only() {
        let limits = limits(5, 3);
        let attacker = Some("192.0.2.1".parse().unwrap());
        // Five failures tolerated; the sixth spends past the budget.
        for guess in 0..6 {
            limits.note_failure(attacker, Some(&format!("{guess}-guess")));
        }
        assert!(limits.check_unknown(attacker, "guess-next").is_err());
        assert!(limits.check_address(attacker).is_err());
        assert!(
            limits
                .check_address(Some("192.0.2.2".parse().unwrap()))
                .is_ok()
        );
        assert!(limits.check_address(None).is_ok());
    }

    #[test]
    fn misses_are_budgeted_per_node_and_per_address() {
        let limits = Limits::new(LimitSettings {
            misses_per_node_per_second: 3,
            misses_per_address_per_second: 2,
            ..LimitSettings::default()
        });
        let (node, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        assert!(limits.spend_miss(node, a).is_ok());
        assert!(limits.spend_miss(node, a).is_ok());
        assert!(limits.spend_miss(node, a).is_err(), "the address's budget");
        assert!(limits.spend_miss(node, b).is_ok());
        assert!(limits.spend_miss(node, b).is_err(), "the node's budget");
        assert!(
            limits.spend_miss(other, None).is_ok(),
            "another node has its own"
        );
    }
}
