//! Webhook endpoints: operators register where events go, and see how each
//! delivery went.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use keyplane_domain::{ManagementRole, Mode, Permission};
use keyplane_store::{audit, webhooks};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::routes::keys::created;
use crate::state::AppState;
use crate::webhooks::{EVENTS, new_secret};

/// The most endpoints one deployment may register.
const MAX_WEBHOOKS: i64 = 100;
/// The cursor lists of endpoints and of their deliveries.
const LIST: &str = "webhooks";
const DELIVERIES: &str = "webhook-deliveries";
/// The longest URL accepted.
const MAX_URL: usize = 2048;

/// Registers an endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries are POSTed: https (plain http only in `dev`).
    pub url: String,
    /// Events to receive: `key.expiring`, `key.rotated`, `key.revoked`,
    /// `instance.decommissioned`, `node.mode_weaker`.
    pub events: Vec<String>,
    /// Free text.
    pub description: Option<String>,
}

/// An endpoint (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookResponse {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go; to anyone but admins, only its origin
    /// (`https://hooks.example.com/…`).
    pub url: String,
    /// The events it receives.
    pub events: Vec<String>,
    /// Free text.
    pub description: String,
    /// False while paused.
    pub enabled: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// An endpoint just registered, with its signing secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhookResponse {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: WebhookResponse,
    /// The `whsec_…` secret deliveries are signed with (Standard Webhooks).
    pub secret: String,
}

page_type!(WebhookPage, WebhookResponse);

/// One event on its way to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    /// Its id, sent as `webhook-id` on every attempt.
    pub id: Uuid,
    /// The event type.
    pub event: String,
    /// `pending`, `delivered` or `failed` (given up after 10 attempts).
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: DateTime<Utc>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

page_type!(DeliveryPage, DeliveryResponse);

impl WebhookResponse {
    /// The endpoint as `role` may see it: its whole URL for admins, its
    /// origin for everyone else (the path often carries the receiver's secret).
    fn seen_by(row: webhooks::Webhook, role: ManagementRole) -> Self {
        WebhookResponse {
            id: row.id,
            url: match role {
                ManagementRole::Admin => row.url,
                _ => crate::webhooks::masked_url(&row.url),
            },
            events: row.events,
            description: row.description,
            enabled: row.enabled,
            created_at: row.created_at,
        }
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("no webhook with this id".to_owned())
}

/// An endpoint URL: http(s) with a host, https outside `dev`, no
/// credentials in it.
fn endpoint_url(mode: Mode, text: &str) -> Result<String, ApiError> {
    let bad = |detail: &str| ApiError::invalid("url", detail);
    if text.len() > MAX_URL {
        return Err(bad("url must be at most 2048 characters"));
    }
    let uri: axum::http::Uri = text
        .parse()
        .map_err(|_| bad("url must be an absolute http(s) URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| bad("url must be an absolute http(s) URL"))?;
    if authority.as_str().contains('@') {
        return Err(bad("url must not carry credentials"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(text.to_owned()),
        Some("http") if mode == Mode::Dev => Ok(text.to_owned()),
        Some("http") => Err(ApiError::policy(
            "url",
            format!("{mode} mode delivers webhooks over https only"),
        )),
        _ => Err(bad("url must be an absolute http(s) URL")),
    }
}

/// Register a webhook endpoint; its signing secret is in this response only.
#[utoipa::path(
    post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Registered; `secret` is shown only here", body = CreatedWebhookResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    operator.require(Permission::WebhooksWrite)?;
    let url = endpoint_url(state.settings.mode, &body.url)?;
    let (host, port) = crate::webhooks::host_and_port(&url)
        .ok_or_else(|| ApiError::invalid("url", "url must be an absolute http(s) URL"))?;
    state
        .destinations
        .resolve(&host, port)
        .await
        .map_err(|refused| ApiError::policy("url", refused))?;
    input::bounded("events", &body.events)?;
    if body.events.is_empty() {
        return Err(ApiError::invalid("events", "name at least one event"));
    }
    let mut events = Vec::with_capacity(body.events.len());
    for (index, event) in body.events.iter().enumerate() {
        if !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::invalid(
                format!("events[{index}]"),
                format!("expected one of {}", EVENTS.join(", ")),
            ));
        }
        if !events.contains(event) {
            events.push(event.clone());
        }
    }
    let description = input::description(body.description)?;
    let (sealed, secret) = new_secret(&state.master)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);

    let mut tx = state.db.pool().begin().await?;
    if webhooks::count(&mut *tx).await? >= MAX_WEBHOOKS {
        return Err(ApiError::Conflict(format!(
            "at most {MAX_WEBHOOKS} webhooks; delete one first"
        )));
    }
    let row = webhooks::insert(
        &mut tx,
        &webhooks::Webhook {
            id: Uuid::new_v4(),
            url,
            events,
            description,
            secret_sealed: sealed,
            enabled: true,
            created_at: now,
        },
    )
    .await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "webhook.create",
            "webhook",
            row.id,
            json!({ "events": row.events }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(created(CreatedWebhookResponse {
        webhook: WebhookResponse::seen_by(row, operator.role),
        secret,
    }))
}

/// List webhook endpoints.
#[utoipa::path(
    get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    params(PageParams),
    responses(
        (status = 200, description = "A page of endpoints", body = WebhookPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<WebhookPage>, ApiError> {
    operator.require(Permission::WebhooksRead)?;
    let (limit, after) = page.resolve(&state.cursors, LIST)?;
    let (rows, next) = webhooks::list(state.db.pool(), after, limit).await?;
    Ok(Json(WebhookPage {
        items: rows
            .into_iter()
            .map(|row| WebhookResponse::seen_by(row, operator.role))
            .collect(),
        next_cursor: next.map(|after| state.cursors.encode(LIST, after)),
    }))
}

/// Delete a webhook endpoint; its pending deliveries are dropped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    operator.require(Permission::WebhooksWrite)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);
    let mut tx = state.db.pool().begin().await?;
    if !webhooks::delete(&mut tx, id, now).await? {
        return Err(not_found());
    }
    audit::append(
        &mut tx,
        &audit.entry("webhook.delete", "webhook", id, json!({})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An endpoint's deliveries, newest first, and how each went.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id"), PageParams),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = DeliveryPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<DeliveryPage>, ApiError> {
    operator.require(Permission::WebhooksRead)?;
    // One cursor list per endpoint: a cursor of another endpoint's
    // deliveries does not read here.
    let list = format!("{DELIVERIES}:{id}");
    let (limit, before) = page.resolve(&state.cursors, &list)?;
    webhooks::get(state.db.pool(), id)
        .await?
        .ok_or_else(not_found)?;
    let (rows, next) = webhooks::deliveries(state.db.pool(), id, before, limit).await?;
    Ok(Json(DeliveryPage {
        items: rows
            .into_iter()
            .map(|row| DeliveryResponse {
                id: row.id,
                event: row.event,
                status: row.status,
                attempts: row.attempts,
                last_status: row.last_status,
                last_error: row.last_error,
                next_attempt_at: row.next_attempt_at,
                created_at: row.created_at,
                delivered_at: row.delivered_at,
            })
            .collect(),
        next_cursor: next.map(|before| state.cursors.encode(&list, before)),
    }))
}
