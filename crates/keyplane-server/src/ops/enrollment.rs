//! Enrollment: operators mint short-lived `kpe_` tokens; a new instance
//! spends one to register itself and receive its first key, so no one copies
//! a key by hand.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{KeyKind, KeySecret, Permission, ScopeSet};
use keyplane_store::{enrollment, instances, keys};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ops::instances::{InstanceResponse, new_instance_row};
use crate::ops::keys::{
    CreatedKeyResponse, grants, known_roles, new_key_row, new_secret, policy_expiry, rotate_after,
    view_one,
};
use crate::ops::{Actor, Enrollee, Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};

page_type!(EnrollmentTokenPage, EnrollmentTokenResponse);

/// The most instances one token may enroll.
const MAX_USES: i32 = 1000;
/// A token lives an hour unless asked otherwise, and never more than a week.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
const MAX_TOKEN_SECONDS: i64 = 7 * 86_400;
const LIST: &str = "enrollment-tokens";

/// Mints an enrollment token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentTokenRequest {
    /// A name for people.
    pub name: String,
    /// Scopes of each enrolled instance's first key.
    pub scopes: Option<Vec<String>>,
    /// Roles of that key.
    pub roles: Option<Vec<String>>,
    /// Labels each enrolled instance gets (its own labels are added).
    pub labels: Option<BTreeMap<String, String>>,
    /// The enrolled instances' ceiling; by default the scopes plus the roles' scopes.
    pub allowed_scopes: Option<Vec<String>>,
    /// Lifetime of the first key, in seconds (default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
    pub key_expires_in: Option<i64>,
    /// The first key's rotation policy, in seconds.
    pub rotate_after: Option<i64>,
    /// How many instances may enroll with it (default 1, at most 1000).
    pub uses: Option<i32>,
    /// How long the token works, in seconds (default 3600, at most a week).
    pub expires_in: Option<i64>,
}

/// An enrollment token's metadata; the token itself is shown only once.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenResponse {
    /// Its id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// The token, masked.
    #[schema(example = "kpe_…3b7a")]
    pub masked_token: String,
    /// Scopes of the first key.
    pub scopes: Vec<String>,
    /// Roles of the first key.
    pub roles: Vec<String>,
    /// Labels of the enrolled instances.
    pub labels: serde_json::Value,
    /// The enrolled instances' ceiling.
    pub allowed_scopes: Vec<String>,
    /// Lifetime of the first key, in seconds.
    pub key_expires_in: i64,
    /// The first key's rotation policy, in seconds.
    pub rotate_after: Option<i64>,
    /// How many instances it may enroll in all.
    pub uses: i32,
    /// How many more.
    pub uses_left: i32,
    /// `active`, `spent`, `expired` or `revoked`.
    pub status: String,
    /// When it was minted.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A token just minted: its metadata and, this once, the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentTokenResponse {
    /// The token's metadata.
    #[serde(flatten)]
    pub token: EnrollmentTokenResponse,
    /// The whole token. Shown only in this response.
    pub secret: String,
    /// Anything keyplane changed from what was asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Registers the calling instance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The instance's unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Its own labels, added to the token's.
    pub labels: Option<BTreeMap<String, String>>,
}

/// The enrolled instance and its first key, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolledResponse {
    /// The instance just registered.
    pub instance: InstanceResponse,
    /// Its first key, `secret` included.
    #[serde(flatten)]
    pub key: CreatedKeyResponse,
}

/// The refusal of a token that is not a live one.
pub fn bad_token() -> Refusal {
    Refusal::Unauthenticated {
        code: "invalid_enrollment_token",
        detail: "send a live enrollment token as Authorization: Bearer kpe_…",
    }
}

fn view(row: enrollment::EnrollmentToken, now: DateTime<Utc>) -> EnrollmentTokenResponse {
    let status = if row.revoked_at.is_some() {
        "revoked"
    } else if row.uses_left == 0 {
        "spent"
    } else if row.expires_at <= now {
        "expired"
    } else {
        "active"
    };
    EnrollmentTokenResponse {
        id: row.id,
        name: row.name,
        masked_token: row.masked,
        scopes: row.scopes,
        roles: row.roles,
        labels: row.labels.0,
        allowed_scopes: row.allowed_scopes,
        key_expires_in: row.key_lifetime_seconds,
        rotate_after: row.rotate_after_seconds,
        uses: row.uses_total,
        uses_left: row.uses_left,
        status: status.to_owned(),
        created_at: row.created_at,
        expires_at: row.expires_at,
    }
}

impl Ops<Operator> {
    /// Mints an enrollment token (`kpe_…`), shown in the answer only.
    pub async fn create_enrollment_token<R: Run>(
        &self,
        run: R,
        input: CreateEnrollmentTokenRequest,
    ) -> Result<R::Answer<CreatedEnrollmentTokenResponse>, Refusal> {
        self.actor.require(Permission::EnrollmentWrite)?;
        let settings = &self.state.settings;
        let name = input::name("name", &input.name)?;
        let defined = self.defined_scopes().await?;
        let (scopes, role_names) = grants(input.scopes, input.roles, &defined)?;
        let labels = input::labels(input.labels)?;
        let uses = input.uses.unwrap_or(1);
        if !(1..=MAX_USES).contains(&uses) {
            return Err(Refusal::invalid(
                "uses",
                format!("uses must be between 1 and {MAX_USES}"),
            ));
        }
        let token_seconds = input.expires_in.unwrap_or(DEFAULT_TOKEN_SECONDS);
        if !(1..=MAX_TOKEN_SECONDS).contains(&token_seconds) {
            return Err(Refusal::invalid(
                "expires_in",
                format!("expires_in must be between 1 and {MAX_TOKEN_SECONDS} seconds"),
            ));
        }
        let rotate_after = rotate_after(settings, input.rotate_after)?;
        let now = self.now();
        let (key_expires_at, warnings) =
            policy_expiry(settings, now, input.key_expires_in, None)
                .map_err(|err| err.renamed("expires_in", "key_expires_in"))?;

        let mut change = self.begin(run, now).await?;
        let found = known_roles(change.db(), &role_names).await?;
        let ceiling = match &input.allowed_scopes {
            Some(allowed) => {
                let ceiling = input::scopes("allowed_scopes", allowed, &defined)?;
                if let Some(outside) = scopes.outside(&ceiling).first() {
                    return Err(Refusal::policy(
                        "scopes",
                        format!("scope {outside} is outside allowed_scopes"),
                    ));
                }
                ceiling.to_strings()
            }
            None => {
                let mut all = scopes.to_strings();
                all.extend(found.iter().flat_map(|r| r.scopes.iter().cloned()));
                all.sort();
                all.dedup();
                all
            }
        };
        let secret =
            KeySecret::generate(KeyKind::Enrollment).map_err(|e| Refusal::Internal(e.into()))?;
        let created_by = change.actor().to_owned();
        let row = enrollment::insert(
            change.db(),
            &enrollment::EnrollmentToken {
                id: Uuid::new_v4(),
                name: name.into_string(),
                digest: secret.digest().as_bytes().to_vec(),
                masked: secret.masked(),
                scopes: scopes.to_strings(),
                roles: role_names,
                labels: sqlx::types::Json(labels),
                allowed_scopes: ceiling,
                key_lifetime_seconds: (key_expires_at - now).num_seconds(),
                rotate_after_seconds: rotate_after,
                uses_total: uses,
                uses_left: uses,
                created_by,
                created_at: now,
                expires_at: now + Duration::seconds(token_seconds),
                revoked_at: None,
            },
        )
        .await?;
        change
            .audit(
                "enrollment_token.create",
                "enrollment_token",
                row.id,
                json!({
                    "masked": row.masked,
                    "scopes": row.scopes,
                    "roles": row.roles,
                    "uses": row.uses_total,
                    "expires_at": row.expires_at,
                }),
            )
            .await?;
        change
            .finish(CreatedEnrollmentTokenResponse {
                token: view(row, now),
                secret: secret.expose().to_owned(),
                warnings,
            })
            .await
    }

    /// A page of enrollment tokens (never the tokens themselves).
    pub async fn list_enrollment_tokens(
        &self,
        page: PageParams,
    ) -> Result<EnrollmentTokenPage, Refusal> {
        self.actor.require(Permission::KeysRead)?;
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        let (rows, next) = enrollment::list(self.state.db.pool(), after, limit).await?;
        let now = self.now();
        Ok(EnrollmentTokenPage {
            items: rows.into_iter().map(|row| view(row, now)).collect(),
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// Revokes an enrollment token: no further instance can enroll with it.
    pub async fn revoke_enrollment_token<R: Run>(
        &self,
        run: R,
        id: Uuid,
    ) -> Result<R::Answer<EnrollmentTokenResponse>, Refusal> {
        self.actor.require(Permission::EnrollmentWrite)?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let row = enrollment::revoke(change.db(), id, now)
            .await?
            .ok_or_else(|| Refusal::NotFound("no enrollment token with this id".to_owned()))?;
        change
            .audit(
                "enrollment_token.revoke",
                "enrollment_token",
                id,
                json!({ "masked": row.masked }),
            )
            .await?;
        change.finish(view(row, now)).await
    }
}

impl Ops<Enrollee> {
    /// Spends one use of the enrollment token to register the instance and
    /// issue its first key, shown in the answer only. A spent, expired or
    /// revoked token is refused; of two instances racing for a token's last
    /// use, one wins.
    pub async fn enroll<R: Run>(
        &self,
        run: R,
        input: EnrollRequest,
    ) -> Result<R::Answer<EnrolledResponse>, Refusal> {
        let token = &self.actor.token;
        let name = input::name("name", &input.name)?;
        let description = input::description(input.description)?;
        let own_labels = input::labels(input.labels)?;
        let now = self.now();

        let mut change = self.change(run, &Actor::Anonymous, now).await?;
        // One use spent under the row lock; if anything below fails, the
        // transaction rolls back and the use is not lost.
        let Some(spent) = enrollment::spend(change.db(), token.digest().as_bytes(), now).await?
        else {
            self.state
                .limits
                .note_failure(self.origin.client_ip, Some(token.expose()));
            return Err(bad_token());
        };
        // From here on, the token is who acts.
        change.acting_as(&Actor::EnrollmentToken(spent.id));
        // The instance's own labels are added; the operator's (the token's) win
        // a clash, and together they stay within the label limit.
        let mut labels: HashMap<String, serde_json::Value> = match own_labels {
            serde_json::Value::Object(own) => own.into_iter().collect(),
            _ => HashMap::new(),
        };
        labels.extend(
            serde_json::from_value::<HashMap<String, serde_json::Value>>(spent.labels.0.clone())
                .unwrap_or_default(),
        );
        if labels.len() > input::MAX_LIST {
            return Err(Refusal::invalid(
                "labels",
                format!(
                    "with the enrollment token's, at most {} labels",
                    input::MAX_LIST
                ),
            ));
        }
        let instance = instances::insert(
            change.db(),
            // An enrolled instance is one that looks after its own key.
            &new_instance_row(
                name.into_string(),
                description,
                json!(labels),
                spent.allowed_scopes.clone(),
                now,
            ),
        )
        .await?;
        let secret = new_secret()?;
        let key = keys::ApiKey {
            scopes: ScopeSet::from_trusted(&spent.scopes).to_strings(),
            roles: spent.roles.clone(),
            rotate_after_seconds: spent.rotate_after_seconds,
            ..new_key_row(
                instance.id,
                "enrolled".to_owned(),
                &secret,
                now,
                now + Duration::seconds(spent.key_lifetime_seconds),
            )
        };
        change.concerns_new(key.id, instance.id);
        let key = keys::insert(change.db(), &key, now).await?;
        change
            .audit(
                "instance.enroll",
                "instance",
                instance.id,
                json!({
                    "name": instance.name,
                    "key_id": key.id,
                    "masked": key.masked,
                    "token": spent.masked,
                    "uses_left": spent.uses_left,
                }),
            )
            .await?;
        let key = view_one(change.db(), key).await?;
        change
            .finish(EnrolledResponse {
                instance: instance.into(),
                key: CreatedKeyResponse {
                    key,
                    secret: secret.expose().to_owned(),
                    warnings: Vec::new(),
                },
            })
            .await
    }
}
