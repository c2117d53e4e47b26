//! Several keyplane replicas behind one setting (`KEYPLANE_URL` takes a
//! comma-separated list): calls go to the one that answered last, and a
//! replica that fails is skipped for a while, with backoff, so the others
//! take its place at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyplane_domain::Mode;

use crate::config::{ConfigError, require_https};

/// The most replicas one setting may name.
const MOST: usize = 16;
/// How long a failed replica is skipped at first, and at most.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Skipped until then (unless every replica is).
    skip_until: Option<Instant>,
    /// The next skip's length.
    backoff: Duration,
}

/// keyplane's replicas; cheap to clone (clones share what they learned).
#[derive(Debug, Clone)]
pub struct Endpoints {
    urls: Arc<[String]>,
    preferred: Arc<AtomicUsize>,
    health: Arc<Mutex<Vec<Health>>>,
}

impl Endpoints {
    /// Reads `text`, one base URL or several separated by commas, each an
    /// http(s) URL (HTTPS outside `dev`, unless on this host).
    pub fn parse(text: &str, mode: Mode) -> Result<Endpoints, ConfigError> {
        let mut urls: Vec<String> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let url = part.trim_end_matches('/');
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || url.len() <= "https://".len() || url.contains(char::is_whitespace) {
                return Err(ConfigError::Url(url.to_owned()));
            }
            require_https(mode, url)?;
            if !urls.iter().any(|known| known == url) {
                urls.push(url.to_owned());
            }
        }
        if urls.is_empty() || urls.len() > MOST {
            return Err(ConfigError::Url(text.trim().to_owned()));
        }
        let health = vec![Health::default(); urls.len()];
        Ok(Endpoints {
            urls: urls.into(),
            preferred: Arc::default(),
            health: Arc::new(Mutex::new(health)),
        })
    }

    /// Every replica, as given.
    pub fn all(&self) -> &[String] {
        &self.urls
    }

    /// The replica to call now: the one that answered last, unless it is
    /// being skipped.
    pub fn current(&self) -> &str {
        self.in_order()
            .into_iter()
            .next()
            .map_or(self.urls[0].as_str(), |i| self.urls[i].as_str())
    }

    /// The replicas to try, in order: the preferred one, then the others
    /// not being skipped, then those being skipped (the soonest back first).
    pub fn order(&self) -> Vec<&str> {
        self.in_order()
            .into_iter()
            .map(|i| self.urls[i].as_str())
            .collect()
    }

    fn in_order(&self) -> Vec<usize> {
        let now = Instant::now();
        let preferred = self.preferred.load(Ordering::Relaxed) % self.urls.len();
        let health = self
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| vec![Health::default(); self.urls.len()]);
        let mut order: Vec<usize> = (0..self.urls.len()).collect();
        // Stable: after the sort, the preferred one leads its group.
        order.rotate_left(preferred);
        order.sort_by_key(|&i| health[i].skip_until.filter(|until| *until > now));
        order
    }

    /// `url` failed (could not be reached, or answered 5xx): skip it for a
    /// while, longer each time in a row.
    pub fn failed(&self, url: &str) {
        let Some(index) = self.urls.iter().position(|u| u == url) else {
            return;
        };
        if let Ok(mut health) = self.health.lock() {
            let entry = &mut health[index];
            let backoff = entry.backoff.max(BACKOFF_FIRST);
            entry.skip_until = Some(Instant::now() + backoff);
            entry.backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        if self.urls.len() > 1 {
            tracing::warn!(keyplane = %url, "a keyplane replica failed; trying the others");
        }
    }

    /// `url` answered: prefer it, and forget its failures.
    pub fn answered(&self, url: &str) {
        let Some(index) = self.urls.iter().position(|u| u == url) else {
            return;
        };
        self.preferred.store(index, Ordering::Relaxed);
        if let Ok(mut health) = self.health.lock() {
            health[index] = Health::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_read_and_checked_url_by_url() {
        let endpoints = Endpoints::parse(
            "https://a.example:8443/, https://b.example,https://a.example:8443",
            Mode::Prod,
        )
        .unwrap();
        assert_eq!(
            endpoints.all(),
            ["https://a.example:8443", "https://b.example"]
        );
        assert!(Endpoints::parse("https://a.example,http://b.example", Mode::Prod).is_err());
        assert!(Endpoints::parse("http://127.0.0.1:8080,http://[::1]:8080", Mode::Prod).is_ok());
        assert!(Endpoints::parse(" , ", Mode::Dev).is_err());
        assert!(Endpoints::parse("https://a b", Mode::Dev).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("https://k{i}.example")).collect();
        assert!(Endpoints::parse(&many.join(","), Mode::Prod).is_err());
    }

    #[test]
    fn a_failed_replica_is_skipped_and_the_one_that_answers_is_kept() {
        let endpoints =
            Endpoints::parse("http://a.test,http://b.test,http://c.test", Mode::Dev).unwrap();
        assert_eq!(endpoints.current(), "http://a.test");
        endpoints.failed("http://a.test");
        assert_eq!(
            endpoints.order(),
            ["http://b.test", "http://c.test", "http://a.test"]
        );
        endpoints.answered("http://c.test");
        assert_eq!(endpoints.current(), "http://c.test");
        // Every replica failing: all still tried, the soonest back first.
        endpoints.failed("http://b.test");
        endpoints.failed("http://c.test");
        assert_eq!(endpoints.order().len(), 3);
        endpoints.answered("http://a.test");
        assert_eq!(endpoints.current(), "http://a.test");
    }
}
