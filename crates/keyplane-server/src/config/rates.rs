//! Rate limits: what each address, credential, operator and node may do.

use crate::config::sources::Sources;
use crate::config::{ConfigError, Settings};

/// Reads the rate limits into `settings`; each is a positive whole number.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    let limits = &mut settings.limits;
    for (variable, arg, budget) in [
        (
            "KEYPLANE_RATE_AUTH_FAILURES",
            &args.rate_auth_failures,
            &mut limits.auth_failures_per_minute,
        ),
        (
            "KEYPLANE_RATE_OPERATOR",
            &args.rate_operator,
            &mut limits.operator_per_minute,
        ),
        (
            "KEYPLANE_RATE_NODE",
            &args.rate_node,
            &mut limits.node_per_second,
        ),
        (
            "KEYPLANE_RATE_CREDENTIAL_FAILURES",
            &args.rate_credential_failures,
            &mut limits.credential_failures_per_minute,
        ),
        (
            "KEYPLANE_RATE_MISSES_NODE",
            &args.rate_misses_node,
            &mut limits.misses_per_node_per_second,
        ),
        (
            "KEYPLANE_RATE_MISSES_ADDRESS",
            &args.rate_misses_address,
            &mut limits.misses_per_address_per_second,
        ),
        (
            "KEYPLANE_RATE_LEAK_REPORTS",
            &args.rate_leak_reports,
            &mut limits.leak_reports_per_minute,
        ),
    ] {
        if let Some(n) = sources.number(variable, arg)? {
            *budget = u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError::new(variable, "expected 1 to 4294967295"))?;
        }
    }
    Ok(())
}
