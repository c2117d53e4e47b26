//! People: signing in with the organisation's identity provider, their
//! sessions, and terminals that sign in through a browser (RFC 8628).
//!
//! A sign-in proves MFA (`KEYPLANE_OIDC_REQUIRE_AMR` / `_ACR`) and maps the
//! person's groups to one management role, or it is refused, audited with
//! the subject; it is never downgraded. A session's `kps_` token is shown
//! once (the cookie's value, or a terminal's token) and stored as a hash.
//! Dangerous operations ask for a recent MFA sign-in ([`Ops::step_up`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{KeyDigest, KeyKind, KeySecret, ManagementRole};
use keyplane_store::people::{self, DeviceGrant, Session, SignIn};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::OidcSettings;
use crate::oidc::{Identity, IdentityProvider, OidcError};
use crate::ops::denials::{self, Denial};
use crate::ops::{Actor, Apply, Change, Operator, Ops, Person, Refusal, Run, Visitor};
use crate::pagination::PageParams;
use crate::state::AppState;

/// How long a sign-in may take at the provider.
const SIGN_IN_TTL: i64 = 600;
/// How long a terminal's device code waits for a person.
const DEVICE_CODE_TTL: i64 = 600;
/// How often a terminal may poll, at first.
const DEVICE_INTERVAL: i32 = 5;
/// The letters of user codes: no vowels (no words), none that look alike.
const USER_CODE_LETTERS: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const LIST: &str = "sessions";

/// What a sign-in is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A browser session.
    Login,
    /// A browser session after authenticating again (for a dangerous operation).
    StepUp,
    /// Approving the terminal that shows this user code.
    Device(String),
}

/// A sign-in sent to the provider: where the browser goes, and the PKCE
/// verifier only the browser keeps (in a cookie) to finish it with.
#[derive(Debug)]
pub struct SignInStarted {
    /// The provider's authorization URL.
    pub authorization_url: String,
    /// The PKCE verifier; it finishes the sign-in, so it is a secret.
    pub verifier: String,
}

/// What the provider's answer to a sign-in was.
#[derive(Debug, Default)]
pub struct Callback {
    /// `state`, as the provider sent it back.
    pub state: Option<String>,
    /// The authorization code.
    pub code: Option<String>,
    /// The provider's error, when it refused.
    pub error: Option<String>,
}

/// A finished sign-in.
#[derive(Debug)]
pub enum SignedIn {
    /// A browser session: the cookie's value (shown once) and where to go.
    Browser {
        /// The session token.
        token: KeySecret,
        /// How long the cookie lives.
        max_age: std::time::Duration,
        /// A path on keyplane's origin.
        return_to: String,
    },
    /// A terminal was approved; it picks its token up by polling.
    Device,
}

/// A person's session, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    /// Its id.
    pub id: Uuid,
    /// `browser` (a cookie) or `device` (a terminal's token).
    pub kind: String,
    /// The provider's id for the person.
    pub subject: String,
    /// Their email.
    pub email: Option<String>,
    /// The management role their groups gave.
    pub role: String,
    /// The token, masked.
    #[schema(example = "kps_…9f2c")]
    pub masked_token: String,
    /// When they last signed in with MFA.
    pub authenticated_at: DateTime<Utc>,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to the minute).
    pub last_seen_at: DateTime<Utc>,
    /// When it ends, used or not.
    pub expires_at: DateTime<Utc>,
    /// The address it began from.
    pub client_ip: Option<String>,
    /// The browser or tool it began from.
    pub user_agent: Option<String>,
    /// Whether it is the session of this request.
    pub current: bool,
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// The sessions.
    pub items: Vec<SessionResponse>,
    /// Where the next page starts; null on the last.
    pub next_cursor: Option<String>,
}

/// Who is calling, as the console and the CLI show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The audit log's name for the caller (`oidc:<sub>`, `admin_key:<id>`, ...).
    pub actor: String,
    /// The caller's management role.
    pub role: String,
    /// The person's email, for a person.
    pub email: Option<String>,
    /// The session, for a person.
    pub session_id: Option<Uuid>,
    /// When they last signed in with MFA, for a person.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// Until when dangerous operations need no new sign-in, for a person.
    pub step_up_until: Option<DateTime<Utc>>,
    /// For a browser session: what its changes carry in `X-CSRF-Token`.
    pub csrf_token: Option<String>,
}

/// Whose sessions to end.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeAllRequest {
    /// The person (their `subject`); default: the caller. Only admins may
    /// name someone else (to sign a person out everywhere when they leave).
    pub subject: Option<String>,
}

/// How many sessions ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedSessions {
    /// The person whose sessions ended.
    pub subject: String,
    /// How many were live.
    pub revoked: usize,
}

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

/// Random text for a secret: `bytes` bytes from the OS, base64url.
fn random_text(bytes: usize) -> Result<String, Refusal> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|_| anyhow::anyhow!("the random source failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(buffer))
}

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

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

/// Where a sign-in may send the browser afterwards: a path on keyplane's
/// own origin, never another site.
fn safe_return_to(return_to: Option<&str>) -> Result<String, Refusal> {
    let Some(path) = return_to.filter(|p| !p.is_empty()) else {
        return Ok("/console/".to_owned());
    };
    let ok = path.len() <= 2048
        && path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(path.to_owned())
    } else {
        Err(Refusal::invalid(
            "return_to",
            "expected a path on keyplane's own origin, e.g. /console/",
        ))
    }
}

fn identity_provider(state: &AppState) -> Result<&IdentityProvider, Refusal> {
    state.identity.as_deref().ok_or_else(|| {
        Refusal::NotFound(
            "sign-in with an identity provider is not set up here (KEYPLANE_OIDC_ISSUER)"
                .to_owned(),
        )
    })
}

/// `identity` acting in session `session` (nil while it has none).
fn person(identity: &Identity, session: Uuid) -> Actor {
    Actor::Person(Person {
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        session,
        authenticated_at: identity.auth_time,
    })
}

/// Why a sign-in was refused, as its page says.
fn refused(detail: &str) -> Refusal {
    Refusal::Forbidden(detail.to_owned())
}

/// The role `identity`'s claim values map to: the first entry that matches.
fn role_of(settings: &OidcSettings, identity: &Identity) -> Option<ManagementRole> {
    settings
        .role_map
        .iter()
        .find(|(value, _)| identity.role_values.iter().any(|v| v == value))
        .map(|(_, role)| *role)
}

/// Whether `identity` proves what the settings require.
fn proves_mfa(settings: &OidcSettings, identity: &Identity) -> bool {
    let amr = settings.require_amr.is_empty()
        || settings
            .require_amr
            .iter()
            .any(|wanted| identity.amr.iter().any(|had| had == wanted));
    let acr = settings.require_acr.is_empty()
        || identity
            .acr
            .as_ref()
            .is_some_and(|acr| settings.require_acr.contains(acr));
    amr && acr
}

impl Ops<Visitor> {
    /// Starts a sign-in for `purpose`: answers the provider's URL and the
    /// verifier the browser keeps until it comes back.
    pub async fn begin_sign_in(
        &self,
        purpose: Purpose,
        return_to: Option<&str>,
    ) -> Result<SignInStarted, Refusal> {
        let provider = identity_provider(&self.state)?;
        let settings = provider.settings();
        let return_to = safe_return_to(return_to)?;
        self.state.limits.check_sign_in(self.origin.client_ip)?;
        let now = self.now();
        let device_grant_id = match &purpose {
            Purpose::Device(code) => Some(self.waiting_device(code, now).await?.id),
            _ => None,
        };
        let verifier = random_text(32)?;
        let state = random_text(24)?;
        let nonce = random_text(24)?;
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        // Every sign-in asks for a recent authentication; a step-up, and a
        // terminal's approval, for one made now.
        let max_age = match purpose {
            Purpose::Login => settings.step_up,
            Purpose::StepUp | Purpose::Device(_) => std::time::Duration::ZERO,
        };
        let url = provider
            .authorization_url(&state, &nonce, &challenge, max_age)
            .await
            .map_err(unavailable)?;
        let mut db = self.state.db.pool().acquire().await?;
        people::begin_sign_in(
            &mut db,
            &SignIn {
                verifier_digest: sha256(&verifier),
                state,
                nonce,
                purpose: match purpose {
                    Purpose::Login => "login",
                    Purpose::StepUp => "step_up",
                    Purpose::Device(_) => "device",
                }
                .to_owned(),
                return_to,
                device_grant_id,
                created_at: now,
                expires_at: now + Duration::seconds(SIGN_IN_TTL),
            },
        )
        .await?;
        Ok(SignInStarted {
            authorization_url: url.to_string(),
            verifier,
        })
    }

    /// Finishes a sign-in: the browser's `verifier` (from its cookie) finds
    /// the sign-in it started, once; the provider's answer must carry that
    /// sign-in's `state`, and its ID token that sign-in's nonce, MFA and a
    /// mapped group. `replacing` is the browser's current session, ended
    /// when the same person signs in again.
    pub async fn finish_sign_in(
        &self,
        verifier: Option<&str>,
        callback: Callback,
        replacing: Option<&str>,
    ) -> Result<SignedIn, Refusal> {
        let provider = identity_provider(&self.state)?;
        let settings = provider.settings();
        let now = self.now();
        let Some(verifier) = verifier else {
            return Err(refused(
                "this browser did not start a sign-in (or it took too long): sign in again",
            ));
        };
        let sign_in = people::take_sign_in(self.state.db.pool(), &sha256(verifier))
            .await?
            .filter(|s| now < s.expires_at)
            .ok_or_else(|| {
                refused("this sign-in has expired or was already used: sign in again")
            })?;
        let state = callback.state.unwrap_or_default();
        if KeyDigest::of(&state) != KeyDigest::of(&sign_in.state) {
            self.deny(
                "auth.sign_in_refused",
                None,
                json!({ "reason": "state mismatch" }),
            );
            return Err(refused(
                "the identity provider's answer is not for this sign-in",
            ));
        }
        let outcome = match (callback.code, callback.error) {
            (Some(code), None) => provider
                .finish(&code, verifier, &sign_in.nonce)
                .await
                .map_err(|err| self.provider_refusal(err)),
            (_, error) => {
                let error: String = error
                    .unwrap_or_else(|| "no code".to_owned())
                    .chars()
                    .filter(char::is_ascii_graphic)
                    .take(64)
                    .collect();
                self.deny(
                    "auth.sign_in_refused",
                    None,
                    json!({ "reason": "the identity provider refused", "error": error }),
                );
                Err(refused(&format!(
                    "the identity provider did not sign you in ({error})"
                )))
            }
        };
        // A provider's refusal or a token not believed leaves a waiting
        // terminal waiting: whoever knows its user code cannot cancel it.
        let identity = outcome?;
        let subject = json!(identity.subject);
        // A step-up, or a terminal's approval, asked the provider to
        // authenticate the person now (max_age=0): an older authentication
        // means it did not, and is not accepted in its place.
        let fresh = Duration::seconds(SIGN_IN_TTL + 60);
        if sign_in.purpose != "login" && Utc::now() - identity.auth_time > fresh {
            self.deny(
                "auth.sign_in_refused",
                Some(&identity),
                json!({ "subject": subject, "reason": "not authenticated afresh",
                        "purpose": sign_in.purpose, "auth_time": identity.auth_time }),
            );
            return Err(refused(
                "the identity provider did not authenticate you afresh, as this sign-in \
                 asked: sign in again",
            ));
        }
        if !proves_mfa(settings, &identity) {
            self.deny(
                "auth.mfa_required",
                Some(&identity),
                json!({ "subject": subject, "email": identity.email, "amr": identity.amr,
                        "acr": identity.acr, "required_amr": settings.require_amr,
                        "required_acr": settings.require_acr }),
            );
            self.deny_device(sign_in.device_grant_id).await?;
            return Err(refused(
                "keyplane needs a sign-in with multi-factor authentication; \
                 sign in again with a second factor",
            ));
        }
        let Some(role) = role_of(settings, &identity) else {
            self.deny(
                "auth.no_role",
                Some(&identity),
                json!({ "subject": subject, "email": identity.email,
                        "claim": settings.role_claim, "values": identity.role_values }),
            );
            self.deny_device(sign_in.device_grant_id).await?;
            return Err(refused(
                "none of your groups gives access to keyplane; ask an administrator",
            ));
        };
        match sign_in.device_grant_id {
            Some(grant) => {
                self.approve_device(grant, &identity, role).await?;
                Ok(SignedIn::Device)
            }
            None => {
                let token = self
                    .open_session(&identity, role, settings.session_ttl, replacing)
                    .await?;
                Ok(SignedIn::Browser {
                    token,
                    max_age: settings.session_ttl,
                    return_to: sign_in.return_to,
                })
            }
        }
    }

    /// A browser session for `identity` with `role`; its token is answered
    /// once. Ends `replacing` if it is the same person's.
    async fn open_session(
        &self,
        identity: &Identity,
        role: ManagementRole,
        ttl: std::time::Duration,
        replacing: Option<&str>,
    ) -> Result<KeySecret, Refusal> {
        let now = self.now();
        let id = Uuid::new_v4();
        let mut change = self.change(Apply, &person(identity, id), now).await?;
        if let Some(old) = replacing.and_then(|t| KeySecret::parse_as(KeyKind::Session, t).ok()) {
            let old = people::session_by_digest(change.db(), old.digest().as_bytes()).await?;
            if let Some(old) = old.filter(|old| old.subject == identity.subject) {
                people::revoke_session(change.db(), old.id, "replaced by a new sign-in", now)
                    .await?;
            }
        }
        let (token, _) = self
            .insert_session(&mut change, id, identity, role, "browser", ttl)
            .await?;
        change.finish(()).await?;
        Ok(token)
    }

    /// Writes session `id` (`kind`, lasting `ttl`) for `identity` with
    /// `role`, audited, within `change`; answers its token (shown once).
    async fn insert_session(
        &self,
        change: &mut Change<'_, Apply>,
        id: Uuid,
        identity: &Identity,
        role: ManagementRole,
        kind: &str,
        ttl: std::time::Duration,
    ) -> Result<(KeySecret, Session), Refusal> {
        let now = change.at();
        let token = KeySecret::generate(KeyKind::Session)
            .map_err(|_| anyhow::anyhow!("the random source failed"))?;
        let session = people::insert_session(
            change.db(),
            &Session {
                id,
                digest: token.digest().as_bytes().to_vec(),
                masked: token.masked(),
                kind: kind.to_owned(),
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                role: role.as_str().to_owned(),
                authenticated_at: identity.auth_time,
                created_at: now,
                last_seen_at: now,
                expires_at: now + Duration::from_std(ttl).unwrap_or(Duration::hours(8)),
                revoked_at: None,
                revoked_reason: None,
                client_ip: self.origin.client_ip.map(|ip| ip.to_string()),
                user_agent: self.actor.user_agent.clone(),
            },
        )
        .await?;
        change
            .audit(
                "session.create",
                "session",
                id,
                json!({
                    "kind": kind,
                    "role": role.as_str(),
                    "email": identity.email,
                    "amr": identity.amr,
                    "acr": identity.acr,
                    "authenticated_at": identity.auth_time,
                    "expires_at": session.expires_at,
                    "masked_token": session.masked,
                }),
            )
            .await?;
        Ok((token, session))
    }

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
    async fn waiting_device(&self, code: &str, now: DateTime<Utc>) -> Result<DeviceGrant, Refusal> {
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

    async fn approve_device(
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
    async fn deny_device(&self, grant: Option<Uuid>) -> Result<(), Refusal> {
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

    /// The provider's refusal, audited; unavailability is the provider's, not the person's.
    fn provider_refusal(&self, err: OidcError) -> Refusal {
        match err {
            OidcError::Unavailable(_) => unavailable(err),
            OidcError::Refused(code) => {
                self.deny(
                    "auth.sign_in_refused",
                    None,
                    json!({ "reason": "the identity provider refused the code", "error": code }),
                );
                refused(
                    "the identity provider refused this sign-in (a code used twice, or too late): sign in again",
                )
            }
            OidcError::BadToken(why) => {
                self.deny(
                    "auth.sign_in_refused",
                    None,
                    json!({ "reason": format!("ID token refused: {why}") }),
                );
                refused(&format!(
                    "the identity provider's answer was not believed ({why}): sign in again"
                ))
            }
        }
    }

    /// Audits a refused sign-in (of `identity`, when known).
    fn deny(&self, action: &'static str, identity: Option<&Identity>, details: serde_json::Value) {
        let actor = match identity {
            Some(identity) => person(identity, Uuid::nil()),
            None => Actor::Anonymous,
        };
        tracing::warn!(action, actor = %actor, "sign-in refused");
        denials::record(
            &self.state,
            Denial {
                at: self.now(),
                actor: &actor,
                action,
                target_type: "sign_in",
                target_id: None,
                origin: Some(&self.origin),
                details,
            },
        );
    }
}

fn unavailable(err: OidcError) -> Refusal {
    tracing::warn!(error = %err, "the identity provider is unavailable");
    Refusal::Unavailable {
        code: "identity_provider_unavailable",
        detail: "the identity provider cannot be reached; try again shortly".to_owned(),
    }
}

impl From<&Session> for SessionResponse {
    fn from(session: &Session) -> Self {
        SessionResponse {
            id: session.id,
            kind: session.kind.clone(),
            subject: session.subject.clone(),
            email: session.email.clone(),
            role: session.role.clone(),
            masked_token: session.masked.clone(),
            authenticated_at: session.authenticated_at,
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            expires_at: session.expires_at,
            client_ip: session.client_ip.clone(),
            user_agent: session.user_agent.clone(),
            current: false,
        }
    }
}

impl Ops<Operator> {
    /// Refuses a person whose last MFA sign-in is older than the step-up
    /// window; keys (automation) are not people and are not asked.
    pub fn step_up(&self) -> Result<(), Refusal> {
        let Actor::Person(person) = &self.actor.actor else {
            return Ok(());
        };
        let window = self
            .state
            .settings
            .oidc
            .as_ref()
            .map_or(std::time::Duration::from_secs(600), |oidc| oidc.step_up);
        let window_chrono = Duration::from_std(window).unwrap_or(Duration::minutes(10));
        if self.now() - person.authenticated_at > window_chrono {
            return Err(Refusal::StepUp {
                max_age: window.as_secs(),
            });
        }
        Ok(())
    }

    /// [`Ops::step_up`] for an operation that is applied: dangerous ones
    /// (admin keys, roles, webhooks, decommissioning, revoking many keys at
    /// once) call this; a dry run changes nothing and needs no new sign-in.
    pub fn dangerous<R: Run>(&self) -> Result<(), Refusal> {
        if R::DRY { Ok(()) } else { self.step_up() }
    }

    /// The person this operator is, if a person.
    fn person(&self) -> Option<&Person> {
        match &self.actor.actor {
            Actor::Person(person) => Some(person),
            _ => None,
        }
    }

    /// Who is calling.
    pub fn who_am_i(&self) -> WhoAmI {
        let person = self.person();
        let step_up = self.state.settings.oidc.as_ref().map(|oidc| oidc.step_up);
        WhoAmI {
            actor: self.actor.actor.to_string(),
            role: self.actor.role.as_str().to_owned(),
            email: person.and_then(|p| p.email.clone()),
            session_id: person.map(|p| p.session),
            authenticated_at: person.map(|p| p.authenticated_at),
            step_up_until: person.zip(step_up).map(|(p, window)| {
                p.authenticated_at + Duration::from_std(window).unwrap_or_default()
            }),
            csrf_token: None,
        }
    }

    /// Live sessions: a person's own; an admin's, everyone's.
    pub async fn list_sessions(&self, page: PageParams) -> Result<SessionPage, Refusal> {
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        self.person_or_admin()?;
        let subject = match (self.actor.role, self.person()) {
            (ManagementRole::Admin, _) => None,
            (_, person) => person.map(|p| p.subject.as_str()),
        };
        let current = self.person().map(|p| p.session);
        let (rows, next) =
            people::live_sessions(self.state.db.pool(), subject, self.now(), after, limit).await?;
        Ok(SessionPage {
            items: rows
                .iter()
                .map(|row| SessionResponse {
                    current: Some(row.id) == current,
                    ..row.into()
                })
                .collect(),
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// Refuses a key that is not an admin's: only people have sessions of
    /// their own, and only admins look after everyone's.
    fn person_or_admin(&self) -> Result<(), Refusal> {
        if self.person().is_none() && self.actor.role != ManagementRole::Admin {
            return Err(Refusal::Forbidden(
                "only people and admins look after sessions".to_owned(),
            ));
        }
        Ok(())
    }

    /// Ends a session: one's own, or (for an admin) anyone's.
    pub async fn revoke_session(&self, id: Uuid) -> Result<(), Refusal> {
        self.person_or_admin()?;
        let now = self.now();
        let mut change = self.begin(Apply, now).await?;
        let not_found = || Refusal::NotFound("no live session with this id".to_owned());
        let session = people::session(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        let own = self.person().is_some_and(|p| p.subject == session.subject);
        if !own && self.actor.role != ManagementRole::Admin {
            return Err(not_found());
        }
        if !own {
            // Signing someone else out is an admin's dangerous operation.
            self.step_up()?;
        }
        let reason = if self.person().is_some_and(|p| p.session == id) {
            "signed out"
        } else {
            "revoked"
        };
        people::revoke_session(change.db(), id, reason, now)
            .await?
            .ok_or_else(not_found)?;
        change
            .audit(
                "session.revoke",
                "session",
                id,
                json!({ "subject": session.subject, "kind": session.kind, "reason": reason }),
            )
            .await?;
        change.finish(()).await
    }

    /// Ends every session of a person: the caller's own, or (for an admin)
    /// anyone's, to sign them out everywhere.
    pub async fn revoke_all_sessions(
        &self,
        input: RevokeAllRequest,
    ) -> Result<RevokedSessions, Refusal> {
        self.person_or_admin()?;
        let own = self.person().map(|p| p.subject.clone());
        let subject = match (input.subject, own) {
            (Some(subject), own) if own.as_deref() != Some(subject.as_str()) => {
                if self.actor.role != ManagementRole::Admin {
                    return Err(Refusal::Forbidden(
                        "only admins may sign someone else out".to_owned(),
                    ));
                }
                self.step_up()?;
                subject
            }
            (_, Some(own)) => own,
            (Some(subject), None) => subject,
            (None, None) => {
                return Err(Refusal::invalid(
                    "subject",
                    "a key is not a person: name the person whose sessions to end",
                ));
            }
        };
        let now = self.now();
        let mut change = self.begin(Apply, now).await?;
        let ended =
            people::revoke_sessions_of(change.db(), &subject, "signed out everywhere", now).await?;
        change
            .audit(
                "session.revoke_all",
                "person",
                format!("oidc:{subject}"),
                json!({ "sessions": ended }),
            )
            .await?;
        change
            .finish(RevokedSessions {
                subject,
                revoked: ended.len(),
            })
            .await
    }

    /// Ends the caller's own session (signing out).
    pub async fn sign_out(&self) -> Result<(), Refusal> {
        let Some(person) = self.person() else {
            return Err(Refusal::invalid(
                "authorization",
                "only a person's session can sign out; keys are revoked",
            ));
        };
        self.revoke_session(person.session).await
    }
}

/// The CSRF token of a browser session: derived from its token, so it needs
/// no storage and is worthless without the cookie.
pub fn csrf_token(session_token: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(session_token.as_bytes()) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(b"keyplane csrf v1");
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}
