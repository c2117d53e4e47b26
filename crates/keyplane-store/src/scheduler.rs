//! What the scheduler claims: each expiry warning and each end of a key is
//! claimed by inserting a notice row, so it happens once whoever runs it and
//! however often it restarts.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// The advisory lock the replica running the scheduler holds.
pub const LOCK: i64 = 0x6b65_7970_6c61_6e65; // "keyplane"

/// A key the scheduler acted on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Noticed {
    /// The key.
    pub id: Uuid,
    /// Its instance.
    pub instance_id: Uuid,
    /// Its masked form.
    pub masked: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// When its grace window ends, after a rotation.
    pub grace_until: Option<DateTime<Utc>>,
}

/// Claims the warning `notice` for up to `limit` live keys (issued by `now`)
/// expiring within `days` of `now` that have had no warning for `days` or
/// fewer (`closer` names those notices), and answers them. Called for each
/// threshold, nearest first, with one `now`, a key reaching several
/// thresholds at once gets only the nearest warning.
pub async fn claim_expiring(
    conn: &mut PgConnection,
    notice: &str,
    closer: &[String],
    days: i64,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Noticed>, StoreError> {
    Ok(sqlx::query_as::<_, Noticed>(
        r#"with claimed as (
               insert into key_notices (key_id, notice, at)
               select k.id, $1, $4 from api_keys k
                where k.revoked_at is null and k.enabled and k.rotated_to is null
                  and k.created_at <= $4 and k.expires_at > $4 and k.expires_at <= $4 + make_interval(days => $3::int)
                  and not exists (select 1 from key_notices n
                                   where n.key_id = k.id and n.notice = any($2))
                order by k.expires_at
                limit $5
               on conflict do nothing
               returning key_id)
           select k.id, k.instance_id, k.masked, k.expires_at, k.grace_until
             from api_keys k join claimed c on c.key_id = k.id"#,
    )
    .bind(notice)
    .bind(closer)
    .bind(days)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Claims the end of up to `limit` keys that stopped working by themselves
/// (expired, or past their grace window) and were not announced yet.
pub async fn claim_ended(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Noticed>, StoreError> {
    Ok(sqlx::query_as::<_, Noticed>(
        r#"with claimed as (
               insert into key_notices (key_id, notice, at)
               select k.id, 'ended', $1 from api_keys k
                where k.revoked_at is null
                  and (k.expires_at <= $1 or k.grace_until <= $1)
                  and not exists (select 1 from key_notices n
                                   where n.key_id = k.id and n.notice = 'ended')
                limit $2
               on conflict do nothing
               returning key_id)
           select k.id, k.instance_id, k.masked, k.expires_at, k.grace_until
             from api_keys k join claimed c on c.key_id = k.id"#,
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Takes the scheduler's lock on this session if no other holds it.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(LOCK)
        .fetch_one(conn)
        .await?)
}
