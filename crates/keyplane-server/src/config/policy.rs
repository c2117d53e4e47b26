//! Key policy and what nodes are told: how long keys may live, how long
//! answers may be cached, when inactive answers look like probing, which
//! scope each route needs, whose forward-auth headers to believe, and the
//! issuer answers name.

use std::str::FromStr;
use std::time::Duration;

use keyplane_domain::{ForwardAuthProxy, Mode, RouteMap};

use crate::config::sources::Sources;
use crate::config::{ConfigError, Settings};

/// Reads key policy into `settings`.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    if let Some(lifetime) = sources.duration("KEYPLANE_MAX_KEY_LIFETIME", &args.max_key_lifetime)? {
        if lifetime < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "KEYPLANE_MAX_KEY_LIFETIME",
                "expected at least 60s",
            ));
        }
        settings.max_key_lifetime = lifetime;
    }
    if let Some(accept) = sources.parsed(
        "KEYPLANE_ACCEPT_LEGACY_KEYS",
        &args.accept_legacy_keys,
        |text| text.parse::<bool>().map_err(|_| "expected true or false"),
    )? {
        settings.accept_legacy_keys = accept;
    }
    match sources.duration("KEYPLANE_LEGACY_KEY_LIFETIME", &args.legacy_key_lifetime)? {
        Some(lifetime) if lifetime > settings.max_key_lifetime => {
            return Err(ConfigError::new(
                "KEYPLANE_LEGACY_KEY_LIFETIME",
                "expected at most KEYPLANE_MAX_KEY_LIFETIME",
            ));
        }
        Some(lifetime) if lifetime < Duration::from_secs(60) => {
            return Err(ConfigError::new(
                "KEYPLANE_LEGACY_KEY_LIFETIME",
                "expected at least 60s",
            ));
        }
        Some(lifetime) => settings.legacy_key_lifetime = lifetime,
        // The default gives way to a shorter policy.
        None => {
            settings.legacy_key_lifetime =
                settings.legacy_key_lifetime.min(settings.max_key_lifetime);
        }
    }
    for (name, given, kept, least) in [
        (
            "KEYPLANE_USAGE_HOURLY_RETENTION",
            &args.usage_hourly_retention,
            &mut settings.usage_hourly_retention,
            Duration::from_secs(86_400),
        ),
        (
            "KEYPLANE_USAGE_DAILY_RETENTION",
            &args.usage_daily_retention,
            &mut settings.usage_daily_retention,
            // Monthly budgets are counted from daily rollups.
            Duration::from_secs(32 * 86_400),
        ),
    ] {
        if let Some(retention) = sources.duration(name, given)? {
            if retention < least {
                return Err(ConfigError::new(
                    name,
                    format!(
                        "expected at least {}",
                        keyplane_domain::format_duration(least)
                    ),
                ));
            }
            *kept = retention;
        }
    }
    if let Some(ttl) = sources.duration(
        "KEYPLANE_INTROSPECTION_CACHE_TTL",
        &args.introspection_cache_ttl,
    )? {
        if ttl > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "KEYPLANE_INTROSPECTION_CACHE_TTL",
                "expected at most 1h",
            ));
        }
        settings.introspection_cache_ttl = ttl;
    }
    if let Some(capacity) = sources.number(
        "KEYPLANE_INTROSPECTION_CACHE_CAPACITY",
        &args.introspection_cache_capacity,
    )? {
        settings.introspection_cache_capacity = capacity;
    }
    if let Some(threshold) = sources
        .number("KEYPLANE_PROBE_THRESHOLD", &args.probe_threshold)?
        .filter(|n| *n > 0)
    {
        settings.probe_threshold = threshold;
    }
    if let Some(window) = sources.duration("KEYPLANE_PROBE_WINDOW", &args.probe_window)? {
        settings.probe_window = window;
    }
    if let Some(rules) = sources.text("KEYPLANE_ROUTE_SCOPES", &args.route_scopes)? {
        settings.routes = RouteMap::parse(&rules)
            .map_err(|err| ConfigError::new("KEYPLANE_ROUTE_SCOPES", err.to_string()))?
            .then(RouteMap::defaults());
    }
    if settings.mode == Mode::Prod && settings.routes.has_public() {
        return Err(ConfigError::new(
            "KEYPLANE_ROUTE_SCOPES",
            "prod serves no route without a key; public routes need mixed",
        ));
    }
    if let Some(proxy) = sources.parsed(
        "KEYPLANE_FORWARD_AUTH_PROXY",
        &args.forward_auth_proxy,
        ForwardAuthProxy::from_str,
    )? {
        settings.forward_auth_proxy = proxy;
    }
    settings.issuer = sources.text("KEYPLANE_ISSUER", &args.issuer)?;
    Ok(())
}
