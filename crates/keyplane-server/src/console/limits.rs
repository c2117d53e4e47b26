//! Limits and usage in the console: a key's or an instance's limits, a form
//! to change them, and a chart of the tokens used day by day.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, DurationRound, Utc};
use uuid::Uuid;

use crate::console::{Console, Fields, Page, see_other};
use crate::ops::Apply;
use crate::ops::instances::UpdateInstanceRequest;
use crate::ops::keys::UpdateKeyRequest;
use crate::ops::limits::LimitsBody;
use crate::ops::usage::{Bucket, UsageParams};

/// Limits as a form shows them (empty: none).
#[derive(Debug, Clone, Default)]
pub struct LimitsView {
    /// Requests per minute.
    pub rpm: String,
    /// Tokens per minute.
    pub tpm: String,
    /// Tokens per day.
    pub daily_tokens: String,
    /// Tokens per month.
    pub monthly_tokens: String,
    /// The allow-list, comma-separated (empty: every model).
    pub models: String,
    /// One line saying it all, for a page's facts.
    pub summary: String,
}

impl LimitsView {
    /// What `limits` and `models` say.
    pub fn new(limits: &LimitsBody, models: Option<&[String]>) -> LimitsView {
        let text = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
        let mut parts: Vec<String> = [
            (limits.rpm, "requests/min"),
            (limits.tpm, "tokens/min"),
            (limits.daily_tokens, "tokens/day"),
            (limits.monthly_tokens, "tokens/month"),
        ]
        .into_iter()
        .filter_map(|(n, unit)| n.map(|n| format!("{n} {unit}")))
        .collect();
        if let Some(models) = models {
            parts.push(format!("models: {}", models.join(", ")));
        }
        LimitsView {
            rpm: text(limits.rpm),
            tpm: text(limits.tpm),
            daily_tokens: text(limits.daily_tokens),
            monthly_tokens: text(limits.monthly_tokens),
            models: models.map(|m| m.join(", ")).unwrap_or_default(),
            summary: match parts.is_empty() {
                true => "none".to_owned(),
                false => parts.join("; "),
            },
        }
    }
}

/// One day's bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Its left edge.
    pub x: u32,
    /// Its top.
    pub y: u32,
    /// Its height.
    pub height: u32,
    /// `2026-12-07: 1200 tokens, 14 requests`.
    pub title: String,
}

/// Tokens used day by day, as an SVG bar chart drawn by the template.
#[derive(Debug, Clone, Default)]
pub struct UsageChart {
    /// One bar per day, oldest first (days without use have none).
    pub bars: Vec<Bar>,
    /// The busiest day's tokens (the chart's scale).
    pub most: i64,
    /// Tokens in all.
    pub tokens: i64,
    /// Requests in all.
    pub requests: i64,
    /// Failed requests in all.
    pub errors: i64,
    /// The first day shown.
    pub since: String,
}

/// Days the chart covers.
const DAYS: i64 = 30;
/// The chart's height and one bar's width, in SVG units.
const HEIGHT: u32 = 100;
const BAR: u32 = 10;

impl UsageChart {
    /// The last 30 days of the instance's keys, or of one key; an empty
    /// chart when the operator may not read usage.
    pub async fn of(console: &Console, instance_id: Option<Uuid>, key_id: Option<Uuid>) -> Self {
        let now = console.ops.state().clock.now();
        let today = now.duration_trunc(Duration::days(1)).unwrap_or(now);
        let since = today - Duration::days(DAYS - 1);
        let params = UsageParams {
            instance_id,
            key_id,
            from: Some(since),
            to: Some(today + Duration::days(1)),
            bucket: Some(Bucket::Day),
            limit: Some(10_000),
            ..UsageParams::default()
        };
        let Ok(usage) = console.ops.usage(params).await else {
            return UsageChart::default();
        };
        let mut days: Vec<(DateTime<Utc>, i64, i64)> = Vec::new();
        let (mut requests, mut errors) = (0, 0);
        for row in usage.items {
            let tokens = row.prompt_tokens + row.completion_tokens;
            requests += row.requests;
            errors += row.errors;
            match days.iter_mut().find(|(day, ..)| *day == row.bucket_start) {
                Some(day) => {
                    day.1 += tokens;
                    day.2 += row.requests;
                }
                None => days.push((row.bucket_start, tokens, row.requests)),
            }
        }
        let most = days.iter().map(|d| d.1).max().unwrap_or(0);
        let bars = days
            .iter()
            .map(|(day, tokens, requests)| {
                let index =
                    u32::try_from((*day - since).num_days().clamp(0, DAYS - 1)).unwrap_or(0);
                let height = match most {
                    0 => 1,
                    most => u32::try_from(tokens * i64::from(HEIGHT) / most)
                        .unwrap_or(HEIGHT)
                        .max(1),
                };
                Bar {
                    x: index * BAR,
                    y: HEIGHT - height,
                    height,
                    title: format!(
                        "{}: {tokens} tokens, {requests} requests",
                        day.format("%Y-%m-%d")
                    ),
                }
            })
            .collect();
        UsageChart {
            bars,
            most,
            tokens: days.iter().map(|d| d.1).sum(),
            requests,
            errors,
            since: since.format("%Y-%m-%d").to_string(),
        }
    }
}

/// A limit from the form: empty is none; anything but a whole number is
/// refused (never read as "no limit"), with a message saying so.
fn limit(form: &Fields, name: &str) -> Result<Option<i64>, String> {
    match form.given(name) {
        None => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{name} must be a whole number, or empty for no limit.")),
    }
}

/// The limits and models a form sets.
fn from_form(form: &Fields) -> Result<(LimitsBody, Option<Vec<String>>), String> {
    let limits = LimitsBody {
        rpm: limit(form, "rpm")?,
        tpm: limit(form, "tpm")?,
        daily_tokens: limit(form, "daily_tokens")?,
        monthly_tokens: limit(form, "monthly_tokens")?,
    };
    let models = form.given("models").map(|text| {
        text.split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect()
    });
    Ok((limits, models))
}

fn unreadable(message: &str) -> Response {
    Page::error(StatusCode::UNPROCESSABLE_ENTITY, message).into_response()
}

/// Sets a key's limits.
pub async fn set_key_limits(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    let here = format!("/console/keys/{id}");
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let (limits, models) = match from_form(&form) {
        Ok(read) => read,
        Err(message) => return unreadable(&message),
    };
    let request = UpdateKeyRequest {
        limits: Some(limits),
        models: Some(models),
        ..UpdateKeyRequest::default()
    };
    match console.ops.update_key(Apply, id, request).await {
        Ok(_) => see_other(&here),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}

/// Sets an instance's limits (for each of its keys).
pub async fn set_instance_limits(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    let here = format!("/console/instances/{id}");
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let (limits, models) = match from_form(&form) {
        Ok(read) => read,
        Err(message) => return unreadable(&message),
    };
    let request = UpdateInstanceRequest {
        limits: Some(limits),
        models: Some(models),
        ..UpdateInstanceRequest::default()
    };
    match console.ops.update_instance(Apply, id, request).await {
        Ok(_) => see_other(&here),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}
