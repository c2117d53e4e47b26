//! Where webhook deliveries may go.
//!
//! An endpoint URL is an operator's to choose, but keyplane makes the
//! request: pointed at a cloud's metadata service, a link-local address or
//! a private network, it would be a way to reach what sits behind keyplane.
//! Internal addresses are refused unless a setting allows their network
//! (loopback is allowed in `dev`), when an endpoint is registered and again
//! at every delivery, after each name is resolved (a name that resolved to
//! a public address yesterday may resolve to a private one today).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The networks deliveries may reach despite being internal.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed: Arc<Vec<IpNet>>,
    loopback: bool,
}

/// Addresses deliveries may not reach unless allowed: loopback, private,
/// shared (CGNAT), link-local (cloud metadata services live there), unique
/// local, unspecified, multicast and broadcast.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
            }
        },
    }
}

impl Destinations {
    /// Internal addresses refused but for `allowed` networks (and loopback
    /// when `loopback`).
    pub fn new(allowed: Vec<IpNet>, loopback: bool) -> Destinations {
        Destinations {
            allowed: Arc::new(allowed),
            loopback,
        }
    }

    /// Whether deliveries may reach `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !internal(ip)
            || (self.loopback && ip.to_canonical().is_loopback())
            || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// The addresses of `host` deliveries may use: all of them, or an error
    /// naming the first refused one. A name is resolved here, now.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::net::lookup_host((host, port)),
            )
            .await
            .map_err(|_| format!("{host} did not resolve in time"))?
            .map_err(|_| format!("{host} does not resolve"))?
            .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{host} does not resolve"));
        }
        match addrs.iter().find(|addr| !self.permits(addr.ip())) {
            Some(refused) => Err(format!(
                "{host} resolves to {}, an internal address (allow its network with KEYPLANE_WEBHOOK_ALLOW_NETWORKS)",
                refused.ip()
            )),
            None => Ok(addrs),
        }
    }
}

impl reqwest::dns::Resolve for Destinations {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = Destinations::resolve(&this, name.as_str(), 0)
                .await
                .map_err(|err| -> Box<dyn std::error::Error + Send + Sync> { err.into() })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let strict = Destinations::new(Vec::new(), false);
        for refused in [
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!strict.permits(ip(refused)), "{refused}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "100.128.0.1"] {
            assert!(strict.permits(ip(public)), "{public}");
        }
        let dev = Destinations::new(Vec::new(), true);
        assert!(dev.permits(ip("127.0.0.1")) && dev.permits(ip("::1")));
        assert!(!dev.permits(ip("169.254.169.254")));
        let allowed = Destinations::new(vec!["10.0.0.0/8".parse().unwrap()], false);
        assert!(allowed.permits(ip("10.1.2.3")));
        assert!(!allowed.permits(ip("192.168.1.1")));
    }
}
