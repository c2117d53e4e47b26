//! Webhook deliveries: how soon a failed one is retried, and which
//! internal networks they may reach; and the keys that sign leak reports
//! (what keyplane hears from outside, as webhooks are what it tells).

use crate::config::sources::{Sources, parse_with};
use crate::config::{ConfigError, Settings};
use crate::reporters::ReporterKeys;

/// Reads the webhook settings into `settings`.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    if let Some(base) = sources
        .duration("KEYPLANE_WEBHOOK_RETRY_BASE", &args.webhook_retry_base)?
        .filter(|t| !t.is_zero())
    {
        settings.webhook_retry_base = base;
    }
    let variable = "KEYPLANE_WEBHOOK_ALLOW_NETWORKS";
    if let Some(text) = sources.text(variable, &args.webhook_allow_networks)? {
        settings.webhook_allow_networks = text
            .split(',')
            .map(str::trim)
            .filter(|net| !net.is_empty())
            .map(|net| {
                parse_with(variable, net, |n| {
                    n.parse::<ipnet::IpNet>()
                        .map_err(|_| "expected CIDR networks, e.g. 10.20.0.0/16")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
    }
    let variable = "KEYPLANE_LEAK_REPORT_KEYS";
    if let Some(path) = sources.path(variable, &args.leak_report_keys)? {
        settings.leak_report_keys = ReporterKeys::load(&path)
            .map_err(|err| ConfigError::new(variable, format!("{err:#}")))?;
    }
    Ok(())
}
