//! Fleet-wide operations: rotate or revoke the keys of every instance whose
//! labels match a selector, or suspend those instances, in one request.
//!
//! Each key goes through the same steps as its one-key operation (the same
//! rotation, the same revocation, its own audit entry and webhook); the
//! operation is audited first, naming the selector, and the set is written
//! in batches, one transaction each. A batch that fails ends the operation:
//! the answer lists what the batches before it did, and says it is
//! incomplete. Run as a [`DryRun`], the whole set is planned in one
//! transaction and nothing changes.
//!
//! [`DryRun`]: crate::ops::DryRun

use keyplane_domain::Permission;
use keyplane_store::instances::{self, LabelQuery};
use keyplane_store::{keys, revocations};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::Event;
use crate::ops::keys::{
    CreatedKeyResponse, Rotation, max_lifetime_seconds, reason, revoke_announced,
};
use crate::ops::rotation::{self, RotatedBy};
use crate::ops::{Apply, Change, Operator, Ops, Refusal, Run, input};

/// How many keys (or instances) one transaction of a bulk operation writes.
const BATCH: usize = 200;
/// The most keys (or instances) one bulk operation may touch: a selector
/// that matches more is refused, to be narrowed.
pub const BULK_LIMIT: usize = 10_000;

/// Rotates every live key of the instances a selector matches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRotateRequest {
    /// Which instances, by their labels: `env=prod,team!=ml`, `tier in (gpu,cpu)`.
    pub selector: String,
    /// How long each old key keeps working, in seconds (default 3600; 0 = stops at once).
    pub grace_seconds: Option<i64>,
}

/// Revokes every live key of the instances a selector matches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRevokeRequest {
    /// Which instances, by their labels.
    pub selector: String,
    /// Why, for the audit log (at most 512 characters).
    pub reason: Option<String>,
}

/// Suspends every active instance a selector matches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSuspendRequest {
    /// Which instances, by their labels.
    pub selector: String,
}

/// The keys a bulk rotation made: each successor's secret, shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkRotated {
    /// The successors, with their secrets, in the order of the old keys.
    pub rotated: Vec<CreatedKeyResponse>,
    /// Set when a batch failed: what was done is above, the rest was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
}

/// The keys a bulk revocation stopped.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkRevoked {
    /// Their ids.
    pub revoked: Vec<Uuid>,
    /// Set when a batch failed: what was done is above, the rest was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
}

/// The instances a bulk suspension stopped.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkSuspended {
    /// Their ids.
    pub suspended: Vec<Uuid>,
    /// How many live keys stopped working with them (until they are resumed).
    pub keys_stopped: usize,
    /// Set when a batch failed: what was done is above, the rest was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
}

/// A bulk operation that stopped part-way: the batches before the failure
/// are done (and answered), the rest are not; running it again finishes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Incomplete {
    /// How many of the matched keys (or instances) were not reached.
    pub remaining: usize,
    /// What to do.
    pub detail: String,
}

/// The answer's note when a batch failed with `refusal`, `remaining` left.
fn incomplete(refusal: &Refusal, remaining: usize) -> Incomplete {
    tracing::error!(error = %refusal, remaining, "a bulk operation stopped part-way");
    Incomplete {
        remaining,
        detail: "a batch failed and was rolled back; what is listed was done. Run the \
                 same operation again to finish it"
            .to_owned(),
    }
}

/// The selector of a bulk operation: required, and naming a label the
/// instances have (never "everything" by omission or by negation alone).
fn bulk_selector(text: &str) -> Result<LabelQuery, Refusal> {
    let query = input::selector("selector", text)?;
    let selector: keyplane_domain::Selector =
        text.parse()
            .map_err(|err: keyplane_domain::SelectorError| {
                Refusal::invalid("selector", err.to_string())
            })?;
    if !selector.names_a_label() {
        return Err(Refusal::invalid(
            "selector",
            "a bulk operation's selector names a label the instances have (key=value, \
             key in (...) or key), not only ones they lack",
        ));
    }
    Ok(query)
}

/// Refuses a set too large for one request.
fn within_limit(count: usize) -> Result<(), Refusal> {
    if count > BULK_LIMIT {
        return Err(Refusal::policy(
            "selector",
            format!("it matches {count}; at most {BULK_LIMIT} at once: narrow the selector"),
        ));
    }
    Ok(())
}

impl Ops<Operator> {
    /// Rotates every live (active) key of the active instances `selector`
    /// matches; answers every successor, with its secret, once.
    pub async fn rotate_keys<R: Run>(
        &self,
        run: R,
        input: BulkRotateRequest,
    ) -> Result<R::Answer<BulkRotated>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        self.dangerous::<R>()?;
        let labels = bulk_selector(&input.selector)?;
        let grace = rotation::grace_seconds(
            input.grace_seconds,
            max_lifetime_seconds(&self.state.settings),
        )?;
        let now = self.now();
        let ids =
            keys::of_instances_matching(self.state.db.pool(), &labels, &["active"], now).await?;
        within_limit(ids.len())?;
        let details =
            json!({ "selector": input.selector, "keys": ids.len(), "grace_seconds": grace });
        if R::DRY {
            let mut change = self.begin(run, now).await?;
            let rotated = self.rotate_each(&mut change, &ids, grace).await?;
            change
                .audit("keys.bulk_rotate", "selector", &input.selector, details)
                .await?;
            let incomplete = None;
            return change
                .finish(BulkRotated {
                    rotated,
                    incomplete,
                })
                .await;
        }
        // The operation is on record before any of its batches.
        let mut record = self.begin(Apply, now).await?;
        record
            .audit("keys.bulk_rotate", "selector", &input.selector, details)
            .await?;
        record.finish(()).await?;
        let mut answer = BulkRotated {
            rotated: Vec::with_capacity(ids.len()),
            incomplete: None,
        };
        for (n, batch) in ids.chunks(BATCH).enumerate() {
            let done = async {
                let mut change = self.begin(Apply, self.now()).await?;
                let done = self.rotate_each(&mut change, batch, grace).await?;
                change.finish(done).await
            };
            match done.await {
                Ok(done) => answer.rotated.extend(done),
                Err(refusal) => {
                    answer.incomplete = Some(incomplete(&refusal, ids.len() - n * BATCH));
                    break;
                }
            }
        }
        self.begin(run, self.now()).await?.finish(answer).await
    }

    /// Rotates each of `ids` still active (one rotated meanwhile is left be).
    async fn rotate_each<R: Run>(
        &self,
        change: &mut Change<'_, R>,
        ids: &[Uuid],
        grace: i64,
    ) -> Result<Vec<CreatedKeyResponse>, Refusal> {
        let mut rotated = Vec::with_capacity(ids.len());
        for &id in ids {
            let now = change.at();
            let Some(old) = keys::lock(change.db(), id, now).await? else {
                continue;
            };
            if old.status != "active" {
                continue;
            }
            let rotation = Rotation {
                old: &old,
                grace_seconds: grace,
                by: RotatedBy::Operator,
                replaced: None,
            };
            rotated.push(rotation.apply(change, &self.state.settings).await?);
        }
        Ok(rotated)
    }

    /// Revokes every live key (active, rotating or disabled) of the active
    /// instances `selector` matches.
    pub async fn revoke_keys<R: Run>(
        &self,
        run: R,
        input: BulkRevokeRequest,
    ) -> Result<R::Answer<BulkRevoked>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        self.dangerous::<R>()?;
        let labels = bulk_selector(&input.selector)?;
        let why = reason(input.reason)?;
        let now = self.now();
        let live = ["active", "rotating", "disabled"];
        let ids = keys::of_instances_matching(self.state.db.pool(), &labels, &live, now).await?;
        within_limit(ids.len())?;
        let details = json!({ "selector": input.selector, "keys": ids.len(), "reason": why });
        if R::DRY {
            let mut change = self.begin(run, now).await?;
            let revoked = revoke_each(&mut change, &ids, &why).await?;
            change
                .audit("keys.bulk_revoke", "selector", &input.selector, details)
                .await?;
            let incomplete = None;
            return change
                .finish(BulkRevoked {
                    revoked,
                    incomplete,
                })
                .await;
        }
        let mut record = self.begin(Apply, now).await?;
        record
            .audit("keys.bulk_revoke", "selector", &input.selector, details)
            .await?;
        record.finish(()).await?;
        let mut answer = BulkRevoked {
            revoked: Vec::with_capacity(ids.len()),
            incomplete: None,
        };
        for (n, batch) in ids.chunks(BATCH).enumerate() {
            let done = async {
                let mut change = self.begin(Apply, self.now()).await?;
                let done = revoke_each(&mut change, batch, &why).await?;
                change.finish(done).await
            };
            match done.await {
                Ok(done) => answer.revoked.extend(done),
                Err(refusal) => {
                    answer.incomplete = Some(incomplete(&refusal, ids.len() - n * BATCH));
                    break;
                }
            }
        }
        self.begin(run, self.now()).await?.finish(answer).await
    }

    /// Suspends every active instance `selector` matches: each one's live
    /// keys stop at once, as a suspension of one does.
    pub async fn suspend_instances<R: Run>(
        &self,
        run: R,
        input: BulkSuspendRequest,
    ) -> Result<R::Answer<BulkSuspended>, Refusal> {
        self.actor.require(Permission::InstancesWrite)?;
        self.dangerous::<R>()?;
        let labels = bulk_selector(&input.selector)?;
        let now = self.now();
        let ids = instances::active_matching(self.state.db.pool(), &labels).await?;
        within_limit(ids.len())?;
        let live = ["active", "rotating", "disabled"];
        let keys = keys::of_instances_matching(self.state.db.pool(), &labels, &live, now).await?;
        within_limit(keys.len())?;
        let details = json!({ "selector": input.selector, "instances": ids.len() });
        if R::DRY {
            let mut change = self.begin(run, now).await?;
            let outcome = suspend_each(&mut change, &ids).await?;
            change
                .audit(
                    "instances.bulk_suspend",
                    "selector",
                    &input.selector,
                    details,
                )
                .await?;
            return change.finish(outcome).await;
        }
        let mut record = self.begin(Apply, now).await?;
        record
            .audit(
                "instances.bulk_suspend",
                "selector",
                &input.selector,
                details,
            )
            .await?;
        record.finish(()).await?;
        let mut outcome = BulkSuspended {
            suspended: Vec::with_capacity(ids.len()),
            keys_stopped: 0,
            incomplete: None,
        };
        for (n, batch) in ids.chunks(BATCH).enumerate() {
            let done = async {
                let mut change = self.begin(Apply, self.now()).await?;
                let done = suspend_each(&mut change, batch).await?;
                change.finish(done).await
            };
            match done.await {
                Ok(done) => {
                    outcome.suspended.extend(done.suspended);
                    outcome.keys_stopped += done.keys_stopped;
                }
                Err(refusal) => {
                    outcome.incomplete = Some(incomplete(&refusal, ids.len() - n * BATCH));
                    break;
                }
            }
        }
        self.begin(run, self.now()).await?.finish(outcome).await
    }
}

/// Revokes each of `ids` not revoked meanwhile.
async fn revoke_each<R: Run>(
    change: &mut Change<'_, R>,
    ids: &[Uuid],
    why: &Option<String>,
) -> Result<Vec<Uuid>, Refusal> {
    let mut revoked = Vec::with_capacity(ids.len());
    for &id in ids {
        let now = change.at();
        let Some(key) = keys::lock(change.db(), id, now).await? else {
            continue;
        };
        if key.revoked_at.is_some() {
            continue;
        }
        let key = revoke_announced(change, key, why.clone()).await?;
        revoked.push(key.id);
    }
    Ok(revoked)
}

/// Suspends each of `ids` still active: its live keys stop, and it is
/// audited as a suspension of one is (`instance.suspend`).
async fn suspend_each<R: Run>(
    change: &mut Change<'_, R>,
    ids: &[Uuid],
) -> Result<BulkSuspended, Refusal> {
    let mut outcome = BulkSuspended {
        suspended: Vec::with_capacity(ids.len()),
        keys_stopped: 0,
        incomplete: None,
    };
    for &id in ids {
        let now = change.at();
        let Some(before) = instances::lock(change.db(), id).await? else {
            continue;
        };
        if before.status != "active" {
            continue;
        }
        change
            .concerns(keyplane_store::introspection::KeysOf::Instance(id))
            .await?;
        let mut after = before.clone();
        after.status = "suspended".to_owned();
        after.updated_at = now;
        let after = instances::save(change.db(), &after).await?;
        change.publish(Event::Instance { id });
        let stopped = revocations::live_keys_of_instance(change.db(), id, now).await?;
        change.revoke(&stopped, "suspended").await?;
        change
            .audit(
                "instance.suspend",
                "instance",
                id,
                json!({
                    "before": crate::ops::instances::summary(&before),
                    "after": crate::ops::instances::summary(&after),
                }),
            )
            .await?;
        outcome.suspended.push(id);
        outcome.keys_stopped += stopped.len();
    }
    Ok(outcome)
}
