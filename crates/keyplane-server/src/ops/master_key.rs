//! `keyplane master-key rotate`: every secret sealed at rest (signing keys'
//! private halves, webhook secrets) re-sealed under the new master key, in
//! one transaction.
//!
//! The new key is `KEYPLANE_MASTER_KEY`, the old one
//! `KEYPLANE_MASTER_KEY_PREVIOUS`: a keyplane given both opens what either
//! sealed and seals with the new one only, so replicas keep working while
//! they are restarted one by one; once all run with the new key, the
//! previous one is removed. A secret neither key opens stops the rotation
//! before anything changes: it was not sealed by this keyplane (a key
//! planted in the database), and re-sealing it would launder it.

use keyplane_store::{signing_keys, webhooks};
use serde_json::json;

use crate::ops::{Apply, Change, Refusal};
use crate::signing::MasterKey;

/// What a rotation re-sealed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resealed {
    /// Signing keys re-sealed.
    pub signing_keys: usize,
    /// Webhook secrets re-sealed.
    pub webhook_secrets: usize,
    /// Secrets already sealed with the new key, left as they were.
    pub already: usize,
}

/// Re-seals every sealed secret under `master`'s own key within `change`,
/// audited as `master_key.rotate`.
pub async fn reseal(
    change: &mut Change<'_, Apply>,
    master: &MasterKey,
) -> Result<Resealed, Refusal> {
    let mut done = Resealed::default();
    let mut unopened = Vec::new();
    let internal = |err: anyhow::Error| Refusal::Internal(err);

    for key in signing_keys::lock_all(change.db()).await? {
        let context = key.kid.as_bytes();
        if master.sealed_it(&key.sealed_private_key, context) {
            done.already += 1;
            continue;
        }
        match master.open(&key.sealed_private_key, context) {
            Some(plain) => {
                let sealed = master.seal(&plain, context).map_err(internal)?;
                signing_keys::reseal(change.db(), &key.kid, &sealed).await?;
                done.signing_keys += 1;
            }
            None => unopened.push(format!("signing key {}", key.kid)),
        }
    }
    let context = crate::webhooks::SEAL_CONTEXT;
    for (id, sealed, previous) in webhooks::lock_sealed_secrets(change.db()).await? {
        let ours = |sealed: &[u8]| master.sealed_it(sealed, context);
        if ours(&sealed) && previous.as_deref().is_none_or(ours) {
            done.already += 1;
            continue;
        }
        let resealed = |sealed: &[u8]| {
            master
                .open(sealed, context)
                .map(|plain| master.seal(&plain, context))
        };
        match (resealed(&sealed), previous.as_deref().map(resealed)) {
            (Some(current), None) => {
                webhooks::reseal_secret(change.db(), id, &current.map_err(internal)?, None).await?;
                done.webhook_secrets += 1;
            }
            (Some(current), Some(Some(previous))) => {
                let previous = previous.map_err(internal)?;
                webhooks::reseal_secret(
                    change.db(),
                    id,
                    &current.map_err(internal)?,
                    Some(&previous),
                )
                .await?;
                done.webhook_secrets += 1;
            }
            _ => unopened.push(format!("webhook {id}'s secret")),
        }
    }
    if !unopened.is_empty() {
        return Err(Refusal::Conflict(format!(
            "{} open with neither KEYPLANE_MASTER_KEY nor KEYPLANE_MASTER_KEY_PREVIOUS, so this \
             keyplane did not seal them (or the previous key is wrong); nothing was changed",
            unopened.join(", ")
        )));
    }
    change
        .audit(
            "master_key.rotate",
            "master_key",
            "master_key",
            json!({
                "signing_keys": done.signing_keys,
                "webhook_secrets": done.webhook_secrets,
                "already_sealed_with_the_new_key": done.already,
            }),
        )
        .await?;
    Ok(done)
}
