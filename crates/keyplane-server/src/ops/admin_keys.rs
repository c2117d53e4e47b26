//! Operators' keys, one management role each.

use chrono::{DateTime, Utc};
use keyplane_domain::{KeyKind, KeySecret, ManagementRole, Name, Permission};
use keyplane_store::admin_keys;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::Settings;
use crate::events::Event;
use crate::ops::keys::{
    RevokeKeyRequest, RotateKeyRequest, max_lifetime_seconds, policy_expiry, reason,
};
use crate::ops::rotation::{self, MAX_HOLDER_GRACE_SECONDS, RotatedBy};
use crate::ops::self_service::SelfRotateRequest;
use crate::ops::{Actor, Change, Credential, Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};

page_type!(AdminKeyPage, AdminKeyResponse);

/// An admin key's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminKeyResponse {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// Its management role: `admin`, `operator`, `auditor` or `viewer`.
    pub role: String,
    /// The key, masked.
    #[schema(example = "kpa_…c0de")]
    pub masked_key: String,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The key it replaced by a rotation.
    pub rotated_from: Option<Uuid>,
    /// The key that replaced it.
    pub rotated_to: Option<Uuid>,
    /// After a rotation, when it stops working.
    pub grace_until: Option<DateTime<Utc>>,
    /// When its holder should rotate it: four fifths into its life.
    pub rotation_due_at: DateTime<Utc>,
}

impl From<admin_keys::AdminKey> for AdminKeyResponse {
    fn from(row: admin_keys::AdminKey) -> Self {
        AdminKeyResponse {
            rotated_from: row.rotated_from,
            rotated_to: row.rotated_to,
            grace_until: row.grace_until,
            rotation_due_at: rotation::due_at(row.created_at, row.expires_at, None),
            id: row.id,
            name: row.name,
            role: row.role,
            masked_key: row.masked,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            revoked_reason: row.revoked_reason,
            last_used_at: row.last_used_at,
        }
    }
}

/// An admin key just made, with the key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAdminKeyResponse {
    /// The key's metadata.
    #[serde(flatten)]
    pub key: AdminKeyResponse,
    /// The whole key. Shown only in this response.
    pub secret: String,
    /// Anything keyplane changed from what was asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Creates an admin key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminKeyRequest {
    /// A name for people.
    pub name: String,
    /// `admin`, `operator`, `auditor` or `viewer`.
    pub role: String,
    /// Lifetime in seconds (default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
    pub expires_in: Option<i64>,
}

const LIST: &str = "admin-keys";

fn not_found() -> Refusal {
    Refusal::NotFound("no admin key with this id".to_owned())
}

/// Makes and stores an admin key within `change`, known at once as live.
async fn make<R: Run>(
    change: &mut Change<'_, R>,
    name: &str,
    role: &str,
    expires_at: DateTime<Utc>,
    rotated_from: Option<Uuid>,
) -> Result<(admin_keys::AdminKey, KeySecret), Refusal> {
    let secret = KeySecret::generate(KeyKind::Admin).map_err(|e| Refusal::Internal(e.into()))?;
    let row = admin_keys::AdminKey {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        role: role.to_owned(),
        digest: secret.digest().as_bytes().to_vec(),
        masked: secret.masked(),
        created_by: change.actor().to_owned(),
        created_at: change.at(),
        expires_at,
        revoked_at: None,
        revoked_reason: None,
        last_used_at: None,
        grace_until: None,
        rotated_from,
        rotated_to: None,
        rotated_at: None,
        rotated_by: None,
    };
    let row = admin_keys::insert(change.db(), &row).await?;
    change.publish(Event::AdminKeys);
    change.credential(secret.digest().as_bytes(), Credential::Admin, true);
    Ok((row, secret))
}

/// Makes and stores an admin key, audited, within `change`; the API and
/// `keyplane admin-key create` both make them this way.
pub async fn issue<R: Run>(
    change: &mut Change<'_, R>,
    name: &Name,
    role: ManagementRole,
    expires_at: DateTime<Utc>,
) -> Result<(admin_keys::AdminKey, KeySecret), Refusal> {
    let (row, secret) = make(change, name.as_str(), role.as_str(), expires_at, None).await?;
    change
        .audit(
            "admin_key.create",
            "admin_key",
            row.id,
            json!({ "name": row.name, "role": row.role, "masked": row.masked, "expires_at": row.expires_at }),
        )
        .await?;
    Ok((row, secret))
}

/// Issues the successor of `old` (locked within `change`; same name and
/// role, the same lifetime within policy) and keeps `old` working for the
/// grace window, never past its own expiry. `replaced`: an unused successor
/// of an earlier rotation, already revoked to make way. Answers the
/// successor, with its key.
async fn rotate<R: Run>(
    change: &mut Change<'_, R>,
    settings: &Settings,
    old: &admin_keys::AdminKey,
    grace_seconds: i64,
    by: RotatedBy,
    replaced: Option<Uuid>,
) -> Result<CreatedAdminKeyResponse, Refusal> {
    let now = change.at();
    let lifetime = (old.expires_at - old.created_at)
        .min(chrono::Duration::seconds(max_lifetime_seconds(settings)));
    let (successor, secret) =
        make(change, &old.name, &old.role, now + lifetime, Some(old.id)).await?;
    let mut retired = old.clone();
    retired.rotated_to = Some(successor.id);
    retired.grace_until = Some(rotation::grace_until(now, grace_seconds, old.expires_at));
    retired.rotated_at = Some(now);
    retired.rotated_by = Some(by.as_str().to_owned());
    let retired = admin_keys::save(change.db(), &retired).await?;
    if grace_seconds == 0 {
        change.credential(&old.digest, Credential::Admin, false);
    }
    change
        .audit(
            "admin_key.rotate",
            "admin_key",
            old.id,
            json!({
                "masked": old.masked,
                "successor": successor.id,
                "successor_masked": successor.masked,
                "grace_seconds": grace_seconds,
                "grace_until": retired.grace_until,
                "by": by.as_str(),
                "replaced_unused_successor": replaced,
            }),
        )
        .await?;
    Ok(CreatedAdminKeyResponse {
        key: successor.into(),
        secret: secret.expose().to_owned(),
        warnings: Vec::new(),
    })
}

/// Refuses to rotate a key that no longer works or was rotated already.
fn rotatable(key: &admin_keys::AdminKey, now: DateTime<Utc>) -> Result<(), Refusal> {
    if key.revoked_at.is_some() || key.expires_at <= now {
        Err(Refusal::Conflict(
            "this admin key no longer works".to_owned(),
        ))
    } else if key.rotated_to.is_some() {
        Err(rotation::already_rotated())
    } else {
        Ok(())
    }
}

impl Ops<Operator> {
    /// Creates an admin key; the key is in the answer only.
    pub async fn create_admin_key<R: Run>(
        &self,
        run: R,
        input: CreateAdminKeyRequest,
    ) -> Result<R::Answer<CreatedAdminKeyResponse>, Refusal> {
        self.actor.require(Permission::AdminKeysWrite)?;
        self.dangerous::<R>()?;
        let name = input::name("name", &input.name)?;
        let role: ManagementRole =
            input
                .role
                .parse()
                .map_err(|err: keyplane_domain::ManagementRoleError| {
                    Refusal::invalid("role", err.to_string())
                })?;
        let now = self.now();
        let (expires_at, warnings) =
            policy_expiry(&self.state.settings, now, input.expires_in, None)?;

        let mut change = self.begin(run, now).await?;
        let (row, secret) = issue(&mut change, &name, role, expires_at).await?;
        change
            .finish(CreatedAdminKeyResponse {
                key: row.into(),
                secret: secret.expose().to_owned(),
                warnings,
            })
            .await
    }

    /// A page of admin keys' metadata.
    pub async fn list_admin_keys(&self, page: PageParams) -> Result<AdminKeyPage, Refusal> {
        self.actor.require(Permission::AdminKeysRead)?;
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        let (rows, next) = admin_keys::list(self.state.db.pool(), after, limit).await?;
        Ok(AdminKeyPage {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// Rotates an admin key: answers its successor's key once; the old key
    /// keeps working for the grace window. An operator's rotation is final.
    pub async fn rotate_admin_key<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RotateKeyRequest,
    ) -> Result<R::Answer<CreatedAdminKeyResponse>, Refusal> {
        self.actor.require(Permission::AdminKeysWrite)?;
        self.dangerous::<R>()?;
        let settings = &self.state.settings;
        let grace = rotation::grace_seconds(input.grace_seconds, max_lifetime_seconds(settings))?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let old = admin_keys::lock(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        rotatable(&old, now)?;
        let successor = rotate(
            &mut change,
            settings,
            &old,
            grace,
            RotatedBy::Operator,
            None,
        )
        .await?;
        change.finish(successor).await
    }

    /// The calling admin key's own metadata.
    pub async fn get_own_admin_key(&self) -> Result<AdminKeyResponse, Refusal> {
        let id = self.own_key_id()?;
        let row = admin_keys::get(self.state.db.pool(), id)
            .await?
            .ok_or_else(not_found)?;
        Ok(row.into())
    }

    /// The holder of an admin key rotates it, whatever its role: answers the
    /// successor's key once; the presented key works for the grace window.
    /// A key already rotated is refused, unless its holder is asking again
    /// for its own rotation whose answer it lost ([`rotation::may_retry`]).
    pub async fn rotate_own_admin_key<R: Run>(
        &self,
        run: R,
        input: SelfRotateRequest,
    ) -> Result<R::Answer<CreatedAdminKeyResponse>, Refusal> {
        let id = self.own_key_id()?;
        let grace = rotation::grace_seconds(input.grace_seconds, MAX_HOLDER_GRACE_SECONDS)?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let mut old = admin_keys::lock(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        let mut replaced = None;
        if let Some(successor_id) = old.rotated_to {
            let successor = admin_keys::lock(change.db(), successor_id).await?;
            let successor_used = successor
                .as_ref()
                .is_none_or(|s| s.last_used_at.is_some() || s.revoked_at.is_some());
            if let Err(refusal) = rotation::may_retry(
                old.rotated_by.as_deref(),
                old.rotated_at,
                successor_used,
                now,
            ) {
                let details =
                    json!({ "masked": old.masked, "by": "holder", "refused": refusal.to_string() });
                return Err(change
                    .refuse("admin_key.rotate", "admin_key", id, details, refusal)
                    .await);
            }
            if let Some(mut successor) = successor {
                successor.revoked_at = Some(now);
                successor.revoked_reason =
                    Some("replaced: its rotation was asked for again".to_owned());
                admin_keys::save(change.db(), &successor).await?;
                change.credential(&successor.digest, Credential::Admin, false);
                replaced = Some(successor.id);
            }
            old.rotated_to = None;
            old.grace_until = None;
        }
        rotatable(&old, now)?;
        let settings = &self.state.settings;
        let successor = rotate(
            &mut change,
            settings,
            &old,
            grace,
            RotatedBy::Holder,
            replaced,
        )
        .await?;
        change.finish(successor).await
    }

    /// The id of the calling admin key; the bootstrap token has none.
    fn own_key_id(&self) -> Result<Uuid, Refusal> {
        match self.actor.actor {
            Actor::AdminKey(id) => Ok(id),
            _ => Err(Refusal::Conflict(
                "only an admin key has a key of its own to read or rotate (the bootstrap token \
                 is for first setup: create an admin key and remove the token)"
                    .to_owned(),
            )),
        }
    }

    /// Revokes an admin key.
    pub async fn revoke_admin_key<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RevokeKeyRequest,
    ) -> Result<R::Answer<AdminKeyResponse>, Refusal> {
        self.actor.require(Permission::AdminKeysWrite)?;
        self.dangerous::<R>()?;
        let reason = reason(input.reason)?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let row = admin_keys::revoke(change.db(), id, reason.as_deref(), now)
            .await?
            .ok_or_else(not_found)?;
        change
            .audit(
                "admin_key.revoke",
                "admin_key",
                id,
                json!({ "masked": row.masked, "reason": row.revoked_reason }),
            )
            .await?;
        change.publish(Event::AdminKeys);
        change.credential(&row.digest, Credential::Admin, false);
        change.finish(row.into()).await
    }
}
