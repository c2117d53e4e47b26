//! Instance API keys.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::instances::LabelQuery;
use crate::page::{After, paginate};

/// An instance key's metadata (its digest included, its secret never).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    /// Its id.
    pub id: Uuid,
    /// The instance it belongs to.
    pub instance_id: Uuid,
    /// A name for people.
    pub name: String,
    /// SHA-256 of the key.
    pub digest: Vec<u8>,
    /// Prefix and last four characters.
    pub masked: String,
    /// Scopes granted directly.
    pub scopes: Vec<String>,
    /// Roles whose scopes it also gets.
    pub roles: Vec<String>,
    /// The nodes (ids or names) that may accept it; empty means any.
    pub audience: Vec<String>,
    /// False while disabled.
    pub enabled: bool,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// The key it succeeded.
    pub rotated_from: Option<Uuid>,
    /// The key that succeeded it.
    pub rotated_to: Option<Uuid>,
    /// After a rotation, when this key stops working.
    pub grace_until: Option<DateTime<Utc>>,
    /// When it was rotated.
    pub rotated_at: Option<DateTime<Utc>>,
    /// Who rotated it: `holder` (through `/v1/self/rotate`) or `operator`.
    pub rotated_by: Option<String>,
    /// When a node last accepted it.
    pub last_used_at: Option<DateTime<Utc>>,
    /// How often it should be rotated, in seconds.
    pub rotate_after_seconds: Option<i64>,
    /// Imported from before keyplane: no prefix, no checksum.
    pub legacy: bool,
    /// Its own rate limits and token budgets.
    pub limits: sqlx::types::Json<keyplane_domain::Limits>,
    /// Its own model allow-list; None: every model.
    pub models: Option<Vec<String>>,
    /// Derived at read time: `active`, `disabled`, `rotating`, `revoked` or `expired`.
    #[sqlx(default)]
    pub status: String,
}

/// Stores a new key.
pub async fn insert(
    conn: &mut PgConnection,
    key: &ApiKey,
    now: DateTime<Utc>,
) -> Result<ApiKey, StoreError> {
    let row = sqlx::query_as::<_, ApiKey>(
        r#"insert into api_keys as k
               (id, instance_id, name, digest, masked, scopes, roles, audience, enabled,
                created_at, expires_at, rotated_from, rotate_after_seconds, legacy, limits, models)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14, $15, $16, $17)
           returning k.*, api_key_status(k, $13) as status"#,
    )
    .bind(key.id)
    .bind(key.instance_id)
    .bind(&key.name)
    .bind(&key.digest)
    .bind(&key.masked)
    .bind(&key.scopes)
    .bind(&key.roles)
    .bind(&key.audience)
    .bind(key.enabled)
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(key.rotated_from)
    .bind(now)
    .bind(key.rotate_after_seconds)
    .bind(key.legacy)
    .bind(key.limits)
    .bind(&key.models)
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// Writes back the fields that change after issue.
pub async fn save(
    conn: &mut PgConnection,
    key: &ApiKey,
    now: DateTime<Utc>,
) -> Result<ApiKey, StoreError> {
    let row = sqlx::query_as::<_, ApiKey>(
        r#"update api_keys as k
              set name = $2, enabled = $3, revoked_at = $4, revoked_reason = $5,
                  rotated_to = $6, grace_until = $7, rotated_at = $9, rotated_by = $10,
                  limits = $11, models = $12
            where id = $1
           returning k.*, api_key_status(k, $8) as status"#,
    )
    .bind(key.id)
    .bind(&key.name)
    .bind(key.enabled)
    .bind(key.revoked_at)
    .bind(&key.revoked_reason)
    .bind(key.rotated_to)
    .bind(key.grace_until)
    .bind(now)
    .bind(key.rotated_at)
    .bind(&key.rotated_by)
    .bind(key.limits)
    .bind(&key.models)
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// One key.
pub async fn get(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKey>(
        r#"select k.*, api_key_status(k, $2) as status from api_keys k where id = $1"#,
    )
    .bind(id)
    .bind(now)
    .fetch_optional(db)
    .await?)
}

/// The key whose digest this is, locked until the transaction ends.
pub async fn lock_by_digest(
    conn: &mut PgConnection,
    digest: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKey>(
        r#"select k.*, api_key_status(k, $2) as status from api_keys k where digest = $1 for update"#,
    )
    .bind(digest)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// One key, locked until the transaction ends: two rotations of the same key
/// queue here, and the second sees the first's successor.
pub async fn lock(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKey>(
        r#"select k.*, api_key_status(k, $2) as status from api_keys k where id = $1 for update"#,
    )
    .bind(id)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// A page of keys, optionally of one instance and in one status.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &ListFilter<'_>,
    after: Option<After>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<(Vec<ApiKey>, Option<After>), StoreError> {
    let labels = filter.labels;
    let rows = sqlx::query_as::<_, ApiKey>(
        r#"select k.*, api_key_status(k, $3) as status from api_keys k
            where ($1::uuid is null or instance_id = $1)
              and ($2::text is null or api_key_status(k, $3) = $2)
              and ($7::jsonb is null or exists (
                    select 1 from instances i
                     where i.id = k.instance_id and i.labels @> $7
                       and i.labels @@ $8::jsonpath))
              and ($9::bool is null or legacy = $9)
              and ($10::timestamptz is null or (
                    api_key_status(k, $3) in ('active', 'rotating')
                    and coalesce(last_used_at, created_at) < $10))
              and ($4::timestamptz is null or (created_at, id) > ($4, $5))
            order by created_at, id
            limit $6"#,
    )
    .bind(filter.instance_id)
    .bind(filter.status)
    .bind(now)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .bind(labels.map(|l| &l.contains))
    .bind(labels.map(|l| &l.path))
    .bind(filter.legacy)
    .bind(filter.idle_since)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |k| After {
        created_at: k.created_at,
        id: k.id,
    }))
}

/// Which keys a list shows.
#[derive(Debug, Default, Clone, Copy)]
pub struct ListFilter<'a> {
    /// Only this instance's.
    pub instance_id: Option<Uuid>,
    /// Only in this status (`active`, `rotating`, ...).
    pub status: Option<&'a str>,
    /// Only of instances whose labels match.
    pub labels: Option<&'a LabelQuery>,
    /// Only legacy keys (true) or only keyplane's own (false).
    pub legacy: Option<bool>,
    /// Only keys still working (active or rotating) that no node accepted
    /// since then (a key never used: issued before then).
    pub idle_since: Option<DateTime<Utc>>,
}

/// Which of `digests` some key already has.
pub async fn digests_taken(
    db: impl PgExecutor<'_>,
    digests: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(
        sqlx::query_scalar::<_, Vec<u8>>("select digest from api_keys where digest = any($1)")
            .bind(digests)
            .fetch_all(db)
            .await?,
    )
}

/// The keys in `statuses` of the active instances whose labels match, in
/// creation order.
pub async fn of_instances_matching(
    db: impl PgExecutor<'_>,
    labels: &LabelQuery,
    statuses: &[&str],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let statuses: Vec<String> = statuses.iter().map(|s| (*s).to_owned()).collect();
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"select k.id from api_keys k
             join instances i on i.id = k.instance_id
            where i.status = 'active' and i.labels @> $1 and i.labels @@ $2::jsonpath
              and api_key_status(k, $3) = any($4)
            order by k.created_at, k.id"#,
    )
    .bind(&labels.contains)
    .bind(&labels.path)
    .bind(now)
    .bind(&statuses)
    .fetch_all(db)
    .await?)
}

/// Revokes every key of an instance that is not revoked yet; answers their ids.
pub async fn revoke_all_of_instance(
    conn: &mut PgConnection,
    instance_id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"update api_keys set revoked_at = $2, revoked_reason = $3
            where instance_id = $1 and revoked_at is null
           returning id"#,
    )
    .bind(instance_id)
    .bind(now)
    .bind(reason)
    .fetch_all(conn)
    .await?)
}

/// How many keys that still count (not revoked, not expired) name `role`.
pub async fn count_naming_role(
    db: impl PgExecutor<'_>,
    role: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        r#"select count(*) from api_keys k
            where $1 = any(roles) and api_key_status(k, $2) not in ('revoked', 'expired')"#,
    )
    .bind(role)
    .bind(now)
    .fetch_one(db)
    .await?)
}
