//! Instance API keys: issue, list, read, rename, disable, rotate, revoke.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{
    InstanceKey, KeyKind, KeySecret, Mode, Permission, RoleName, ScopeSet, effective_scopes,
    format_duration,
};
use keyplane_store::introspection::KeysOf;
use keyplane_store::{instances, keys, nodes, roles};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::Settings;
use crate::events::Event;
use crate::ops::limits::{self, LimitsBody};
use crate::ops::rotation::{self, RotatedBy};
use crate::ops::{Change, Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};

page_type!(KeyPage, KeyResponse);

/// What users see of a key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Works.
    Active,
    /// Switched off; can be switched on again.
    Disabled,
    /// Superseded by a rotation; works until its grace window ends.
    Rotating,
    /// Revoked for good.
    Revoked,
    /// Past its expiry or its grace window.
    Expired,
}

impl KeyStatus {
    /// As the API spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Rotating => "rotating",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }

    fn of(text: &str) -> KeyStatus {
        match text {
            "active" => KeyStatus::Active,
            "disabled" => KeyStatus::Disabled,
            "rotating" => KeyStatus::Rotating,
            "revoked" => KeyStatus::Revoked,
            _ => KeyStatus::Expired,
        }
    }
}

/// An instance key's metadata. The key itself is shown only once, when it is made.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    /// Its id.
    pub id: Uuid,
    /// The instance it belongs to.
    pub instance_id: Uuid,
    /// A name for people.
    pub name: String,
    /// The key, masked: prefix and last four characters.
    #[schema(example = "kpi_…9f2c")]
    pub masked_key: String,
    /// Scopes granted directly.
    pub scopes: Vec<String>,
    /// Roles whose scopes it also gets.
    pub roles: Vec<String>,
    /// Its scopes plus its roles', cut down to the instance's ceiling.
    pub effective_scopes: Vec<String>,
    /// Node ids that may accept it; empty means any node.
    pub audience: Vec<String>,
    /// `active`, `disabled`, `rotating`, `revoked` or `expired`.
    pub status: KeyStatus,
    /// False while disabled.
    pub enabled: bool,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When a node last accepted it.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The key it succeeded.
    pub rotated_from: Option<Uuid>,
    /// The key that succeeded it.
    pub rotated_to: Option<Uuid>,
    /// After a rotation, when it stops working.
    pub grace_until: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Its rotation policy: rotate this many seconds after issue.
    pub rotate_after: Option<i64>,
    /// When its holder should rotate it: `rotate_after` past its issue, and
    /// never later than four fifths into its life (well before it expires).
    pub rotation_due_at: DateTime<Utc>,
    /// Imported from before keyplane (`keyplanectl import cortex`): no
    /// prefix, no checksum, accepted only where KEYPLANE_ACCEPT_LEGACY_KEYS
    /// is on. Rotating it replaces it with a `kpi_` key.
    pub legacy: bool,
    /// Its own rate limits and token budgets (its instance's apply too: the
    /// tighter wins).
    pub limits: LimitsBody,
    /// The models it may use (names, or prefixes ending in `*`); null:
    /// every model its instance allows.
    pub models: Option<Vec<String>>,
}

/// A key just made: its metadata and, this once, the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    /// The key's metadata.
    #[serde(flatten)]
    pub key: KeyResponse,
    /// The whole key. Shown only in this response; keyplane keeps only its hash.
    pub secret: String,
    /// Anything keyplane changed from what was asked (e.g. a capped lifetime).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Issues a key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A name for people.
    pub name: String,
    /// Scopes, each within the instance's ceiling.
    pub scopes: Option<Vec<String>>,
    /// Roles whose scopes the key also gets.
    pub roles: Option<Vec<String>>,
    /// Lifetime in seconds (default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
    pub expires_in: Option<i64>,
    /// Expiry time, instead of `expires_in`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Node ids or names that may accept the key; empty means any node.
    pub audience: Option<Vec<String>>,
    /// Rotation policy: the holder should rotate it this many seconds after
    /// issue (`GET /v1/self` says when; the agent does it). Successors keep it.
    pub rotate_after: Option<i64>,
    /// Rate limits and token budgets (successors keep them).
    pub limits: Option<LimitsBody>,
    /// The models it may use: names, or prefixes ending in `*` (e.g.
    /// `llama3*`); absent: every model its instance allows.
    pub models: Option<Vec<String>>,
}

/// Renames, disables or enables a key, or changes its limits; absent
/// fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// A new name.
    pub name: Option<String>,
    /// False disables the key (reversibly); true enables it again.
    pub enabled: Option<bool>,
    /// New limits, replacing the old ones (`{}`: none). Nodes drop their
    /// cached answer at once (the revocation stream says `changed`).
    pub limits: Option<LimitsBody>,
    /// A new model allow-list; null: every model its instance allows.
    #[serde(default, deserialize_with = "input::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<Option<Vec<String>>>,
}

/// Rotates a key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working, in seconds (default 3600; 0 = stops at once).
    pub grace_seconds: Option<i64>,
}

/// Revokes a key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    /// Why, for the audit log (at most 512 characters).
    pub reason: Option<String>,
}

/// Which keys to list.
#[derive(Debug, Default)]
pub struct KeyFilter {
    /// Only the keys of this instance.
    pub instance_id: Option<Uuid>,
    /// Only keys in this status.
    pub status: Option<KeyStatus>,
    /// Only keys of instances whose labels match this selector.
    pub selector: Option<String>,
    /// Only legacy keys (true) or only `kpi_` keys (false).
    pub legacy: Option<bool>,
    /// Only keys still working and unused this long (`30d`).
    pub idle_for: Option<String>,
}

const LIST: &str = "keys";

fn not_found() -> Refusal {
    Refusal::NotFound("no key with this id".to_owned())
}

/// The longest any key may live, in seconds.
pub(crate) fn max_lifetime_seconds(settings: &Settings) -> i64 {
    i64::try_from(settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX)
}

/// When a new key expires, under the lifetime policy: too long is refused in
/// `prod` and `mixed`, capped with a warning in `dev`; every key expires.
pub fn policy_expiry(
    settings: &Settings,
    now: DateTime<Utc>,
    expires_in: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(DateTime<Utc>, Vec<String>), Refusal> {
    let most = Lifetime {
        max: settings.max_key_lifetime,
        setting: "KEYPLANE_MAX_KEY_LIFETIME",
    };
    expiry_within(settings.mode, most, now, expires_in, expires_at)
}

/// The longest a kind of key may live, and the setting that says so.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetime {
    pub max: std::time::Duration,
    pub setting: &'static str,
}

/// [`policy_expiry`] under the lifetime `most`.
pub(crate) fn expiry_within(
    mode: Mode,
    most: Lifetime,
    now: DateTime<Utc>,
    expires_in: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(DateTime<Utc>, Vec<String>), Refusal> {
    let max_seconds = i64::try_from(most.max.as_secs()).unwrap_or(i64::MAX);
    let (field, seconds) = match (expires_in, expires_at) {
        (Some(_), Some(_)) => {
            return Err(Refusal::invalid(
                "expires_at",
                "give expires_in or expires_at, not both",
            ));
        }
        (Some(seconds), None) if seconds <= 0 => {
            return Err(Refusal::invalid(
                "expires_in",
                "expires_in must be a positive number of seconds",
            ));
        }
        (Some(seconds), None) => ("expires_in", seconds),
        (None, Some(at)) if at <= now => {
            return Err(Refusal::invalid(
                "expires_at",
                "expires_at must be in the future",
            ));
        }
        (None, Some(at)) => ("expires_at", (at - now).num_seconds().max(1)),
        (None, None) => return Ok((now + Duration::seconds(max_seconds), Vec::new())),
    };
    if seconds <= max_seconds {
        return Ok((now + Duration::seconds(seconds), Vec::new()));
    }
    let max = format_duration(most.max);
    if mode != Mode::Dev {
        return Err(Refusal::policy(
            field,
            format!("keys may live at most {max} ({})", most.setting),
        ));
    }
    let warning = format!("{field} exceeds the maximum key lifetime; capped to {max}");
    tracing::warn!(%field, %max, "key lifetime capped (dev mode)");
    Ok((now + Duration::seconds(max_seconds), vec![warning]))
}

/// Turns key rows into what users see, with effective scopes worked out
/// from their roles and their instances' ceilings.
async fn view(
    conn: &mut PgConnection,
    rows: Vec<keys::ApiKey>,
) -> Result<Vec<KeyResponse>, Refusal> {
    let role_scopes: HashMap<String, ScopeSet> = roles::list(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.name, ScopeSet::from_trusted(&r.scopes)))
        .collect();
    let mut instance_ids: Vec<Uuid> = rows.iter().map(|k| k.instance_id).collect();
    instance_ids.dedup();
    let ceilings: HashMap<Uuid, ScopeSet> = instances::ceilings(&mut *conn, &instance_ids)
        .await?
        .into_iter()
        .map(|(id, scopes)| (id, ScopeSet::from_trusted(&scopes)))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let due = rotation_due(&row);
            let own = ScopeSet::from_trusted(&row.scopes);
            let ceiling = ceilings.get(&row.instance_id).cloned().unwrap_or_default();
            let effective = effective_scopes(
                &own,
                row.roles.iter().filter_map(|r| role_scopes.get(r)),
                &ceiling,
            );
            KeyResponse {
                id: row.id,
                instance_id: row.instance_id,
                name: row.name,
                masked_key: row.masked,
                scopes: row.scopes,
                roles: row.roles,
                effective_scopes: effective.to_strings(),
                audience: row.audience,
                status: KeyStatus::of(&row.status),
                enabled: row.enabled,
                created_at: row.created_at,
                expires_at: row.expires_at,
                last_used_at: row.last_used_at,
                rotated_from: row.rotated_from,
                rotated_to: row.rotated_to,
                grace_until: row.grace_until,
                rotation_due_at: due,
                rotate_after: row.rotate_after_seconds,
                revoked_at: row.revoked_at,
                revoked_reason: row.revoked_reason,
                legacy: row.legacy,
                limits: row.limits.0.into(),
                models: row.models,
            }
        })
        .collect())
}

/// One key as users see it.
pub(crate) async fn view_one(
    conn: &mut PgConnection,
    row: keys::ApiKey,
) -> Result<KeyResponse, Refusal> {
    view(conn, vec![row]).await?.pop().ok_or_else(not_found)
}

/// When a key's holder should rotate it (see [`KeyResponse::rotation_due_at`]).
pub fn rotation_due(row: &keys::ApiKey) -> DateTime<Utc> {
    rotation::due_at(row.created_at, row.expires_at, row.rotate_after_seconds)
}

/// A rotation policy: between a second and the longest key lifetime.
pub fn rotate_after(settings: &Settings, seconds: Option<i64>) -> Result<Option<i64>, Refusal> {
    let max_seconds = max_lifetime_seconds(settings);
    match seconds {
        Some(seconds) if !(1..=max_seconds).contains(&seconds) => Err(Refusal::invalid(
            "rotate_after",
            format!("rotate_after must be between 1 and {max_seconds} seconds"),
        )),
        other => Ok(other),
    }
}

/// What a new key is granted: its scopes and role names, checked; a key
/// with neither could do nothing and is refused.
pub fn grants(
    scopes: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    defined: &[String],
) -> Result<(ScopeSet, Vec<String>), Refusal> {
    let scopes = input::scopes("scopes", scopes.as_deref().unwrap_or_default(), defined)?;
    let role_names = roles.unwrap_or_default();
    input::bounded("roles", &role_names)?;
    for (index, role) in role_names.iter().enumerate() {
        RoleName::parse(role)
            .map_err(|err| Refusal::invalid(format!("roles[{index}]"), err.to_string()))?;
    }
    if scopes.is_empty() && role_names.is_empty() {
        return Err(Refusal::invalid(
            "scopes",
            "give scopes and/or roles: a key with neither could do nothing",
        ));
    }
    Ok((scopes, role_names))
}

/// The instance a key is issued for, locked until the change ends (a
/// concurrent decommission cannot slip a key past it): it must be active.
pub(crate) async fn lock_issuing(
    conn: &mut PgConnection,
    instance_id: Uuid,
) -> Result<instances::Instance, Refusal> {
    let instance = instances::lock(conn, instance_id)
        .await?
        .ok_or_else(|| Refusal::NotFound("no instance with this id".to_owned()))?;
    match instance.status.as_str() {
        "active" => Ok(instance),
        "suspended" => Err(Refusal::Conflict("the instance is suspended".to_owned())),
        _ => Err(Refusal::NotFound("no instance with this id".to_owned())),
    }
}

/// Checks what a new key of `instance` is granted: its scopes within the
/// instance's ceiling, its roles existing; answers its audience resolved to
/// node ids.
pub(crate) async fn check_grants(
    conn: &mut PgConnection,
    instance: &instances::Instance,
    scopes: &ScopeSet,
    role_names: &[String],
    audience: &[String],
) -> Result<Vec<String>, Refusal> {
    let ceiling = ScopeSet::from_trusted(&instance.allowed_scopes);
    if let Some(outside) = scopes.outside(&ceiling).first() {
        return Err(Refusal::policy(
            "scopes",
            format!("scope {outside} is outside the instance's allowed_scopes"),
        ));
    }
    known_roles(&mut *conn, role_names).await?;
    resolve_audience(conn, audience).await
}

/// The roles named, each of which must exist (the first that does not is
/// named by its index).
pub async fn known_roles(
    conn: &mut PgConnection,
    names: &[String],
) -> Result<Vec<roles::Role>, Refusal> {
    let found = roles::get_many(&mut *conn, names).await?;
    match names
        .iter()
        .position(|name| !found.iter().any(|role| &role.name == name))
    {
        Some(index) => Err(Refusal::invalid(
            format!("roles[{index}]"),
            "no role with this name",
        )),
        None => Ok(found),
    }
}

/// Resolves audience entries (node ids or names) to the ids of live nodes.
async fn resolve_audience(
    conn: &mut PgConnection,
    entries: &[String],
) -> Result<Vec<String>, Refusal> {
    input::bounded("audience", entries)?;
    let ids: Vec<Uuid> = entries
        .iter()
        .filter_map(|e| Uuid::parse_str(e).ok())
        .collect();
    let names: Vec<String> = entries
        .iter()
        .filter(|e| Uuid::parse_str(e).is_err())
        .cloned()
        .collect();
    let found = nodes::find_live(&mut *conn, &ids, &names).await?;
    let mut resolved = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let node = found
            .iter()
            .find(|n| n.name == *entry || Uuid::parse_str(entry).is_ok_and(|id| id == n.id))
            .ok_or_else(|| {
                Refusal::invalid(
                    format!("audience[{index}]"),
                    "no registered node has this id or name",
                )
            })?;
        let id = node.id.to_string();
        if !resolved.contains(&id) {
            resolved.push(id);
        }
    }
    Ok(resolved)
}

/// A revocation reason: at most 512 characters, no control characters.
pub fn reason(reason: Option<String>) -> Result<Option<String>, Refusal> {
    match reason {
        Some(text) if text.chars().count() > 512 || text.chars().any(char::is_control) => {
            Err(Refusal::invalid(
                "reason",
                "reason must be at most 512 characters, without control characters",
            ))
        }
        other => Ok(other),
    }
}

/// What the audit log keeps of a key: never the key, only its masked form.
pub(crate) fn summary(row: &keys::ApiKey) -> serde_json::Value {
    json!({
        "masked": row.masked,
        "instance_id": row.instance_id,
        "name": row.name,
        "scopes": row.scopes,
        "roles": row.roles,
        "audience": row.audience,
        "enabled": row.enabled,
        "expires_at": row.expires_at,
        "legacy": row.legacy,
        "limits": row.limits.0,
        "models": row.models,
    })
}

/// A new instance key's row, granting nothing yet: the caller sets its
/// scopes, roles, audience and rotation policy.
pub(crate) fn new_key_row(
    instance_id: Uuid,
    name: String,
    secret: &InstanceKey,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> keys::ApiKey {
    keys::ApiKey {
        id: Uuid::new_v4(),
        instance_id,
        name,
        digest: secret.digest().as_bytes().to_vec(),
        masked: secret.masked(),
        scopes: Vec::new(),
        roles: Vec::new(),
        audience: Vec::new(),
        enabled: true,
        created_at,
        expires_at,
        revoked_at: None,
        revoked_reason: None,
        rotated_from: None,
        rotated_to: None,
        grace_until: None,
        rotated_at: None,
        rotated_by: None,
        last_used_at: None,
        rotate_after_seconds: None,
        legacy: matches!(secret, InstanceKey::Legacy(_)),
        limits: sqlx::types::Json(keyplane_domain::Limits::default()),
        models: None,
        status: String::new(),
    }
}

/// A new instance key.
pub(crate) fn new_secret() -> Result<InstanceKey, Refusal> {
    KeySecret::generate(KeyKind::Instance)
        .map(InstanceKey::Keyplane)
        .map_err(|e| Refusal::Internal(e.into()))
}

/// Revokes `key` (locked within `change`) for good: saved, put on the
/// revocation stream and dropped from every cache. Auditing it and telling
/// operators is the caller's, who knows why.
pub(crate) async fn revoke_locked<R: Run>(
    change: &mut Change<'_, R>,
    mut key: keys::ApiKey,
    reason: Option<String>,
) -> Result<keys::ApiKey, Refusal> {
    let now = change.at();
    change.concerns(KeysOf::Ids(&[key.id])).await?;
    key.revoked_at = Some(now);
    key.revoked_reason = reason;
    let key = keys::save(change.db(), &key, now).await?;
    change.revoke(&[key.id], "revoked").await?;
    change.publish(Event::Key { id: key.id });
    change.publish(Event::Revocations);
    Ok(key)
}

/// Revokes `key` (locked within `change`) at an operator's word: revoked
/// as [`revoke_locked`] does, audited (`key.revoke`) and told to webhooks
/// (`key.revoked`).
pub(crate) async fn revoke_announced<R: Run>(
    change: &mut Change<'_, R>,
    key: keys::ApiKey,
    reason: Option<String>,
) -> Result<keys::ApiKey, Refusal> {
    let key = revoke_locked(change, key, reason).await?;
    change
        .audit(
            "key.revoke",
            "api_key",
            key.id,
            json!({ "masked": key.masked, "reason": key.revoked_reason }),
        )
        .await?;
    change
        .notify(
            "key.revoked",
            json!({
                "key_id": key.id,
                "instance_id": key.instance_id,
                "masked_key": key.masked,
                "reason": key.revoked_reason,
            }),
        )
        .await?;
    Ok(key)
}

/// One rotation: the key rotated (whose row lock the change holds), how
/// long it keeps working, and who asked.
pub(crate) struct Rotation<'k> {
    /// The key being rotated.
    pub old: &'k keys::ApiKey,
    /// Seconds it keeps working (never past its own expiry).
    pub grace_seconds: i64,
    /// Who asked.
    pub by: RotatedBy,
    /// An unused successor of an earlier rotation, revoked to make way.
    pub replaced: Option<Uuid>,
}

impl Rotation<'_> {
    /// Issues the successor and marks the old key rotated; audits it and
    /// announces it (a `key.rotated` webhook; with no grace, the old key on
    /// the revocation stream; a replaced earlier successor dropped
    /// everywhere). Answers the successor, with its secret.
    pub(crate) async fn apply<R: Run>(
        &self,
        change: &mut Change<'_, R>,
        settings: &Settings,
    ) -> Result<CreatedKeyResponse, Refusal> {
        let (old, now) = (self.old, change.at());
        let longest = Duration::seconds(max_lifetime_seconds(settings));
        // A legacy key's successor is a `kpi_` key, under the policy for those.
        let lifetime = match old.legacy {
            true => longest,
            false => (old.expires_at - old.created_at).min(longest),
        };
        let secret = new_secret()?;
        let successor_id = Uuid::new_v4();
        change
            .concerns(KeysOf::Ids(&[old.id, successor_id]))
            .await?;
        change.concerns_new(successor_id, old.instance_id);
        let successor = keys::insert(
            change.db(),
            &keys::ApiKey {
                id: successor_id,
                digest: secret.digest().as_bytes().to_vec(),
                masked: secret.masked(),
                created_at: now,
                expires_at: now + lifetime,
                rotated_from: Some(old.id),
                rotated_to: None,
                grace_until: None,
                rotated_at: None,
                rotated_by: None,
                revoked_at: None,
                revoked_reason: None,
                last_used_at: None,
                enabled: true,
                legacy: false,
                ..old.clone()
            },
            now,
        )
        .await?;
        let mut retired = old.clone();
        retired.rotated_to = Some(successor.id);
        retired.grace_until = Some(rotation::grace_until(
            now,
            self.grace_seconds,
            old.expires_at,
        ));
        retired.rotated_at = Some(now);
        retired.rotated_by = Some(self.by.as_str().to_owned());
        keys::save(change.db(), &retired, now).await?;

        change
            .notify(
                "key.rotated",
                json!({
                    "key_id": old.id,
                    "successor_id": successor.id,
                    "instance_id": old.instance_id,
                    "masked_key": old.masked,
                    "grace_seconds": self.grace_seconds,
                }),
            )
            .await?;
        change.publish(Event::Key { id: old.id });
        if let Some(id) = self.replaced {
            change.publish(Event::Key { id });
            change.publish(Event::Revocations);
        }
        if self.grace_seconds == 0 {
            change.revoke(&[old.id], "rotated").await?;
        }
        let mut details = json!({
            "successor": successor.id,
            "grace_seconds": self.grace_seconds,
            "masked": old.masked,
        });
        if self.by == RotatedBy::Holder {
            details["by"] = json!("holder");
            details["replaced_unused_successor"] = json!(self.replaced);
        }
        change
            .audit("key.rotate", "api_key", old.id, details)
            .await?;
        Ok(CreatedKeyResponse {
            key: view_one(change.db(), successor).await?,
            secret: secret.expose().to_owned(),
            warnings: Vec::new(),
        })
    }
}

impl Ops<Operator> {
    /// Issues a key for an instance, within its ceiling and the lifetime
    /// policy; the key is in the answer only.
    pub async fn issue_key<R: Run>(
        &self,
        run: R,
        instance_id: Uuid,
        input: CreateKeyRequest,
    ) -> Result<R::Answer<CreatedKeyResponse>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        let settings = &self.state.settings;
        let name = input::name("name", &input.name)?;
        let (scopes, role_names) =
            grants(input.scopes, input.roles, &self.defined_scopes().await?)?;
        let rotate_after = rotate_after(settings, input.rotate_after)?;
        let limits = limits::limits(input.limits)?;
        let models = limits::models(input.models.as_deref())?;
        let now = self.now();
        let (expires_at, warnings) =
            policy_expiry(settings, now, input.expires_in, input.expires_at)?;

        let mut change = self.begin(run, now).await?;
        let instance = lock_issuing(change.db(), instance_id).await?;
        let audience = check_grants(
            change.db(),
            &instance,
            &scopes,
            &role_names,
            input.audience.as_deref().unwrap_or_default(),
        )
        .await?;

        let secret = new_secret()?;
        let row = keys::ApiKey {
            scopes: scopes.to_strings(),
            roles: role_names,
            audience,
            rotate_after_seconds: rotate_after,
            limits: sqlx::types::Json(limits),
            models,
            ..new_key_row(instance_id, name.into_string(), &secret, now, expires_at)
        };
        change.concerns_new(row.id, instance_id);
        let row = keys::insert(change.db(), &row, now).await?;
        change
            .audit(
                "key.create",
                "api_key",
                row.id,
                json!({ "after": summary(&row) }),
            )
            .await?;
        let key = view_one(change.db(), row).await?;
        change
            .finish(CreatedKeyResponse {
                key,
                secret: secret.expose().to_owned(),
                warnings,
            })
            .await
    }

    /// A page of keys' metadata, by instance and status.
    pub async fn list_keys(&self, filter: KeyFilter, page: PageParams) -> Result<KeyPage, Refusal> {
        self.actor.require(Permission::KeysRead)?;
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        let labels = filter
            .selector
            .as_deref()
            .map(|text| input::selector("selector", text))
            .transpose()?;
        let now = self.now();
        let idle_since = filter
            .idle_for
            .as_deref()
            .map(|text| input::duration("idle_for", text))
            .transpose()?
            .map(|idle| now - idle);
        let mut conn = self.state.db.pool().acquire().await?;
        let list = keys::ListFilter {
            instance_id: filter.instance_id,
            status: filter.status.map(KeyStatus::as_str),
            labels: labels.as_ref(),
            legacy: filter.legacy,
            idle_since,
        };
        let (rows, next) = keys::list(&mut *conn, &list, after, limit, now).await?;
        Ok(KeyPage {
            items: view(&mut conn, rows).await?,
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// One key's metadata.
    pub async fn get_key(&self, id: Uuid) -> Result<KeyResponse, Refusal> {
        self.actor.require(Permission::KeysRead)?;
        let mut conn = self.state.db.pool().acquire().await?;
        let row = keys::get(&mut *conn, id, self.now())
            .await?
            .ok_or_else(not_found)?;
        view_one(&mut conn, row).await
    }

    /// Renames a key, or disables or enables it.
    pub async fn update_key<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: UpdateKeyRequest,
    ) -> Result<R::Answer<KeyResponse>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        let name = input
            .name
            .as_deref()
            .map(|n| input::name("name", n))
            .transpose()?;
        let new_limits = input.limits.map(|l| limits::limits(Some(l))).transpose()?;
        let new_models = input
            .models
            .map(|m| limits::models(m.as_deref()))
            .transpose()?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let before = keys::lock(change.db(), id, now)
            .await?
            .ok_or_else(not_found)?;
        if input.enabled.is_some()
            && matches!(
                KeyStatus::of(&before.status),
                KeyStatus::Revoked | KeyStatus::Expired
            )
        {
            return Err(Refusal::Conflict(format!("the key is {}", before.status)));
        }
        change.concerns(KeysOf::Ids(&[id])).await?;
        let mut after = before.clone();
        if let Some(name) = name {
            after.name = name.into_string();
        }
        if let Some(enabled) = input.enabled {
            after.enabled = enabled;
        }
        if let Some(limits) = new_limits {
            after.limits = sqlx::types::Json(limits);
        }
        if let Some(models) = new_models {
            after.models = models;
        }
        let after = keys::save(change.db(), &after, now).await?;
        change.publish(Event::Key { id });
        if before.enabled && !after.enabled {
            change.revoke(&[id], "disabled").await?;
        } else if before.limits != after.limits || before.models != after.models {
            change.changed(&[id]).await?;
        }
        let action = match (before.enabled, after.enabled) {
            (true, false) => "key.disable",
            (false, true) => "key.enable",
            _ => "key.update",
        };
        change
            .audit(
                action,
                "api_key",
                id,
                json!({ "before": summary(&before), "after": summary(&after) }),
            )
            .await?;
        let key = view_one(change.db(), after).await?;
        change.finish(key).await
    }

    /// Rotates a key: issues its successor (same instance, scopes, roles,
    /// audience and name) and keeps the old key working for the grace window,
    /// never past its own expiry. Of two rotations racing, one wins and the
    /// other is refused.
    pub async fn rotate_key<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RotateKeyRequest,
    ) -> Result<R::Answer<CreatedKeyResponse>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        let grace = rotation::grace_seconds(
            input.grace_seconds,
            max_lifetime_seconds(&self.state.settings),
        )?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        // The row lock makes a second, concurrent rotation wait here and then see
        // the first one's successor.
        let old = keys::lock(change.db(), id, now)
            .await?
            .ok_or_else(not_found)?;
        match KeyStatus::of(&old.status) {
            KeyStatus::Active => {}
            KeyStatus::Rotating => return Err(rotation::already_rotated()),
            other => return Err(Refusal::Conflict(format!("the key is {}", other.as_str()))),
        }
        let rotation = Rotation {
            old: &old,
            grace_seconds: grace,
            by: RotatedBy::Operator,
            replaced: None,
        };
        let successor = rotation.apply(&mut change, &self.state.settings).await?;
        change.finish(successor).await
    }

    /// Revokes a key, for good (a person signed in long ago signs in again
    /// first). Revoking a revoked key changes nothing.
    pub async fn revoke_key<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RevokeKeyRequest,
    ) -> Result<R::Answer<KeyResponse>, Refusal> {
        self.actor.require(Permission::KeysWrite)?;
        self.dangerous::<R>()?;
        let reason = reason(input.reason)?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        let mut key = keys::lock(change.db(), id, now)
            .await?
            .ok_or_else(not_found)?;
        if key.revoked_at.is_some() {
            // Revoking a revoked key changes nothing, yet still tells every
            // cache to drop it: a node that missed the first time hears it now.
            change.publish(Event::Key { id });
            change.publish(Event::Revocations);
        } else {
            key = revoke_announced(&mut change, key, reason).await?;
        }
        let view = view_one(change.db(), key).await?;
        change.finish(view).await
    }
}
