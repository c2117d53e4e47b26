//! The scheduler: warns before keys expire, announces the keys that stopped
//! working by themselves (so nodes drop them at once), and delivers webhooks.
//!
//! Every replica runs the loop, but only the one holding a PostgreSQL
//! advisory lock does the work. The lock belongs to a connection of its own:
//! when that replica dies, its connection closes, the lock is freed, and the
//! next replica to try takes over. Each piece of work is claimed by a row
//! (a key notice, a delivery lease), so none is done twice across restarts.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use keyplane_store::{audit, revocations, scheduler};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

use crate::events::Event;
use crate::state::AppState;
use crate::webhooks;

/// How long leadership checks wait for the database.
const DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Keys handled per job run; the rest wait for the next run.
const BATCH: i64 = 500;

/// Runs the scheduler every `settings.scheduler_interval` for as long as the
/// returned task lives.
pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = match webhooks::client(&state.destinations) {
            Ok(http) => http,
            Err(err) => {
                tracing::error!(error = %err, "scheduler not started: no HTTP client");
                return;
            }
        };
        let mut lock: Option<PgConnection> = None;
        let mut ticks = tokio::time::interval(state.settings.scheduler_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let leading = lead(&state, &mut lock).await;
            let was = state.scheduler_leader.swap(leading, Ordering::Relaxed);
            if leading != was {
                tracing::info!(leading, "scheduler leadership changed");
            }
            if !leading {
                continue;
            }
            run(&state, &http).await;
        }
    })
}

/// Whether this replica runs the scheduler now. On the embedded database
/// there is one process, which always does (and whose one connection the
/// lock cannot take).
async fn lead(state: &AppState, lock: &mut Option<PgConnection>) -> bool {
    if state.db.is_embedded() {
        return true;
    }
    if let Some(conn) = lock.as_mut() {
        if matches!(
            tokio::time::timeout(DATABASE_WAIT, scheduler::still_leads(conn)).await,
            Ok(Ok(true))
        ) {
            return true;
        }
        // The session (and the lock with it) is gone, unreachable, or on a
        // server that is no longer the primary: step down, and try again
        // afresh (after a failover, on the new primary).
        *lock = None;
    }
    let options = state.db.pool().connect_options();
    let connecting = PgConnection::connect_with(&options);
    let mut conn = match tokio::time::timeout(DATABASE_WAIT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "scheduler cannot reach the database");
            return false;
        }
        Err(_) => return false,
    };
    match scheduler::try_lead(&mut conn).await {
        Ok(true) => {
            *lock = Some(conn);
            true
        }
        _ => {
            let _ = conn.close().await;
            false
        }
    }
}

/// One run of every job; a job that fails is retried next run and keeps
/// none of the others from running.
async fn run(state: &AppState, http: &reqwest::Client) {
    let began = state.clock.now();
    let failed = |job: &str, err: anyhow::Error| {
        tracing::warn!(job, error = %format!("{err:#}"), "scheduled job failed; retrying next run");
    };
    if let Err(err) = warn_expiring(state).await {
        failed("expiry warnings", err);
    }
    if let Err(err) = warn_expiring_credentials(state).await {
        failed("credential expiry warnings", err);
    }
    if let Err(err) = renew_signing_key(state).await {
        failed("signing key renewal", err);
    }
    if let Err(err) = announce_ended(state).await {
        failed("ends of keys", err);
    }
    if let Err(err) = forget_ended_sessions(state).await {
        failed("ended sessions", err);
    }
    if let Err(err) = forget_old_usage(state).await {
        failed("old usage", err);
    }
    loop {
        match webhooks::deliver_due(state, http).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                failed("webhook deliveries", err);
                break;
            }
        }
    }
    state
        .scheduler_ran
        .store(began.timestamp(), Ordering::Relaxed);
}

/// Sessions that ended (expired or revoked) over a week ago are deleted:
/// the audit log keeps their story, and the table stays small.
async fn forget_ended_sessions(state: &AppState) -> anyhow::Result<()> {
    let before = state.clock.now() - chrono::Duration::days(7);
    keyplane_store::people::delete_sessions_ended_before(state.db.pool(), before).await?;
    Ok(())
}

/// Usage rollups past their retention are deleted, a batch per run, so
/// that storage stays bounded however much is reported.
async fn forget_old_usage(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now();
    let settings = &state.settings;
    let hourly = now - chrono::Duration::from_std(settings.usage_hourly_retention)?;
    let daily = now - chrono::Duration::from_std(settings.usage_daily_retention)?;
    keyplane_store::usage::delete_old(state.db.pool(), hourly, daily, 10_000).await?;
    Ok(())
}

fn entry(
    action: &'static str,
    key: &scheduler::Noticed,
    details: serde_json::Value,
    now: DateTime<Utc>,
) -> audit::NewEntry {
    audit::NewEntry {
        at: now,
        actor: "scheduler".to_owned(),
        action,
        target_type: "api_key",
        target_id: Some(key.id.to_string()),
        outcome: "success",
        request_id: None,
        client_ip: None,
        details,
    }
}

/// `key.expiring` at 14, 7 and 1 days before a key expires: one warning per
/// threshold reached, the nearest only when several are reached at once.
async fn warn_expiring(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now();
    let mut tx = state.db.pool().begin().await?;
    let warned = scheduler::claim_warnings(&mut tx, now, BATCH).await?;
    for scheduler::Warned { key, days } in &warned {
        let data = json!({
            "key_id": key.id,
            "instance_id": key.instance_id,
            "masked_key": key.masked,
            "expires_at": key.expires_at,
            "days_left": days,
        });
        audit::append(&mut tx, &entry("key.expiring", key, data.clone(), now)).await?;
        webhooks::notify(&mut tx, "key.expiring", data, now).await?;
    }
    tx.commit().await?;
    if !warned.is_empty() {
        tracing::info!(keys = warned.len(), "warned of expiring keys");
    }
    Ok(())
}

/// `credential.expiring` at 14, 7 and 1 days before a node key, an admin
/// key, an enrollment token or a webhook's secret expires without a successor (see
/// [`scheduler::claim_credential_warnings`]).
async fn warn_expiring_credentials(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now();
    let mut tx = state.db.pool().begin().await?;
    let warned = scheduler::claim_credential_warnings(&mut tx, now, BATCH).await?;
    for credential in &warned {
        let data = json!({
            "kind": credential.kind,
            "id": credential.id,
            "name": credential.name,
            "masked": credential.masked,
            "expires_at": credential.expires_at,
            "days_left": credential.days,
        });
        let entry = audit::NewEntry {
            at: now,
            actor: "scheduler".to_owned(),
            action: "credential.expiring",
            target_type: target_type(&credential.kind),
            target_id: Some(credential.id.to_string()),
            outcome: "success",
            request_id: None,
            client_ip: None,
            details: data.clone(),
        };
        audit::append(&mut tx, &entry).await?;
        webhooks::notify(&mut tx, "credential.expiring", data, now).await?;
    }
    tx.commit().await?;
    for credential in &warned {
        tracing::warn!(
            kind = %credential.kind,
            id = %credential.id,
            name = %credential.name,
            days_left = credential.days,
            "a credential expires soon and has no successor"
        );
    }
    Ok(())
}

/// Makes the next signing key when the schedule says so; it is published at
/// once and starts signing later (see [`crate::signing::Schedule`]).
async fn renew_signing_key(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now();
    let mut tx = state.db.pool().begin().await?;
    let Some((kid, active_from)) = state.signer.renew(&mut tx, now).await? else {
        tx.rollback().await?;
        return Ok(());
    };
    let entry = audit::NewEntry {
        at: now,
        actor: "scheduler".to_owned(),
        action: "signing_key.renew",
        target_type: "signing_key",
        target_id: Some(kid.clone()),
        outcome: "success",
        request_id: None,
        client_ip: None,
        details: json!({ "active_from": active_from }),
    };
    audit::append(&mut tx, &entry).await?;
    state.events.commit(tx, &[Event::SigningKeys]).await?;
    tracing::info!(%kid, %active_from, "next signing key published");
    Ok(())
}

/// The audit log's target type for a kind of credential.
fn target_type(kind: &str) -> &'static str {
    match kind {
        "node_key" => "node",
        "admin_key" => "admin_key",
        "enrollment_token" => "enrollment_token",
        "webhook_secret" => "webhook",
        _ => "credential",
    }
}

/// Keys past their expiry or grace window are already refused everywhere a
/// clock is read; announcing them on the revocation stream lets nodes drop
/// cached answers at once, and the audit log records the end.
async fn announce_ended(state: &AppState) -> anyhow::Result<()> {
    let now = state.clock.now();
    let mut tx = state.db.pool().begin().await?;
    let keys = scheduler::claim_ended(&mut tx, now, BATCH).await?;
    if keys.is_empty() {
        tx.rollback().await?;
        return Ok(());
    }
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    revocations::record(&mut tx, &ids, "expired", now).await?;
    for key in &keys {
        let details = json!({
            "masked": key.masked,
            "expires_at": key.expires_at,
            "grace_until": key.grace_until,
        });
        audit::append(&mut tx, &entry("key.expired", key, details, now)).await?;
    }
    let mut events: Vec<Event> = ids.iter().map(|&id| Event::Key { id }).collect();
    events.push(Event::Revocations);
    state.events.commit(tx, &events).await?;
    tracing::info!(keys = keys.len(), "announced keys that expired");
    Ok(())
}
