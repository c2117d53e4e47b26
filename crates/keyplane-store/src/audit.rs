//! The audit log: one entry per change and per security-relevant denial,
//! written in the same transaction as what it records, chained by hash.
//!
//! Appends take a transaction-scoped advisory lock, so concurrent writers,
//! in one process or many, queue for the head and never fork the chain.

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::Stream;
use keyplane_domain::{ChainedFields, GENESIS, chain_hash};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::StoreError;

/// The advisory lock that serialises appends (an arbitrary, fixed number).
const APPEND_LOCK: i64 = 0x006b_7061_7564_6974; // "kpaudit"

/// One entry to append. Carries ids and masked forms only, never a key.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who: `bootstrap`, `admin_key:<id>`, `cli`, `node:<id>`, ...
    pub actor: String,
    /// What, e.g. `key.rotate`.
    pub action: &'static str,
    /// The kind of thing acted on, e.g. `api_key`.
    pub target_type: &'static str,
    /// Its id or name.
    pub target_id: Option<String>,
    /// `success` or `denied`.
    pub outcome: &'static str,
    /// The request that did it.
    pub request_id: Option<String>,
    /// The address the request came from.
    pub client_ip: Option<String>,
    /// A masked before/after summary.
    pub details: Value,
}

/// An entry as stored, with its place in the chain.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    /// Its id.
    pub id: i64,
    /// Its place in the chain, from 1 (null only before the server chained it).
    pub seq: Option<i64>,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// The kind of thing acted on.
    pub target_type: String,
    /// Its id or name.
    pub target_id: Option<String>,
    /// `success` or `denied`.
    pub outcome: String,
    /// The request.
    pub request_id: Option<String>,
    /// The client's address.
    pub client_ip: Option<String>,
    /// The masked summary.
    pub details: sqlx::types::Json<Value>,
    /// The previous entry's hash.
    pub prev_hash: Option<Vec<u8>>,
    /// This entry's hash.
    pub hash: Option<Vec<u8>>,
}

impl Entry {
    /// The hash this entry should have after `prev`.
    pub fn expected_hash(&self, prev: &[u8]) -> [u8; 32] {
        let at = format_at(self.at);
        chain_hash(
            &ChainedFields {
                seq: self.seq.unwrap_or(0),
                at: &at,
                actor: &self.actor,
                action: &self.action,
                target_type: &self.target_type,
                target_id: self.target_id.as_deref(),
                outcome: &self.outcome,
                request_id: self.request_id.as_deref(),
                client_ip: self.client_ip.as_deref(),
                details: &self.details.0,
            },
            prev,
        )
    }
}

/// Times as the chain encodes them: RFC 3339, UTC, microseconds.
pub fn format_at(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Takes the append lock for the rest of the caller's transaction (again,
/// if it holds it already): whatever else the transaction writes under it is
/// committed in the order the lock was taken.
pub async fn hold_append_lock(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(r#"select pg_advisory_xact_lock($1)"#)
        .bind(APPEND_LOCK)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn lock_head(conn: &mut PgConnection) -> Result<(i64, Vec<u8>), StoreError> {
    hold_append_lock(conn).await?;
    let head = sqlx::query_as::<_, (i64, Vec<u8>)>(
        r#"select seq, hash from audit_log where seq is not null order by seq desc limit 1"#,
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(head.unwrap_or((0, GENESIS.to_vec())))
}

/// Appends `entry` at the head of the chain, inside the caller's transaction
/// (which holds the append lock until it ends).
pub async fn append(conn: &mut PgConnection, entry: &NewEntry) -> Result<i64, StoreError> {
    let (head, prev) = lock_head(conn).await?;
    let mut row = Entry {
        id: 0,
        seq: Some(head + 1),
        // PostgreSQL keeps microseconds; hash what will be read back.
        at: entry.at.trunc_subsecs(6),
        actor: entry.actor.clone(),
        action: entry.action.to_owned(),
        target_type: entry.target_type.to_owned(),
        target_id: entry.target_id.clone(),
        outcome: entry.outcome.to_owned(),
        request_id: entry.request_id.clone(),
        client_ip: entry.client_ip.clone(),
        details: sqlx::types::Json(entry.details.clone()),
        prev_hash: Some(prev.clone()),
        hash: None,
    };
    row.hash = Some(row.expected_hash(&prev).to_vec());
    sqlx::query(
        r#"insert into audit_log
               (seq, at, actor, action, target_type, target_id, outcome, request_id, client_ip,
                details, prev_hash, hash)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"#,
    )
    .bind(row.seq)
    .bind(row.at)
    .bind(&row.actor)
    .bind(&row.action)
    .bind(&row.target_type)
    .bind(&row.target_id)
    .bind(&row.outcome)
    .bind(&row.request_id)
    .bind(&row.client_ip)
    .bind(&row.details)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(&mut *conn)
    .await?;
    Ok(head + 1)
}

/// Appends `entry` in a transaction of its own.
pub async fn append_alone(pool: &PgPool, entry: &NewEntry) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
    let seq = append(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(seq)
}

/// Chains entries written before the log was chained (in the order they
/// were written); answers how many.
pub async fn chain_unchained(pool: &PgPool) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let (mut head, mut prev) = lock_head(&mut tx).await?;
    let pending =
        sqlx::query_as::<_, (i64,)>(r#"select id from audit_log where seq is null order by id"#)
            .fetch_all(&mut *tx)
            .await?;
    for (id,) in &pending {
        let mut row = sqlx::query_as::<_, Entry>(r#"select * from audit_log where id = $1"#)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        head += 1;
        row.seq = Some(head);
        let hash = row.expected_hash(&prev).to_vec();
        sqlx::query(r#"update audit_log set seq = $2, prev_hash = $3, hash = $4 where id = $1"#)
            .bind(id)
            .bind(head)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        prev = hash;
    }
    tx.commit().await?;
    Ok(pending.len() as u64)
}

/// Filters for reading the log.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target id.
    pub target: Option<String>,
    /// Only from this time on.
    pub since: Option<DateTime<Utc>>,
    /// Only before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only with this outcome (`success`, `denied`).
    pub outcome: Option<String>,
}

/// A page of entries in chain order, after `after_seq`.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &Filter,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    Ok(sqlx::query_as::<_, Entry>(
        r#"select * from audit_log
            where seq > $1
              and ($2::text is null or actor = $2)
              and ($3::text is null or action = $3)
              and ($4::text is null or target_id = $4)
              and ($5::timestamptz is null or at >= $5)
              and ($6::timestamptz is null or at < $6)
              and ($8::text is null or outcome = $8)
            order by seq
            limit $7"#,
    )
    .bind(after_seq)
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.target)
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .bind(&filter.outcome)
    .fetch_all(db)
    .await?)
}

/// The newest `limit` chained entries that match, newest first (what a
/// person looks at first; lists for tools page oldest first).
pub async fn latest(
    db: impl PgExecutor<'_>,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    Ok(sqlx::query_as::<_, Entry>(
        r#"select * from audit_log
            where seq is not null
              and ($1::text is null or actor = $1)
              and ($2::text is null or action = $2)
              and ($3::text is null or target_id = $3)
              and ($4::timestamptz is null or at >= $4)
              and ($5::timestamptz is null or at < $5)
              and ($6::text is null or outcome = $6)
            order by seq desc
            limit $7"#,
    )
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.target)
    .bind(filter.since)
    .bind(filter.until)
    .bind(&filter.outcome)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Every entry in chain order (unchained ones last), streamed: constant
/// memory however long the log.
pub fn stream_all(pool: &PgPool) -> impl Stream<Item = Result<Entry, sqlx::Error>> + '_ {
    sqlx::query_as::<_, Entry>(r#"select * from audit_log order by seq nulls last, id"#).fetch(pool)
}

/// The entries of a time range in chain order, streamed.
pub fn stream_range(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> impl Stream<Item = Result<Entry, sqlx::Error>> + '_ {
    sqlx::query_as::<_, Entry>(
        r#"select * from audit_log
            where seq is not null
              and ($1::timestamptz is null or at >= $1)
              and ($2::timestamptz is null or at < $2)
            order by seq"#,
    )
    .bind(since)
    .bind(until)
    .fetch(pool)
}

/// What a walk along the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every entry is where and what its hash says, and every
    /// anchor (a signed checkpoint) matches the entry it names.
    pub valid: bool,
    /// How many entries were checked.
    pub entries: u64,
    /// The id of the first bad entry.
    pub first_bad: Option<i64>,
    /// How many anchors the walk matched.
    pub checkpoints: u64,
    /// What is wrong, for people, when something is.
    pub problem: Option<String>,
}

/// Walks a sequence of entries, checking order, links and hashes, and that
/// each anchor (the head hash a verified checkpoint signed at a `seq`) is
/// the hash of the entry at that `seq`. The first entry's `prev_hash` is
/// trusted when `from_genesis` is false (an export of a time range starts
/// mid-chain).
#[derive(Debug)]
pub struct ChainWalk {
    expected_seq: Option<i64>,
    prev: Vec<u8>,
    entries: u64,
    first_bad: Option<i64>,
    problem: Option<String>,
    anchors: std::collections::BTreeMap<i64, Vec<u8>>,
    matched: u64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
}

impl ChainWalk {
    /// A walk from the first entry ever, or from wherever the first entry says.
    pub fn new(from_genesis: bool) -> ChainWalk {
        ChainWalk {
            expected_seq: from_genesis.then_some(1),
            prev: GENESIS.to_vec(),
            entries: 0,
            first_bad: None,
            problem: None,
            anchors: std::collections::BTreeMap::new(),
            matched: 0,
            first_seq: None,
            last_seq: None,
        }
    }

    /// The same walk, also holding the chain to `anchors`: `(seq, hash)`
    /// pairs from checkpoints whose signatures the caller verified. An
    /// anchor past the last entry walked means entries were cut from the
    /// head; one the chain disagrees with means it was rewritten.
    pub fn anchored(mut self, anchors: impl IntoIterator<Item = (i64, Vec<u8>)>) -> ChainWalk {
        self.anchors.extend(anchors);
        self
    }

    fn fail(&mut self, id: i64, problem: String) {
        self.first_bad = Some(id);
        self.problem = Some(problem);
    }

    /// Checks the next entry.
    pub fn step(&mut self, entry: &Entry) {
        self.entries += 1;
        if self.first_bad.is_some() {
            return;
        }
        let expected_seq = self.expected_seq.or(entry.seq);
        if self.expected_seq.is_none() {
            // Mid-chain start: trust the first link, check everything else.
            self.prev = entry.prev_hash.clone().unwrap_or_default();
        }
        let good = entry.seq.is_some()
            && entry.seq == expected_seq
            && entry.prev_hash.as_deref() == Some(self.prev.as_slice())
            && entry.hash.as_deref() == Some(entry.expected_hash(&self.prev).as_slice());
        if !good {
            let problem = match expected_seq {
                Some(1) if self.entries == 1 && entry.seq != Some(1) => format!(
                    "the chain does not start at its first entry: entries were removed from its start (entry {})",
                    entry.id
                ),
                _ => format!(
                    "entry {} is not the one the chain holds at its place: edited, removed or moved",
                    entry.id
                ),
            };
            self.fail(entry.id, problem);
            return;
        }
        let seq = entry.seq.unwrap_or_default();
        if let Some(anchor) = self.anchors.get(&seq) {
            if entry.hash.as_deref() != Some(anchor.as_slice()) {
                self.fail(
                    entry.id,
                    format!(
                        "the entry at seq {seq} is not the one a signed checkpoint names: the chain was rewritten"
                    ),
                );
                return;
            }
            self.matched += 1;
        }
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        self.expected_seq = Some(seq + 1);
        self.prev = entry.hash.clone().unwrap_or_default();
    }

    /// The verdict so far: an anchor past the last entry walked is a
    /// chain cut short at its head.
    pub fn verdict(&self) -> Verdict {
        let cut = match (self.first_bad, self.last_seq) {
            (Some(_), _) => None,
            (None, last) => self
                .anchors
                .keys()
                .find(|seq| last.is_none_or(|last| **seq > last))
                .map(|seq| {
                    format!(
                        "a signed checkpoint names seq {seq}, past the last entry ({}): entries were removed from the head",
                        last.map_or("none".to_owned(), |l| l.to_string())
                    )
                }),
        };
        Verdict {
            valid: self.first_bad.is_none() && cut.is_none(),
            entries: self.entries,
            first_bad: self.first_bad,
            checkpoints: self.matched,
            problem: self.problem.clone().or(cut),
        }
    }

    /// The first and last `seq` walked, and the hash the walk ended on.
    pub fn span(&self) -> (Option<i64>, Option<i64>, &[u8]) {
        (self.first_seq, self.last_seq, &self.prev)
    }
}

/// Checks the whole chain against `anchors` (verified checkpoints), streaming it.
pub async fn verify(
    pool: &PgPool,
    anchors: impl IntoIterator<Item = (i64, Vec<u8>)>,
) -> Result<Verdict, StoreError> {
    use futures_util::TryStreamExt;
    let mut walk = ChainWalk::new(true).anchored(anchors);
    let mut rows = stream_all(pool);
    while let Some(entry) = rows.try_next().await? {
        walk.step(&entry);
    }
    Ok(walk.verdict())
}

/// A signed statement of the chain's head.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Checkpoint {
    /// The head's `seq` when signed.
    pub seq: i64,
    /// The head's hash.
    pub head_hash: Vec<u8>,
    /// When it was signed.
    pub at: DateTime<Utc>,
    /// A compact JWS (EdDSA) over `seq` and `head_hash`.
    pub signature: String,
}

/// The newest entry's `seq` and hash.
pub async fn head(db: impl PgExecutor<'_>) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    Ok(sqlx::query_as::<_, (i64, Vec<u8>)>(
        r#"select seq, hash from audit_log where seq is not null order by seq desc limit 1"#,
    )
    .fetch_optional(db)
    .await?)
}

/// Stores a checkpoint (a second one for the same head is ignored).
pub async fn insert_checkpoint(
    db: impl PgExecutor<'_>,
    checkpoint: &Checkpoint,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"insert into audit_checkpoints (seq, head_hash, at, signature) values ($1, $2, $3, $4)
           on conflict (seq) do nothing"#,
    )
    .bind(checkpoint.seq)
    .bind(&checkpoint.head_hash)
    .bind(checkpoint.at)
    .bind(&checkpoint.signature)
    .execute(db)
    .await?;
    Ok(())
}

/// Every checkpoint whose `seq` is between `from` and `to` (inclusive), oldest first.
pub async fn checkpoints_between(
    db: impl PgExecutor<'_>,
    from: i64,
    to: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    Ok(sqlx::query_as::<_, Checkpoint>(
        r#"select * from audit_checkpoints where seq between $1 and $2 order by seq"#,
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?)
}

/// The newest checkpoints, newest first.
pub async fn checkpoints(
    db: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    Ok(sqlx::query_as::<_, Checkpoint>(
        r#"select * from audit_checkpoints order by seq desc limit $1"#,
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}
