//! The server: where it listens, which browsers may call it, and how long
//! and how much it serves.

use std::net::SocketAddr;
use std::str::FromStr;

use axum::http::HeaderValue;
use keyplane_domain::Mode;

use crate::config::sources::Sources;
use crate::config::{ConfigError, LogFormat, Settings};

/// Reads the server's settings into `settings`.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    if let Some(listen) = sources.parsed("KEYPLANE_LISTEN", &args.listen, |s| {
        SocketAddr::from_str(s).map_err(|_| "expected an address and port, e.g. 127.0.0.1:8080")
    })? {
        settings.listen = listen;
    }
    settings.cors_origins =
        cors_origins(sources.text("KEYPLANE_CORS_ORIGINS", &args.cors_origins)?)?;
    if let Some(limit) = sources.parsed("KEYPLANE_BODY_LIMIT", &args.body_limit, parse_size)? {
        settings.body_limit = limit;
    }
    if let Some(timeout) = sources.duration("KEYPLANE_REQUEST_TIMEOUT", &args.request_timeout)? {
        settings.request_timeout = timeout;
    }
    if let Some(grace) = sources.duration("KEYPLANE_SHUTDOWN_GRACE", &args.shutdown_grace)? {
        settings.shutdown_grace = grace;
    }
    let connections = &mut settings.connections;
    if let Some(timeout) = sources
        .duration("KEYPLANE_HEADER_TIMEOUT", &args.header_timeout)?
        .filter(|t| !t.is_zero())
    {
        connections.header_timeout = timeout;
    }
    if let Some(timeout) = sources
        .duration("KEYPLANE_IDLE_TIMEOUT", &args.idle_timeout)?
        .filter(|t| !t.is_zero())
    {
        connections.idle_timeout = timeout;
    }
    if let Some(n) = sources.number("KEYPLANE_MAX_CONNECTIONS", &args.max_connections)? {
        connections.max_connections = usize::try_from(n)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| ConfigError::new("KEYPLANE_MAX_CONNECTIONS", "expected 1 to 1000000"))?;
    }
    if let Some(interval) = sources
        .duration("KEYPLANE_SCHEDULER_INTERVAL", &args.scheduler_interval)?
        .filter(|t| !t.is_zero())
    {
        settings.scheduler_interval = interval;
    }
    settings.log_format = sources
        .parsed("KEYPLANE_LOG_FORMAT", &args.log_format, |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json"),
        })?
        .unwrap_or(if settings.mode == Mode::Prod {
            LogFormat::Json
        } else {
            LogFormat::Text
        });
    Ok(())
}

/// The browser origins allowed by CORS: each `scheme://host[:port]`, with
/// no path, and never `*` (the API takes credentials).
pub(super) fn cors_origins(setting: Option<String>) -> Result<Vec<HeaderValue>, ConfigError> {
    let Some(setting) = setting else {
        return Ok(Vec::new());
    };
    setting
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            let is_origin = origin.parse::<axum::http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri
                        .authority()
                        .is_some_and(|authority| !authority.as_str().contains('@'))
                    && uri.path_and_query().is_none_or(|path| path.as_str() == "/")
                    && !origin.ends_with('/')
            });
            match HeaderValue::from_str(origin) {
                Ok(value) if is_origin => Ok(value),
                _ => Err(ConfigError::new(
                    "KEYPLANE_CORS_ORIGINS",
                    format!("{origin} is not an origin like https://console.example.com (no wildcard, no path)"),
                )),
            }
        })
        .collect()
}

/// Reads `65536`, `64KiB` or `1MiB`, between 1 KiB and 64 MiB.
fn parse_size(text: &str) -> Result<usize, &'static str> {
    const EXPECTED: &str = "expected bytes between 1KiB and 64MiB, e.g. 65536 or 64KiB";
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: usize = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        _ => return Err(EXPECTED),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
        .ok_or(EXPECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_bytes_and_binary_units_within_bounds() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2MiB"), Ok(2 * 1024 * 1024));
        for bad in [
            "",
            "12",
            "1GiB",
            "64 KiB",
            "-1",
            "KiB",
            "999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cors_origins_are_exact_origins_never_wildcards_or_paths() {
        let parsed = cors_origins(Some(
            "https://console.example.com, http://localhost:3000".to_owned(),
        ));
        assert_eq!(
            parsed.ok().map(|origins| origins.len()),
            Some(2),
            "two origins"
        );
        for bad in [
            "*",
            "https://console.example.com/",
            "https://console.example.com/admin",
            "console.example.com",
            "ftp://console.example.com",
            "https://user@console.example.com",
        ] {
            let err = cors_origins(Some(bad.to_owned())).err().map(|e| e.setting);
            assert_eq!(err.as_deref(), Some("KEYPLANE_CORS_ORIGINS"), "{bad}");
        }
        assert_eq!(cors_origins(None).ok().map(|o| o.len()), Some(0));
    }
}
