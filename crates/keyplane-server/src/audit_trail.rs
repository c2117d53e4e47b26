//! What holds the audit log to account outside its database.
//!
//! Anyone who can write to the database can rewrite the hash chain and
//! recompute every hash. What they cannot do without the master key is sign:
//! checkpoints (the chain's head at a `seq`) and the trailer of every export
//! (its first and last entries and how many lie between) are signed with
//! keys only this keyplane's master key opens. So a chain rewritten in SQL
//! disagrees with the checkpoints signed before; one cut short at its head
//! leaves a checkpoint past its end; an export cut at either end disagrees
//! with its trailer; and a key written into the table by someone else signs
//! nothing anyone believes. Online, the trusted keys are those the master
//! key opens; offline (`keyplane audit verify FILE --trust KEYS`) they come
//! from a JWKS file or a pinned fingerprint, never from the file checked.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use chrono::{DateTime, Utc};
use keyplane_domain::GENESIS;
use keyplane_store::audit::{self, ChainWalk, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::signing::{TrustedKeys, fingerprint};

/// One audit entry, with its place in the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its id.
    pub id: i64,
    /// Its place in the chain, from 1.
    pub seq: Option<i64>,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who: `bootstrap`, `admin_key:<id>`, `cli`, `node:<id>`.
    pub actor: String,
    /// What, e.g. `key.revoke`.
    pub action: String,
    /// The kind of thing acted on.
    pub target_type: String,
    /// Its id or name.
    pub target_id: Option<String>,
    /// `success` or `denied`.
    pub outcome: String,
    /// The request that did it.
    pub request_id: Option<String>,
    /// The address it came from.
    pub client_ip: Option<String>,
    /// A masked before/after summary (never a key).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The previous entry's hash (hex).
    pub prev_hash: Option<String>,
    /// This entry's hash (hex).
    pub hash: Option<String>,
}

impl From<audit::Entry> for AuditEntry {
    fn from(row: audit::Entry) -> Self {
        AuditEntry {
            id: row.id,
            seq: row.seq,
            at: row.at,
            actor: row.actor,
            action: row.action,
            target_type: row.target_type,
            target_id: row.target_id,
            outcome: row.outcome,
            request_id: row.request_id,
            client_ip: row.client_ip,
            details: row.details.0,
            prev_hash: row.prev_hash.as_deref().map(hex),
            hash: row.hash.as_deref().map(hex),
        }
    }
}

impl AuditEntry {
    /// Back to the stored form, to check an exported entry offline.
    pub fn into_stored(self) -> Option<audit::Entry> {
        Some(audit::Entry {
            id: self.id,
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            target_type: self.target_type,
            target_id: self.target_id,
            outcome: self.outcome,
            request_id: self.request_id,
            client_ip: self.client_ip,
            details: sqlx::types::Json(self.details),
            prev_hash: self
                .prev_hash
                .as_deref()
                .map(unhex)
                .map(Option::unwrap_or_default),
            hash: self
                .hash
                .as_deref()
                .map(unhex)
                .map(Option::unwrap_or_default),
        })
    }
}

/// The JWS type of a checkpoint's signature.
pub const CHECKPOINT_TYPE: &str = "keyplane-audit-checkpoint+jwt";
/// The JWS type of an export trailer's signature.
pub const EXPORT_TYPE: &str = "keyplane-audit-export+jwt";

/// Bytes as lower-case hex, as exports write hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex back to bytes.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// The claims of a checkpoint's signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointClaims {
    /// The head's `seq`.
    pub seq: i64,
    /// The head's hash (hex).
    pub head_hash: String,
    /// When it was signed (Unix seconds).
    pub iat: i64,
    /// Who signed it.
    pub iss: String,
}

/// A signed statement of the chain's head.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointResponse {
    /// The head's `seq` when signed.
    pub seq: i64,
    /// The head's hash (hex).
    pub head_hash: String,
    /// When it was signed.
    pub at: DateTime<Utc>,
    /// A compact JWS (EdDSA, verifiable with `/.well-known/jwks.json`) whose
    /// claims are `seq`, `head_hash`, `iat` and `iss`.
    pub signature: String,
}

impl CheckpointResponse {
    /// The `(seq, hash)` this checkpoint holds the chain to, if a trusted
    /// key signed it and its signature says what its fields say.
    pub fn anchor(&self, trusted: &TrustedKeys) -> Result<(i64, Vec<u8>), String> {
        let claims: CheckpointClaims = trusted
            .verify(&self.signature, CHECKPOINT_TYPE)
            .map_err(|err| format!("checkpoint at seq {}: {err}", self.seq))?;
        let hash = unhex(&claims.head_hash);
        match hash {
            Some(hash) if claims.seq == self.seq && claims.head_hash == self.head_hash => {
                Ok((claims.seq, hash))
            }
            _ => Err(format!(
                "checkpoint at seq {}: its fields are not what its signature says",
                self.seq
            )),
        }
    }
}

/// Holds the chain to every checkpoint: each must be signed by a trusted key
/// and say what its fields say. Answers the anchors, and what is wrong with
/// the first checkpoint that is not.
pub fn anchors(
    trusted: &TrustedKeys,
    checkpoints: &[CheckpointResponse],
) -> (Vec<(i64, Vec<u8>)>, Option<String>) {
    let mut anchors = Vec::with_capacity(checkpoints.len());
    let mut problem = None;
    for checkpoint in checkpoints {
        match checkpoint.anchor(trusted) {
            Ok(anchor) => anchors.push(anchor),
            Err(err) => {
                problem.get_or_insert(err);
            }
        }
    }
    (anchors, problem)
}

/// A verdict that `problem` makes invalid, whatever the walk found.
pub fn refuted(mut verdict: Verdict, problem: Option<String>) -> Verdict {
    if let Some(problem) = problem {
        verdict.valid = false;
        if verdict.problem.is_none() {
            verdict.problem = Some(problem);
        }
    }
    verdict
}

/// What an export's trailer states, signed: where the export starts and
/// ends and how many entries lie between.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportClaims {
    /// The first entry's `seq` (none for an empty export).
    pub first_seq: Option<i64>,
    /// The hash the first entry links to (hex).
    pub first_prev_hash: Option<String>,
    /// The last entry's `seq`.
    pub last_seq: Option<i64>,
    /// The last entry's hash (hex).
    pub last_hash: Option<String>,
    /// How many entries.
    pub entries: u64,
    /// The range asked for, as given.
    pub since: Option<DateTime<Utc>>,
    /// The range asked for, as given.
    pub until: Option<DateTime<Utc>>,
    /// When the export was made (Unix seconds).
    pub iat: i64,
    /// Who made it.
    pub iss: String,
}

/// The last line of an export: its claims in the clear and signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trailer {
    /// What the export holds.
    #[serde(flatten)]
    pub claims: ExportClaims,
    /// A compact JWS of type [`EXPORT_TYPE`] over the claims.
    pub signature: String,
}

/// A line of an export that is not an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportLine {
    /// A checkpoint within the export's range.
    Checkpoint(CheckpointResponse),
    /// A public key (a JWK with its fingerprint) that signed something in
    /// the export: believed offline only if its fingerprint is pinned.
    SigningKey(Value),
    /// The signed trailer.
    Export(Trailer),
}

/// What `keyplane audit verify FILE` found.
#[derive(Debug, Clone, Serialize)]
pub struct FileVerdict {
    /// Whether the export holds: its chain, and with trusted keys, its
    /// checkpoints and its trailer.
    pub valid: bool,
    /// How many entries were checked.
    pub entries: u64,
    /// The id of the first bad entry.
    pub first_bad: Option<i64>,
    /// How many signed checkpoints were verified and matched.
    pub checkpoints: u64,
    /// Whether the export was checked against trusted keys (`--trust`);
    /// without them only the chain's own links are checked.
    pub anchored: bool,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// Reads `--trust` values: JWKS (or JWK) files, whose keys are trusted, and
/// `sha256:<hex>` fingerprints, which trust the export's own key of that
/// fingerprint.
fn trusted_keys(trust: &[String], embedded: &[Value]) -> Result<TrustedKeys, String> {
    let mut trusted = TrustedKeys::default();
    for value in trust {
        if let Some(pin) = value.strip_prefix("sha256:") {
            let pin = pin.to_ascii_lowercase();
            let matching: Vec<&Value> = embedded
                .iter()
                .filter(|key| key_fingerprint(key).as_deref() == Some(&format!("sha256:{pin}")))
                .collect();
            for key in matching {
                let one = TrustedKeys::from_jwks(key).map_err(|err| err.to_string())?;
                trusted.extend(one);
            }
        } else {
            let text = std::fs::read_to_string(value)
                .map_err(|err| format!("cannot read the trusted keys in {value}: {err}"))?;
            let jwks: Value = serde_json::from_str(&text)
                .map_err(|err| format!("{value} is not a JWKS: {err}"))?;
            trusted.extend(TrustedKeys::from_jwks(&jwks).map_err(|err| format!("{value}: {err}"))?);
        }
    }
    Ok(trusted)
}

/// The fingerprint of a JWK's public key (computed, never read from it).
fn key_fingerprint(jwk: &Value) -> Option<String> {
    use base64::Engine;
    let x = jwk["x"].as_str()?;
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(x)
        .ok()?;
    Some(fingerprint(&public))
}

/// Reads the checkpoints an operator kept (`GET /v1/audit/checkpoints`
/// answers, a list of them, or one a line).
fn kept_checkpoints(path: &Path) -> Result<Vec<CheckpointResponse>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let parsed: Result<Value, _> = serde_json::from_str(&text);
    let values: Vec<Value> = match parsed {
        Ok(Value::Object(page)) if page.contains_key("items") => {
            page["items"].as_array().cloned().unwrap_or_default()
        }
        Ok(Value::Array(items)) => items,
        Ok(one @ Value::Object(_)) => vec![one],
        _ => text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|err| format!("{} holds no checkpoints: {err}", path.display()))?,
    };
    values
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{} holds no checkpoints: {err}", path.display()))
}

/// Checks an export (`GET /v1/audit/export`) offline. Without `trust`, only
/// the chain's links; with it, also every checkpoint (the file's and the
/// `kept` ones an operator saved), and the signed trailer, which a file cut
/// at either end no longer matches. An error is a file that cannot be read.
pub fn verify_file(
    path: &Path,
    trust: &[String],
    kept: Option<&Path>,
) -> Result<FileVerdict, String> {
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))
    };
    // First pass: what is not an entry (checkpoints, keys, the trailer).
    let mut checkpoints = Vec::new();
    let mut embedded = Vec::new();
    let mut trailer = None;
    for line in open()?.lines() {
        let line = line.map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        match serde_json::from_str::<ExportLine>(&line) {
            Ok(ExportLine::Checkpoint(checkpoint)) => checkpoints.push(checkpoint),
            Ok(ExportLine::SigningKey(key)) => embedded.push(key),
            Ok(ExportLine::Export(found)) => trailer = Some(found),
            Err(_) => {}
        }
    }
    let anchored = !trust.is_empty();
    let trusted = trusted_keys(trust, &embedded)?;
    let mut problems: Vec<String> = Vec::new();
    let mut walk_anchors = BTreeMap::new();
    let claims = match (&trailer, anchored) {
        (Some(trailer), true) => {
            match trusted.verify::<ExportClaims>(&trailer.signature, EXPORT_TYPE) {
                Ok(claims) => Some(claims),
                Err(err) => {
                    problems.push(format!("the export's trailer: {err}"));
                    None
                }
            }
        }
        (None, true) => {
            problems.push(
                "the export has no signed trailer: it was cut short, or is not an export"
                    .to_owned(),
            );
            None
        }
        (Some(trailer), false) => Some(trailer.claims.clone()),
        (None, false) => None,
    };
    if anchored {
        if trusted.is_empty() {
            problems.push(
                "no trusted key: --trust names no key this export was signed with".to_owned(),
            );
        }
        let mut all = checkpoints.clone();
        if let Some(kept) = kept {
            all.extend(kept_checkpoints(kept)?);
        }
        let (anchors, problem) = anchors(&trusted, &all);
        problems.extend(problem);
        for (seq, hash) in anchors {
            let covered = claims.as_ref().is_some_and(|c| {
                let in_range = c.first_seq.is_some_and(|first| seq >= first)
                    && c.last_seq.is_some_and(|last| seq <= last);
                // An export to the head must reach every checkpoint older than itself.
                let past_head = c.until.is_none() && c.last_seq.is_none_or(|last| seq > last);
                in_range || past_head
            });
            if covered {
                walk_anchors.insert(seq, hash);
            }
        }
    }
    let from_genesis = claims.as_ref().is_some_and(|c| c.first_seq == Some(1));
    let mut walk = ChainWalk::new(from_genesis).anchored(walk_anchors);
    let mut first_prev = None;
    for (number, line) in open()?.lines().enumerate() {
        let line = line.map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        if line.trim().is_empty() || serde_json::from_str::<ExportLine>(&line).is_ok() {
            continue;
        }
        match serde_json::from_str::<AuditEntry>(&line)
            .ok()
            .and_then(AuditEntry::into_stored)
        {
            Some(entry) => {
                if first_prev.is_none() {
                    first_prev = Some(entry.prev_hash.clone().unwrap_or_default());
                }
                walk.step(&entry);
            }
            None => {
                let verdict = walk.verdict();
                return Ok(FileVerdict {
                    valid: false,
                    entries: verdict.entries,
                    first_bad: None,
                    checkpoints: verdict.checkpoints,
                    anchored,
                    problem: Some(format!(
                        "line {} is neither an entry nor an export line",
                        number + 1
                    )),
                });
            }
        }
    }
    let verdict = walk.verdict();
    if let Some(claims) = &claims {
        let (first_seq, last_seq, last_hash) = walk.span();
        let said = (
            claims.first_seq,
            claims.first_prev_hash.clone(),
            claims.last_seq,
            claims.last_hash.clone(),
            claims.entries,
        );
        let found = (
            first_seq,
            first_prev.as_deref().map(hex),
            last_seq,
            (!last_hash.is_empty() && verdict.entries > 0).then(|| hex(last_hash)),
            verdict.entries,
        );
        if verdict.valid && said != found {
            problems.push(format!(
                "the export holds entries {}..{} ({} of them), its trailer says {}..{} ({}): it was cut or added to",
                found.0.map_or("-".to_owned(), |s| s.to_string()),
                found.2.map_or("-".to_owned(), |s| s.to_string()),
                found.4,
                said.0.map_or("-".to_owned(), |s| s.to_string()),
                said.2.map_or("-".to_owned(), |s| s.to_string()),
                said.4,
            ));
        }
        if claims.first_seq == Some(1)
            && claims.first_prev_hash.as_deref() != Some(hex(&GENESIS).as_str())
        {
            problems.push("the export's first entry does not start the chain".to_owned());
        }
    }
    let verdict = refuted(verdict, problems.into_iter().next());
    Ok(FileVerdict {
        valid: verdict.valid,
        entries: verdict.entries,
        first_bad: verdict.first_bad,
        checkpoints: verdict.checkpoints,
        anchored,
        problem: verdict.problem,
    })
}
