//! Webhooks, signed the way the Standard Webhooks specification says: each
//! delivery carries `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed
//! with the endpoint's `whsec_` secret. Events are queued in the transaction
//! of the change they announce and delivered by the scheduler.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use keyplane_domain::Mode;
use keyplane_store::webhooks::{self, Delivery};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgConnection;
use zeroize::Zeroizing;

use crate::destinations::Destinations;
use crate::refusal::Refusal;
use crate::signing::MasterKey;
use crate::state::AppState;

/// The events an endpoint can ask for.
pub const EVENTS: [&str; 7] = [
    "key.expiring",
    "key.rotated",
    "key.revoked",
    "instance.decommissioned",
    "node.mode_weaker",
    "credential.expiring",
    "key.leaked",
];

/// Binds sealed secrets to their purpose.
pub(crate) const SEAL_CONTEXT: &[u8] = b"keyplane webhook secret";
/// The prefix of a secret as shown to operators.
const SECRET_PREFIX: &str = "whsec_";
/// A failing delivery is given up after this many attempts.
pub const MAX_ATTEMPTS: i32 = 10;
/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries attempted per scheduler run.
const BATCH: i64 = 50;

/// Queues `event` with `data` for every endpoint that wants it, inside the
/// caller's transaction: the event is sent if and only if the change commits.
pub async fn notify(
    conn: &mut PgConnection,
    event: &'static str,
    data: Value,
    now: DateTime<Utc>,
) -> Result<(), keyplane_store::StoreError> {
    debug_assert!(EVENTS.contains(&event));
    let payload = json!({
        "type": event,
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    });
    webhooks::enqueue(conn, event, &payload, now).await?;
    Ok(())
}

/// A new signing secret: the raw bytes sealed for storage, and the
/// `whsec_…` text shown to the operator once.
pub fn new_secret(master: &MasterKey) -> anyhow::Result<(Vec<u8>, String)> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
    let sealed = master.seal(bytes.as_ref(), SEAL_CONTEXT)?;
    Ok((
        sealed,
        format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes.as_ref())),
    ))
}

/// The longest endpoint URL accepted.
const MAX_URL: usize = 2048;

/// An endpoint URL: http(s) with a host, https outside `dev`, no
/// credentials in it.
pub fn endpoint_url(mode: Mode, text: &str) -> Result<String, Refusal> {
    let bad = |detail: &str| Refusal::invalid("url", detail);
    if text.len() > MAX_URL {
        return Err(bad("url must be at most 2048 characters"));
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|_| bad("url must be an absolute http(s) URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad("url must be an absolute http(s) URL"))?;
    if authority.as_str().contains('@') {
        return Err(bad("url must not carry credentials"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(text.to_owned()),
        Some("http") if mode == Mode::Dev => Ok(text.to_owned()),
        Some("http") => Err(Refusal::policy(
            "url",
            format!("{mode} mode delivers webhooks over https only"),
        )),
        _ => Err(bad("url must be an absolute http(s) URL")),
    }
}

/// `v1,<signature>` of `body` sent as delivery `id` at `timestamp`.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; were it to refuse one, the empty
    // signature would fail verification, never pass it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempts + 1`: `base` doubled per attempt made,
/// at most an hour.
pub fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

/// Attempts every due delivery (up to a batch), each at most once.
pub async fn deliver_due(state: &AppState, http: &reqwest::Client) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let lease = now + chrono::Duration::from_std(ATTEMPT_TIMEOUT * 6)?;
    let due = webhooks::claim_due(state.db.pool(), now, lease, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut endpoints = HashMap::new();
    for delivery in &due {
        if let std::collections::hash_map::Entry::Vacant(entry) =
            endpoints.entry(delivery.webhook_id)
        {
            entry.insert(webhooks::get(state.db.pool(), delivery.webhook_id).await?);
        }
    }
    let attempts = due.iter().map(|delivery| {
        let hook = endpoints.get(&delivery.webhook_id).cloned().flatten();
        attempt(state, http, delivery, hook)
    });
    let count = due.len();
    for result in futures_util::future::join_all(attempts).await {
        if let Err(err) = result {
            tracing::warn!(error = %format!("{err:#}"), "could not record a webhook delivery");
        }
    }
    Ok(count)
}

/// One attempt of `delivery`, recorded.
async fn attempt(
    state: &AppState,
    http: &reqwest::Client,
    delivery: &Delivery,
    hook: Option<webhooks::Webhook>,
) -> anyhow::Result<()> {
    let outcome = match &hook {
        None => Err((None, "endpoint deleted".to_owned())),
        Some(hook) => match secrets(state, hook) {
            None => Err((
                None,
                "secret cannot be opened with this master key".to_owned(),
            )),
            Some(secrets) => match reachable(&state.destinations, &hook.url).await {
                Err(refused) => Err((None, refused)),
                Ok(()) => send(http, hook, delivery, &secrets).await,
            },
        },
    };
    let now = state.clock.now();
    let (delivered, status, error) = match outcome {
        Ok(status) => (true, Some(status), None),
        Err((status, error)) => (false, status, Some(error)),
    };
    let retry_at = (!delivered && hook.is_some() && delivery.attempts < MAX_ATTEMPTS)
        .then(|| {
            chrono::Duration::from_std(retry_delay(
                state.settings.webhook_retry_base,
                delivery.attempts,
            ))
            .map(|delay| now + delay)
            .ok()
        })
        .flatten();
    if delivered {
        tracing::info!(delivery = %delivery.id, event = %delivery.event, "webhook delivered");
    } else {
        tracing::warn!(
            delivery = %delivery.id,
            event = %delivery.event,
            attempts = delivery.attempts,
            error = error.as_deref().unwrap_or(""),
            retry = retry_at.is_some(),
            "webhook delivery failed"
        );
    }
    webhooks::record_attempt(
        state.db.pool(),
        delivery.id,
        delivered,
        status,
        error.as_deref(),
        now,
        retry_at,
    )
    .await?;
    Ok(())
}

/// The secrets a delivery to `hook` is signed with now: its own, and after
/// a rotation, the previous one until its grace window ends.
fn secrets(state: &AppState, hook: &webhooks::Webhook) -> Option<Vec<Zeroizing<Vec<u8>>>> {
    let mut secrets = vec![state.master.open(&hook.secret_sealed, SEAL_CONTEXT)?];
    if let (Some(previous), Some(until)) =
        (&hook.previous_secret_sealed, hook.previous_secret_until)
        && state.clock.now() < until
    {
        secrets.push(state.master.open(previous, SEAL_CONTEXT)?);
    }
    Some(secrets)
}

/// Whether an endpoint may be reached now (its name resolved again): an
/// address literal is checked here, as the client's resolver sees only names.
async fn reachable(destinations: &Destinations, url: &str) -> Result<(), String> {
    let (host, port) = host_and_port(url).ok_or_else(|| "the URL has no host".to_owned())?;
    destinations.resolve(&host, port).await.map(drop)
}

/// Posts the signed payload; Ok with the status of a 2xx answer.
async fn send(
    http: &reqwest::Client,
    hook: &webhooks::Webhook,
    delivery: &Delivery,
    secrets: &[Zeroizing<Vec<u8>>],
) -> Result<i32, (Option<i32>, String)> {
    let body = serde_json::to_vec(&delivery.payload.0).map_err(|e| (None, e.to_string()))?;
    let id = delivery.id.to_string();
    let timestamp = Utc::now().timestamp();
    let answer = http
        .post(&hook.url)
        .timeout(ATTEMPT_TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        // One signature per secret, space-separated (Standard Webhooks):
        // a receiver holding either verifies.
        .header(
            "webhook-signature",
            secrets
                .iter()
                .map(|secret| signature(secret, &id, timestamp, &body))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .body(body)
        .send()
        .await
        // The URL may carry the receiver's own secret: never in an error.
        .map_err(|err| (None, err.without_url().to_string()))?;
    let status = i32::from(answer.status().as_u16());
    if answer.status().is_success() {
        Ok(status)
    } else {
        Err((Some(status), format!("answered {}", answer.status())))
    }
}

/// The HTTP client deliveries use: no redirects (an endpoint cannot bounce
/// a signed event elsewhere), bounded connect time, and names resolved only
/// to addresses `destinations` permits, at every connection.
pub fn client(destinations: &Destinations) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .dns_resolver(std::sync::Arc::new(destinations.clone()))
        .user_agent(concat!("keyplane-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// The host and port of an endpoint URL.
pub fn host_and_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some((uri.host()?.to_owned(), port))
}

/// What operators who are not admins see of an endpoint URL: its origin.
/// The path and query often carry the receiver's own secret (a Slack or
/// Teams webhook, a token parameter).
pub fn masked_url(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "…".to_owned();
    };
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}/…"),
        _ => "…".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification's test vectors.
        let secret = STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_default();
        let signed = signature(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn urls_are_masked_to_their_origin() {
        assert_eq!(
            masked_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            masked_url("http://127.0.0.1:9000/h?token=x"),
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(masked_url("not a url"), "…");
    }

    #[test]
    fn retries_back_off_doubling_up_to_an_hour() {
        let base = Duration::from_secs(10);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(10));
        assert_eq!(retry_delay(base, 2), Duration::from_secs(20));
        assert_eq!(retry_delay(base, 4), Duration::from_secs(80));
        assert_eq!(retry_delay(base, 30), MAX_RETRY_DELAY);
    }
}
