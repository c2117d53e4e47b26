//! Forward auth: which headers of a proxy's call describe the client's request.
//!
//! A reverse proxy that asks keyplane whether to let a request through
//! describes that request with headers of its own: the original method, URI
//! and client address. Every proxy uses its own names, and most copy the
//! client's other headers into the call untouched (Traefik and Caddy copy
//! them all; nginx unless told otherwise). A header the configured proxy
//! does not set is therefore the client's to write: a chat request sent to
//! Traefik with `X-Original-URI: /v1/models` would be judged as a models
//! request if keyplane read it. So each proxy's own headers are read and no
//! others, a request without them is refused, and a request that carries
//! another convention's headers with different values is refused too:
//! someone tried to describe their own request.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The reverse proxy that calls forward auth for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ForwardAuthProxy {
    /// nginx `auth_request` with keyplane's example configuration:
    /// `X-Original-Method`, `X-Original-URI`, `X-Real-IP`.
    #[default]
    Nginx,
    /// Traefik ForwardAuth: `X-Forwarded-Method`, `X-Forwarded-Uri`, and
    /// the client's address as the last `X-Forwarded-For` entry.
    Traefik,
    /// Caddy `forward_auth`: the same headers as Traefik.
    Caddy,
    /// Envoy's HTTP ext_authz: the original method is the call's own, the
    /// original path follows `/v1/authz/check` in the call's URL, and the
    /// client's address is `X-Real-IP`, which keyplane's example sets with
    /// `headers_to_add` (Envoy appends its own address to `X-Forwarded-For`,
    /// so that header's last entry is never the client).
    Envoy,
}

/// Header names, lower case as HTTP/2 and the `http` crate spell them.
const X_ORIGINAL_METHOD: &str = "x-original-method";
const X_ORIGINAL_URI: &str = "x-original-uri";
const X_FORWARDED_METHOD: &str = "x-forwarded-method";
const X_FORWARDED_URI: &str = "x-forwarded-uri";
const X_REAL_IP: &str = "x-real-ip";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Where Envoy puts the original path: after this, in the call's own URL.
pub const ENVOY_PATH_PREFIX: &str = "/v1/authz/check";

/// A value the proxy gives, from one of its headers or from the call itself.
#[derive(Debug, Clone, Copy)]
enum Source {
    Header(&'static str),
    Call,
}

/// How one proxy describes the original request.
struct Convention {
    method: Source,
    uri: Source,
    address: &'static str,
    /// Address headers that, when present, must agree with `address`.
    other_addresses: &'static [&'static str],
}

impl ForwardAuthProxy {
    /// Every proxy, as named in settings.
    pub const ALL: [ForwardAuthProxy; 4] = [
        ForwardAuthProxy::Nginx,
        ForwardAuthProxy::Traefik,
        ForwardAuthProxy::Caddy,
        ForwardAuthProxy::Envoy,
    ];

    /// The name used in settings and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardAuthProxy::Nginx => "nginx",
            ForwardAuthProxy::Traefik => "traefik",
            ForwardAuthProxy::Caddy => "caddy",
            ForwardAuthProxy::Envoy => "envoy",
        }
    }

    fn convention(self) -> Convention {
        match self {
            // The example sets X-Forwarded-For with $proxy_add_x_forwarded_for,
            // whose last entry is the address X-Real-IP gives.
            ForwardAuthProxy::Nginx => Convention {
                method: Source::Header(X_ORIGINAL_METHOD),
                uri: Source::Header(X_ORIGINAL_URI),
                address: X_REAL_IP,
                other_addresses: &[X_FORWARDED_FOR],
            },
            // Both replace the client's X-Forwarded-For with the peer's
            // address and pass a client's X-Real-IP on (Traefik sets its own).
            ForwardAuthProxy::Traefik | ForwardAuthProxy::Caddy => Convention {
                method: Source::Header(X_FORWARDED_METHOD),
                uri: Source::Header(X_FORWARDED_URI),
                address: X_FORWARDED_FOR,
                other_addresses: &[X_REAL_IP],
            },
            ForwardAuthProxy::Envoy => Convention {
                method: Source::Call,
                uri: Source::Call,
                address: X_REAL_IP,
                other_addresses: &[],
            },
        }
    }

    /// The client's request as this proxy describes it. `header` answers a
    /// header's one value (an error when it is repeated or not text);
    /// `call` is the forward-auth call's own method and, when it called
    /// `/v1/authz/check/<path>` (as Envoy does), that path.
    pub fn original<'a, H>(self, header: H, call: Call<'a>) -> Result<Original<'a>, ForwardedError>
    where
        H: Fn(&'static str) -> Result<Option<&'a str>, Unreadable>,
    {
        let convention = self.convention();
        let read = |name: &'static str| header(name).map_err(|_| ForwardedError::Unreadable(name));
        let method = match convention.method {
            Source::Header(name) => read(name)?.ok_or(ForwardedError::Missing(name))?,
            Source::Call => call.method,
        };
        let uri = match (convention.uri, call.path) {
            (Source::Header(name), None) => read(name)?.ok_or(ForwardedError::Missing(name))?,
            (Source::Call, Some(path)) => path,
            (Source::Call, None) => {
                return Err(ForwardedError::Missing("the path after /v1/authz/check"));
            }
            (Source::Header(_), Some(_)) => return Err(ForwardedError::PathInUrl(self)),
        };
        let method = method.trim();
        let uri = uri.trim();
        let address_text =
            read(convention.address)?.ok_or(ForwardedError::Missing(convention.address))?;
        let client_ip = address_of(convention.address, address_text)
            .ok_or(ForwardedError::NotAnAddress(convention.address))?;

        // The other conventions' headers, where present, must say the same.
        for other in [X_ORIGINAL_METHOD, X_FORWARDED_METHOD] {
            if !matches!(convention.method, Source::Header(name) if name == other)
                && let Some(value) = read(other)?
                && !value.trim().eq_ignore_ascii_case(method)
            {
                return Err(ForwardedError::Disagree(other));
            }
        }
        for other in [X_ORIGINAL_URI, X_FORWARDED_URI] {
            if !matches!(convention.uri, Source::Header(name) if name == other)
                && let Some(value) = read(other)?
                && value.trim() != uri
            {
                return Err(ForwardedError::Disagree(other));
            }
        }
        for &other in convention.other_addresses {
            if let Some(value) = read(other)?
                && address_of(other, value) != Some(client_ip)
            {
                return Err(ForwardedError::Disagree(other));
            }
        }
        Ok(Original {
            method,
            uri,
            client_ip,
        })
    }
}

/// The address a header gives: the whole of `X-Real-IP`, or the last entry
/// of `X-Forwarded-For` (the one the proxy appended; earlier entries are the
/// client's to write).
fn address_of(header: &str, value: &str) -> Option<IpAddr> {
    let entry = match header {
        X_FORWARDED_FOR => value.rsplit(',').next()?,
        _ => value,
    };
    entry.trim().parse().ok()
}

impl fmt::Display for ForwardAuthProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A proxy name that is not one keyplane knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected nginx, traefik, caddy or envoy")]
pub struct UnknownProxy;

impl FromStr for ForwardAuthProxy {
    type Err = UnknownProxy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ForwardAuthProxy::ALL
            .into_iter()
            .find(|proxy| proxy.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or(UnknownProxy)
    }
}

/// The forward-auth call itself: its method and, when the proxy put the
/// original path in the URL (`/v1/authz/check/<path>`), that path with its
/// query string, exactly as sent.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The call's method.
    pub method: &'a str,
    /// The original path, for calls to `/v1/authz/check/<path>`.
    pub path: Option<&'a str>,
}

/// A header that is repeated or is not text: a proxy sets one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// The client's request, as its proxy describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original<'a> {
    /// Its method.
    pub method: &'a str,
    /// Its path and query string, as sent.
    pub uri: &'a str,
    /// The client's address.
    pub client_ip: IpAddr,
}

/// Why a forward-auth call does not describe a request keyplane can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    /// The proxy's own header (or path) is absent: never guessed from another.
    #[error("the call lacks {0}, which this node's proxy sends")]
    Missing(&'static str),
    /// A header is repeated or is not text.
    #[error("{0} is repeated or unreadable")]
    Unreadable(&'static str),
    /// The address header does not hold an IP address.
    #[error("{0} does not end with an IP address")]
    NotAnAddress(&'static str),
    /// Another convention's header says something else: a forgery.
    #[error("{0} disagrees with what this node's proxy says about the request")]
    Disagree(&'static str),
    /// A call to `/v1/authz/check/<path>` from a node whose proxy is not Envoy.
    #[error(
        "the original path came in the URL, but this node's proxy is {0}, which sends it in a header"
    )]
    PathInUrl(ForwardAuthProxy),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header lookup over `pairs`; a name given twice is repeated.
    fn headers<'a>(
        pairs: &'a [(&'static str, &'a str)],
    ) -> impl Fn(&'static str) -> Result<Option<&'a str>, Unreadable> {
        move |name| {
            let mut found = pairs.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
            match (found.next(), found.next()) {
                (value, None) => Ok(value),
                _ => Err(Unreadable),
            }
        }
    }

    const GET: Call<'static> = Call {
        method: "GET",
        path: None,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_proxy_is_read_from_its_own_headers() {
        let nginx = [
            (X_ORIGINAL_METHOD, "POST"),
            (X_ORIGINAL_URI, "/v1/chat/completions?x=1"),
            (X_REAL_IP, "10.0.0.7"),
            (X_FORWARDED_FOR, "192.0.2.1, 10.0.0.7"),
        ];
        assert_eq!(
            ForwardAuthProxy::Nginx.original(headers(&nginx), GET),
            Ok(Original {
                method: "POST",
                uri: "/v1/chat/completions?x=1",
                client_ip: ip("10.0.0.7")
            })
        );
        let traefik = [
            (X_FORWARDED_METHOD, "POST"),
            (X_FORWARDED_URI, "/v1/chat/completions"),
            (X_FORWARDED_FOR, "10.0.0.8"),
        ];
        for proxy in [ForwardAuthProxy::Traefik, ForwardAuthProxy::Caddy] {
            assert_eq!(
                proxy.original(headers(&traefik), GET),
                Ok(Original {
                    method: "POST",
                    uri: "/v1/chat/completions",
                    client_ip: ip("10.0.0.8")
                })
            );
        }
        // Envoy appends its own address to X-Forwarded-For.
        let envoy = [
            (X_REAL_IP, "10.0.0.9"),
            (X_FORWARDED_FOR, "10.0.0.9, 10.0.0.1"),
        ];
        let call = Call {
            method: "DELETE",
            path: Some("/v1/models/llama3"),
        };
        assert_eq!(
            ForwardAuthProxy::Envoy.original(headers(&envoy), call),
            Ok(Original {
                method: "DELETE",
                uri: "/v1/models/llama3",
                client_ip: ip("10.0.0.9")
            })
        );
    }

    #[test]
    fn a_client_cannot_describe_its_own_request_to_traefik_or_caddy() {
        // Traefik and Caddy copy the client's headers into the call.
        let forged_route = [
            (X_FORWARDED_METHOD, "POST"),
            (X_FORWARDED_URI, "/v1/chat/completions"),
            (X_FORWARDED_FOR, "10.0.0.8"),
            (X_ORIGINAL_METHOD, "GET"),
            (X_ORIGINAL_URI, "/v1/models"),
        ];
        let forged_address = [
            (X_FORWARDED_METHOD, "POST"),
            (X_FORWARDED_URI, "/v1/chat/completions"),
            (X_FORWARDED_FOR, "10.0.0.8"),
            (X_REAL_IP, "192.168.1.1"),
        ];
        for proxy in [ForwardAuthProxy::Traefik, ForwardAuthProxy::Caddy] {
            assert_eq!(
                proxy.original(headers(&forged_route), GET),
                Err(ForwardedError::Disagree(X_ORIGINAL_METHOD))
            );
            assert_eq!(
                proxy.original(headers(&forged_address), GET),
                Err(ForwardedError::Disagree(X_REAL_IP))
            );
        }
    }

    #[test]
    fn a_client_cannot_describe_its_own_request_to_nginx_or_envoy() {
        let nginx = [
            (X_ORIGINAL_METHOD, "POST"),
            (X_ORIGINAL_URI, "/v1/chat/completions"),
            (X_REAL_IP, "10.0.0.7"),
            (X_FORWARDED_URI, "/v1/models"),
        ];
        assert_eq!(
            ForwardAuthProxy::Nginx.original(headers(&nginx), GET),
            Err(ForwardedError::Disagree(X_FORWARDED_URI))
        );
        let nginx_address = [
            (X_ORIGINAL_METHOD, "POST"),
            (X_ORIGINAL_URI, "/v1/chat/completions"),
            (X_REAL_IP, "10.0.0.7"),
            (X_FORWARDED_FOR, "10.0.0.7, 192.168.1.1"),
        ];
        assert_eq!(
            ForwardAuthProxy::Nginx.original(headers(&nginx_address), GET),
            Err(ForwardedError::Disagree(X_FORWARDED_FOR))
        );
        let envoy = [(X_REAL_IP, "10.0.0.9"), (X_ORIGINAL_URI, "/v1/models")];
        let call = Call {
            method: "POST",
            path: Some("/v1/chat/completions"),
        };
        assert_eq!(
            ForwardAuthProxy::Envoy.original(headers(&envoy), call),
            Err(ForwardedError::Disagree(X_ORIGINAL_URI))
        );
    }

    #[test]
    fn agreeing_headers_of_other_conventions_are_accepted() {
        let both = [
            (X_ORIGINAL_METHOD, "post"),
            (X_ORIGINAL_URI, "/v1/chat/completions"),
            (X_REAL_IP, "10.0.0.7"),
            (X_FORWARDED_METHOD, "POST"),
            (X_FORWARDED_URI, "/v1/chat/completions"),
            (X_FORWARDED_FOR, "203.0.113.5, 10.0.0.7"),
        ];
        for proxy in [
            ForwardAuthProxy::Nginx,
            ForwardAuthProxy::Traefik,
            ForwardAuthProxy::Caddy,
        ] {
            assert!(proxy.original(headers(&both), GET).is_ok(), "{proxy}");
        }
    }

    #[test]
    fn what_the_proxy_sends_is_required_never_guessed() {
        let traefik_style = [
            (X_FORWARDED_METHOD, "GET"),
            (X_FORWARDED_URI, "/v1/models"),
            (X_FORWARDED_FOR, "10.0.0.8"),
        ];
        assert_eq!(
            ForwardAuthProxy::Nginx.original(headers(&traefik_style), GET),
            Err(ForwardedError::Missing(X_ORIGINAL_METHOD))
        );
        let no_address = [(X_ORIGINAL_METHOD, "GET"), (X_ORIGINAL_URI, "/v1/models")];
        assert_eq!(
            ForwardAuthProxy::Nginx.original(headers(&no_address), GET),
            Err(ForwardedError::Missing(X_REAL_IP))
        );
        assert_eq!(
            ForwardAuthProxy::Envoy.original(headers(&traefik_style), GET),
            Err(ForwardedError::Missing("the path after /v1/authz/check"))
        );
        let call = Call {
            method: "GET",
            path: Some("/v1/models"),
        };
        assert_eq!(
            ForwardAuthProxy::Traefik.original(headers(&traefik_style), call),
            Err(ForwardedError::PathInUrl(ForwardAuthProxy::Traefik))
        );
    }

    #[test]
    fn repeated_and_malformed_headers_are_refused() {
        let repeated = [
            (X_FORWARDED_METHOD, "GET"),
            (X_FORWARDED_URI, "/v1/models"),
            (X_FORWARDED_URI, "/v1/chat/completions"),
            (X_FORWARDED_FOR, "10.0.0.8"),
        ];
        assert_eq!(
            ForwardAuthProxy::Caddy.original(headers(&repeated), GET),
            Err(ForwardedError::Unreadable(X_FORWARDED_URI))
        );
        let not_an_address = [
            (X_FORWARDED_METHOD, "GET"),
            (X_FORWARDED_URI, "/v1/models"),
            (X_FORWARDED_FOR, "10.0.0.8, unknown"),
        ];
        assert_eq!(
            ForwardAuthProxy::Caddy.original(headers(&not_an_address), GET),
            Err(ForwardedError::NotAnAddress(X_FORWARDED_FOR))
        );
    }

    #[test]
    fn proxies_are_named_as_in_settings() {
        for proxy in ForwardAuthProxy::ALL {
            assert_eq!(proxy.as_str().parse(), Ok(proxy));
        }
        assert_eq!("Traefik".parse(), Ok(ForwardAuthProxy::Traefik));
        assert_eq!("haproxy".parse::<ForwardAuthProxy>(), Err(UnknownProxy));
    }
}
