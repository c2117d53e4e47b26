//! People: sign-ins in progress, sessions, and device authorizations.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;
use crate::page::{After, paginate};

/// A sign-in sent to the identity provider and not yet back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignIn {
    /// SHA-256 of the PKCE verifier, which only the browser holds.
    pub verifier_digest: Vec<u8>,
    /// The `state` sent to the provider.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// `login`, `step_up` or `device`.
    pub purpose: String,
    /// Where to send the browser afterwards (a path on this origin).
    pub return_to: String,
    /// For `device`: the device authorization it approves.
    pub device_grant_id: Option<Uuid>,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it can no longer finish.
    pub expires_at: DateTime<Utc>,
}

/// Stores a sign-in in progress, dropping those long expired.
pub async fn begin_sign_in(db: &mut PgConnection, sign_in: &SignIn) -> Result<(), StoreError> {
    sqlx::query(r#"delete from sign_ins where expires_at < $1 - interval '1 hour'"#)
        .bind(sign_in.created_at)
        .execute(&mut *db)
        .await?;
    sqlx::query(
        r#"insert into sign_ins
               (verifier_digest, state, nonce, purpose, return_to, device_grant_id,
                created_at, expires_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8)"#,
    )
    .bind(&sign_in.verifier_digest)
    .bind(&sign_in.state)
    .bind(&sign_in.nonce)
    .bind(&sign_in.purpose)
    .bind(&sign_in.return_to)
    .bind(sign_in.device_grant_id)
    .bind(sign_in.created_at)
    .bind(sign_in.expires_at)
    .execute(&mut *db)
    .await?;
    Ok(())
}

/// Takes the sign-in whose verifier has `verifier_digest`: it can finish once.
pub async fn take_sign_in(
    db: impl PgExecutor<'_>,
    verifier_digest: &[u8],
) -> Result<Option<SignIn>, StoreError> {
    Ok(sqlx::query_as::<_, SignIn>(
        r#"delete from sign_ins where verifier_digest = $1 returning *"#,
    )
    .bind(verifier_digest)
    .fetch_optional(db)
    .await?)
}

/// A person's session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    /// Its id.
    pub id: Uuid,
    /// SHA-256 of its `kps_` token.
    pub digest: Vec<u8>,
    /// Prefix and last four characters of the token.
    pub masked: String,
    /// `browser` or `device`.
    pub kind: String,
    /// The identity provider's subject.
    pub subject: String,
    /// The person's email, as the provider said.
    pub email: Option<String>,
    /// The management role the group map gave.
    pub role: String,
    /// When the person last signed in with MFA.
    pub authenticated_at: DateTime<Utc>,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it was last used.
    pub last_seen_at: DateTime<Utc>,
    /// When it ends, used or not.
    pub expires_at: DateTime<Utc>,
    /// When it was ended early.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// The address it began from.
    pub client_ip: Option<String>,
    /// The browser or tool it began from.
    pub user_agent: Option<String>,
}

/// Stores a new session.
pub async fn insert_session(
    db: impl PgExecutor<'_>,
    session: &Session,
) -> Result<Session, StoreError> {
    Ok(sqlx::query_as::<_, Session>(
        r#"insert into sessions
               (id, digest, masked, kind, subject, email, role, authenticated_at,
                created_at, last_seen_at, expires_at, client_ip, user_agent)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           returning *"#,
    )
    .bind(session.id)
    .bind(&session.digest)
    .bind(&session.masked)
    .bind(&session.kind)
    .bind(&session.subject)
    .bind(&session.email)
    .bind(&session.role)
    .bind(session.authenticated_at)
    .bind(session.created_at)
    .bind(session.last_seen_at)
    .bind(session.expires_at)
    .bind(&session.client_ip)
    .bind(&session.user_agent)
    .fetch_one(db)
    .await?)
}

/// The session whose token has `digest`, whatever its state.
pub async fn session_by_digest(
    db: impl PgExecutor<'_>,
    digest: &[u8],
) -> Result<Option<Session>, StoreError> {
    Ok(
        sqlx::query_as::<_, Session>(r#"select * from sessions where digest = $1"#)
            .bind(digest)
            .fetch_optional(db)
            .await?,
    )
}

/// One session.
pub async fn session(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Session>, StoreError> {
    Ok(
        sqlx::query_as::<_, Session>(r#"select * from sessions where id = $1"#)
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Marks a session used at `now`, at most once a minute.
pub async fn touch_session(
    db: impl PgExecutor<'_>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update sessions set last_seen_at = $2
            where id = $1 and last_seen_at < $2 - interval '1 minute'"#,
    )
    .bind(id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// Sessions that have not ended by `now`, of `subject` or of everyone.
pub async fn live_sessions(
    db: impl PgExecutor<'_>,
    subject: Option<&str>,
    now: DateTime<Utc>,
    after: Option<After>,
    limit: i64,
) -> Result<(Vec<Session>, Option<After>), StoreError> {
    let rows = sqlx::query_as::<_, Session>(
        r#"select * from sessions
            where revoked_at is null and expires_at > $1
              and ($2::text is null or subject = $2)
              and ($3::timestamptz is null or (created_at, id) > ($3, $4))
            order by created_at, id
            limit $5"#,
    )
    .bind(now)
    .bind(subject)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    Ok(paginate(rows, limit, |s| After {
        created_at: s.created_at,
        id: s.id,
    }))
}

/// Ends one live session; answers it if it was live.
pub async fn revoke_session(
    db: impl PgExecutor<'_>,
    id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Session>, StoreError> {
    Ok(sqlx::query_as::<_, Session>(
        r#"update sessions set revoked_at = $2, revoked_reason = $3
            where id = $1 and revoked_at is null and expires_at > $2
            returning *"#,
    )
    .bind(id)
    .bind(now)
    .bind(reason)
    .fetch_optional(db)
    .await?)
}

/// Ends the live session whose token has `digest`; answers it if it was live.
pub async fn revoke_session_by_digest(
    db: impl PgExecutor<'_>,
    digest: &[u8],
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Session>, StoreError> {
    Ok(sqlx::query_as::<_, Session>(
        r#"update sessions set revoked_at = $2, revoked_reason = $3
            where digest = $1 and revoked_at is null and expires_at > $2
            returning *"#,
    )
    .bind(digest)
    .bind(now)
    .bind(reason)
    .fetch_optional(db)
    .await?)
}

/// Ends every live session of `subject`; answers their ids.
pub async fn revoke_sessions_of(
    db: impl PgExecutor<'_>,
    subject: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar::<_, Uuid>(
        r#"update sessions set revoked_at = $2, revoked_reason = $3
            where subject = $1 and revoked_at is null and expires_at > $2
            returning id"#,
    )
    .bind(subject)
    .bind(now)
    .bind(reason)
    .fetch_all(db)
    .await?)
}

/// Deletes the sessions that ended (expired or revoked) before `before`.
pub async fn delete_sessions_ended_before(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        r#"delete from sessions
            where expires_at < $1 or (revoked_at is not null and revoked_at < $1)"#,
    )
    .bind(before)
    .execute(db)
    .await?
    .rows_affected())
}

/// A device authorization (RFC 8628): a terminal waiting for a person.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceGrant {
    /// Its id.
    pub id: Uuid,
    /// SHA-256 of the device code the terminal polls with.
    pub device_code_digest: Vec<u8>,
    /// The code the person types, without its dash.
    pub user_code: String,
    /// `pending`, `approved`, `denied` or `spent`.
    pub status: String,
    /// How long the terminal waits between polls.
    pub interval_seconds: i32,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it can no longer be approved or spent.
    pub expires_at: DateTime<Utc>,
    /// When the terminal last asked.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// Who approved it.
    pub subject: Option<String>,
    /// Their email.
    pub email: Option<String>,
    /// Their role.
    pub role: Option<String>,
    /// When they signed in with MFA.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// The session it was spent for.
    pub session_id: Option<Uuid>,
    /// The terminal's address.
    pub client_ip: Option<String>,
}

/// Stores a new device authorization, dropping those long expired.
pub async fn insert_device_grant(
    db: &mut PgConnection,
    grant: &DeviceGrant,
) -> Result<(), StoreError> {
    sqlx::query(r#"delete from device_grants where expires_at < $1 - interval '1 day'"#)
        .bind(grant.created_at)
        .execute(&mut *db)
        .await?;
    sqlx::query(
        r#"insert into device_grants
               (id, device_code_digest, user_code, status, interval_seconds, created_at,
                expires_at, client_ip)
           values ($1, $2, $3, 'pending', $4, $5, $6, $7)"#,
    )
    .bind(grant.id)
    .bind(&grant.device_code_digest)
    .bind(&grant.user_code)
    .bind(grant.interval_seconds)
    .bind(grant.created_at)
    .bind(grant.expires_at)
    .bind(&grant.client_ip)
    .execute(&mut *db)
    .await?;
    Ok(())
}

/// The device authorization a person typed `user_code` for.
pub async fn device_grant_by_user_code(
    db: impl PgExecutor<'_>,
    user_code: &str,
) -> Result<Option<DeviceGrant>, StoreError> {
    Ok(
        sqlx::query_as::<_, DeviceGrant>(r#"select * from device_grants where user_code = $1"#)
            .bind(user_code)
            .fetch_optional(db)
            .await?,
    )
}

/// Locks the device authorization with `id`.
pub async fn lock_device_grant(
    db: &mut PgConnection,
    id: Uuid,
) -> Result<Option<DeviceGrant>, StoreError> {
    Ok(
        sqlx::query_as::<_, DeviceGrant>(r#"select * from device_grants where id = $1 for update"#)
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Locks the device authorization polled for with a device code of `digest`.
pub async fn lock_device_grant_by_code(
    db: &mut PgConnection,
    digest: &[u8],
) -> Result<Option<DeviceGrant>, StoreError> {
    Ok(sqlx::query_as::<_, DeviceGrant>(
        r#"select * from device_grants where device_code_digest = $1 for update"#,
    )
    .bind(digest)
    .fetch_optional(db)
    .await?)
}

/// Denies the device authorizations `subject` approved that no terminal
/// has collected yet.
pub async fn deny_device_grants_of(
    db: impl PgExecutor<'_>,
    subject: &str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        r#"update device_grants set status = 'denied'
            where subject = $1 and status = 'approved'"#,
    )
    .bind(subject)
    .execute(db)
    .await?
    .rows_affected())
}

/// Saves a device authorization's state.
pub async fn save_device_grant(
    db: &mut PgConnection,
    grant: &DeviceGrant,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update device_grants
              set status = $2, interval_seconds = $3, last_polled_at = $4, subject = $5,
                  email = $6, role = $7, authenticated_at = $8, session_id = $9
            where id = $1"#,
    )
    .bind(grant.id)
    .bind(&grant.status)
    .bind(grant.interval_seconds)
    .bind(grant.last_polled_at)
    .bind(&grant.subject)
    .bind(&grant.email)
    .bind(&grant.role)
    .bind(grant.authenticated_at)
    .bind(grant.session_id)
    .execute(db)
    .await?;
    Ok(())
}
