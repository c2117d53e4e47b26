//! Rate limits enforced on the node: requests and tokens per minute, per
//! key, with no call to keyplane on the request path.
//!
//! Each limited key has two token buckets, one for requests and one for
//! tokens, each holding up to a minute's worth and refilled continuously
//! (a limit of 60 rpm is one request a second, with bursts of up to 60). A
//! request is admitted on an estimate of its tokens; once the upstream says
//! what it used, [`Limiter::settle`] charges the difference, so a request
//! that used more than estimated leaves the bucket in debt and the next
//! ones wait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use keyplane_domain::Limits;
use moka::sync::Cache;
use uuid::Uuid;

use crate::openai_error;

/// How long a key's buckets are kept after its last request: by then they
/// are full again anyway.
const IDLE: Duration = Duration::from_secs(120);

/// One bucket: `level` units left of a minute's `limit`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: u64, now: Instant) -> Bucket {
        Bucket {
            level: limit as f64,
            at: now,
        }
    }

    /// Refills for the time since it was last looked at (a limit lowered
    /// meanwhile caps it at once).
    fn refill(&mut self, limit: u64, now: Instant) {
        let per_second = limit as f64 / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * per_second).min(limit as f64);
        self.at = now;
    }

    /// How long until `units` are there.
    fn wait_for(&self, limit: u64, units: f64) -> Duration {
        let missing = (units - self.level).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / limit as f64)
    }

    fn window(&self, limit: u64) -> Window {
        Window {
            limit,
            remaining: self.level.max(0.0).floor() as u64,
            reset: self.wait_for(limit, limit as f64),
        }
    }
}

#[derive(Debug, Default)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// A limit's state, as OpenAI's `x-ratelimit-*` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The limit per minute.
    pub limit: u64,
    /// What is left now.
    pub remaining: u64,
    /// Until it is whole again.
    pub reset: Duration,
}

/// A request let through: what it was charged, and the windows after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The requests window, when the key has `rpm`.
    pub requests: Option<Window>,
    /// The tokens window, when the key has `tpm`.
    pub tokens: Option<Window>,
    /// Tokens charged on the estimate (settled later).
    pub charged: u64,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

/// A request refused: which limit, when to retry, and the windows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The limit it hit (the requests limit, when both).
    pub exceeded: Exceeded,
    /// When trying again can succeed.
    pub retry_after: Duration,
    /// The requests window, when the key has `rpm`.
    pub requests: Option<Window>,
    /// The tokens window, when the key has `tpm`.
    pub tokens: Option<Window>,
}

/// Per-key buckets, bounded in number (least recently used go first).
#[derive(Clone)]
pub struct Limiter {
    keys: Cache<Uuid, Arc<Mutex<Buckets>>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("keys", &self.keys.entry_count())
            .finish()
    }
}

impl Limiter {
    /// Keeps buckets for at most `capacity` keys.
    pub fn new(capacity: u64) -> Limiter {
        Limiter {
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    fn buckets(&self, key_id: Uuid) -> Arc<Mutex<Buckets>> {
        self.keys.get_with(key_id, Arc::default)
    }

    /// Admits a request of key `key_id` under `limits`, estimated to use
    /// `estimate` tokens, or says which limit refuses it. A key with
    /// neither `rpm` nor `tpm` is always admitted, at no cost.
    pub fn admit(
        &self,
        key_id: Uuid,
        limits: &Limits,
        estimate: u64,
    ) -> Result<Admission, Limited> {
        if limits.rpm.is_none() && limits.tpm.is_none() {
            return Ok(Admission {
                requests: None,
                tokens: None,
                charged: 0,
            });
        }
        let now = Instant::now();
        let buckets = self.buckets(key_id);
        let mut buckets = buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let requests = limits.rpm.map(|limit| {
            let bucket = buckets.requests.get_or_insert(Bucket::full(limit, now));
            bucket.refill(limit, now);
            (limit, bucket.level)
        });
        let tokens = limits.tpm.map(|limit| {
            let bucket = buckets.tokens.get_or_insert(Bucket::full(limit, now));
            bucket.refill(limit, now);
            (limit, bucket.level)
        });
        // An estimate above a whole minute's worth waits only for a full bucket.
        let needed = |limit: u64| estimate.min(limit).max(1) as f64;
        let exceeded = match (requests, tokens) {
            (Some((_, level)), _) if level < 1.0 => Some(Exceeded::Requests),
            (_, Some((limit, level))) if level < needed(limit) => Some(Exceeded::Tokens),
            _ => None,
        };
        let windows = |buckets: &Buckets| {
            (
                buckets.requests.zip(limits.rpm).map(|(b, l)| b.window(l)),
                buckets.tokens.zip(limits.tpm).map(|(b, l)| b.window(l)),
            )
        };
        if let Some(exceeded) = exceeded {
            let retry_after = match exceeded {
                Exceeded::Requests => buckets
                    .requests
                    .zip(limits.rpm)
                    .map(|(b, limit)| b.wait_for(limit, 1.0)),
                Exceeded::Tokens => buckets
                    .tokens
                    .zip(limits.tpm)
                    .map(|(b, limit)| b.wait_for(limit, needed(limit))),
            }
            .unwrap_or_default();
            let (requests, tokens) = windows(&buckets);
            return Err(Limited {
                exceeded,
                retry_after,
                requests,
                tokens,
            });
        }
        if let Some(bucket) = &mut buckets.requests {
            bucket.level -= 1.0;
        }
        let charged = match &mut buckets.tokens {
            Some(bucket) => {
                bucket.level -= estimate as f64;
                estimate
            }
            None => 0,
        };
        let (requests, tokens) = windows(&buckets);
        Ok(Admission {
            requests,
            tokens,
            charged,
        })
    }

    /// Settles a request charged `charged` tokens that used `used`: the
    /// difference goes back, or is taken (into debt, if need be).
    pub fn settle(&self, key_id: Uuid, limits: &Limits, charged: u64, used: u64) {
        let Some(limit) = limits.tpm else {
            return;
        };
        if charged == used {
            return;
        }
        let buckets = self.buckets(key_id);
        let mut buckets = buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let bucket = buckets.tokens.get_or_insert(Bucket::full(limit, now));
        bucket.refill(limit, now);
        bucket.level = (bucket.level + charged as f64 - used as f64).min(limit as f64);
    }
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it:
/// `250ms`, `1.5s`, `6m0s`.
pub fn reset_text(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = duration.as_secs();
    format!("{}m{}s", whole / 60, whole % 60)
}

/// Puts OpenAI's `x-ratelimit-*` headers for `requests` and `tokens` on `headers`.
pub fn window_headers(headers: &mut HeaderMap, requests: Option<Window>, tokens: Option<Window>) {
    for (kind, window) in [("requests", requests), ("tokens", tokens)] {
        let Some(window) = window else { continue };
        for (name, value) in [
            (
                format!("x-ratelimit-limit-{kind}"),
                window.limit.to_string(),
            ),
            (
                format!("x-ratelimit-remaining-{kind}"),
                window.remaining.to_string(),
            ),
            (
                format!("x-ratelimit-reset-{kind}"),
                reset_text(window.reset),
            ),
        ] {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
    }
}

impl Limited {
    /// OpenAI's answer: 429 `rate_limit_exceeded`, with the windows and
    /// `Retry-After` (whole seconds) and `retry-after-ms`, which the
    /// `openai` packages honour when they retry.
    pub fn to_response(&self) -> Response<Body> {
        let what = match self.exceeded {
            Exceeded::Requests => "requests per minute",
            Exceeded::Tokens => "tokens per minute",
        };
        let mut response = openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            &format!(
                "Rate limit reached for this API key ({what}); try again in {}.",
                reset_text(self.retry_after)
            ),
        );
        let headers = response.headers_mut();
        window_headers(headers, self.requests, self.tokens);
        let millis = self.retry_after.as_millis().max(1);
        let seconds = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        for (name, value) in [
            ("retry-after", seconds.max(1).to_string()),
            ("retry-after-ms", millis.to_string()),
        ] {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u64>, tpm: Option<u64>) -> Limits {
        Limits {
            rpm,
            tpm,
            ..Limits::default()
        }
    }

    #[test]
    fn a_minute_of_requests_then_refusals_with_a_retry_time() {
        let limiter = Limiter::new(100);
        let key = Uuid::new_v4();
        let limits = limits(Some(60), None);
        for n in 0..60 {
            let admitted = limiter.admit(key, &limits, 0).unwrap();
            assert_eq!(admitted.requests.unwrap().remaining, 59 - n);
            assert_eq!(admitted.tokens, None);
        }
        let refused = limiter.admit(key, &limits, 0).unwrap_err();
        assert_eq!(refused.exceeded, Exceeded::Requests);
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        assert!(
            refused.retry_after > Duration::from_millis(900),
            "{refused:?}"
        );
        assert_eq!(refused.requests.unwrap().remaining, 0);
        // Another key has its own.
        assert!(limiter.admit(Uuid::new_v4(), &limits, 0).is_ok());
    }

    #[test]
    fn tokens_are_charged_on_the_estimate_and_settled_on_use() {
        let limiter = Limiter::new(100);
        let key = Uuid::new_v4();
        let limits = limits(None, Some(1000));
        let admitted = limiter.admit(key, &limits, 300).unwrap();
        assert_eq!(admitted.charged, 300);
        assert_eq!(admitted.tokens.unwrap().remaining, 700);
        // It used 900: 600 more are taken, into debt if need be.
        limiter.settle(key, &limits, 300, 900);
        let refused = limiter.admit(key, &limits, 200).unwrap_err();
        assert_eq!(refused.exceeded, Exceeded::Tokens);
        assert!(refused.tokens.unwrap().remaining <= 100);
        // 100 tokens are there; 200 come in about six seconds.
        assert!(refused.retry_after > Duration::from_secs(5), "{refused:?}");
        // It used nothing after all: all of it back.
        limiter.settle(key, &limits, 900, 0);
        assert!(limiter.admit(key, &limits, 200).is_ok());
    }

    #[test]
    fn an_unlimited_key_costs_nothing_and_a_huge_estimate_waits_for_a_full_bucket() {
        let limiter = Limiter::new(100);
        let key = Uuid::new_v4();
        assert_eq!(
            limiter
                .admit(key, &Limits::default(), 1_000_000)
                .unwrap()
                .charged,
            0
        );
        assert_eq!(limiter.keys.entry_count(), 0);
        let limits = limits(None, Some(100));
        assert!(limiter.admit(key, &limits, 1_000_000).is_ok());
        assert!(limiter.admit(key, &limits, 1).is_err());
    }

    #[test]
    fn refusals_speak_openai() {
        let limiter = Limiter::new(100);
        let key = Uuid::new_v4();
        let limits = limits(Some(1), Some(50));
        limiter.admit(key, &limits, 10).unwrap();
        let response = limiter.admit(key, &limits, 10).unwrap_err().to_response();
        assert_eq!(response.status(), 429);
        let h = response.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "1");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-limit-tokens"], "50");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "40");
        assert_eq!(h["retry-after"], "60");
        let ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
        assert!((59_000..=60_000).contains(&ms), "{ms}");
        assert!(
            h["x-ratelimit-reset-requests"]
                .to_str()
                .unwrap()
                .ends_with('s')
        );
    }

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(reset_text(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(1)), "1s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }
}
