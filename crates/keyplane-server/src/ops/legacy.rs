//! Migration off static keys: the `apiKeys` a Cortex node kept in plain
//! text become *legacy* keys of an instance, hashed like every key and
//! short-lived, so that nodes keep working while operators hand out `kpi_`
//! keys in their place (a rotation does it key by key).

use std::fmt;

use chrono::Duration;
use keyplane_domain::{InstanceKey, LegacyKey, Permission, ScopeSet, format_duration};
use keyplane_store::keys;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ops::keys::{
    KeyResponse, Lifetime, check_grants, expiry_within, grants, lock_issuing, new_key_row, summary,
    view_one,
};
use crate::ops::{Operator, Ops, Refusal, Run, input};

/// The most keys one import registers.
pub const MOST_KEYS: usize = 100;

/// Registers static keys from before keyplane as legacy keys of an instance.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportLegacyKeysRequest {
    /// The keys as the old nodes accept them: 1 to 100, each 8 to 256
    /// visible ASCII characters. keyplane keeps only their hashes; a key
    /// given twice is registered once.
    pub keys: Vec<String>,
    /// A name for people (default `legacy`); with several keys, each is
    /// numbered (`legacy 1`, `legacy 2`, ...).
    pub name: Option<String>,
    /// Scopes, within the instance's ceiling. With neither scopes nor
    /// roles, the keys get the whole ceiling, as a static key could do
    /// everything the node served.
    pub scopes: Option<Vec<String>>,
    /// Roles whose scopes the keys also get.
    pub roles: Option<Vec<String>>,
    /// Node ids or names that may accept them; empty means any node.
    pub audience: Option<Vec<String>>,
    /// Lifetime in seconds (default and maximum: KEYPLANE_LEGACY_KEY_LIFETIME,
    /// 30 days, never more than KEYPLANE_MAX_KEY_LIFETIME).
    pub expires_in: Option<i64>,
}

impl fmt::Debug for ImportLegacyKeysRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportLegacyKeysRequest")
            .field("keys", &format_args!("[{} hidden]", self.keys.len()))
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The legacy keys registered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedKeysResponse {
    /// Their metadata, masked (`legacy…` and at most the last four
    /// characters of a long key); no secret, the caller has them.
    pub items: Vec<KeyResponse>,
    /// What to know: keys given twice, or legacy keys not accepted yet
    /// (KEYPLANE_ACCEPT_LEGACY_KEYS off).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The keys given, read and deduplicated; a bad one is named by its index,
/// never by its text.
fn legacy_keys(texts: &[String]) -> Result<(Vec<InstanceKey>, usize), Refusal> {
    if texts.is_empty() || texts.len() > MOST_KEYS {
        return Err(Refusal::invalid(
            "keys",
            format!("give 1 to {MOST_KEYS} keys"),
        ));
    }
    let mut found: Vec<InstanceKey> = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let key = LegacyKey::parse(text).map_err(|_| {
            Refusal::invalid(
                format!("keys[{index}]"),
                format!(
                    "a legacy key is {} to {} visible ASCII characters and does not start \
                     with a keyplane prefix (kpi_ keys need no import)",
                    LegacyKey::MIN_LEN,
                    LegacyKey::MAX_LEN
                ),
            )
        })?;
        if !found.iter().any(|seen| seen.digest() == key.digest()) {
            found.push(InstanceKey::Legacy(key));
        }
    }
    let repeated = texts.len() - found.len();
    Ok((found, repeated))
}

impl Ops<Operator> {
    /// Registers static keys as legacy keys of an instance: hashed, marked
    /// legacy, living at most KEYPLANE_LEGACY_KEY_LIFETIME. A key some key
    /// already has is refused (nothing is registered), as is a suspended
    /// or unknown instance.
    pub async fn import_legacy_keys<R: Run>(
        &self,
        run: R,
        instance_id: Uuid,
        input: ImportLegacyKeysRequest,
    ) -> Result<R::Answer<ImportedKeysResponse>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        let settings = &self.state.settings;
        let (found, repeated) = legacy_keys(&input.keys)?;
        let name = input::name("name", input.name.as_deref().unwrap_or("legacy"))?;
        let whole_ceiling = input.scopes.is_none() && input.roles.is_none();
        let (scopes, role_names) = match whole_ceiling {
            true => (ScopeSet::default(), Vec::new()),
            false => grants(input.scopes, input.roles, &self.defined_scopes().await?)?,
        };
        let now = self.now();
        let most = Lifetime {
            max: settings.legacy_key_lifetime,
            setting: "KEYPLANE_LEGACY_KEY_LIFETIME",
        };
        let (expires_at, mut warnings) =
            expiry_within(settings.mode, most, now, input.expires_in, None)?;
        if repeated > 0 {
            warnings.push(format!(
                "{repeated} keys were given twice and registered once"
            ));
        }
        let weak = found
            .iter()
            .filter(|key| matches!(key, InstanceKey::Legacy(legacy) if legacy.weak()))
            .count();
        if weak > 0 {
            warnings.push(format!(
                "{weak} keys are shorter than 16 characters: easy to guess, so rotate them first"
            ));
        }
        if !settings.accept_legacy_keys {
            warnings.push(
                "legacy keys are not accepted until KEYPLANE_ACCEPT_LEGACY_KEYS=true, here and \
                 at the nodes"
                    .to_owned(),
            );
        }

        let mut change = self.begin(run, now).await?;
        let instance = lock_issuing(change.db(), instance_id).await?;
        let scopes = match whole_ceiling {
            true => ScopeSet::from_trusted(&instance.allowed_scopes),
            false => scopes,
        };
        if scopes.is_empty() && role_names.is_empty() {
            return Err(Refusal::invalid(
                "scopes",
                "the instance's allowed_scopes are empty: give scopes or roles",
            ));
        }
        let audience = check_grants(
            change.db(),
            &instance,
            &scopes,
            &role_names,
            input.audience.as_deref().unwrap_or_default(),
        )
        .await?;
        let digests: Vec<Vec<u8>> = found
            .iter()
            .map(|key| key.digest().as_bytes().to_vec())
            .collect();
        let taken = keys::digests_taken(change.db(), &digests).await?;
        if let Some(index) = digests.iter().position(|d| taken.contains(d)) {
            return Err(Refusal::Conflict(format!(
                "legacy key {} ({}) is already registered; nothing was imported",
                index + 1,
                found[index].masked()
            )));
        }

        let numbered = found.len() > 1;
        let mut items = Vec::with_capacity(found.len());
        for (index, key) in found.iter().enumerate() {
            let name = match numbered {
                true => format!("{name} {}", index + 1),
                false => name.to_string(),
            };
            let row = keys::ApiKey {
                scopes: scopes.to_strings(),
                roles: role_names.clone(),
                audience: audience.clone(),
                ..new_key_row(instance_id, name, key, now, expires_at)
            };
            change.concerns_new(row.id, instance_id);
            let row = keys::insert(change.db(), &row, now).await?;
            change
                .audit(
                    "key.import",
                    "api_key",
                    row.id,
                    json!({ "after": summary(&row), "source": "legacy" }),
                )
                .await?;
            items.push(view_one(change.db(), row).await?);
        }
        tracing::info!(
            instance = %instance_id,
            keys = items.len(),
            lives = %format_duration(
                (expires_at - now).max(Duration::zero()).to_std().unwrap_or_default()
            ),
            "legacy keys imported"
        );
        change
            .finish(ImportedKeysResponse { items, warnings })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_deduplicated_and_named_by_index_never_by_text() {
        let texts = vec![
            "cortex-key-one-1234".to_owned(),
            "cortex-key-two-5678".to_owned(),
            "cortex-key-one-1234".to_owned(),
        ];
        let (found, repeated) = legacy_keys(&texts).unwrap();
        assert_eq!((found.len(), repeated), (2, 1));

        let bad = vec!["cortex-key-one-1234".to_owned(), "short".to_owned()];
        let Err(Refusal::Invalid { field, detail }) = legacy_keys(&bad) else {
            panic!("a short key must be refused");
        };
        assert_eq!(field, "keys[1]");
        assert!(!detail.contains("short"));
        assert!(legacy_keys(&[]).is_err());
        assert!(legacy_keys(&vec!["cortex-key-one-1234".to_owned(); MOST_KEYS + 1]).is_err());
    }

    #[test]
    fn the_request_never_prints_its_keys() {
        let request = ImportLegacyKeysRequest {
            keys: vec!["cortex-secret-key-9999".to_owned()],
            name: None,
            scopes: None,
            roles: None,
            audience: None,
            expires_in: None,
        };
        let printed = format!("{request:?}");
        assert!(!printed.contains("cortex-secret"), "{printed}");
        assert!(printed.contains("1 hidden"));
    }
}
