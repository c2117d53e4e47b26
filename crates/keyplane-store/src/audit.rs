//! The audit log: one entry per change and per security-relevant denial,
//! written in the same transaction as what it records.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::StoreError;

/// One entry to append. Carries ids and masked forms only, never a key.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who: `bootstrap`, `admin_key:<id>`, `cli`, ...
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

/// Appends `entry`.
pub async fn append(db: impl PgExecutor<'_>, entry: &NewEntry) -> Result<(), StoreError> {
    sqlx::query(
        r#"insert into audit_log
               (at, actor, action, target_type, target_id, outcome, request_id, client_ip, details)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
    )
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(&entry.target_id)
    .bind(entry.outcome)
    .bind(&entry.request_id)
    .bind(&entry.client_ip)
    .bind(sqlx::types::Json(&entry.details))
    .execute(db)
    .await?;
    Ok(())
}
