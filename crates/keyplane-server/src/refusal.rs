//! Why an operation did not happen, in words every front door can render:
//! the API as problem+json with a status code, the console as a page. The
//! operations layer answers these; so do the services below it.

use crate::limits::Limited;

/// Every way an operation can be refused or fail.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The credential presented is not a good one.
    #[error("{detail}")]
    Unauthenticated {
        /// Stable code.
        code: &'static str,
        /// What is wrong, without echoing the credential.
        detail: &'static str,
    },
    /// A person must sign in with MFA again: their last sign-in is older
    /// than this operation allows.
    #[error("this operation needs a sign-in with MFA within the last {max_age} seconds")]
    StepUp {
        /// How recent, in seconds.
        max_age: u64,
    },
    /// The actor is known, but its role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing by that id or name.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with what the thing is now.
    #[error("{0}")]
    Conflict(String),
    /// Input that cannot be read at all (a cursor this list never handed out,
    /// a limit out of range).
    #[error("{detail}")]
    Unreadable {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        detail: String,
        /// The input at fault.
        field: &'static str,
    },
    /// A field's value is not acceptable.
    #[error("{detail}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What it expects.
        detail: String,
    },
    /// Well-formed, but key policy refuses it (a lifetime past the maximum,
    /// a scope outside the instance's ceiling).
    #[error("{detail}")]
    Policy {
        /// The field at fault.
        field: String,
        /// What the policy allows.
        detail: String,
    },
    /// A budget is spent.
    #[error(transparent)]
    Limited(#[from] Limited),
    /// A dependency (the database) is not available.
    #[error("{detail}")]
    Unavailable {
        /// Stable code.
        code: &'static str,
        /// What is unavailable.
        detail: String,
    },
    /// Anything else; the cause is for the logs, never for the caller.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Refusal {
    /// `field`'s value is not acceptable.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// Key policy refuses `field`'s value.
    pub fn policy(field: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal::Policy {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The same refusal, naming the field `to` where it named `from` (for a
    /// check shared by inputs that call the field differently).
    pub fn renamed(self, from: &str, to: &str) -> Refusal {
        let rename = |field: String, detail: String| {
            if field == from {
                (to.to_owned(), detail.replace(from, to))
            } else {
                (field, detail)
            }
        };
        match self {
            Refusal::Invalid { field, detail } => {
                let (field, detail) = rename(field, detail);
                Refusal::Invalid { field, detail }
            }
            Refusal::Policy { field, detail } => {
                let (field, detail) = rename(field, detail);
                Refusal::Policy { field, detail }
            }
            other => other,
        }
    }
}

impl From<keyplane_store::StoreError> for Refusal {
    fn from(err: keyplane_store::StoreError) -> Self {
        match err {
            keyplane_store::StoreError::Conflict(message) => Refusal::Conflict(message.to_owned()),
            keyplane_store::StoreError::Unavailable(cause) => database_unavailable(&cause),
            other => Refusal::Internal(other.into()),
        }
    }
}

/// Seconds between two warnings of the database being unavailable: an
/// outage is logged once (and once more each minute it lasts), not once
/// per refused request.
const OUTAGE_WARNING_EVERY: i64 = 60;
static OUTAGE_WARNED_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// 503 `database_unavailable`: the caller should try again in a moment.
fn database_unavailable(cause: &sqlx::Error) -> Refusal {
    use std::sync::atomic::Ordering;
    let now = chrono::Utc::now().timestamp();
    let last = OUTAGE_WARNED_AT.load(Ordering::Relaxed);
    if now - last >= OUTAGE_WARNING_EVERY
        && OUTAGE_WARNED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %cause, "the database is unavailable: requests that need it get 503 database_unavailable until it is back");
    }
    Refusal::Unavailable {
        code: "database_unavailable",
        detail: "the database is unavailable; try again in a moment".to_owned(),
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(err: sqlx::Error) -> Self {
        keyplane_store::StoreError::from(err).into()
    }
}
