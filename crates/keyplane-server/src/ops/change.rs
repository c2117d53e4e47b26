//! One operation's writes: a transaction, with the audit entries, change
//! events, revocations and webhooks that go with it, committed together or
//! not at all.
//!
//! Every changing operation runs one of two ways, chosen by a value its
//! caller passes: [`Apply`] commits and answers the outcome; [`DryRun`] runs
//! the very same code, reads what the keys concerned would grant afterwards,
//! rolls everything back and answers a [`Plan`]. A dry run is therefore never
//! a second implementation that can drift from the real one, and what it
//! answers (the outcome, with any secret made on the way) never leaves it.
//! A dry run keeps nothing: no row, no audit entry (it does not even queue on
//! the chain's lock), no event, no webhook, no credential marked live. What
//! it cannot take back are sequence numbers its rolled-back rows drew, and
//! the budget of a request (a dry run is still a request); it spends none of
//! what the operation itself is budgeted by (self-rotations, say).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use keyplane_domain::ScopeSet;
use keyplane_store::audit::{self, NewEntry};
use keyplane_store::introspection::{KeysOf, key_facts_of};
use keyplane_store::{nodes, revocations};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::credentials::KnownCredentials;
use crate::events::{Event, Events};
use crate::introspection::CachedKey;
use crate::ops::{Actor, Origin, Refusal};

/// How an operation runs: for real, or as a plan.
pub trait Run: Copy + Send + Sync + 'static {
    /// What the operation answers when run this way.
    type Answer<T: Send>: Send;
    /// True when nothing is to be kept.
    const DRY: bool;
    /// The answer, from the outcome or the plan (whichever this run keeps).
    fn answer<T: Send>(outcome: T, plan: Plan) -> Self::Answer<T>;
}

/// Commit the change and answer its outcome.
#[derive(Debug, Clone, Copy)]
pub struct Apply;

/// Change nothing; answer what would change.
#[derive(Debug, Clone, Copy)]
pub struct DryRun;

impl Run for Apply {
    type Answer<T: Send> = T;
    const DRY: bool = false;
    fn answer<T: Send>(outcome: T, _: Plan) -> T {
        outcome
    }
}

impl Run for DryRun {
    type Answer<T: Send> = Plan;
    const DRY: bool = true;
    fn answer<T: Send>(_: T, plan: Plan) -> Plan {
        plan
    }
}

/// What an operation would change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The keys whose working scopes would change, by key id.
    pub changes: Vec<KeyChange>,
    /// The live nodes that would see it: those the changed keys are for
    /// (every node, when one of them is for any node). Networks are not
    /// scopes: a change of an instance's networks changes no key here.
    pub nodes: Vec<Uuid>,
    /// The audit entries it would write, by action.
    pub actions: Vec<&'static str>,
}

/// One key whose working scopes would change. A key that would stop
/// working loses them all; one that would start gains them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyChange {
    /// The key.
    pub key_id: Uuid,
    /// Its instance.
    pub instance_id: Uuid,
    /// Scopes it would grant that it does not now.
    pub gains: Vec<String>,
    /// Scopes it grants now that it would not.
    pub loses: Vec<String>,
}

/// What a key grants now, and where.
struct Grant {
    instance_id: Uuid,
    scopes: ScopeSet,
    audience: Vec<Uuid>,
}

/// A person's email, for the audit log to name them by.
fn email_of(actor: &Actor) -> Option<String> {
    match actor {
        Actor::Person(person) => person.email.clone(),
        _ => None,
    }
}

/// One operation's transaction and everything that goes with it.
pub struct Change<'a, R: Run> {
    tx: Transaction<'static, Postgres>,
    pool: &'a PgPool,
    events_out: &'a Events,
    credentials: Option<&'a KnownCredentials>,
    actor: String,
    /// A person's email, written beside their subject in every entry.
    actor_email: Option<String>,
    origin: &'a Origin,
    at: DateTime<Utc>,
    events: Vec<Event>,
    known: Vec<Known>,
    /// For a dry run: what the keys concerned granted before.
    before: HashMap<Uuid, Grant>,
    actions: Vec<&'static str>,
    run: PhantomData<R>,
}

/// A kind of credential whose liveness this process keeps in memory.
#[derive(Debug, Clone, Copy)]
pub enum Credential {
    /// An admin key.
    Admin,
    /// A node key.
    Node,
}

/// A credential to mark live or dead in this process once the change commits.
struct Known {
    digest: Vec<u8>,
    kind: Credential,
    live: bool,
}

/// Where a change is written, and who hears of it.
pub struct Sinks<'a> {
    /// The database.
    pub pool: &'a PgPool,
    /// Change events, published at commit.
    pub events: &'a Events,
    /// This process's live credentials, marked as soon as a change
    /// commits; none for a process that serves no requests (the CLI), whose
    /// changes servers hear of by event.
    pub credentials: Option<&'a KnownCredentials>,
}

impl<'a, R: Run> Change<'a, R> {
    /// Begins a change by `actor`, asked from `origin`, happening `at`.
    pub async fn begin(
        sinks: Sinks<'a>,
        actor: &Actor,
        origin: &'a Origin,
        at: DateTime<Utc>,
        _run: R,
    ) -> Result<Change<'a, R>, Refusal> {
        Ok(Change {
            tx: sinks.pool.begin().await?,
            pool: sinks.pool,
            events_out: sinks.events,
            credentials: sinks.credentials,
            actor: actor.to_string(),
            actor_email: email_of(actor),
            origin,
            at,
            events: Vec::new(),
            known: Vec::new(),
            before: HashMap::new(),
            actions: Vec::new(),
            run: PhantomData,
        })
    }

    /// The connection to read and write through, inside the transaction.
    pub fn db(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// When the change happens: one time for every row and entry it writes.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Makes the change `actor`'s from here on (once a credential read
    /// inside the change says who the caller is).
    pub fn acting_as(&mut self, actor: &Actor) {
        self.actor = actor.to_string();
        self.actor_email = email_of(actor);
    }

    /// The audit log's name of whoever makes the change.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// An audit entry for `action` on the `target_type` named `target_id`,
    /// with `details` (masked: never a key).
    fn entry(
        &self,
        action: &'static str,
        target_type: &'static str,
        target_id: impl fmt::Display,
        mut details: Value,
    ) -> NewEntry {
        if let (Some(email), Some(details)) = (&self.actor_email, details.as_object_mut()) {
            details.insert("actor_email".to_owned(), Value::String(email.clone()));
        }
        NewEntry {
            at: self.at,
            actor: self.actor.clone(),
            action,
            target_type,
            target_id: Some(target_id.to_string()),
            outcome: "success",
            request_id: self.origin.request_id.clone(),
            client_ip: self.origin.client_ip.map(|ip| ip.to_string()),
            details,
        }
    }

    /// Writes `entry` into the audit chain, with the change.
    async fn record(&mut self, entry: NewEntry) -> Result<(), Refusal> {
        self.actions.push(entry.action);
        // A dry run does not queue on the chain's lock for entries that
        // would be rolled back.
        if !R::DRY {
            audit::append(&mut self.tx, &entry).await?;
        }
        Ok(())
    }

    /// Audits `action` on the `target_type` named `target_id`, with the change.
    pub async fn audit(
        &mut self,
        action: &'static str,
        target_type: &'static str,
        target_id: impl fmt::Display,
        details: Value,
    ) -> Result<(), Refusal> {
        let entry = self.entry(action, target_type, target_id, details);
        self.record(entry).await
    }

    /// Abandons the change because of `refusal`, and audits the refused
    /// `action` on its own (the change's writes are rolled back first; a dry
    /// run audits nothing).
    pub async fn refuse(
        self,
        action: &'static str,
        target_type: &'static str,
        target_id: impl fmt::Display,
        details: Value,
        refusal: Refusal,
    ) -> Refusal {
        let entry = NewEntry {
            outcome: "denied",
            ..self.entry(action, target_type, target_id, details)
        };
        let (pool, tx) = (self.pool, self.tx);
        drop(tx);
        if !R::DRY
            && let Err(err) = audit::append_alone(pool, &entry).await
        {
            tracing::warn!(error = %err, action, "could not audit a refusal");
        }
        refusal
    }

    /// Announces `event` when the change commits.
    pub fn publish(&mut self, event: Event) {
        if !self.events.contains(&event) {
            self.events.push(event);
        }
    }

    /// Puts `keys` on the revocation log (for `reason`): nodes following it
    /// drop them at once.
    pub async fn revoke(&mut self, keys: &[Uuid], reason: &str) -> Result<(), Refusal> {
        // Like the audit entries, the log's rows are taken under the chain's
        // lock, which a dry run (rolled back whole) does not queue on.
        if !R::DRY {
            revocations::record(&mut self.tx, keys, reason, self.at).await?;
        }
        self.publish(Event::Revocations);
        Ok(())
    }

    /// Puts `keys`, which still work but whose limits changed, on the
    /// revocation log (reason `changed`): nodes drop their cached answers
    /// and ask again.
    pub async fn changed(&mut self, keys: &[Uuid]) -> Result<(), Refusal> {
        self.revoke(keys, "changed").await
    }

    /// Queues webhook `event` with `data`, sent if the change commits.
    pub async fn notify(&mut self, event: &'static str, data: Value) -> Result<(), Refusal> {
        Ok(crate::webhooks::notify(&mut self.tx, event, data, self.at).await?)
    }

    /// Marks a credential (by digest) live or dead in this process as soon
    /// as the change commits; other processes hear of it by event.
    pub fn credential(&mut self, digest: &[u8], kind: Credential, live: bool) {
        self.known.push(Known {
            digest: digest.to_vec(),
            kind,
            live,
        });
    }

    /// Notes the keys `which` names, before they change, so that a dry run
    /// can say what they would gain and lose. Costs nothing when applied.
    pub async fn concerns(&mut self, which: KeysOf<'_>) -> Result<(), Refusal> {
        if R::DRY {
            for facts in key_facts_of(&mut *self.tx, which, self.at).await? {
                let key = CachedKey::from_facts(facts);
                self.before
                    .entry(key.key_id)
                    .or_insert_with(|| grant(&key, self.at));
            }
        }
        Ok(())
    }

    /// Notes a key about to be made: before the change, it grants nothing.
    pub fn concerns_new(&mut self, key_id: Uuid, instance_id: Uuid) {
        if R::DRY {
            self.before.entry(key_id).or_insert(Grant {
                instance_id,
                scopes: ScopeSet::default(),
                audience: Vec::new(),
            });
        }
    }

    /// Ends the change: commits it and answers `outcome` ([`Apply`]), or
    /// works out the plan, rolls it back and answers that ([`DryRun`]).
    pub async fn finish<T: Send>(mut self, outcome: T) -> Result<R::Answer<T>, Refusal> {
        if R::DRY {
            let plan = self.plan().await?;
            self.tx.rollback().await?;
            return Ok(R::answer(outcome, plan));
        }
        self.events_out.commit(self.tx, &self.events).await?;
        if let Some(credentials) = self.credentials {
            for known in &self.known {
                match known.kind {
                    Credential::Admin => credentials.set_admin(&known.digest, known.live),
                    Credential::Node => credentials.set_node(&known.digest, known.live),
                }
            }
        }
        Ok(R::answer(outcome, Plan::default()))
    }

    /// What the keys concerned grant now, inside the change, against before.
    async fn plan(&mut self) -> Result<Plan, Refusal> {
        let ids: Vec<Uuid> = self.before.keys().copied().collect();
        let mut after: HashMap<Uuid, Grant> =
            key_facts_of(&mut *self.tx, KeysOf::Ids(&ids), self.at)
                .await?
                .into_iter()
                .map(CachedKey::from_facts)
                .map(|key| (key.key_id, grant(&key, self.at)))
                .collect();
        let mut changes = Vec::new();
        let mut for_any_node = false;
        let mut audience = BTreeSet::new();
        for (key_id, before) in &self.before {
            let after = after.remove(key_id).unwrap_or(Grant {
                instance_id: before.instance_id,
                scopes: ScopeSet::default(),
                audience: before.audience.clone(),
            });
            let gains = after.scopes.outside(&before.scopes);
            let loses = before.scopes.outside(&after.scopes);
            if gains.is_empty() && loses.is_empty() {
                continue;
            }
            for grant in [before, &after] {
                for_any_node |= grant.audience.is_empty() && !grant.scopes.is_empty();
                audience.extend(grant.audience.iter().copied());
            }
            changes.push(KeyChange {
                key_id: *key_id,
                instance_id: after.instance_id,
                gains: gains.iter().map(|s| s.as_str().to_owned()).collect(),
                loses: loses.iter().map(|s| s.as_str().to_owned()).collect(),
            });
        }
        changes.sort_by_key(|change| change.key_id);
        let nodes = if changes.is_empty() {
            Vec::new()
        } else {
            let live = nodes::live_ids(&mut *self.tx, self.at).await?;
            live.into_iter()
                .filter(|node| for_any_node || audience.contains(node))
                .collect()
        };
        Ok(Plan {
            changes,
            nodes,
            actions: std::mem::take(&mut self.actions),
        })
    }
}

/// What `key` grants at `at`, and where.
fn grant(key: &CachedKey, at: DateTime<Utc>) -> Grant {
    Grant {
        instance_id: key.instance_id,
        scopes: key.grants_at(at).unwrap_or_default(),
        audience: key.audience().to_vec(),
    }
}
