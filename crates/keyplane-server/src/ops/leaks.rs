//! Leaked keys die within seconds: anyone may report a string that looks
//! like a keyplane key (the way secret-scanning services report leaks),
//! and a key that works is stopped at once.
//!
//! Holding a key is all it takes to report it: whoever holds it could use
//! it, so stopping it is never a loss to the rightful holder that the leak
//! did not already cause. The answer is the same whatever was reported, so
//! reporting is no way to learn whether a key exists; a key reported twice
//! is stopped once.

use std::collections::HashSet;

use keyplane_domain::{KeyKind, KeySecret};
use keyplane_store::{admin_keys, enrollment, keys, nodes, people};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::events::Event;
use crate::ops::keys::revoke_locked;
use crate::ops::{Actor, Apply, Change, Credential, Ops, Refusal};

/// The most strings one report may carry.
pub const MAX_REPORTED: usize = 100;
/// The longest `url` kept (longer ones are cut).
const MAX_URL: usize = 2048;
/// The longest `source` and `type` kept.
const MAX_LABEL: usize = 128;
/// The longest string looked at as a key (longer ones cannot be keys).
const MAX_TOKEN: usize = 1024;

/// Who reports a leak: anyone. A secret scanning service signs its reports
/// (GitHub: `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`).
#[derive(Debug, Clone, Default)]
pub struct Reporter {
    /// The identifier of the key that says it signed the report, and the
    /// signature (base64 DER), as sent.
    pub signature: Option<(String, String)>,
}

/// The refusal of a report whose signature does not verify.
fn bad_signature() -> Refusal {
    Refusal::Unauthenticated {
        code: "invalid_signature",
        detail: "the report's signature does not verify against a configured leak report key",
    }
}

/// One string found where it should not be.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LeakReport {
    /// The string found.
    pub token: String,
    /// The reporter's name for what it matched (GitHub sends its token type).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Where it was found.
    #[serde(default)]
    pub url: Option<String>,
    /// What kind of place that is (GitHub: `content`, `commit`, `issue`, ...).
    #[serde(default)]
    pub source: Option<String>,
}

/// A report: one finding, or a list of them (GitHub's secret scanning
/// partner format).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LeakReports {
    /// One finding.
    One(LeakReport),
    /// Up to 100 findings.
    Many(Vec<LeakReport>),
}

/// The answer to every well-formed report, whatever it held.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakReportAnswer {
    /// How many findings the report held.
    pub received: usize,
}

/// Text from a report, cut to `max` characters and stripped of control
/// characters, for the audit log and webhooks.
fn label(text: Option<&str>, max: usize) -> Option<String> {
    text.map(|text| {
        text.chars()
            .filter(|c| !c.is_control())
            .take(max)
            .collect::<String>()
    })
}

impl Ops<Reporter> {
    /// Stops every working key among the findings, once: an instance key or
    /// admin key is revoked, a node key stops (an operator then rotates the
    /// node, whose id stays), an enrollment token is revoked. Each is audited
    /// with where it was found, and announced (webhook `key.leaked`; an
    /// instance key on the revocation stream, so nodes drop it at once).
    ///
    /// A signed report must verify against a key of
    /// `KEYPLANE_LEAK_REPORT_KEYS` over `body`, the bytes `report` was read
    /// from; an unsigned one is counted against its address's budget.
    pub async fn report_leaks(
        &self,
        report: LeakReports,
        body: &[u8],
    ) -> Result<LeakReportAnswer, Refusal> {
        let keys = &self.state.settings.leak_report_keys;
        let signed_by = match &self.actor.signature {
            Some((id, signature)) if keys.verify(id, signature, body) => Some(id.clone()),
            Some(_) => return Err(bad_signature()),
            None => {
                self.state.limits.check_leak_report(self.origin.client_ip)?;
                None
            }
        };
        let findings = match report {
            LeakReports::One(finding) => vec![finding],
            LeakReports::Many(findings) => findings,
        };
        if findings.len() > MAX_REPORTED {
            return Err(Refusal::invalid(
                "token",
                format!("at most {MAX_REPORTED} findings in one report"),
            ));
        }
        let received = findings.len();
        let mut seen = HashSet::new();
        let keys: Vec<(KeySecret, &LeakReport)> = findings
            .iter()
            .filter(|finding| finding.token.len() <= MAX_TOKEN)
            .filter_map(|finding| {
                KeySecret::parse(finding.token.trim())
                    .ok()
                    .map(|key| (key, finding))
            })
            .filter(|(key, _)| seen.insert(*key.digest().as_bytes()))
            .collect();
        if keys.is_empty() {
            return Ok(LeakReportAnswer { received });
        }
        let now = self.now();
        let mut change = self.change(Apply, &Actor::LeakReport, now).await?;
        for (key, finding) in &keys {
            let found = json!({
                "url": label(finding.url.as_deref(), MAX_URL),
                "source": label(finding.source.as_deref(), MAX_LABEL),
                "type": label(finding.kind.as_deref(), MAX_LABEL),
                "signed_by": signed_by,
            });
            stop(&mut change, key, found).await?;
        }
        change.finish(LeakReportAnswer { received }).await
    }
}

/// Stops `key` if it works, audited and announced with `found`.
async fn stop(
    change: &mut Change<'_, Apply>,
    key: &KeySecret,
    found: Value,
) -> Result<(), Refusal> {
    let now = change.at();
    let digest = key.digest();
    let digest = digest.as_bytes();
    let reason = "leaked: reported by a leak report";
    let (target_type, id, mut data) = match key.kind() {
        KeyKind::Instance => {
            let Some(row) = keys::lock_by_digest(change.db(), digest, now)
                .await?
                .filter(|row| matches!(row.status.as_str(), "active" | "rotating" | "disabled"))
            else {
                return Ok(());
            };
            let row = revoke_locked(change, row, Some(reason.to_owned())).await?;
            let data = json!({
                "kind": "api_key",
                "key_id": row.id,
                "instance_id": row.instance_id,
                "masked_key": row.masked,
            });
            ("api_key", row.id, data)
        }
        KeyKind::Admin => {
            let Some(row) =
                admin_keys::revoke_live_by_digest(change.db(), digest, reason, now).await?
            else {
                return Ok(());
            };
            change.publish(Event::AdminKeys);
            change.credential(digest, Credential::Admin, false);
            let data = json!({ "kind": "admin_key", "key_id": row.id, "masked_key": row.masked });
            ("admin_key", row.id, data)
        }
        KeyKind::Node => {
            let Some(node) = nodes::stop_key(change.db(), digest, now).await? else {
                return Ok(());
            };
            change.publish(Event::Node { id: node.id });
            change.credential(digest, Credential::Node, false);
            let masked = match node.digest.as_slice() == digest {
                true => node.masked,
                false => node.previous_masked.unwrap_or_default(),
            };
            let data = json!({ "kind": "node_key", "node_id": node.id, "masked_key": masked });
            ("node", node.id, data)
        }
        KeyKind::Enrollment => {
            let Some(row) = enrollment::revoke_live_by_digest(change.db(), digest, now).await?
            else {
                return Ok(());
            };
            let data =
                json!({ "kind": "enrollment_token", "token_id": row.id, "masked_key": row.masked });
            ("enrollment_token", row.id, data)
        }
        KeyKind::Session => {
            let Some(row) =
                people::revoke_session_by_digest(change.db(), digest, reason, now).await?
            else {
                return Ok(());
            };
            let data = json!({ "kind": "session", "session_id": row.id,
                               "subject": row.subject, "masked_key": row.masked });
            ("session", row.id, data)
        }
    };
    if let (Some(data), Some(found)) = (data.as_object_mut(), found.as_object()) {
        data.extend(found.clone());
    }
    change
        .audit("credential.leaked", target_type, id, data.clone())
        .await?;
    change.notify("key.leaked", data).await?;
    tracing::warn!(kind = target_type, %id, "a leaked credential was reported and stopped");
    Ok(())
}
