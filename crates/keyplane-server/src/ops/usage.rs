//! Usage: what nodes report keys used, the budget leases they spend on
//! their own, and the rollups operators and auditors read.

use chrono::{DateTime, Datelike, Duration, DurationRound, NaiveTime, TimeZone, Utc};
use keyplane_domain::{MAX_MODEL_LEN, Permission};
use keyplane_store::introspection::{KeysOf, key_facts_of};
use keyplane_store::usage::{self, Counted};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::introspection::CachedKey;
use crate::ops::denials::{self, Denial};
use crate::ops::{Actor, Node, Operator, Ops, Refusal};

/// The most items one report may carry: at the longest (a 128-byte
/// model, counts of 13 digits) they fit the default body limit (64 KiB).
pub const MAX_REPORT_ITEMS: usize = 150;
/// The most distinct models kept per key and hour (or day); the rest are
/// counted together as `(other)`.
pub const MODELS_PER_BUCKET: i64 = 50;
/// The largest count any item may carry.
const MAX_COUNT: i64 = 1_000_000_000_000;
/// How far back a report may reach (a node that was cut off catches up).
const OLDEST_REPORTED: Duration = Duration::hours(48);
/// How far ahead of keyplane's clock a node's minute may be.
const CLOCK_SKEW: Duration = Duration::minutes(5);
/// How long a budget lease lasts (never past the day's end).
const LEASE_TTL: Duration = Duration::seconds(60);
/// The smallest lease granted (when the budget has that much left).
const LEASE_FLOOR: i64 = 1000;

/// One key's use of one model in one minute, as a node counted it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageItem {
    /// The key (a key this node was answered about).
    pub key_id: Uuid,
    /// The model the requests named (empty when they named none).
    #[serde(default)]
    pub model: String,
    /// The minute (its start, UTC; seconds are dropped).
    pub minute: DateTime<Utc>,
    /// Requests.
    #[serde(default)]
    pub requests: i64,
    /// Prompt (input) tokens.
    #[serde(default)]
    pub prompt_tokens: i64,
    /// Completion (output) tokens.
    #[serde(default)]
    pub completion_tokens: i64,
    /// Requests that failed (the upstream answered with an error).
    #[serde(default)]
    pub errors: i64,
}

/// A batch of usage from a node.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// 1 to 150 items.
    pub items: Vec<UsageItem>,
}

/// An item keyplane did not count.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedItem {
    /// Its index in the report.
    pub index: usize,
    /// Its key.
    pub key_id: Uuid,
    /// `key_not_seen`: this node was never answered about the key.
    pub reason: &'static str,
}

/// What keyplane made of a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReportResponse {
    /// Items counted.
    pub accepted: usize,
    /// Items refused (and audited), with why.
    pub refused: Vec<RefusedItem>,
}

/// Asks for a lease of a key's token budgets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The key (a key this node was answered about).
    pub key_id: Uuid,
    /// The tokens the node needs at least (its next request's estimate).
    pub tokens: i64,
}

/// A lease: tokens of the key's budgets this node may spend without asking
/// again, until it expires.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseResponse {
    /// The key.
    pub key_id: Uuid,
    /// Tokens granted (0: the budget is spent).
    pub granted: i64,
    /// When the lease ends (at most a minute, and never past the UTC day).
    pub expires_at: DateTime<Utc>,
    /// What is left of the daily budget after this grant; null: no daily budget.
    pub daily_remaining: Option<i64>,
    /// What is left of the monthly budget after this grant; null: no monthly budget.
    pub monthly_remaining: Option<i64>,
}

/// The size of the rollup buckets to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// Hourly rollups (kept KEYPLANE_USAGE_HOURLY_RETENTION, 31 days by default).
    #[default]
    Hour,
    /// Daily rollups (kept KEYPLANE_USAGE_DAILY_RETENTION, 400 days by default).
    Day,
}

/// Which usage to read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only this instance's keys.
    pub instance_id: Option<Uuid>,
    /// Only this key.
    pub key_id: Option<Uuid>,
    /// Only this model.
    pub model: Option<String>,
    /// Buckets starting at or after (default: a day back for hours, 30 days for days).
    pub from: Option<DateTime<Utc>>,
    /// Buckets starting before (default: now).
    pub to: Option<DateTime<Utc>>,
    /// `hour` (default) or `day`.
    pub bucket: Option<Bucket>,
    /// At most this many rows, 1 to 10000 (default 1000).
    pub limit: Option<i64>,
}

/// One key's use of one model in one hour or day.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRow {
    /// The hour or day (its start, UTC).
    pub bucket_start: DateTime<Utc>,
    /// The instance.
    pub instance_id: Uuid,
    /// The key.
    pub key_id: Uuid,
    /// The model (`(other)`: models past the 50 kept per key and bucket).
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Failed requests.
    pub errors: i64,
}

/// Usage rows, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    /// The rows.
    pub items: Vec<UsageRow>,
    /// True when there were more rows than `limit` (narrow the range).
    pub truncated: bool,
}

/// A model name from a report: at most 128 visible characters.
fn reported_model(index: usize, model: &str) -> Result<String, Refusal> {
    let visible = |c: char| !c.is_control();
    if model.len() > MAX_MODEL_LEN || !model.chars().all(visible) {
        return Err(Refusal::invalid(
            format!("items[{index}].model"),
            format!("a model name is at most {MAX_MODEL_LEN} bytes, without control characters"),
        ));
    }
    if keyplane_domain::KeySecret::parse(model.trim()).is_ok() {
        return Err(Refusal::invalid(
            format!("items[{index}].model"),
            "this is a keyplane key; keys never go in usage reports",
        ));
    }
    Ok(model.to_owned())
}

/// Checks a report's items against `now`; answers them with their minutes
/// truncated.
fn checked_items(report: UsageReport, now: DateTime<Utc>) -> Result<Vec<UsageItem>, Refusal> {
    if report.items.is_empty() || report.items.len() > MAX_REPORT_ITEMS {
        return Err(Refusal::invalid(
            "items",
            format!("a report carries 1 to {MAX_REPORT_ITEMS} items"),
        ));
    }
    report
        .items
        .into_iter()
        .enumerate()
        .map(|(index, mut item)| {
            for (field, value) in [
                ("requests", item.requests),
                ("prompt_tokens", item.prompt_tokens),
                ("completion_tokens", item.completion_tokens),
                ("errors", item.errors),
            ] {
                if !(0..=MAX_COUNT).contains(&value) {
                    return Err(Refusal::invalid(
                        format!("items[{index}].{field}"),
                        format!("expected a count from 0 to {MAX_COUNT}"),
                    ));
                }
            }
            if item.minute < now - OLDEST_REPORTED || item.minute > now + CLOCK_SKEW {
                return Err(Refusal::invalid(
                    format!("items[{index}].minute"),
                    "the minute must be within the last 48 hours (and not in the future)",
                ));
            }
            item.minute = item
                .minute
                .duration_trunc(Duration::minutes(1))
                .unwrap_or(item.minute);
            item.model = reported_model(index, &item.model)?;
            Ok(item)
        })
        .collect()
}

/// The start of `now`'s UTC day and month, and the end of its day.
fn periods(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
    let day = Utc.from_utc_datetime(&now.date_naive().and_time(NaiveTime::MIN));
    let month = now.date_naive().with_day(1).map_or(day, |first| {
        Utc.from_utc_datetime(&first.and_time(NaiveTime::MIN))
    });
    (day, month, day + Duration::days(1))
}

impl Ops<Node> {
    /// Counts a node's usage report into the rollups. Items for keys the
    /// node was never answered about are refused (and audited); the rest
    /// are counted, and spent from the node's budget leases.
    pub async fn report_usage(&self, report: UsageReport) -> Result<UsageReportResponse, Refusal> {
        let node = &self.actor;
        let now = self.now();
        let items = checked_items(report, now)?;
        let mut key_ids: Vec<Uuid> = items.iter().map(|item| item.key_id).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        let pool = self.state.db.pool();
        let mut seen: std::collections::HashMap<Uuid, Uuid> =
            usage::seen_by(pool, node.id, &key_ids)
                .await?
                .into_iter()
                .collect();
        if seen.len() < key_ids.len() {
            // What this replica noted but has not written yet counts as seen.
            self.state.introspector.flush_usage().await;
            seen = usage::seen_by(pool, node.id, &key_ids)
                .await?
                .into_iter()
                .collect();
        }

        let mut counted = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match seen.get(&item.key_id) {
                Some(&instance_id) => counted.push(Counted {
                    key_id: item.key_id,
                    instance_id,
                    model: item.model,
                    minute: item.minute,
                    requests: item.requests,
                    prompt_tokens: item.prompt_tokens,
                    completion_tokens: item.completion_tokens,
                    errors: item.errors,
                }),
                None => refused.push(RefusedItem {
                    index,
                    key_id: item.key_id,
                    reason: "key_not_seen",
                }),
            }
        }
        if !counted.is_empty() {
            let mut tx = pool.begin().await?;
            usage::record(&mut tx, &counted, MODELS_PER_BUCKET).await?;
            let (keys, tokens): (Vec<Uuid>, Vec<i64>) = counted
                .iter()
                .map(|c| {
                    (
                        c.key_id,
                        c.prompt_tokens.saturating_add(c.completion_tokens),
                    )
                })
                .unzip();
            usage::spend_leases(&mut tx, node.id, &keys, &tokens).await?;
            tx.commit().await?;
        }
        if !refused.is_empty() {
            let keys: Vec<Uuid> = refused.iter().take(10).map(|r| r.key_id).collect();
            tracing::warn!(node = %node.id, refused = refused.len(), "a node reported usage of keys it never saw");
            denials::record(
                &self.state,
                Denial {
                    at: now,
                    actor: &Actor::Node(node.id),
                    action: "usage.report",
                    target_type: "node",
                    target_id: Some(node.id.to_string()),
                    origin: Some(&self.origin),
                    details: json!({
                        "reason": "key_not_seen",
                        "refused_items": refused.len(),
                        "key_ids": keys,
                    }),
                },
            );
        }
        Ok(UsageReportResponse {
            accepted: counted.len(),
            refused,
        })
    }

    /// Leases the node tokens of a key's daily and monthly budgets: at
    /// least what it asks for when that much is left, else what is left;
    /// what other nodes hold and have not reported spending is never
    /// granted twice.
    pub async fn lease_budget(&self, request: LeaseRequest) -> Result<LeaseResponse, Refusal> {
        let node = &self.actor;
        if !(1..=MAX_COUNT).contains(&request.tokens) {
            return Err(Refusal::invalid(
                "tokens",
                format!("expected 1 to {MAX_COUNT} tokens"),
            ));
        }
        let now = self.now();
        let pool = self.state.db.pool();
        if usage::seen_by(pool, node.id, &[request.key_id])
            .await?
            .is_empty()
        {
            self.state.introspector.flush_usage().await;
            if usage::seen_by(pool, node.id, &[request.key_id])
                .await?
                .is_empty()
            {
                return Err(Refusal::Forbidden(
                    "this node was never answered about this key".to_owned(),
                ));
            }
        }
        let (day, month, day_ends) = periods(now);
        let expires_at = (now + LEASE_TTL).min(day_ends);
        let mut tx = pool.begin().await?;
        let facts = key_facts_of(&mut *tx, KeysOf::Ids(&[request.key_id]), now).await?;
        let key = facts.into_iter().next().map(CachedKey::from_facts);
        let Some(key) = key.filter(|key| key.works_at(now)) else {
            // A key that no longer works gets nothing.
            return Ok(LeaseResponse {
                key_id: request.key_id,
                granted: 0,
                expires_at,
                daily_remaining: Some(0),
                monthly_remaining: Some(0),
            });
        };
        let spending = usage::spending(&mut tx, request.key_id, node.id, day, month, now).await?;
        let left = |budget: Option<u64>, used: i64| {
            budget.map(|b| i64::try_from(b).unwrap_or(i64::MAX).saturating_sub(used))
        };
        let daily = left(key.limits().daily_tokens, spending.today);
        let monthly = left(key.limits().monthly_tokens, spending.this_month);
        let available = match (daily, monthly) {
            (None, None) => i64::MAX,
            (a, b) => a.unwrap_or(i64::MAX).min(b.unwrap_or(i64::MAX)),
        }
        .saturating_sub(spending.held_elsewhere)
        .max(0);
        let smallest_budget = [key.limits().daily_tokens, key.limits().monthly_tokens]
            .into_iter()
            .flatten()
            .min()
            .and_then(|b| i64::try_from(b).ok())
            .unwrap_or(i64::MAX);
        let slice = (smallest_budget / 20).max(LEASE_FLOOR);
        let granted = available.min(request.tokens.max(slice));
        usage::grant_lease(&mut tx, request.key_id, node.id, granted, now, expires_at).await?;
        tx.commit().await?;
        let after =
            |left: Option<i64>| left.map(|l| (l - spending.held_elsewhere - granted).max(0));
        Ok(LeaseResponse {
            key_id: request.key_id,
            granted,
            expires_at,
            daily_remaining: after(daily),
            monthly_remaining: after(monthly),
        })
    }
}

impl Ops<Operator> {
    /// Usage rollups, by instance, key, model and time.
    pub async fn usage(&self, params: UsageParams) -> Result<UsageResponse, Refusal> {
        self.actor.require(Permission::UsageRead)?;
        let now = self.now();
        let bucket = params.bucket.unwrap_or_default();
        let to = params.to.unwrap_or(now);
        let from = params.from.unwrap_or_else(|| match bucket {
            Bucket::Hour => to - Duration::days(1),
            Bucket::Day => to - Duration::days(30),
        });
        if from >= to {
            return Err(Refusal::invalid("from", "from must be before to"));
        }
        let limit = params.limit.unwrap_or(1000);
        if !(1..=10_000).contains(&limit) {
            return Err(Refusal::invalid(
                "limit",
                "limit must be between 1 and 10000",
            ));
        }
        if let Some(model) = &params.model
            && model.len() > MAX_MODEL_LEN
        {
            return Err(Refusal::invalid(
                "model",
                format!("a model name is at most {MAX_MODEL_LEN} bytes"),
            ));
        }
        let query = usage::Query {
            daily: bucket == Bucket::Day,
            instance_id: params.instance_id,
            key_id: params.key_id,
            model: params.model.as_deref(),
            from,
            to,
            limit: limit + 1,
        };
        let mut rows = usage::query(self.state.db.pool(), &query).await?;
        let truncated = rows.len() as i64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(UsageResponse {
            items: rows
                .into_iter()
                .map(|r| UsageRow {
                    bucket_start: r.bucket_start,
                    instance_id: r.instance_id,
                    key_id: r.key_id,
                    model: r.model,
                    requests: r.requests,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    errors: r.errors,
                })
                .collect(),
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 15, 30, 0).unwrap();
        let (day, month, ends) = periods(now);
        assert_eq!(day, Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(ends, Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap());
    }

    #[test]
    fn reports_are_bounded() {
        let now = Utc::now();
        let item = |minute: DateTime<Utc>, requests: i64, model: &str| UsageItem {
            key_id: Uuid::new_v4(),
            model: model.to_owned(),
            minute,
            requests,
            prompt_tokens: 0,
            completion_tokens: 0,
            errors: 0,
        };
        let refused = |items: Vec<UsageItem>| match checked_items(UsageReport { items }, now) {
            Err(Refusal::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(vec![]), "items");
        assert_eq!(refused(vec![item(now, -1, "m")]), "items[0].requests");
        assert_eq!(
            refused(vec![
                item(now, 1, "m"),
                item(now - Duration::days(3), 1, "m")
            ]),
            "items[1].minute"
        );
        assert_eq!(
            refused(vec![item(now + Duration::hours(1), 1, "m")]),
            "items[0].minute"
        );
        assert_eq!(
            refused(vec![item(now, 1, &"m".repeat(129))]),
            "items[0].model"
        );
        let many = (0..=MAX_REPORT_ITEMS).map(|_| item(now, 1, "m")).collect();
        assert_eq!(refused(many), "items");
        let fine = checked_items(
            UsageReport {
                items: vec![item(now, 5, "llama3")],
            },
            now,
        )
        .unwrap();
        assert_eq!(fine[0].minute.timestamp() % 60, 0);
    }
}
