//! Reading, verifying, exporting and checkpointing the hash-chained audit log.

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use keyplane_domain::Permission;
use keyplane_store::audit;
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit_trail::{
    AuditEntry, CHECKPOINT_TYPE, CheckpointClaims, CheckpointResponse, EXPORT_TYPE, ExportClaims,
    ExportLine, Trailer, anchors, hex, refuted,
};
use crate::ops::{Operator, Ops, Refusal};
use crate::pagination::{PageParams, page_type};
use crate::state::AppState;

page_type!(AuditPage, AuditEntry);

/// Which entries to read.
#[derive(Debug, Default)]
pub struct AuditFilter {
    /// Only this actor (e.g. `bootstrap`, `admin_key:<id>`).
    pub actor: Option<String>,
    /// Only this action (e.g. `key.revoke`).
    pub action: Option<String>,
    /// Only entries about this target id.
    pub target: Option<String>,
    /// From this time on.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only with this outcome (`success`, `denied`).
    pub outcome: Option<String>,
}

impl From<AuditFilter> for audit::Filter {
    fn from(filter: AuditFilter) -> Self {
        audit::Filter {
            actor: filter.actor,
            action: filter.action,
            target: filter.target,
            since: filter.since,
            until: filter.until,
            outcome: filter.outcome,
        }
    }
}

/// The most entries [`Ops::latest_audit_entries`] reads.
pub const MOST_LATEST: i64 = 500;

/// The result of re-checking the chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    /// Whether every entry is intact, in order and linked, and every signed
    /// checkpoint verifies and matches the entry it names (none past the
    /// chain's head).
    pub valid: bool,
    /// How many entries were checked.
    pub entries: u64,
    /// The id of the first entry that is not, if any.
    pub first_bad: Option<i64>,
    /// How many signed checkpoints verified and matched the chain.
    pub checkpoints: u64,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// The newest checkpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    /// Newest first.
    pub items: Vec<CheckpointResponse>,
}

impl From<audit::Checkpoint> for CheckpointResponse {
    fn from(row: audit::Checkpoint) -> Self {
        CheckpointResponse {
            seq: row.seq,
            head_hash: hex(&row.head_hash),
            at: row.at,
            signature: row.signature,
        }
    }
}

const LIST: &str = "audit";

impl Ops<Operator> {
    /// A page of entries, oldest first.
    pub async fn list_audit_entries(
        &self,
        filter: AuditFilter,
        page: PageParams,
    ) -> Result<AuditPage, Refusal> {
        self.actor.require(Permission::AuditRead)?;
        let cursors = &self.state.cursors;
        let limit = page.limit()?;
        let after = page
            .cursor
            .as_deref()
            .map(|c| cursors.decode_seq(LIST, c))
            .transpose()?
            .unwrap_or(0);
        let filter = audit::Filter::from(filter);
        let mut rows = audit::list(self.state.db.pool(), &filter, after, limit + 1).await?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(usize::try_from(limit).unwrap_or(0));
            rows.last()
                .and_then(|r| r.seq)
                .map(|seq| cursors.encode_seq(LIST, seq))
        } else {
            None
        };
        Ok(AuditPage {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor: next,
        })
    }

    /// The newest `limit` entries that match (at most [`MOST_LATEST`]), newest first.
    pub async fn latest_audit_entries(
        &self,
        filter: AuditFilter,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, Refusal> {
        self.actor.require(Permission::AuditRead)?;
        let filter = audit::Filter::from(filter);
        let rows =
            audit::latest(self.state.db.pool(), &filter, limit.clamp(1, MOST_LATEST)).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Re-checks the whole chain (streamed) against every signed checkpoint.
    pub async fn verify_audit_log(&self) -> Result<AuditVerification, Refusal> {
        self.actor.require(Permission::AuditRead)?;
        let pool = self.state.db.pool();
        let checkpoints: Vec<CheckpointResponse> =
            audit::checkpoints_between(pool, i64::MIN, i64::MAX)
                .await?
                .into_iter()
                .map(Into::into)
                .collect();
        let (anchors, problem) = anchors(&self.state.signer.trusted(), &checkpoints);
        let verdict = refuted(audit::verify(pool, anchors).await?, problem);
        Ok(AuditVerification {
            valid: verdict.valid,
            entries: verdict.entries,
            first_bad: verdict.first_bad,
            checkpoints: verdict.checkpoints,
            problem: verdict.problem,
        })
    }

    /// The entries of a time range as NDJSON lines with their chain fields,
    /// then the range's checkpoints, the keys that signed them and a signed
    /// trailer. Streamed by a task into a small channel: constant memory,
    /// and it stops when the reader goes away.
    pub fn export_audit_log(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<impl futures_util::Stream<Item = Result<String, std::io::Error>> + use<>, Refusal>
    {
        self.actor.require(Permission::AuditRead)?;
        Ok(export_lines(self.state.clone(), since, until))
    }

    /// The newest signed checkpoints of the chain's head.
    pub async fn list_audit_checkpoints(&self) -> Result<CheckpointList, Refusal> {
        self.actor.require(Permission::AuditRead)?;
        let rows = audit::checkpoints(self.state.db.pool(), 100).await?;
        Ok(CheckpointList {
            items: rows.into_iter().map(Into::into).collect(),
        })
    }

    /// Signs the chain's head now.
    pub async fn create_audit_checkpoint(&self) -> Result<CheckpointResponse, Refusal> {
        self.actor.require(Permission::SigningKeysWrite)?;
        checkpoint_now(&self.state)
            .await?
            .map(Into::into)
            .ok_or_else(|| Refusal::Conflict("the audit log is empty".to_owned()))
    }
}

fn export_lines(
    state: AppState,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        let pool = state.db.pool().clone();
        let mut claims = ExportClaims {
            since,
            until,
            iat: state.clock.now().timestamp(),
            iss: state.issuer.to_string(),
            ..ExportClaims::default()
        };
        let mut rows = audit::stream_range(&pool, since, until);
        while let Some(row) = rows.next().await {
            let line = row.map_err(std::io::Error::other).and_then(|row| {
                if claims.first_seq.is_none() {
                    claims.first_seq = row.seq;
                    claims.first_prev_hash = row.prev_hash.as_deref().map(hex);
                }
                claims.last_seq = row.seq;
                claims.last_hash = row.hash.as_deref().map(hex);
                claims.entries += 1;
                json_line(&AuditEntry::from(row))
            });
            let failed = line.is_err();
            if sender.send(line).await.is_err() || failed {
                return;
            }
        }
        drop(rows);
        for line in export_trailer(&state, claims).await {
            let failed = line.is_err();
            if sender.send(line).await.is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|line| (line, receiver))
    })
}

/// One NDJSON line.
fn json_line<T: Serialize>(value: &T) -> Result<String, std::io::Error> {
    let mut line = serde_json::to_string(value).map_err(std::io::Error::other)?;
    line.push('\n');
    Ok(line)
}

/// What follows an export's entries: the checkpoints within it, the keys
/// that signed them, and the signed trailer.
async fn export_trailer(
    state: &AppState,
    claims: ExportClaims,
) -> Vec<Result<String, std::io::Error>> {
    let mut lines = Vec::new();
    if let (Some(first), Some(last)) = (claims.first_seq, claims.last_seq) {
        match audit::checkpoints_between(state.db.pool(), first, last).await {
            Ok(rows) => lines.extend(
                rows.into_iter()
                    .map(|row| json_line(&ExportLine::Checkpoint(row.into()))),
            ),
            Err(err) => return vec![Err(std::io::Error::other(err))],
        }
    }
    lines.extend(
        state
            .signer
            .trusted()
            .jwks()
            .into_iter()
            .map(|key| json_line(&ExportLine::SigningKey(key))),
    );
    lines.push(
        state
            .signer
            .sign(EXPORT_TYPE, &claims)
            .map_err(std::io::Error::other)
            .and_then(|signature| json_line(&ExportLine::Export(Trailer { claims, signature }))),
    );
    lines
}

/// Signs the chain's current head, unless it is signed already; answers the
/// checkpoint made, if any.
pub async fn checkpoint_now(state: &AppState) -> Result<Option<audit::Checkpoint>, Refusal> {
    let Some((seq, head_hash)) = audit::head(state.db.pool()).await? else {
        return Ok(None);
    };
    let at = state.clock.now();
    let claims = CheckpointClaims {
        seq,
        head_hash: hex(&head_hash),
        iat: at.timestamp(),
        iss: state.issuer.to_string(),
    };
    let checkpoint = audit::Checkpoint {
        seq,
        head_hash,
        at,
        signature: state.signer.sign(CHECKPOINT_TYPE, &claims)?,
    };
    audit::insert_checkpoint(state.db.pool(), &checkpoint).await?;
    // Out of the database too: whoever keeps the log keeps the anchor.
    tracing::info!(
        seq = checkpoint.seq,
        head_hash = %hex(&checkpoint.head_hash),
        signature = %checkpoint.signature,
        "audit checkpoint signed"
    );
    Ok(Some(checkpoint))
}

/// Makes a checkpoint every `every_entries` entries or `every` (if anything
/// was appended since the last one).
pub fn checkpoint_periodically(
    state: AppState,
    every_entries: i64,
    every: chrono::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The first look comes a period after start, not at once: a start
        // racing the first writes must not checkpoint a half-made history
        // of its own accord.
        let period = std::time::Duration::from_secs(30);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticks.tick().await;
            let latest = audit::checkpoints(state.db.pool(), 1)
                .await
                .ok()
                .and_then(|c| c.into_iter().next());
            let head = audit::head(state.db.pool())
                .await
                .ok()
                .flatten()
                .map(|(seq, _)| seq);
            let due = match (head, latest) {
                (Some(head), Some(last)) => {
                    head > last.seq
                        && (head - last.seq >= every_entries
                            || state.clock.now() - last.at >= every)
                }
                (Some(_), None) => true,
                (None, _) => false,
            };
            if due && let Err(err) = checkpoint_now(&state).await {
                tracing::warn!(error = %err, "could not sign an audit checkpoint");
            }
        }
    })
}
