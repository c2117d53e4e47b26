//! The rules every rotation keeps, whatever it rotates: instance keys, node
//! keys and admin keys.
//!
//! A rotation makes a successor and leaves the old credential working for a
//! grace window, never past its own expiry. Who asked matters afterwards: a
//! holder that lost the answer to its own rotation may ask again with the
//! old credential, for minutes, while the successor is unused; an operator's
//! rotation (often made because the old credential leaked) is final.

use chrono::{DateTime, Duration, Utc};

use crate::ops::Refusal;

/// The grace window of a rotation unless asked otherwise.
pub const DEFAULT_GRACE_SECONDS: i64 = 3600;
/// The longest grace window a holder may give its own old credential.
pub const MAX_HOLDER_GRACE_SECONDS: i64 = 86_400;
/// How long after its own rotation a holder that lost the answer may ask again.
pub const RETRY_SECONDS: i64 = 600;

/// Who rotated a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotatedBy {
    /// Its holder, rotating its own (`POST /v1/self/rotate`,
    /// `POST /v1/nodes/self/rotate`, `POST /v1/admin-keys/self/rotate`).
    Holder,
    /// An operator.
    Operator,
}

impl RotatedBy {
    /// As stored in the `rotated_by` columns.
    pub fn as_str(self) -> &'static str {
        match self {
            RotatedBy::Holder => "holder",
            RotatedBy::Operator => "operator",
        }
    }
}

/// The grace window asked for, `default` when absent, refused outside
/// `0..=max`.
pub fn grace_seconds(asked: Option<i64>, max: i64) -> Result<i64, Refusal> {
    let grace = asked.unwrap_or(DEFAULT_GRACE_SECONDS);
    if (0..=max).contains(&grace) {
        Ok(grace)
    } else {
        Err(Refusal::invalid(
            "grace_seconds",
            format!("grace_seconds must be between 0 and {max}"),
        ))
    }
}

/// The end of the grace window of a credential expiring at `expires_at`,
/// rotated at `now`.
pub fn grace_until(
    now: DateTime<Utc>,
    grace_seconds: i64,
    expires_at: DateTime<Utc>,
) -> DateTime<Utc> {
    (now + Duration::seconds(grace_seconds)).min(expires_at)
}

/// When a credential made at `created_at` and expiring at `expires_at`
/// should be rotated: `rotate_after` seconds past its making, and never
/// later than four fifths into its life (well before any expiry warning).
pub fn due_at(
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    rotate_after: Option<i64>,
) -> DateTime<Utc> {
    let latest = created_at + (expires_at - created_at) * 4 / 5;
    match rotate_after {
        Some(seconds) => (created_at + Duration::seconds(seconds)).min(latest),
        None => latest,
    }
}

/// The refusal of a rotation of a credential already rotated.
pub fn already_rotated() -> Refusal {
    Refusal::Conflict("this credential has already been rotated: use its successor".to_owned())
}

/// Whether the holder of an already rotated credential may have the
/// rotation made again (see the module's documentation): it was its own,
/// made within the last [`RETRY_SECONDS`], and the successor was never used.
pub fn may_retry(
    rotated_by: Option<&str>,
    rotated_at: Option<DateTime<Utc>>,
    successor_used: bool,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let own = rotated_by == Some(RotatedBy::Holder.as_str());
    let recent = rotated_at.is_some_and(|at| now - at <= Duration::seconds(RETRY_SECONDS));
    if own && recent && !successor_used {
        Ok(())
    } else {
        Err(already_rotated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recent_own_rotation_with_an_unused_successor_is_retried() {
        let now = Utc::now();
        let recent = Some(now - Duration::seconds(RETRY_SECONDS - 1));
        let old = Some(now - Duration::seconds(RETRY_SECONDS + 1));
        assert!(may_retry(Some("holder"), recent, false, now).is_ok());
        assert!(may_retry(Some("holder"), recent, true, now).is_err());
        assert!(may_retry(Some("holder"), old, false, now).is_err());
        assert!(may_retry(Some("operator"), recent, false, now).is_err());
        assert!(may_retry(None, None, false, now).is_err());
    }

    #[test]
    fn rotation_is_due_four_fifths_into_a_life_at_the_latest() {
        let made = Utc::now();
        let ends = made + Duration::days(90);
        assert_eq!(due_at(made, ends, None), made + Duration::days(72));
        assert_eq!(due_at(made, ends, Some(86_400)), made + Duration::days(1));
        assert_eq!(
            due_at(made, ends, Some(86_400 * 365)),
            made + Duration::days(72)
        );
    }

    #[test]
    fn grace_windows_are_bounded() {
        assert_eq!(grace_seconds(None, 10_000).unwrap(), DEFAULT_GRACE_SECONDS);
        assert_eq!(grace_seconds(Some(0), 10).unwrap(), 0);
        assert!(grace_seconds(Some(-1), 10).is_err());
        assert!(grace_seconds(Some(11), 10).is_err());
        let now = Utc::now();
        assert_eq!(
            grace_until(now, 60, now + Duration::seconds(10)),
            now + Duration::seconds(10)
        );
    }
}
