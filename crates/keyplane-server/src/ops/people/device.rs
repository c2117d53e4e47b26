//! A terminal's sign-in (RFC 8628): it gets a device code and a user code,
//! a person approves it in a browser with a fresh MFA sign-in, and the
//! terminal, polling, collects a session of its own, once.

use chrono::{DateTime, Duration, Utc};
use keyplane_domain::ManagementRole;
use keyplane_store::people::{self, DeviceGrant};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{identity_provider, person, random_text, refused, sha256};
use crate::oidc::Identity;
use crate::ops::{Actor, Apply, Ops, Refusal, Visitor};

/// How long a terminal's device code waits for a person.
const DEVICE_CODE_TTL: i64 = 600;
/// How often a terminal may poll, at first.
const DEVICE_INTERVAL: i32 = 5;
/// The letters of user codes: no vowels (no words), none that look alike.
const USER_CODE_LETTERS: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A terminal's device authorization (RFC 8628 §3.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceAuthorization {
    /// What the terminal polls `/v1/auth/token` with; a secret.
    pub device_code: String,
    /// What the person checks (or types) in the browser.
    #[schema(example = "BDFG-HJKL")]
    pub user_code: String,
    /// Where the person goes.
    pub verification_uri: String,
    /// The same, with the code filled in.
    pub verification_uri_complete: String,
    /// Seconds until the codes expire.
    pub expires_in: i64,
    /// Seconds to wait between polls.
    pub interval: i32,
}

/// A terminal's token.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceToken {
    /// The session token (`kps_…`); a bearer credential.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
}

/// Why a terminal has no token yet (RFC 8628 §3.5, RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceWait {
    /// Nobody has approved it yet.
    AuthorizationPending,
    /// It polls too often; its interval grew.
    SlowDown,
    /// The device code has expired.
    ExpiredToken,
    /// The person was refused (no MFA, no role).
    AccessDenied,
    /// The device code is not one keyplane gave, or was spent.
    InvalidGrant,
}

impl DeviceWait {
    /// The OAuth error code.
    pub fn code(self) -> &'static str {
        match self {
            DeviceWait::AuthorizationPending => "authorization_pending",
            DeviceWait::SlowDown => "slow_down",
            DeviceWait::ExpiredToken => "expired_token",
            DeviceWait::AccessDenied => "access_denied",
            DeviceWait::InvalidGrant => "invalid_grant",
        }
    }

    /// What it means, for people reading the terminal.
    pub fn description(self) -> &'static str {
        match self {
            DeviceWait::AuthorizationPending => "waiting for the person to sign in",
            DeviceWait::SlowDown => "polling too often: wait longer between requests",
            DeviceWait::ExpiredToken => "the device code expired: start again",
            DeviceWait::AccessDenied => "the sign-in was refused",
            DeviceWait::InvalidGrant => "the device code is unknown or already used",
        }
    }
}

/// A terminal's answer: its token, or why not yet.
pub type DevicePoll = Result<DeviceToken, DeviceWait>;

/// The user code as typed: letters only, in upper case.
pub fn normalize_user_code(typed: &str) -> String {
    typed
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .take(16)
        .collect()
}

/// The user code as shown: `BDFG-HJKL`.
fn show_user_code(code: &str) -> String {
    let (a, b) = code.split_at(code.len() / 2);
    format!("{a}-{b}")
}

impl Ops<Visitor> {
    /// Registers a terminal waiting for a person: its device code (a
    /// secret), the user code the person checks, and where they go.
    pub async fn authorize_device(&self) -> Result<DeviceAuthorization, Refusal> {
        let provider = identity_provider(&self.state)?;
        self.state.limits.check_sign_in(self.origin.client_ip)?;
        let now = self.now();
        let device_code = random_text(32)?;
        let mut letters = [0u8; 8];
        getrandom::fill(&mut letters).map_err(|_| anyhow::anyhow!("the random source failed"))?;
        // 256 = 12.8 * 20: a slight bias, immaterial for a code that lives
        // ten minutes behind a sign-in with MFA.
        let user_code: String = letters
            .iter()
            .map(|b| char::from(USER_CODE_LETTERS[usize::from(*b) % USER_CODE_LETTERS.len()]))
            .collect();
        let mut db = self.state.db.pool().acquire().await?;
        people::insert_device_grant(
            &mut db,
            &DeviceGrant {
                id: Uuid::new_v4(),
                device_code_digest: sha256(&device_code),
                user_code: user_code.clone(),
                status: "pending".to_owned(),
                interval_seconds: DEVICE_INTERVAL,
                created_at: now,
                expires_at: now + Duration::seconds(DEVICE_CODE_TTL),
                last_polled_at: None,
                subject: None,
                email: None,
                role: None,
                authenticated_at: None,
                session_id: None,
                client_ip: self.origin.client_ip.map(|ip| ip.to_string()),
            },
        )
        .await?;
        let verification_uri = format!(
            "{}/v1/auth/device/verify",
            provider.settings().public_origin()
        );
        let shown = show_user_code(&user_code);
        Ok(DeviceAuthorization {
            device_code,
            verification_uri_complete: format!("{verification_uri}?user_code={shown}"),
            verification_uri,
            user_code: shown,
            expires_in: DEVICE_CODE_TTL,
            interval: DEVICE_INTERVAL,
        })
    }

    /// A terminal polls with its device code: once a person approved it,
    /// its token (a session, shown once); until then, why not.
    pub async fn poll_device(&self, device_code: &str) -> Result<DevicePoll, Refusal> {
        let provider = identity_provider(&self.state)?;
        let now = self.now();
        // One transaction from the grant's lock to the session it is spent
        // for: a second poll waits, then finds it spent; a failure leaves
        // it approved, to be collected by the next poll.
        let mut change = self.change(Apply, &Actor::Anonymous, now).await?;
        let Some(mut grant) =
            people::lock_device_grant_by_code(change.db(), &sha256(device_code)).await?
        else {
            return Ok(Err(DeviceWait::InvalidGrant));
        };
        let too_soon = grant
            .last_polled_at
            .is_some_and(|last| now < last + Duration::seconds(i64::from(grant.interval_seconds)));
        grant.last_polled_at = Some(now);
        let wait = match grant.status.as_str() {
            "spent" => Some(DeviceWait::InvalidGrant),
            _ if now >= grant.expires_at => Some(DeviceWait::ExpiredToken),
            "denied" => Some(DeviceWait::AccessDenied),
            "pending" if too_soon => {
                grant.interval_seconds = (grant.interval_seconds + 5).min(60);
                Some(DeviceWait::SlowDown)
            }
            "pending" => Some(DeviceWait::AuthorizationPending),
            _ => None,
        };
        if let Some(wait) = wait {
            people::save_device_grant(change.db(), &grant).await?;
            change.finish(()).await?;
            return Ok(Err(wait));
        }
        let role = grant
            .role
            .as_deref()
            .and_then(|role| role.parse::<ManagementRole>().ok());
        let (Some(subject), Some(role), Some(auth_time)) =
            (grant.subject.clone(), role, grant.authenticated_at)
        else {
            return Err(anyhow::anyhow!("an approved device grant lacks its person").into());
        };
        let identity = Identity {
            subject,
            email: grant.email.clone(),
            amr: Vec::new(),
            acr: None,
            auth_time,
            role_values: Vec::new(),
        };
        let id = Uuid::new_v4();
        change.acting_as(&person(&identity, id));
        let ttl = provider.settings().device_token_ttl;
        let (token, _) = self
            .insert_session(&mut change, id, &identity, role, "device", ttl)
            .await?;
        grant.status = "spent".to_owned();
        grant.session_id = Some(id);
        people::save_device_grant(change.db(), &grant).await?;
        change.finish(()).await?;
        Ok(Ok(DeviceToken {
            access_token: token.expose().to_owned(),
            token_type: "Bearer",
            expires_in: i64::try_from(ttl.as_secs()).unwrap_or(3600),
        }))
    }

    /// The pending device authorization a person typed `code` for.
    pub(super) async fn waiting_device(
        &self,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<DeviceGrant, Refusal> {
        people::device_grant_by_user_code(self.state.db.pool(), &normalize_user_code(code))
            .await?
            .filter(|grant| grant.status == "pending" && now < grant.expires_at)
            .ok_or_else(|| {
                Refusal::invalid(
                    "user_code",
                    "no terminal is waiting for this code: check the code your terminal \
                     shows, or start again there",
                )
            })
    }

    pub(super) async fn approve_device(
        &self,
        id: Uuid,
        identity: &Identity,
        role: ManagementRole,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let mut change = self
            .change(Apply, &person(identity, Uuid::nil()), now)
            .await?;
        let Some(mut grant) = people::lock_device_grant(change.db(), id)
            .await?
            .filter(|grant| grant.status == "pending" && now < grant.expires_at)
        else {
            return Err(refused("the terminal stopped waiting: start again there"));
        };
        grant.status = "approved".to_owned();
        grant.subject = Some(identity.subject.clone());
        grant.email = identity.email.clone();
        grant.role = Some(role.as_str().to_owned());
        grant.authenticated_at = Some(identity.auth_time);
        people::save_device_grant(change.db(), &grant).await?;
        change
            .audit(
                "device.approve",
                "device_authorization",
                id,
                json!({ "role": role.as_str(), "email": identity.email,
                        "terminal_ip": grant.client_ip, "amr": identity.amr }),
            )
            .await?;
        change.finish(()).await
    }

    /// Tells the terminal waiting for `grant` (if any) that the person was refused.
    pub(super) async fn deny_device(&self, grant: Option<Uuid>) -> Result<(), Refusal> {
        let Some(id) = grant else { return Ok(()) };
        let mut tx = self.state.db.pool().begin().await?;
        if let Some(mut grant) = people::lock_device_grant(&mut tx, id).await?
            && grant.status == "pending"
        {
            grant.status = "denied".to_owned();
            people::save_device_grant(&mut tx, &grant).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
