//! Webhook endpoints and their delivery queue. A delivery is a row: it is
//! written in the same transaction as the change it announces, claimed with
//! a lease when due, and retried until delivered, so neither a restart nor a
//! second replica loses or duplicates one.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// A registered endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Webhook {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// The events it receives.
    pub events: Vec<String>,
    /// Free text.
    pub description: String,
    /// The signing secret, sealed with the master key.
    pub secret_sealed: Vec<u8>,
    /// False while paused.
    pub enabled: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its signing secret was made.
    pub secret_created_at: DateTime<Utc>,
    /// When its signing secret expires (rotate it before).
    pub secret_expires_at: DateTime<Utc>,
    /// The secret it had before a rotation, sealed, while deliveries are
    /// still signed with it too.
    pub previous_secret_sealed: Option<Vec<u8>>,
    /// Until when deliveries are signed with the previous secret too.
    pub previous_secret_until: Option<DateTime<Utc>>,
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    /// Its id, sent as `webhook-id` (the same on every attempt).
    pub id: Uuid,
    /// The endpoint.
    pub webhook_id: Uuid,
    /// The event type.
    pub event: String,
    /// The body sent.
    pub payload: sqlx::types::Json<Value>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due (or the current one's lease ends).
    pub next_attempt_at: DateTime<Utc>,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Registers an endpoint.
pub async fn insert(conn: &mut PgConnection, hook: &Webhook) -> Result<Webhook, StoreError> {
    Ok(sqlx::query_as::<_, Webhook>(
        r#"insert into webhooks (id, url, events, description, secret_sealed, enabled, created_at,
                                   secret_created_at, secret_expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $7, $8)
             returning *"#,
    )
    .bind(hook.id)
    .bind(&hook.url)
    .bind(&hook.events)
    .bind(&hook.description)
    .bind(&hook.secret_sealed)
    .bind(hook.enabled)
    .bind(hook.created_at)
    .bind(hook.secret_expires_at)
    .fetch_one(conn)
    .await?)
}

/// A page of the endpoints not deleted, oldest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<Webhook>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, Webhook>(
        r#"select * from webhooks
          where deleted_at is null
            and ($1::timestamptz is null or (created_at, id) > ($1, $2))
          order by created_at, id
          limit $3"#,
    )
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |w| After {
        created_at: w.created_at,
        id: w.id,
    }))
}

/// One endpoint, if not deleted.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Webhook>, StoreError> {
    Ok(sqlx::query_as::<_, Webhook>(
        r#"select * from webhooks where id = $1 and deleted_at is null"#,
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Deletes an endpoint and drops its pending deliveries; false when there
/// was none.
pub async fn delete(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let deleted = sqlx::query(
        r#"update webhooks set deleted_at = $2, enabled = false
            where id = $1 and deleted_at is null"#,
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        r#"update webhook_deliveries set status = 'failed', last_error = 'endpoint deleted'
            where webhook_id = $1 and status = 'pending'"#,
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(deleted > 0)
}

/// Queues `payload` for every enabled endpoint that wants `event`; answers
/// how many deliveries were queued.
pub async fn enqueue(
    conn: &mut PgConnection,
    event: &str,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        r#"insert into webhook_deliveries (id, webhook_id, event, payload, next_attempt_at, created_at)
           select gen_random_uuid(), id, $1, $2, $3, $3 from webhooks
            where enabled and deleted_at is null and $1 = any(events)"#,
    )
    .bind(event)
    .bind(sqlx::types::Json(payload))
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Claims up to `limit` due deliveries, each with its endpoint: their next
/// attempt moves to `lease_until`, so no other worker takes them meanwhile
/// and one that dies mid-attempt leaves them to be retried.
pub async fn claim_due(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    Ok(sqlx::query_as::<_, Delivery>(
        r#"update webhook_deliveries set next_attempt_at = $2, attempts = attempts + 1
            where id in (select id from webhook_deliveries
                          where status = 'pending' and next_attempt_at <= $1
                          order by next_attempt_at limit $3
                          for update skip locked)
           returning *"#,
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Records a delivery's attempt: delivered, retried at `retry_at`, or
/// given up on (`retry_at` None).
pub async fn record_attempt(
    db: impl PgExecutor<'_>,
    id: Uuid,
    delivered: bool,
    last_status: Option<i32>,
    last_error: Option<&str>,
    now: DateTime<Utc>,
    retry_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let status = match (delivered, retry_at) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    sqlx::query(
        r#"update webhook_deliveries
              set status = $2, last_status = $3, last_error = $4,
                  delivered_at = case when $2 = 'delivered' then $5 end,
                  next_attempt_at = coalesce($6, next_attempt_at)
            where id = $1 and status = 'pending'"#,
    )
    .bind(id)
    .bind(status)
    .bind(last_status)
    .bind(last_error)
    .bind(now)
    .bind(retry_at)
    .execute(db)
    .await?;
    Ok(())
}

/// A page of an endpoint's deliveries, newest first (those older than
/// `before`, when given).
pub async fn deliveries(
    db: impl PgExecutor<'_>,
    webhook_id: Uuid,
    before: Option<After>,
    limit: i64,
) -> Result<(Vec<Delivery>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, Delivery>(
        r#"select * from webhook_deliveries
            where webhook_id = $1
              and ($2::timestamptz is null or (created_at, id) < ($2, $3))
            order by created_at desc, id desc
            limit $4"#,
    )
    .bind(webhook_id)
    .bind(before.map(|b| b.created_at))
    .bind(before.map(|b| b.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |d| After {
        created_at: d.created_at,
        id: d.id,
    }))
}

/// How many endpoints are registered (not deleted).
pub async fn count(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar(r#"select count(*) from webhooks where deleted_at is null"#)
            .fetch_one(db)
            .await?,
    )
}

/// Every endpoint's sealed secrets (deleted ones too), current and
/// previous, locked until the transaction ends: for re-sealing under a new
/// master key.
pub async fn lock_sealed_secrets(
    conn: &mut PgConnection,
) -> Result<Vec<(Uuid, Vec<u8>, Option<Vec<u8>>)>, StoreError> {
    Ok(sqlx::query_as::<_, (Uuid, Vec<u8>, Option<Vec<u8>>)>(
        r#"select id, secret_sealed, previous_secret_sealed from webhooks order by id for update"#,
    )
    .fetch_all(conn)
    .await?)
}

/// Gives a live endpoint (locked by the caller: see [`lock`]) a new signing
/// secret made at `now`; the one it replaces signs too until `previous_until`
/// (None: it stops at once).
pub async fn rotate_secret(
    conn: &mut PgConnection,
    id: Uuid,
    sealed: &[u8],
    expires_at: DateTime<Utc>,
    previous_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Webhook, StoreError> {
    Ok(sqlx::query_as::<_, Webhook>(
        r#"update webhooks
            set previous_secret_sealed = case when $4::timestamptz is null then null
                                              else secret_sealed end,
                previous_secret_until = $4,
                secret_sealed = $2, secret_expires_at = $3, secret_created_at = $5
          where id = $1 and deleted_at is null
      returning *"#,
    )
    .bind(id)
    .bind(sealed)
    .bind(expires_at)
    .bind(previous_until)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// A live endpoint, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Webhook>, StoreError> {
    Ok(sqlx::query_as::<_, Webhook>(
        r#"select * from webhooks where id = $1 and deleted_at is null for update"#,
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Replaces an endpoint's sealed secrets (the same secrets, sealed anew).
pub async fn reseal_secret(
    conn: &mut PgConnection,
    id: Uuid,
    sealed: &[u8],
    previous: Option<&[u8]>,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update webhooks set secret_sealed = $2, previous_secret_sealed = $3 where id = $1"#,
    )
    .bind(id)
    .bind(sealed)
    .bind(previous)
    .execute(conn)
    .await?;
    Ok(())
}
