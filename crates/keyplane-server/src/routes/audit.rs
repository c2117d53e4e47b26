//! `/v1/audit`: reading, verifying and exporting the hash-chained audit log.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use keyplane_domain::Permission;
use keyplane_store::audit;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use crate::audit_trail::AuditEntry;
use crate::audit_trail::{
    CHECKPOINT_TYPE, CheckpointClaims, CheckpointResponse, EXPORT_TYPE, ExportClaims, ExportLine,
    Trailer, anchors, hex, refuted,
};
use crate::auth::Operator;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;
use crate::pagination::{PageParams, page_type};
use crate::state::AppState;

page_type!(AuditPage, AuditEntry);

/// Filters for the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this actor (e.g. `bootstrap`, `admin_key:<id>`).
    pub actor: Option<String>,
    /// Only this action (e.g. `key.revoke`).
    pub action: Option<String>,
    /// Only entries about this target id.
    pub target: Option<String>,
    /// From this time on (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

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

const LIST: &str = "audit";

/// Read the audit log, oldest first.
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "list_audit_entries", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_audit_entries(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    operator.require(Permission::AuditRead)?;
    let page = PageParams {
        limit: params.limit,
        cursor: None,
    };
    let limit = page.limit()?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| state.cursors.decode_seq(LIST, c))
        .transpose()?
        .unwrap_or(0);
    let filter = audit::Filter {
        actor: params.actor,
        action: params.action,
        target: params.target,
        since: params.since,
        until: params.until,
    };
    let mut rows = audit::list(state.db.pool(), &filter, after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        rows.last()
            .and_then(|r| r.seq)
            .map(|seq| state.cursors.encode_seq(LIST, seq))
    } else {
        None
    };
    Ok(Json(AuditPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor: next,
    }))
}

/// Re-check the whole chain (streamed) against every signed checkpoint, and
/// name the first entry that was edited, removed or moved, a chain
/// rewritten (its checkpoints disagree), cut short at either end, or a
/// checkpoint signed by a key this keyplane did not seal.
#[utoipa::path(
    get, path = "/v1/audit/verify", operation_id = "verify_audit_log", tag = "audit",
    responses(
        (status = 200, description = "The result", body = AuditVerification),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn verify_audit_log(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Json<AuditVerification>, ApiError> {
    operator.require(Permission::AuditRead)?;
    let checkpoints: Vec<CheckpointResponse> =
        audit::checkpoints_between(state.db.pool(), i64::MIN, i64::MAX)
            .await?
            .into_iter()
            .map(Into::into)
            .collect();
    let (anchors, problem) = anchors(&state.signer.trusted(), &checkpoints);
    let verdict = refuted(audit::verify(state.db.pool(), anchors).await?, problem);
    Ok(Json(AuditVerification {
        valid: verdict.valid,
        entries: verdict.entries,
        first_bad: verdict.first_bad,
        checkpoints: verdict.checkpoints,
        problem: verdict.problem,
    }))
}

/// A time range for an export.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// From this time on (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// Export entries as NDJSON with their chain fields, streamed, followed by
/// the checkpoints of the range (`{"checkpoint": …}`), the keys that signed
/// them (`{"signing_key": …}`) and a signed trailer (`{"export": …}`)
/// stating where the export starts and ends; check the file offline with
/// `keyplane audit verify FILE --trust KEYS`.
#[utoipa::path(
    get, path = "/v1/audit/export", operation_id = "export_audit_log", tag = "audit",
    params(ExportParams),
    responses(
        (status = 200, description = "One AuditEntry per line", body = AuditEntry, content_type = "application/x-ndjson"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn export_audit_log(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    operator.require(Permission::AuditRead)?;
    let lines = export_lines(state, params.since, params.until);
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// The export's lines, produced by a task that streams the query into a
/// small channel: constant memory, and it stops when the client goes away.
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

/// Signs the chain's current head, unless it is signed already; answers the
/// checkpoint made, if any.
pub async fn checkpoint_now(state: &AppState) -> Result<Option<audit::Checkpoint>, ApiError> {
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

/// The newest signed checkpoints of the chain's head.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints", operation_id = "list_audit_checkpoints", tag = "audit",
    responses(
        (status = 200, description = "Newest first", body = CheckpointList),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_audit_checkpoints(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Json<CheckpointList>, ApiError> {
    operator.require(Permission::AuditRead)?;
    let rows = audit::checkpoints(state.db.pool(), 100).await?;
    Ok(Json(CheckpointList {
        items: rows.into_iter().map(Into::into).collect(),
    }))
}

/// Sign the chain's head now (checkpoints are also made every 1,000 entries
/// or 10 minutes).
#[utoipa::path(
    post, path = "/v1/audit/checkpoints", operation_id = "create_audit_checkpoint", tag = "audit",
    responses(
        (status = 200, description = "The checkpoint of the current head", body = CheckpointResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_audit_checkpoint(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Json<CheckpointResponse>, ApiError> {
    operator.require(Permission::SigningKeysWrite)?;
    checkpoint_now(&state)
        .await?
        .map(|c| Json(c.into()))
        .ok_or_else(|| ApiError::Conflict("the audit log is empty".to_owned()))
}

/// Makes a checkpoint every `every_entries` entries or `every` (if anything
/// was appended since the last one).
pub fn checkpoint_periodically(
    state: AppState,
    every_entries: i64,
    every: chrono::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(30));
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
