//! Webhook endpoints: operators register where events go, and see how each
//! delivery went.

use chrono::{DateTime, Utc};
use keyplane_domain::{ManagementRole, Permission};
use keyplane_store::webhooks;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ops::keys::{RotateKeyRequest, max_lifetime_seconds};
use crate::ops::rotation;
use crate::ops::{Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};
use crate::webhooks::{EVENTS, endpoint_url, host_and_port, masked_url, new_secret};

/// The most endpoints one deployment may register.
const MAX_WEBHOOKS: i64 = 100;
/// The cursor lists of endpoints and of their deliveries.
const LIST: &str = "webhooks";
const DELIVERIES: &str = "webhook-deliveries";

/// Registers an endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries are POSTed: https (plain http only in `dev`).
    pub url: String,
    /// Events to receive: `key.expiring`, `key.rotated`, `key.revoked`,
    /// `instance.decommissioned`, `node.mode_weaker`, `credential.expiring`
    /// (a node key, admin key, enrollment token or webhook secret 14, 7 or 1
    /// days before it expires without a successor), `key.leaked` (a
    /// reported leak stopped a working key).
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
    /// When its signing secret expires (it lives no longer than any key):
    /// rotate it before, with `POST /v1/webhooks/{id}/rotate-secret`.
    pub secret_expires_at: DateTime<Utc>,
    /// After a rotation, until when deliveries are signed with the
    /// previous secret too.
    pub previous_secret_until: Option<DateTime<Utc>>,
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
                _ => masked_url(&row.url),
            },
            events: row.events,
            description: row.description,
            enabled: row.enabled,
            created_at: row.created_at,
            secret_expires_at: row.secret_expires_at,
            previous_secret_until: row.previous_secret_until,
        }
    }
}

/// How long a webhook's signing secret lives: as long as any key may.
fn secret_lifetime(settings: &crate::config::Settings) -> chrono::Duration {
    chrono::Duration::seconds(max_lifetime_seconds(settings))
}

impl From<webhooks::Delivery> for DeliveryResponse {
    fn from(row: webhooks::Delivery) -> Self {
        DeliveryResponse {
            id: row.id,
            event: row.event,
            status: row.status,
            attempts: row.attempts,
            last_status: row.last_status,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
        }
    }
}

fn not_found() -> Refusal {
    Refusal::NotFound("no webhook with this id".to_owned())
}

impl Ops<Operator> {
    /// Registers a webhook endpoint; its signing secret is in the answer only.
    pub async fn create_webhook<R: Run>(
        &self,
        run: R,
        input: CreateWebhookRequest,
    ) -> Result<R::Answer<CreatedWebhookResponse>, Refusal> {
        self.actor.require(Permission::WebhooksWrite)?;
        self.dangerous::<R>()?;
        let url = endpoint_url(self.state.settings.mode, &input.url)?;
        let (host, port) = host_and_port(&url)
            .ok_or_else(|| Refusal::invalid("url", "url must be an absolute http(s) URL"))?;
        self.state
            .destinations
            .resolve(&host, port)
            .await
            .map_err(|refused| Refusal::policy("url", refused))?;
        input::bounded("events", &input.events)?;
        if input.events.is_empty() {
            return Err(Refusal::invalid("events", "name at least one event"));
        }
        let mut events = Vec::with_capacity(input.events.len());
        for (index, event) in input.events.iter().enumerate() {
            if !EVENTS.contains(&event.as_str()) {
                return Err(Refusal::invalid(
                    format!("events[{index}]"),
                    format!("expected one of {}", EVENTS.join(", ")),
                ));
            }
            if !events.contains(event) {
                events.push(event.clone());
            }
        }
        let description = input::description(input.description)?;
        let (sealed, secret) = new_secret(&self.state.master)?;
        let now = self.now();

        let mut change = self.begin(run, now).await?;
        if webhooks::count(change.db()).await? >= MAX_WEBHOOKS {
            return Err(Refusal::Conflict(format!(
                "at most {MAX_WEBHOOKS} webhooks; delete one first"
            )));
        }
        let row = webhooks::insert(
            change.db(),
            &webhooks::Webhook {
                id: Uuid::new_v4(),
                url,
                events,
                description,
                secret_sealed: sealed,
                enabled: true,
                created_at: now,
                secret_created_at: now,
                secret_expires_at: now + secret_lifetime(&self.state.settings),
                previous_secret_sealed: None,
                previous_secret_until: None,
            },
        )
        .await?;
        change
            .audit(
                "webhook.create",
                "webhook",
                row.id,
                json!({ "events": row.events }),
            )
            .await?;
        change
            .finish(CreatedWebhookResponse {
                webhook: WebhookResponse::seen_by(row, self.actor.role),
                secret,
            })
            .await
    }

    /// Gives an endpoint a new signing secret, answered once. For
    /// `grace_seconds` (default 3600) each delivery carries a signature
    /// with either secret (Standard Webhooks allows several), so the
    /// receiver can switch to the new one without missing an event.
    pub async fn rotate_webhook_secret<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RotateKeyRequest,
    ) -> Result<R::Answer<CreatedWebhookResponse>, Refusal> {
        self.actor.require(Permission::WebhooksWrite)?;
        self.dangerous::<R>()?;
        let settings = &self.state.settings;
        let grace = rotation::grace_seconds(input.grace_seconds, max_lifetime_seconds(settings))?;
        let (sealed, secret) = new_secret(&self.state.master)?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let old = webhooks::lock(change.db(), id)
            .await?
            .ok_or_else(|| Refusal::NotFound("no webhook with this id".to_owned()))?;
        let previous_until = (grace > 0 && old.secret_expires_at > now)
            .then(|| rotation::grace_until(now, grace, old.secret_expires_at));
        let row = webhooks::rotate_secret(
            change.db(),
            id,
            &sealed,
            now + secret_lifetime(settings),
            previous_until,
            now,
        )
        .await?;
        change
            .audit(
                "webhook.rotate_secret",
                "webhook",
                id,
                json!({ "grace_seconds": grace, "previous_secret_until": previous_until }),
            )
            .await?;
        change
            .finish(CreatedWebhookResponse {
                webhook: WebhookResponse::seen_by(row, self.actor.role),
                secret,
            })
            .await
    }

    /// A page of webhook endpoints.
    pub async fn list_webhooks(&self, page: PageParams) -> Result<WebhookPage, Refusal> {
        self.actor.require(Permission::WebhooksRead)?;
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        let (rows, next) = webhooks::list(self.state.db.pool(), after, limit).await?;
        Ok(WebhookPage {
            items: rows
                .into_iter()
                .map(|row| WebhookResponse::seen_by(row, self.actor.role))
                .collect(),
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// Deletes a webhook endpoint; its pending deliveries are dropped.
    pub async fn delete_webhook<R: Run>(&self, run: R, id: Uuid) -> Result<R::Answer<()>, Refusal> {
        self.actor.require(Permission::WebhooksWrite)?;
        self.dangerous::<R>()?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        if !webhooks::delete(change.db(), id, now).await? {
            return Err(not_found());
        }
        change
            .audit("webhook.delete", "webhook", id, json!({}))
            .await?;
        change.finish(()).await
    }

    /// A page of an endpoint's deliveries, newest first, and how each went.
    pub async fn list_webhook_deliveries(
        &self,
        id: Uuid,
        page: PageParams,
    ) -> Result<DeliveryPage, Refusal> {
        self.actor.require(Permission::WebhooksRead)?;
        let cursors = &self.state.cursors;
        // One cursor list per endpoint: a cursor of another endpoint's
        // deliveries does not read here.
        let list = format!("{DELIVERIES}:{id}");
        let (limit, before) = page.resolve(cursors, &list)?;
        let pool = self.state.db.pool();
        webhooks::get(pool, id).await?.ok_or_else(not_found)?;
        let (rows, next) = webhooks::deliveries(pool, id, before, limit).await?;
        Ok(DeliveryPage {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor: next.map(|before| cursors.encode(&list, before)),
        })
    }
}
