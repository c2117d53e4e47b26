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

/// Claims an expiry warning for up to `limit` live keys (issued by `now`)
/// expiring within 14 days of `now`: at the nearest of 14, 7 and 1 days
/// they have reached and not been warned at (or nearer), and answers them
/// with that threshold. One statement, one snapshot: a key reaching several
/// thresholds at once gets only the nearest warning.
pub async fn claim_warnings(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Warned>, StoreError> {
    Ok(sqlx::query_as::<_, Warned>(
        r#"with due as (
               select k.id,
                      case when k.expires_at <= $1 + interval '1 day' then 1
                           when k.expires_at <= $1 + interval '7 days' then 7
                           else 14 end as days
                 from api_keys k
                where k.revoked_at is null and k.enabled and k.rotated_to is null
                  and k.created_at <= $1 and k.expires_at > $1
                  and k.expires_at <= $1 + interval '14 days'),
           fresh as (
               select due.* from due
                where not exists (select 1 from key_notices n
                                   where n.key_id = due.id
                                     and (n.notice = 'expiring:1'
                                          or (due.days >= 7 and n.notice = 'expiring:7')
                                          or (due.days >= 14 and n.notice = 'expiring:14')))
                limit $2),
           claimed as (
               insert into key_notices (key_id, notice, at)
               select id, 'expiring:' || days, $1 from fresh
               on conflict do nothing
               returning key_id, split_part(notice, ':', 2)::int as days)
           select k.id, k.instance_id, k.masked, k.expires_at, k.grace_until,
                  claimed.days::bigint as days
             from api_keys k join claimed on claimed.key_id = k.id"#,
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// A key warned of its expiry, and at how many days.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Warned {
    /// The key.
    #[sqlx(flatten)]
    pub key: Noticed,
    /// The threshold reached: 14, 7 or 1.
    pub days: i64,
}

/// A fleet credential (a node key, an admin key, an enrollment token, a
/// webhook's secret) warned of its expiry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialWarned {
    /// `node_key`, `admin_key`, `enrollment_token` or `webhook_secret`.
    pub kind: String,
    /// The credential's id (a node key's is its node's).
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its masked form.
    pub masked: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The threshold reached: 14, 7 or 1.
    pub days: i64,
}

/// Claims an expiry warning for up to `limit` fleet credentials, as
/// [`claim_warnings`] does for instance keys, with one difference: a
/// threshold counts only once reached, so a credential made to live less
/// than a day (an enrollment token for the afternoon) is never warned of.
pub async fn claim_credential_warnings(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<CredentialWarned>, StoreError> {
    Ok(sqlx::query_as::<_, CredentialWarned>(
        r#"with reached as (
               select c.*,
                      case when c.expires_at <= $1 + interval '1 day'
                                and c.expires_at - c.created_at > interval '1 day' then 1
                           when c.expires_at <= $1 + interval '7 days'
                                and c.expires_at - c.created_at > interval '7 days' then 7
                           when c.expires_at - c.created_at > interval '14 days' then 14
                      end as days
                 from credential_expiries c
                where c.kind <> 'api_key' and c.expires_at > $1
                  and c.expires_at <= $1 + interval '14 days'),
           fresh as (
               select r.* from reached r
                where r.days is not null
                  and not exists (select 1 from credential_notices n
                                   where (n.kind, n.id, n.expires_at) = (r.kind, r.id, r.expires_at)
                                     and (n.notice = 'expiring:1'
                                          or (r.days >= 7 and n.notice = 'expiring:7')
                                          or (r.days >= 14 and n.notice = 'expiring:14')))
                limit $2),
           claimed as (
               insert into credential_notices (kind, id, expires_at, notice, at)
               select kind, id, expires_at, 'expiring:' || days, $1 from fresh
               on conflict do nothing
               returning kind, id, expires_at)
           select f.kind, f.id, f.name, f.masked, f.expires_at, f.days::bigint as days
             from fresh f join claimed c using (kind, id, expires_at)"#,
    )
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

/// Takes the scheduler's lock on this session if no other holds it, on a
/// primary only: a standby grants advisory locks too, but of its own, so a
/// replica connected to one would lead beside the primary's leader.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, StoreError> {
    // CASE, not AND: the lock is never taken where it would not be used.
    Ok(sqlx::query_scalar(
        "select case when pg_is_in_recovery() then false else pg_try_advisory_lock($1) end",
    )
    .bind(LOCK)
    .fetch_one(conn)
    .await?)
}

/// Whether the session holding the lock still leads: it is alive and its
/// server is still the primary (a demoted primary keeps no leader).
pub async fn still_leads(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("select not pg_is_in_recovery()")
        .fetch_one(conn)
        .await?)
}
