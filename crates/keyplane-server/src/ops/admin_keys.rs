//! Operators' keys, one management role each.

use chrono::{DateTime, Utc};
use keyplane_domain::{KeyKind, KeySecret, ManagementRole, Name, Permission};
use keyplane_store::admin_keys;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::Event;
use crate::ops::keys::{RevokeKeyRequest, policy_expiry, reason};
use crate::ops::{Change, Credential, Operator, Ops, Refusal, Run, input};
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
    /// When it was last used.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<admin_keys::AdminKey> for AdminKeyResponse {
    fn from(row: admin_keys::AdminKey) -> Self {
        AdminKeyResponse {
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

/// Makes and stores an admin key, audited, within `change`; the API and
/// `keyplane admin-key create` both make them this way.
pub async fn issue<R: Run>(
    change: &mut Change<'_, R>,
    name: &Name,
    role: ManagementRole,
    expires_at: DateTime<Utc>,
) -> Result<(admin_keys::AdminKey, KeySecret), Refusal> {
    let secret = KeySecret::generate(KeyKind::Admin).map_err(|e| Refusal::Internal(e.into()))?;
    let row = admin_keys::AdminKey {
        id: Uuid::new_v4(),
        name: name.as_str().to_owned(),
        role: role.as_str().to_owned(),
        digest: secret.digest().as_bytes().to_vec(),
        masked: secret.masked(),
        created_by: change.actor().to_owned(),
        created_at: change.at(),
        expires_at,
        revoked_at: None,
        revoked_reason: None,
        last_used_at: None,
    };
    let row = admin_keys::insert(change.db(), &row).await?;
    change
        .audit(
            "admin_key.create",
            "admin_key",
            row.id,
            json!({ "name": row.name, "role": row.role, "masked": row.masked, "expires_at": row.expires_at }),
        )
        .await?;
    change.publish(Event::AdminKeys);
    change.credential(secret.digest().as_bytes(), Credential::Admin, true);
    Ok((row, secret))
}

impl Ops<Operator> {
    /// Creates an admin key; the key is in the answer only.
    pub async fn create_admin_key<R: Run>(
        &self,
        run: R,
        input: CreateAdminKeyRequest,
    ) -> Result<R::Answer<CreatedAdminKeyResponse>, Refusal> {
        self.actor.require(Permission::AdminKeysWrite)?;
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

    /// Revokes an admin key.
    pub async fn revoke_admin_key<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RevokeKeyRequest,
    ) -> Result<R::Answer<AdminKeyResponse>, Refusal> {
        self.actor.require(Permission::AdminKeysWrite)?;
        let reason = reason(input.reason)?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let row = admin_keys::revoke(change.db(), id, reason.as_deref(), now)
            .await?
            .ok_or_else(|| Refusal::NotFound("no admin key with this id".to_owned()))?;
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
