//! Instance self-service: a key holder reads its own key and rotates it.

use std::net::IpAddr;

use keyplane_store::introspection::KeysOf;
use keyplane_store::{instances, keys};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::events::Event;
use crate::ops::keys::{CreatedKeyResponse, KeyResponse, Rotation, view_one};
use crate::ops::rotation::{self, MAX_HOLDER_GRACE_SECONDS, RotatedBy};
use crate::ops::{Actor, Apply, Change, Holder, Ops, Refusal, Run};

/// The calling key's own metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelfResponse {
    /// The key (never the key itself).
    #[serde(flatten)]
    pub key: KeyResponse,
    /// Its instance's name.
    pub instance_name: String,
    /// True once `rotation_due_at` has passed: rotate now.
    pub rotation_due: bool,
}

/// Rotates the calling key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfRotateRequest {
    /// How long the old key keeps working, in seconds (default 3600, at most
    /// a day; never past its own expiry).
    pub grace_seconds: Option<i64>,
}

/// The refusal of a key that is not a live instance key.
pub fn bad_key() -> Refusal {
    Refusal::Unauthenticated {
        code: "invalid_credentials",
        detail: "send a live API key as Authorization: Bearer kpi_…",
    }
}

/// Whether `address` may use a key of `instance`: anywhere when it names no
/// networks; an unknown address is refused when it does.
fn from_allowed_network(instance: &instances::Instance, address: Option<IpAddr>) -> bool {
    instance.allowed_cidrs.is_empty()
        || address.is_some_and(|address| {
            instance
                .allowed_cidrs
                .iter()
                .filter_map(|cidr| cidr.parse::<ipnet::IpNet>().ok())
                .any(|network| network.contains(&address))
        })
}

/// A holder asking to rotate a key it already rotated lost the answer (a
/// dropped connection, a failed write): where [`rotation::may_retry`]
/// allows, the unused successor is revoked and the rotation made again, so
/// the holder is never left without a key it knows.
async fn retry_rotation<R: Run>(
    change: &mut Change<'_, R>,
    old: &keys::ApiKey,
) -> Result<keys::ApiKey, Refusal> {
    let now = change.at();
    rotation::may_retry(old.rotated_by.as_deref(), old.rotated_at, false, now)?;
    let successor_id = old.rotated_to.ok_or_else(rotation::already_rotated)?;
    change
        .concerns(KeysOf::Ids(&[old.id, successor_id]))
        .await?;
    let mut successor = keys::lock(change.db(), successor_id, now)
        .await?
        .filter(|s| s.status == "active" && s.last_used_at.is_none())
        .ok_or_else(rotation::already_rotated)?;
    successor.revoked_at = Some(now);
    successor.revoked_reason = Some("replaced: its rotation was asked for again".to_owned());
    keys::save(change.db(), &successor, now).await?;
    // Caches drop both keys before nodes hear of the revocation.
    change.publish(Event::Key { id: old.id });
    change.publish(Event::Key { id: successor.id });
    change.revoke(&[successor.id], "revoked").await?;
    let mut old = old.clone();
    old.rotated_to = None;
    old.grace_until = None;
    old.rotated_at = None;
    old.rotated_by = None;
    Ok(keys::save(change.db(), &old, now).await?)
}

/// Abandons a self-rotation, auditing the refusal with the caller's address.
async fn refused<R: Run>(change: Change<'_, R>, old: &keys::ApiKey, refusal: Refusal) -> Refusal {
    let details = json!({ "masked": old.masked, "by": "holder", "refused": refusal.to_string() });
    change
        .refuse("key.rotate", "api_key", old.id, details, refusal)
        .await
}

impl Ops<Holder> {
    /// The presented key and its instance, locked within `change`, if the
    /// key works (active, or rotated and within its grace window), its
    /// instance is active, and the request comes from the instance's
    /// networks (as nodes require). The change is then the key's own.
    async fn live_key<R: Run>(
        &self,
        change: &mut Change<'_, R>,
    ) -> Result<(keys::ApiKey, instances::Instance), Refusal> {
        let presented = &self.actor.key;
        let now = change.at();
        let client_ip = self.origin.client_ip;
        let found =
            match keys::lock_by_digest(change.db(), presented.digest().as_bytes(), now).await? {
                Some(key) if matches!(key.status.as_str(), "active" | "rotating") => {
                    instances::lock(change.db(), key.instance_id)
                        .await?
                        .filter(|instance| instance.status == "active")
                        .filter(|instance| from_allowed_network(instance, client_ip))
                        .map(|instance| (key, instance))
                }
                _ => None,
            };
        let (key, instance) = found.ok_or_else(|| {
            self.state
                .limits
                .note_failure(client_ip, Some(presented.expose()));
            bad_key()
        })?;
        // One runaway key holder cannot flood keys, audit entries, webhooks and
        // stream events: self-service is budgeted per instance.
        self.state.limits.check_self_service(instance.id)?;
        // The holder has shown it has this key: a rotation retried with its
        // predecessor must not take it away (see `retry_rotation`).
        keyplane_store::introspection::touch_keys(change.db(), &[key.id], &[now]).await?;
        change.acting_as(&Actor::ApiKey(key.id));
        Ok((key, instance))
    }

    /// The presented key's metadata: its instance, scopes, expiry and when
    /// it should be rotated.
    pub async fn get_self(&self) -> Result<SelfResponse, Refusal> {
        let now = self.now();
        let mut change = self.change(Apply, &Actor::Anonymous, now).await?;
        let (key, instance) = self.live_key(&mut change).await?;
        let key = view_one(change.db(), key).await?;
        change
            .finish(SelfResponse {
                rotation_due: key.rotation_due_at <= now,
                key,
                instance_name: instance.name,
            })
            .await
    }

    /// Rotates the presented key: answers its successor's secret, once; the
    /// presented key keeps working for the grace window. A key already
    /// rotated is refused (use its successor), unless it is the holder
    /// asking again for its own rotation whose answer it lost.
    pub async fn rotate_self<R: Run>(
        &self,
        run: R,
        input: SelfRotateRequest,
    ) -> Result<R::Answer<CreatedKeyResponse>, Refusal> {
        let grace = rotation::grace_seconds(input.grace_seconds, MAX_HOLDER_GRACE_SECONDS)?;
        let now = self.now();
        let mut change = self.change(run, &Actor::Anonymous, now).await?;
        // Audited with the caller's address, refused or not.
        let (mut old, instance) = self.live_key(&mut change).await?;
        if !instance.self_rotation {
            let refusal = Refusal::Forbidden(
                "this instance's keys may not rotate themselves (self_rotation is off): ask an operator"
                    .to_owned(),
            );
            return Err(refused(change, &old, refusal).await);
        }
        // A plan rotates nothing, so it spends none of the rotation budget.
        if !R::DRY
            && let Err(limited) = self.state.limits.check_self_rotation(instance.id)
        {
            return Err(refused(change, &old, limited.into()).await);
        }
        let replaced = match old.status.as_str() {
            "active" => None,
            _ => {
                let replaced = old.rotated_to;
                old = match retry_rotation(&mut change, &old).await {
                    Ok(old) => old,
                    Err(refusal) => return Err(refused(change, &old, refusal).await),
                };
                replaced
            }
        };
        let rotation = Rotation {
            old: &old,
            grace_seconds: grace,
            by: RotatedBy::Holder,
            replaced,
        };
        let successor = rotation.apply(&mut change, &self.state.settings).await?;
        change.finish(successor).await
    }
}
