//! Token budgets (daily and monthly) across many nodes, with leases.
//!
//! A node spends a key's budget from a lease keyplane granted it
//! (`POST /v1/usage/leases`): a slice of what is left, which no other node
//! is granted at the same time. It asks for a lease when it has none, when
//! the one it has ran out or ended (a minute at most), and ahead of time
//! when half of it is spent. Requests are charged their estimate when they
//! start and settled on what they used.
//!
//! The bound: keyplane never grants more than the budget less what was
//! reported spent and what other nodes hold, so a fleet spends more than a
//! budget only by what requests in flight use beyond their estimates when
//! it runs out (nothing, when requests set `max_tokens` and their prompts
//! are no longer than their estimates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyplane_domain::Limits;
use moka::sync::Cache;
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::net::without_url;
use crate::{Introspector, UsageRecorder};

#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Tokens left to spend.
    allowance: i64,
    /// What keyplane granted.
    granted: i64,
    /// When it ends.
    ends: Instant,
    /// Which lease this is (charges settle against the lease they came from).
    generation: u64,
}

/// One key's lease, and the lock that keeps its lease requests one at a time.
#[derive(Debug, Default)]
struct Key {
    state: Mutex<State>,
    leasing: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    lease: Option<Lease>,
    generation: u64,
    renewing: bool,
    /// Tokens settled so far, all leases together: what settles while a
    /// lease is asked for in the background is what keyplane's grant
    /// cannot know of, and is taken off it.
    settled: i64,
    /// After keyplane granted too little (the budget is spent) or could not
    /// be asked: until then, requests the lease cannot cover are refused
    /// without asking again, so a spent key's traffic is not a call apiece.
    hold_until: Option<Instant>,
    /// Why the hold: the budget is spent, or keyplane was unavailable.
    held_for: Option<BudgetRefusal>,
}

/// How long a key whose budget keyplane found spent (or could not be asked
/// about) is refused without asking again.
const HOLD: Duration = Duration::from_secs(2);

impl State {
    fn hold(&mut self, why: BudgetRefusal) {
        self.hold_until = Some(Instant::now() + HOLD);
        self.held_for = Some(why);
    }
}

#[derive(Debug, Deserialize)]
struct Granted {
    granted: i64,
    expires_at: String,
}

/// A request's charge against a budget lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    tokens: i64,
    generation: u64,
}

/// Why a budget refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefusal {
    /// The budget is spent (what is left is less than the request's estimate).
    #[error("the key's token budget is spent")]
    Spent,
    /// keyplane could not be asked for a lease: fail closed.
    #[error("keyplane cannot be reached to lease the key's budget")]
    Unavailable,
}

/// Budget leases per key; cheap to clone.
#[derive(Clone)]
pub struct Budgets {
    keys: Cache<Uuid, Arc<Key>>,
    keyplane: Introspector,
    usage: UsageRecorder,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("keys", &self.keys.entry_count())
            .finish()
    }
}

impl Budgets {
    /// Leases from the keyplane `keyplane` talks to; `usage` is reported
    /// before each lease, so keyplane counts what was spent.
    pub fn new(keyplane: Introspector, usage: UsageRecorder, capacity: u64) -> Budgets {
        Budgets {
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(120))
                .build(),
            keyplane,
            usage,
        }
    }

    /// Charges `estimate` tokens of key `key_id`'s budgets under `limits`,
    /// leasing first when needed. A key without budgets costs nothing.
    pub async fn charge(
        &self,
        key_id: Uuid,
        limits: &Limits,
        estimate: u64,
    ) -> Result<Charge, BudgetRefusal> {
        if limits.daily_tokens.is_none() && limits.monthly_tokens.is_none() {
            return Ok(Charge::default());
        }
        // Boxed: leasing is a large future, which every request of a key
        // without budgets would carry (and move) otherwise.
        Box::pin(self.charge_leased(key_id, estimate)).await
    }

    /// [`Budgets::charge`] for a key with budgets.
    async fn charge_leased(&self, key_id: Uuid, estimate: u64) -> Result<Charge, BudgetRefusal> {
        let estimate = i64::try_from(estimate).unwrap_or(i64::MAX).max(1);
        let key = self.keys.get_with(key_id, Arc::default);
        // At most twice: with the lease held, then with a new one.
        for attempt in 0..2 {
            let mut held = key.state.lock().await;
            let now = Instant::now();
            if let Some(mut lease) = held
                .lease
                .filter(|l| l.ends > now && l.allowance >= estimate)
            {
                lease.allowance -= estimate;
                held.lease = Some(lease);
                if lease.allowance < lease.granted / 2 && !held.renewing {
                    held.renewing = true;
                    let (this, key) = (self.clone(), key.clone());
                    tokio::spawn(async move { this.renew(key_id, &key, 1).await });
                }
                return Ok(Charge {
                    tokens: estimate,
                    generation: lease.generation,
                });
            }
            if attempt == 1 {
                break;
            }
            if let (Some(until), Some(why)) = (held.hold_until, held.held_for)
                && until > now
            {
                return Err(why);
            }
            let generation = held.generation;
            drop(held);
            // One lease request per key at a time; whoever waited for it
            // looks again at what it brought.
            let leasing = key.leasing.lock().await;
            if key.state.lock().await.generation == generation {
                let replaced = self.replace(key_id, &key, estimate).await;
                let mut held = key.state.lock().await;
                let short = held.lease.is_none_or(|l| l.allowance < estimate);
                match replaced {
                    Err(why) => held.hold(why),
                    Ok(()) if short => held.hold(BudgetRefusal::Spent),
                    Ok(()) => held.hold_until = None,
                }
                replaced?;
            }
            drop(leasing);
        }
        Err(BudgetRefusal::Spent)
    }

    /// Settles `charge` on what the request used (None: unknown, so the
    /// estimate it was charged stands).
    pub async fn settle(&self, key_id: Uuid, charge: Charge, used: Option<u64>) {
        if charge == Charge::default() {
            return;
        }
        let used = used.map_or(charge.tokens, |u| i64::try_from(u).unwrap_or(i64::MAX));
        let Some(key) = self.keys.get(&key_id) else {
            return;
        };
        let mut held = key.state.lock().await;
        held.settled = held.settled.saturating_add(used);
        if let Some(lease) = &mut held.lease {
            // Against the lease it came from, the difference; against a
            // newer one (whose grant keyplane cut by what is reported), all
            // of it.
            lease.allowance -= match lease.generation == charge.generation {
                true => used - charge.tokens,
                false => used,
            };
        }
    }

    /// Replaces the lease ahead of time, in the background.
    async fn renew(&self, key_id: Uuid, key: &Key, tokens: i64) {
        let leasing = key.leasing.lock().await;
        let renewed = self.replace(key_id, key, tokens).await;
        key.state.lock().await.renewing = false;
        drop(leasing);
        if let Err(err) = renewed {
            tracing::debug!(error = %err, "could not renew a budget lease ahead of time");
        }
    }

    /// Asks for a new lease and puts it in the old one's place (the caller
    /// holds `leasing`). Requests may spend the old lease meanwhile; what
    /// they settle before the new one arrives was not reported when
    /// keyplane granted it, so it comes off the grant (a request reported
    /// and settled meanwhile comes off twice: the safe side).
    async fn replace(&self, key_id: Uuid, key: &Key, tokens: i64) -> Result<(), BudgetRefusal> {
        let mark = key.state.lock().await.settled;
        let lease = self.lease(key_id, tokens).await?;
        let mut held = key.state.lock().await;
        let unknown = held.settled - mark;
        held.generation += 1;
        held.lease = Some(Lease {
            allowance: lease.allowance - unknown,
            generation: held.generation,
            ..lease
        });
        Ok(())
    }

    /// Asks keyplane for a lease of at least `tokens`, after reporting
    /// what was used, so that the grant counts it.
    async fn lease(&self, key_id: Uuid, tokens: i64) -> Result<Lease, BudgetRefusal> {
        let keyplane = &self.keyplane;
        if let Err(err) = self.usage.report(keyplane).await {
            tracing::warn!(error = %err, "could not report usage before leasing a budget");
        }
        let asked = Instant::now();
        let base = keyplane.base_url();
        let answer = keyplane
            .http()
            .post(format!("{base}/v1/usage/leases"))
            .bearer_auth(keyplane.node_key().expose_secret())
            .timeout(Duration::from_secs(5))
            .json(&serde_json::json!({ "key_id": key_id, "tokens": tokens }))
            .send()
            .await
            .map_err(|err| {
                tracing::warn!(error = %without_url(err), "cannot reach keyplane to lease a budget");
                keyplane.endpoints().failed(&base);
                BudgetRefusal::Unavailable
            })?;
        if answer.status().is_server_error() {
            keyplane.endpoints().failed(&base);
        }
        if !answer.status().is_success() {
            tracing::warn!(status = %answer.status(), "keyplane did not lease a budget");
            return Err(BudgetRefusal::Unavailable);
        }
        let granted: Granted = answer
            .json()
            .await
            .map_err(|_| BudgetRefusal::Unavailable)?;
        let lasts = seconds_until(&granted.expires_at).min(Duration::from_secs(300));
        Ok(Lease {
            allowance: granted.granted,
            granted: granted.granted,
            ends: asked + lasts,
            generation: 0,
        })
    }
}

/// How long until an RFC 3339 time (zero when it does not read, or passed).
fn seconds_until(rfc3339: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .and_then(|at| (at.to_utc() - chrono::Utc::now()).to_std().ok())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::seconds_until;
    use std::time::Duration;

    #[test]
    fn lease_ends_read_from_rfc3339() {
        assert_eq!(seconds_until("2000-01-01T00:00:00Z"), Duration::ZERO);
        assert_eq!(seconds_until("garbage"), Duration::ZERO);
        let later = std::time::SystemTime::now() + Duration::from_secs(90);
        let secs = later
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let text = crate::usage::rfc3339(i64::try_from(secs).unwrap());
        let left = seconds_until(&text.replace('Z', ".123456Z"));
        assert!((88..=90).contains(&left.as_secs()), "{left:?}");
    }
}
