//! Nodes: Cortex nodes and gates that introspect keys.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// A node as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Node {
    /// Its id.
    pub id: Uuid,
    /// Unique among nodes that are not retired.
    pub name: String,
    /// Free text.
    pub description: String,
    /// SHA-256 of its node key.
    pub digest: Vec<u8>,
    /// Its node key, masked.
    pub masked: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its node key stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was retired.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it last called keyplane.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The mode it last reported running in.
    pub reported_mode: Option<String>,
    /// The version it last reported.
    pub reported_version: Option<String>,
    /// The routes it last reported serving without a key.
    pub reported_public_routes: Vec<String>,
    /// When it last reported.
    pub reported_at: Option<DateTime<Utc>>,
    /// The proxy that calls forward auth for it; None: the deployment's default.
    pub forward_auth_proxy: Option<String>,
    /// Until when a client certificate naming it by DNS name stays valid.
    pub certificate_valid_until: Option<DateTime<Utc>>,
    /// When its current node key was made.
    pub key_created_at: DateTime<Utc>,
    /// When the node first used its current key, if it has.
    pub key_used_at: Option<DateTime<Utc>>,
    /// When the current key replaced the previous one.
    pub rotated_at: Option<DateTime<Utc>>,
    /// Who asked for that: `holder` (the node itself) or `operator`.
    pub rotated_by: Option<String>,
    /// SHA-256 of the previous node key, while it still works.
    pub previous_digest: Option<Vec<u8>>,
    /// The previous node key, masked.
    pub previous_masked: Option<String>,
    /// When the previous node key stops working.
    pub previous_until: Option<DateTime<Utc>>,
}

/// A node's new key, replacing its current one.
#[derive(Debug, Clone)]
pub struct Rekey {
    /// SHA-256 of the new key.
    pub digest: Vec<u8>,
    /// The new key, masked.
    pub masked: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// `holder` or `operator`.
    pub by: &'static str,
    /// Until when the key it replaces keeps working; None: it stops now.
    pub previous_until: Option<DateTime<Utc>>,
}

/// What a node says about itself in a heartbeat.
#[derive(Debug, Clone)]
pub struct Report {
    /// `dev`, `mixed` or `prod`.
    pub mode: String,
    /// Its version.
    pub version: String,
    /// The routes it serves without a key.
    pub public_routes: Vec<String>,
}

/// The mode a node last reported, with its row locked until the transaction
/// ends (so two heartbeats see each other's report in order).
pub async fn lock_reported_mode(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar(r#"select reported_mode from nodes where id = $1 for update"#)
            .bind(id)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

/// Records a node's heartbeat (and counts it as a sign of life).
pub async fn report(
    db: impl PgExecutor<'_>,
    id: Uuid,
    report: &Report,
    now: DateTime<Utc>,
) -> Result<Option<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"update nodes
              set reported_mode = $2, reported_version = $3, reported_public_routes = $4,
                  reported_at = $5, last_seen_at = greatest(last_seen_at, $5)
            where id = $1 and retired_at is null
        returning *"#,
    )
    .bind(id)
    .bind(&report.mode)
    .bind(&report.version)
    .bind(&report.public_routes)
    .bind(now)
    .fetch_optional(db)
    .await?)
}

/// Registers a node.
pub async fn insert(conn: &mut PgConnection, node: &Node) -> Result<Node, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"insert into nodes
               (id, name, description, digest, masked, created_at, expires_at, forward_auth_proxy,
                key_created_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $6)
           returning *"#,
    )
    .bind(node.id)
    .bind(&node.name)
    .bind(&node.description)
    .bind(&node.digest)
    .bind(&node.masked)
    .bind(node.created_at)
    .bind(node.expires_at)
    .bind(&node.forward_auth_proxy)
    .fetch_one(conn)
    .await?)
}

/// A live node, locked until the transaction ends (for read-modify-write).
pub async fn lock_live(conn: &mut PgConnection, id: Uuid) -> Result<Option<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"select * from nodes where id = $1 and retired_at is null for update"#,
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Writes back what an operator may change of a node.
pub async fn save(conn: &mut PgConnection, node: &Node) -> Result<Node, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"update nodes set description = $2, forward_auth_proxy = $3 where id = $1 returning *"#,
    )
    .bind(node.id)
    .bind(&node.description)
    .bind(&node.forward_auth_proxy)
    .fetch_one(conn)
    .await?)
}

/// Gives a live node (locked by the caller) a new key, made at `now`. The
/// key it replaces becomes its previous key until `rekey.previous_until`;
/// an older previous key stops at once.
pub async fn rekey(
    conn: &mut PgConnection,
    id: Uuid,
    rekey: &Rekey,
    now: DateTime<Utc>,
) -> Result<Node, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"update nodes
              set previous_digest = case when $5::timestamptz is null then null else digest end,
                  previous_masked = case when $5::timestamptz is null then null else masked end,
                  previous_until = $5,
                  digest = $2, masked = $3, expires_at = $4,
                  key_created_at = $6, key_used_at = null, rotated_at = $6, rotated_by = $7
            where id = $1 and retired_at is null
        returning *"#,
    )
    .bind(id)
    .bind(&rekey.digest)
    .bind(&rekey.masked)
    .bind(rekey.expires_at)
    .bind(rekey.previous_until)
    .bind(now)
    .bind(rekey.by)
    .fetch_one(conn)
    .await?)
}

/// Replaces a node's current, unused key (locked by the caller) and keeps
/// its previous key as it is: a node retrying its own rotation, whose
/// answer it lost, with the key it had before.
pub async fn replace_unused_key(
    conn: &mut PgConnection,
    id: Uuid,
    rekey: &Rekey,
    now: DateTime<Utc>,
) -> Result<Node, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"update nodes
              set digest = $2, masked = $3, expires_at = $4,
                  key_created_at = $5, rotated_at = $5, rotated_by = $6
            where id = $1 and retired_at is null and key_used_at is null
        returning *"#,
    )
    .bind(id)
    .bind(&rekey.digest)
    .bind(&rekey.masked)
    .bind(rekey.expires_at)
    .bind(now)
    .bind(rekey.by)
    .fetch_one(conn)
    .await?)
}

/// Stops the node key whose digest this is (a node's current or previous
/// key) at `now`; answers the node as it was before, or None when no live
/// node key has this digest.
pub async fn stop_key(
    conn: &mut PgConnection,
    digest: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"with found as (
               select * from nodes
                where retired_at is null
                  and ((digest = $1 and expires_at > $2)
                       or (previous_digest = $1 and previous_until > $2))
                for update),
           stopped as (
               update nodes n
                  set expires_at = case when n.digest = $1 then $2 else n.expires_at end,
                      previous_until = case when n.previous_digest = $1 then $2
                                            else n.previous_until end
                 from found where n.id = found.id)
           select * from found"#,
    )
    .bind(digest)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// Records that the node used its current key (the key of `digest`), the
/// first time only.
pub async fn note_key_used(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    digests: &[Vec<u8>],
    times: &[DateTime<Utc>],
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update nodes n set key_used_at = u.at
             from unnest($1::uuid[], $2::bytea[], $3::timestamptz[]) as u(id, digest, at)
            where n.id = u.id and n.digest = u.digest and n.key_used_at is null"#,
    )
    .bind(ids)
    .bind(digests)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}

/// One node.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Node>, StoreError> {
    Ok(
        sqlx::query_as::<_, Node>(r#"select * from nodes where id = $1"#)
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// The nodes, not retired, whose id or name is among `refs`.
pub async fn find_live(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    names: &[String],
) -> Result<Vec<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"select * from nodes where retired_at is null and (id = any($1) or name = any($2))"#,
    )
    .bind(ids)
    .bind(names)
    .fetch_all(db)
    .await?)
}

/// The ids of every node that is not retired and whose key works at `now`
/// (its current key: a previous one only ever works for less long).
pub async fn live_ids(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"select id from nodes where retired_at is null and expires_at > $1 order by id"#,
    )
    .bind(now)
    .fetch_all(db)
    .await?)
}

/// Records that a client certificate valid until `until` authenticated the
/// node (keeping the latest such time).
pub async fn note_certificate(
    db: impl PgExecutor<'_>,
    id: Uuid,
    until: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update nodes set certificate_valid_until = greatest(certificate_valid_until, $2)
            where id = $1"#,
    )
    .bind(id)
    .bind(until)
    .execute(db)
    .await?;
    Ok(())
}

/// Until when `name` stays taken by retired nodes whose client certificates
/// may still be valid, if it is.
pub async fn name_held_until(
    db: impl PgExecutor<'_>,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        r#"select max(certificate_valid_until) from nodes
            where retired_at is not null and lower(name) = lower($1)
              and certificate_valid_until > $2"#,
    )
    .bind(name)
    .bind(now)
    .fetch_one(db)
    .await?)
}

/// Retires a node; its key stops working. Answers the node, or None when it
/// does not exist or was already retired.
pub async fn retire(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Node>, StoreError> {
    Ok(sqlx::query_as::<_, Node>(
        r#"update nodes set retired_at = $2 where id = $1 and retired_at is null returning *"#,
    )
    .bind(id)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// A page of nodes; retired ones only when asked for.
pub async fn list(
    db: impl PgExecutor<'_>,
    include_retired: bool,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<Node>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, Node>(
        r#"select * from nodes
            where ($1 or retired_at is null)
              and ($2::timestamptz is null or (created_at, id) > ($2, $3))
            order by created_at, id
            limit $4"#,
    )
    .bind(include_retired)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |n| After {
        created_at: n.created_at,
        id: n.id,
    }))
}
