//! Sessions: who is calling, a person's own sessions (an admin's,
//! everyone's), ending them, and the step-up dangerous operations need.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use keyplane_domain::ManagementRole;
use keyplane_store::people::{self, Session};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ops::{Actor, Apply, Operator, Ops, Person, Refusal, Run};
use crate::pagination::PageParams;

const LIST: &str = "sessions";

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

/// The CSRF token of a browser session: a hash of its token under a label
/// of its own, so it needs no storage, cannot be made without the cookie,
/// and gives the cookie's value away to no one.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"keyplane csrf v1\0")
        .chain_update(session_token.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(digest)
}
