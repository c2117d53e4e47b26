//! Usage, counted on the node and reported to keyplane in batches
//! (`POST /v1/usage/reports`): requests, prompt and completion tokens and
//! errors, by key, model and minute. Nothing is sent per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyplane_domain::{KeySecret, MAX_MODEL_LEN};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Introspector;
use crate::net::without_url;

/// The most (key, model, minute) entries held while keyplane cannot be
/// reached; past it, new counts are dropped (and counted as dropped).
const MAX_PENDING: usize = 50_000;
/// The most items one report carries (keyplane's own bound).
const REPORT_ITEMS: usize = 150;
/// Counts older than this are not reported any more (keyplane refuses
/// them past 48 hours).
const OLDEST: i64 = 47 * 3600;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    errors: i64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.errors = self.errors.saturating_add(other.errors);
    }
}

/// (key, model, minute as Unix seconds)
type Slot = (Uuid, String, i64);

#[derive(Debug, Default)]
struct Pending {
    slots: HashMap<Slot, Counts>,
    dropped: u64,
}

/// One item of a report, as keyplane reads it.
#[derive(Debug, Serialize)]
struct Item<'a> {
    key_id: Uuid,
    model: &'a str,
    minute: String,
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    errors: i64,
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    refused: Vec<serde_json::Value>,
}

/// What one request used, to be reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Whether the request failed.
    pub error: bool,
}

/// Counts usage and reports it; cheap to clone (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct UsageRecorder {
    pending: Arc<Mutex<Pending>>,
    /// Held while a report is out: a report asked for meanwhile waits for
    /// it, so that once `report` returns keyplane has every count taken
    /// before the call (budget leases rely on it).
    sending: Arc<tokio::sync::Mutex<()>>,
}

/// A model name as it may be reported: at most 128 bytes, without control
/// characters, and never something that looks like a key.
fn reportable(model: &str) -> String {
    if KeySecret::parse(model.trim()).is_ok() {
        return "(redacted)".to_owned();
    }
    let mut name: String = model.chars().filter(|c| !c.is_control()).collect();
    while name.len() > MAX_MODEL_LEN {
        name.pop();
    }
    name
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

impl UsageRecorder {
    /// An empty recorder.
    pub fn new() -> UsageRecorder {
        UsageRecorder::default()
    }

    /// Counts one request of `key_id` for `model` (empty: none named).
    pub fn record(&self, key_id: Uuid, model: &str, used: Used) {
        let minute = unix_now() / 60 * 60;
        let counts = Counts {
            requests: 1,
            prompt_tokens: i64::try_from(used.prompt_tokens).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(used.completion_tokens).unwrap_or(i64::MAX),
            errors: i64::from(used.error),
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let slot = (key_id, reportable(model), minute);
        let full = pending.slots.len() >= MAX_PENDING;
        match pending.slots.get_mut(&slot) {
            Some(existing) => existing.add(counts),
            None if full => pending.dropped += 1,
            None => {
                pending.slots.insert(slot, counts);
            }
        }
    }

    /// Counts held back because too many were waiting to be reported.
    pub fn dropped(&self) -> u64 {
        self.pending.lock().map_or(0, |p| p.dropped)
    }

    /// Whether anything waits to be reported.
    pub fn is_empty(&self) -> bool {
        self.pending.lock().map_or(true, |p| p.slots.is_empty())
    }

    /// Reports everything counted so far. What keyplane could not be
    /// reached for is kept for the next time; what it refused is dropped.
    pub async fn report(&self, to: &Introspector) -> Result<(), ReportError> {
        let _sending = self.sending.lock().await;
        let taken = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut pending.slots),
            Err(_) => return Ok(()),
        };
        let oldest = unix_now() - OLDEST;
        let mut slots: Vec<(Slot, Counts)> = taken
            .into_iter()
            .filter(|((_, _, minute), _)| *minute >= oldest)
            .collect();
        slots.sort_by_key(|slot| slot.0.2);
        let base = to.base_url();
        let url = format!("{base}/v1/usage/reports");
        let mut outcome = Ok(());
        let mut unsent = Vec::new();
        for batch in slots.chunks(REPORT_ITEMS) {
            if outcome.is_err() {
                unsent.extend_from_slice(batch);
                continue;
            }
            let items: Vec<Item<'_>> = batch
                .iter()
                .map(|((key_id, model, minute), counts)| Item {
                    key_id: *key_id,
                    model,
                    minute: rfc3339(*minute),
                    requests: counts.requests,
                    prompt_tokens: counts.prompt_tokens,
                    completion_tokens: counts.completion_tokens,
                    errors: counts.errors,
                })
                .collect();
            let sent = to
                .http()
                .post(&url)
                .bearer_auth(to.node_key().expose_secret())
                .timeout(Duration::from_secs(10))
                .json(&serde_json::json!({ "items": items }))
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().is_success() => {
                    if let Ok(answer) = answer.json::<Answer>().await
                        && !answer.refused.is_empty()
                    {
                        tracing::warn!(
                            refused = answer.refused.len(),
                            "keyplane refused usage of keys it never answered this node about"
                        );
                    }
                }
                Ok(answer) if answer.status().is_client_error() => {
                    let status = answer.status();
                    tracing::error!(%status, "keyplane refused a usage report; its counts are dropped");
                    outcome = Err(ReportError::Refused(status.as_u16()));
                }
                Ok(answer) => {
                    unsent.extend_from_slice(batch);
                    to.endpoints().failed(&base);
                    outcome = Err(ReportError::Unavailable(answer.status().to_string()));
                }
                Err(err) => {
                    unsent.extend_from_slice(batch);
                    to.endpoints().failed(&base);
                    outcome = Err(ReportError::Unavailable(without_url(err).to_string()));
                }
            }
        }
        if !unsent.is_empty()
            && let Ok(mut pending) = self.pending.lock()
        {
            for (slot, counts) in unsent {
                pending.slots.entry(slot).or_default().add(counts);
            }
        }
        outcome
    }

    /// Reports every `every` until the handle is dropped or aborted.
    pub fn report_every(&self, to: Introspector, every: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if this.is_empty() {
                    continue;
                }
                if let Err(err) = this.report(&to).await {
                    tracing::warn!(error = %err, "could not report usage; trying again later");
                }
            }
        })
    }
}

/// Why a report did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// keyplane could not be reached, or failed: the counts are kept.
    #[error("keyplane is unavailable: {0}")]
    Unavailable(String),
    /// keyplane refused the report (status): its counts are dropped.
    #[error("keyplane refused the report ({0})")]
    Refused(u16),
}

/// The minute starting `seconds` after the Unix epoch, as RFC 3339 (UTC).
pub(crate) fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_614_260), "2026-12-07T03:31:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn counts_add_up_per_key_model_and_minute_and_stay_bounded() {
        let recorder = UsageRecorder::new();
        let key = Uuid::new_v4();
        let used = Used {
            prompt_tokens: 10,
            completion_tokens: 5,
            error: false,
        };
        recorder.record(key, "llama3", used);
        recorder.record(
            key,
            "llama3",
            Used {
                error: true,
                ..used
            },
        );
        recorder.record(key, "phi3", used);
        let pending = recorder.pending.lock().unwrap();
        assert_eq!(pending.slots.len(), 2);
        let llama = pending
            .slots
            .iter()
            .find(|(s, _)| s.1 == "llama3")
            .unwrap()
            .1;
        assert_eq!(
            *llama,
            Counts {
                requests: 2,
                prompt_tokens: 20,
                completion_tokens: 10,
                errors: 1
            }
        );
        drop(pending);
        // A key in a model's place is never reported as such.
        let secret = KeySecret::generate(keyplane_domain::KeyKind::Instance).unwrap();
        recorder.record(key, secret.expose(), used);
        let pending = recorder.pending.lock().unwrap();
        assert!(pending.slots.keys().any(|s| s.1 == "(redacted)"));
        assert!(!pending.slots.keys().any(|s| s.1.contains(secret.expose())));
        assert_eq!(reportable(&"m".repeat(300)).len(), MAX_MODEL_LEN);
    }
}
