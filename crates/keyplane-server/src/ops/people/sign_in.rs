//! A browser's sign-in: to the provider with PKCE, `state` and `nonce`, and
//! back with an ID token that must prove MFA and map to a role.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use keyplane_domain::{KeyDigest, KeyKind, KeySecret, ManagementRole};
use keyplane_store::people::{self, Session, SignIn};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{SIGN_IN_TTL, identity_provider, person, random_text, refused, sha256};
use crate::config::OidcSettings;
use crate::oidc::{Identity, OidcError};
use crate::ops::denials::{self, Denial};
use crate::ops::{Actor, Apply, Change, Ops, Refusal, Visitor};

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

/// Where a sign-in may send the browser afterwards: a path on keyplane's
/// own origin, never another site.
/// A `return_to` on keyplane's own origin (default `/console/`).
pub fn safe_return_to(return_to: Option<&str>) -> Result<String, Refusal> {
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
    pub(super) async fn insert_session(
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
