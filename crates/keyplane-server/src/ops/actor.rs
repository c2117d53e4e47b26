//! Who asks for an operation. Each kind of caller is its own type, so an
//! operation states in its signature who may call it at all; what an
//! operator may do is then its role's business.

use std::fmt;

use chrono::{DateTime, Utc};
use keyplane_domain::{KeySecret, ManagementRole, Permission};
use uuid::Uuid;

use crate::ops::Refusal;

/// Who did something, as the audit log names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The bootstrap token from the environment.
    Bootstrap,
    /// An admin key.
    AdminKey(Uuid),
    /// A person, signed in with the identity provider.
    Person(Person),
    /// `keyplane admin-key create`, working on the database directly.
    Cli,
    /// An instance key, acting on itself.
    ApiKey(Uuid),
    /// An enrollment token, spent by an instance enrolling.
    EnrollmentToken(Uuid),
    /// A node, with its node key.
    Node(Uuid),
    /// keyplane's own scheduled jobs.
    Scheduler,
    /// Whoever reported a leaked key (`POST /v1/leaks`).
    LeakReport,
    /// A caller who presented no good credential.
    Anonymous,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Bootstrap => f.write_str("bootstrap"),
            Actor::AdminKey(id) => write!(f, "admin_key:{id}"),
            Actor::Person(person) => write!(f, "oidc:{}", person.subject),
            Actor::Cli => f.write_str("cli"),
            Actor::ApiKey(id) => write!(f, "api_key:{id}"),
            Actor::EnrollmentToken(id) => write!(f, "enrollment_token:{id}"),
            Actor::Node(id) => write!(f, "node:{id}"),
            Actor::Scheduler => f.write_str("scheduler"),
            Actor::LeakReport => f.write_str("leak_report"),
            Actor::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// A person signed in with the identity provider, in one of their sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The provider's id for them.
    pub subject: String,
    /// Their email, as the provider said.
    pub email: Option<String>,
    /// The session they act in.
    pub session: Uuid,
    /// When they last signed in with MFA.
    pub authenticated_at: DateTime<Utc>,
}

/// Someone with no credential yet: a browser signing in, a terminal asking
/// for a token.
#[derive(Debug, Clone, Default)]
pub struct Visitor {
    /// The browser or tool, as it names itself (cut short).
    pub user_agent: Option<String>,
}

/// An authenticated operator: the bootstrap token, a live admin key or the
/// command line, with its management role.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Who it is.
    pub actor: Actor,
    /// What it may do.
    pub role: ManagementRole,
}

impl Operator {
    /// Refuses unless the operator's role grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), Refusal> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "the {} role does not allow this",
                self.role
            )))
        }
    }
}

/// Whoever presents an instance key, to read or rotate that key. Whether the
/// key is live is the operation's to find out.
#[derive(Debug)]
pub struct Holder {
    /// The key presented.
    pub key: KeySecret,
}

/// An instance presenting an enrollment token, to register itself.
#[derive(Debug)]
pub struct Enrollee {
    /// The token presented.
    pub token: KeySecret,
}

/// A node authenticated by its node key (or a client certificate).
#[derive(Debug, Clone)]
pub struct Node {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The digest of the node key it presented; None for a certificate.
    pub key: Option<[u8; 32]>,
}
