//! The console's pages for what surrounds instances: nodes, roles, admin
//! keys, enrollment tokens and webhooks. Each is a table of what there is,
//! a form to add to it (when the role may), and confirmation pages before
//! what cannot be undone; every change is one operation of the ops layer.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use keyplane_domain::{Permission, RoleName};
use uuid::Uuid;

use crate::console::pages::{Ask, labels};
use crate::console::view::{self, Cell, Field, FormSpec, Row, RowAction, Secret, Table};
use crate::console::{Console, Fields, Page, see_other};
use crate::ops::admin_keys::CreateAdminKeyRequest;
use crate::ops::enrollment::CreateEnrollmentTokenRequest;
use crate::ops::keys::{RevokeKeyRequest, RotateKeyRequest};
use crate::ops::nodes::CreateNodeRequest;
use crate::ops::roles::PutRoleRequest;
use crate::ops::webhooks::CreateWebhookRequest;
use crate::ops::{Apply, DryRun};
use crate::pagination::PageParams;

fn page() -> PageParams {
    PageParams {
        limit: Some(500),
        cursor: None,
    }
}

/// The grace window a rotation form asked for, in seconds.
fn grace(form: &Fields) -> Option<i64> {
    form.number("grace_minutes").map(|m| m.saturating_mul(60))
}

fn action(label: &'static str, href: String, danger: bool) -> RowAction {
    RowAction {
        label,
        href,
        danger,
    }
}

/// Renders `result` as a page, or its refusal for a page at `here`.
fn or_refused<T>(
    result: Result<T, crate::ops::Refusal>,
    here: &str,
    page: impl FnOnce(T) -> Response,
) -> Response {
    match result {
        Ok(value) => page(value),
        Err(refusal) => Page::refused(refusal, here).into_response(),
    }
}

/// The nodes: their mode, version, heartbeat and key.
pub async fn nodes(console: Console) -> Response {
    let now = console.ops.state().clock.now();
    let write = console.may(Permission::NodesWrite);
    let listed = console.ops.list_nodes(true, page()).await;
    or_refused(listed, "/console/nodes", |nodes| {
        let rows = nodes
            .items
            .iter()
            .map(|node| {
                let live = node.retired_at.is_none();
                let mut actions = Vec::new();
                if write && live {
                    actions.push(action(
                        "Rotate key",
                        format!("/console/nodes/{}/rotate", node.id),
                        false,
                    ));
                    actions.push(action(
                        "Retire",
                        format!("/console/nodes/{}/retire", node.id),
                        true,
                    ));
                }
                let row = view::NodeRow::new(node, now);
                Row {
                    name: node.name.clone(),
                    cells: vec![
                        Cell::text(&node.name),
                        Cell::status(if live { "live" } else { "retired" }),
                        Cell::text(match row.weaker {
                            true => format!("{} (weaker than keyplane's)", row.mode),
                            false => row.mode,
                        }),
                        Cell::text(row.version),
                        Cell::text(row.seen),
                        Cell::text(&node.masked_key),
                        Cell::text(view::relative(&node.rotation_due_at, now)),
                    ],
                    actions,
                }
            })
            .collect();
        Page::render(&Table {
            frame: console.frame("nodes"),
            title: "Nodes".to_owned(),
            intro: "Gates and Cortex nodes that check keys with keyplane.".to_owned(),
            empty: "No node is registered yet.",
            columns: vec![
                "Name",
                "State",
                "Mode",
                "Version",
                "Last heartbeat",
                "Key",
                "Rotation due",
            ],
            rows,
            form: write.then(|| FormSpec {
                title: "Register a node",
                action: "/console/nodes".to_owned(),
                button: "Register",
                fields: vec![
                    Field::input("name", "Name", "text")
                        .required()
                        .hint("cortex-1"),
                    Field::input("description", "Description", "text"),
                ],
            }),
        })
    })
}

/// Registers a node and shows its key once.
pub async fn create_node(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = CreateNodeRequest {
        name: form.one("name"),
        description: form.given("description"),
        forward_auth_proxy: None,
    };
    let created = console.ops.create_node(Apply, request).await;
    or_refused(created, "/console/nodes", |created| {
        node_secret(&console, "Node registered", created)
    })
}

fn node_secret(
    console: &Console,
    title: &str,
    created: crate::ops::nodes::CreatedNodeResponse,
) -> Response {
    let node = created.node;
    Page::render(&Secret {
        frame: console.frame("nodes"),
        title: title.to_owned(),
        name: format!("{}'s node key (KEYPLANE_NODE_KEY)", node.name),
        secret: created.secret,
        facts: vec![
            ("Shown from now on as".to_owned(), node.masked_key),
            ("Expires".to_owned(), view::at(&node.expires_at)),
        ],
        warnings: Vec::new(),
        done: "/console/nodes".to_owned(),
    })
}

/// Asks before rotating a node's key.
pub async fn confirm_rotate_node(console: Console, Path(id): Path<Uuid>) -> Response {
    let node = console.ops.get_node(id).await;
    or_refused(node, "/console/nodes", |node| {
        Ask {
            title: format!("Rotate {}'s key?", node.name),
            message: format!(
                "A new node key replaces {}; the old one keeps working for the grace window. \
                 Give the new one to the node before then.",
                node.masked_key
            ),
            action: format!("/console/nodes/{id}/rotate"),
            button: "Rotate",
            back: "/console/nodes".to_owned(),
            field: "grace",
            hidden: Vec::new(),
        }
        .page(&console)
    })
}

/// Rotates a node's key and shows the new one once.
pub async fn rotate_node(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = RotateKeyRequest {
        grace_seconds: grace(&form),
    };
    let rotated = console.ops.rotate_node(Apply, id, request).await;
    or_refused(rotated, &format!("/console/nodes/{id}/rotate"), |created| {
        node_secret(&console, "Node key rotated", created)
    })
}

/// Asks before retiring a node.
pub async fn confirm_retire_node(console: Console, Path(id): Path<Uuid>) -> Response {
    let node = console.ops.get_node(id).await;
    or_refused(node, "/console/nodes", |node| {
        Ask {
            title: format!("Retire {}?", node.name),
            message: "Its key stops working at once, for good: the node can no longer check keys."
                .to_owned(),
            action: format!("/console/nodes/{id}/retire"),
            button: "Retire",
            back: "/console/nodes".to_owned(),
            field: "",
            hidden: Vec::new(),
        }
        .page(&console)
    })
}

/// Retires a node.
pub async fn retire_node(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let retired = console.ops.retire_node(Apply, id).await;
    or_refused(retired, &format!("/console/nodes/{id}/retire"), |_| {
        see_other("/console/nodes")
    })
}

/// Operators' keys.
pub async fn admin_keys(console: Console) -> Response {
    let now = console.ops.state().clock.now();
    let write = console.may(Permission::AdminKeysWrite);
    let listed = console.ops.list_admin_keys(page()).await;
    or_refused(listed, "/console/admin-keys", |keys| {
        let rows = keys
            .items
            .iter()
            .map(|key| {
                let status = match (key.revoked_at, key.expires_at <= now) {
                    (Some(_), _) => "revoked",
                    (None, true) => "expired",
                    (None, false) => "active",
                };
                let mut actions = Vec::new();
                if write && status == "active" {
                    actions.push(action(
                        "Rotate",
                        format!("/console/admin-keys/{}/rotate", key.id),
                        false,
                    ));
                    actions.push(action(
                        "Revoke",
                        format!("/console/admin-keys/{}/revoke", key.id),
                        true,
                    ));
                }
                Row {
                    name: key.name.clone(),
                    cells: vec![
                        Cell::text(&key.name),
                        Cell::text(&key.role),
                        Cell::text(&key.masked_key),
                        Cell::status(status),
                        Cell::text(&key.created_by),
                        Cell::text(
                            key.last_used_at
                                .as_ref()
                                .map_or("never".to_owned(), |at| view::relative(at, now)),
                        ),
                        Cell::text(view::at(&key.expires_at)),
                    ],
                    actions,
                }
            })
            .collect();
        Page::render(&Table {
            frame: console.frame("admin-keys"),
            title: "Admin keys".to_owned(),
            intro: "Keys for automation; people sign in with the identity provider.".to_owned(),
            empty: "No admin key yet.",
            columns: vec![
                "Name",
                "Role",
                "Key",
                "Status",
                "Made by",
                "Last used",
                "Expires",
            ],
            rows,
            form: write.then(|| FormSpec {
                title: "Create an admin key",
                action: "/console/admin-keys".to_owned(),
                button: "Create",
                fields: vec![
                    Field::input("name", "Name", "text")
                        .required()
                        .hint("ci-deploy"),
                    Field::select(
                        "role",
                        "Role",
                        &[
                            ("viewer", "viewer"),
                            ("auditor", "auditor"),
                            ("operator", "operator"),
                            ("admin", "admin"),
                        ],
                    ),
                    Field::select(
                        "expires_in_days",
                        "Expires in",
                        &[("7", "7 days"), ("30", "30 days"), ("90", "90 days")],
                    ),
                ],
            }),
        })
    })
}

fn admin_secret(
    console: &Console,
    title: &str,
    created: crate::ops::admin_keys::CreatedAdminKeyResponse,
) -> Response {
    let key = created.key;
    Page::render(&Secret {
        frame: console.frame("admin-keys"),
        title: title.to_owned(),
        name: key.name,
        secret: created.secret,
        facts: vec![
            ("Shown from now on as".to_owned(), key.masked_key),
            ("Role".to_owned(), key.role),
            ("Expires".to_owned(), view::at(&key.expires_at)),
        ],
        warnings: created.warnings,
        done: "/console/admin-keys".to_owned(),
    })
}

/// Creates an admin key and shows it once.
pub async fn create_admin_key(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = CreateAdminKeyRequest {
        name: form.one("name"),
        role: form.one("role"),
        expires_in: form
            .number("expires_in_days")
            .map(|days| days.saturating_mul(86_400)),
    };
    let created = console.ops.create_admin_key(Apply, request).await;
    or_refused(created, "/console/admin-keys", |created| {
        admin_secret(&console, "Admin key created", created)
    })
}

async fn admin_key_name(console: &Console, id: Uuid) -> Option<(String, String)> {
    let keys = console.ops.list_admin_keys(page()).await.ok()?;
    keys.items
        .into_iter()
        .find(|key| key.id == id)
        .map(|key| (key.name, key.masked_key))
}

/// Asks before rotating an admin key.
pub async fn confirm_rotate_admin_key(console: Console, Path(id): Path<Uuid>) -> Response {
    let Some((name, masked)) = admin_key_name(&console, id).await else {
        return Page::error(
            axum::http::StatusCode::NOT_FOUND,
            "No admin key with this id.",
        )
        .into_response();
    };
    Ask {
        title: format!("Rotate {name}?"),
        message: format!(
            "A new key replaces {masked}; the old one keeps working for the grace window."
        ),
        action: format!("/console/admin-keys/{id}/rotate"),
        button: "Rotate",
        back: "/console/admin-keys".to_owned(),
        field: "grace",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Rotates an admin key and shows the new one once.
pub async fn rotate_admin_key(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = RotateKeyRequest {
        grace_seconds: grace(&form),
    };
    let rotated = console.ops.rotate_admin_key(Apply, id, request).await;
    or_refused(
        rotated,
        &format!("/console/admin-keys/{id}/rotate"),
        |created| admin_secret(&console, "Admin key rotated", created),
    )
}

/// Asks before revoking an admin key.
pub async fn confirm_revoke_admin_key(console: Console, Path(id): Path<Uuid>) -> Response {
    let Some((name, masked)) = admin_key_name(&console, id).await else {
        return Page::error(
            axum::http::StatusCode::NOT_FOUND,
            "No admin key with this id.",
        )
        .into_response();
    };
    Ask {
        title: format!("Revoke {name}?"),
        message: format!("{masked} stops working at once, for good."),
        action: format!("/console/admin-keys/{id}/revoke"),
        button: "Revoke",
        back: "/console/admin-keys".to_owned(),
        field: "reason",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Revokes an admin key.
pub async fn revoke_admin_key(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = RevokeKeyRequest {
        reason: form.given("reason"),
    };
    let revoked = console.ops.revoke_admin_key(Apply, id, request).await;
    or_refused(revoked, &format!("/console/admin-keys/{id}/revoke"), |_| {
        see_other("/console/admin-keys")
    })
}

/// Enrollment tokens: what an instance that enrolls with one becomes.
pub async fn enrollment_tokens(console: Console) -> Response {
    let write = console.may(Permission::EnrollmentWrite);
    let catalog = console.scope_catalog().await;
    let listed = console.ops.list_enrollment_tokens(page()).await;
    or_refused(listed, "/console/enrollment-tokens", |tokens| {
        let rows = tokens
            .items
            .iter()
            .map(|token| Row {
                name: token.name.clone(),
                cells: vec![
                    Cell::text(&token.name),
                    Cell::text(&token.masked_token),
                    Cell::status(&token.status),
                    Cell::text(view::list(&token.scopes)),
                    Cell::text(token.labels.to_string()),
                    Cell::text(format!("{} of {}", token.uses_left, token.uses)),
                    Cell::text(view::at(&token.expires_at)),
                ],
                actions: match write && token.status == "active" {
                    true => vec![action(
                        "Revoke",
                        format!("/console/enrollment-tokens/{}/revoke", token.id),
                        true,
                    )],
                    false => Vec::new(),
                },
            })
            .collect();
        Page::render(&Table {
            frame: console.frame("enrollment"),
            title: "Enrollment tokens".to_owned(),
            intro: "A Jan instance enrolls itself with a token: it becomes an instance with \
                    these labels and gets a key with these scopes."
                .to_owned(),
            empty: "No enrollment token yet.",
            columns: vec![
                "Name",
                "Token",
                "Status",
                "Scopes",
                "Labels",
                "Uses left",
                "Expires",
            ],
            rows,
            form: write.then(|| FormSpec {
                title: "Mint an enrollment token",
                action: "/console/enrollment-tokens".to_owned(),
                button: "Mint",
                fields: vec![
                    Field::input("name", "Name", "text")
                        .required()
                        .hint("lab laptops"),
                    Field::checks("scopes", "Scopes of the keys it hands out", &catalog),
                    Field::input("labels", "Labels of the instances it makes", "text")
                        .hint("env=lab"),
                    Field::input("uses", "Uses", "number").hint("1"),
                    Field::select(
                        "expires_in_hours",
                        "Valid for",
                        &[("1", "1 hour"), ("24", "1 day"), ("168", "7 days")],
                    ),
                ],
            }),
        })
    })
}

/// Mints an enrollment token and shows it once.
pub async fn create_enrollment_token(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let Some(labels) = labels(&form.one("labels")) else {
        return Page::error(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "Labels are key=value pairs, separated by commas.",
        )
        .into_response();
    };
    let scopes = form.all("scopes");
    let request = CreateEnrollmentTokenRequest {
        name: form.one("name"),
        allowed_scopes: Some(scopes.clone()),
        scopes: Some(scopes),
        roles: None,
        labels: Some(labels),
        key_expires_in: None,
        rotate_after: None,
        uses: form.number("uses").and_then(|n| i32::try_from(n).ok()),
        expires_in: form
            .number("expires_in_hours")
            .map(|hours| hours.saturating_mul(3600)),
    };
    let created = console.ops.create_enrollment_token(Apply, request).await;
    or_refused(created, "/console/enrollment-tokens", |created| {
        let token = created.token;
        Page::render(&Secret {
            frame: console.frame("enrollment"),
            title: "Enrollment token minted".to_owned(),
            name: token.name,
            secret: created.secret,
            facts: vec![
                ("Shown from now on as".to_owned(), token.masked_token),
                ("Uses".to_owned(), token.uses.to_string()),
                ("Expires".to_owned(), view::at(&token.expires_at)),
            ],
            warnings: created.warnings,
            done: "/console/enrollment-tokens".to_owned(),
        })
    })
}

/// Asks before revoking an enrollment token.
pub async fn confirm_revoke_token(console: Console, Path(id): Path<Uuid>) -> Response {
    Ask {
        title: "Revoke this enrollment token?".to_owned(),
        message: "No instance can enroll with it any more; instances it made keep their keys."
            .to_owned(),
        action: format!("/console/enrollment-tokens/{id}/revoke"),
        button: "Revoke",
        back: "/console/enrollment-tokens".to_owned(),
        field: "",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Revokes an enrollment token.
pub async fn revoke_token(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let revoked = console.ops.revoke_enrollment_token(Apply, id).await;
    or_refused(revoked, "/console/enrollment-tokens", |_| {
        see_other("/console/enrollment-tokens")
    })
}

/// Webhook endpoints.
pub async fn webhooks(console: Console) -> Response {
    let write = console.may(Permission::WebhooksWrite);
    let listed = console.ops.list_webhooks(page()).await;
    or_refused(listed, "/console/webhooks", |hooks| {
        let rows = hooks
            .items
            .iter()
            .map(|hook| Row {
                name: hook.url.clone(),
                cells: vec![
                    Cell::link(&hook.url, format!("/console/webhooks/{}", hook.id)),
                    Cell::text(hook.events.join(", ")),
                    Cell::status(if hook.enabled { "enabled" } else { "disabled" }),
                    Cell::text(view::at(&hook.secret_expires_at)),
                ],
                actions: match write {
                    true => vec![
                        action(
                            "Rotate secret",
                            format!("/console/webhooks/{}/rotate", hook.id),
                            false,
                        ),
                        action(
                            "Delete",
                            format!("/console/webhooks/{}/delete", hook.id),
                            true,
                        ),
                    ],
                    false => Vec::new(),
                },
            })
            .collect();
        Page::render(&Table {
            frame: console.frame("webhooks"),
            title: "Webhooks".to_owned(),
            intro: "Events delivered to your endpoints, signed (Standard Webhooks). An \
                    endpoint's page shows its deliveries."
                .to_owned(),
            empty: "No endpoint yet.",
            columns: vec!["Endpoint", "Events", "State", "Secret expires"],
            rows,
            form: write.then(|| FormSpec {
                title: "Add an endpoint",
                action: "/console/webhooks".to_owned(),
                button: "Add",
                fields: vec![
                    Field::input("url", "URL", "url")
                        .required()
                        .hint("https://hooks.example.com/keyplane"),
                    Field::checks("events", "Events", &crate::webhooks::EVENTS),
                    Field::input("description", "Description", "text"),
                ],
            }),
        })
    })
}

fn webhook_secret(
    console: &Console,
    title: &str,
    created: crate::ops::webhooks::CreatedWebhookResponse,
) -> Response {
    let hook = created.webhook;
    Page::render(&Secret {
        frame: console.frame("webhooks"),
        title: title.to_owned(),
        name: format!("Signing secret for {}", hook.url),
        secret: created.secret,
        facts: vec![
            ("Events".to_owned(), hook.events.join(", ")),
            ("Expires".to_owned(), view::at(&hook.secret_expires_at)),
        ],
        warnings: Vec::new(),
        done: "/console/webhooks".to_owned(),
    })
}

/// Adds an endpoint and shows its signing secret once.
pub async fn create_webhook(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = CreateWebhookRequest {
        url: form.one("url"),
        events: form.all("events"),
        description: form.given("description"),
    };
    let created = console.ops.create_webhook(Apply, request).await;
    or_refused(created, "/console/webhooks", |created| {
        webhook_secret(&console, "Endpoint added", created)
    })
}

/// An endpoint's deliveries, newest first.
pub async fn deliveries(console: Console, Path(id): Path<Uuid>) -> Response {
    let listed = console.ops.list_webhook_deliveries(id, page()).await;
    or_refused(listed, "/console/webhooks", |deliveries| {
        let rows = deliveries
            .items
            .iter()
            .map(|delivery| Row {
                name: delivery.event.clone(),
                cells: vec![
                    Cell::text(&delivery.event),
                    Cell::status(&delivery.status),
                    Cell::text(delivery.attempts.to_string()),
                    Cell::text(
                        delivery
                            .last_status
                            .map_or("—".to_owned(), |status| status.to_string()),
                    ),
                    Cell::text(delivery.last_error.clone().unwrap_or_default()),
                    Cell::text(view::at(&delivery.created_at)),
                ],
                actions: Vec::new(),
            })
            .collect();
        Page::render(&Table {
            frame: console.frame("webhooks"),
            title: "Deliveries".to_owned(),
            intro: String::new(),
            empty: "Nothing delivered yet.",
            columns: vec![
                "Event",
                "Status",
                "Attempts",
                "Last answer",
                "Last error",
                "Made",
            ],
            rows,
            form: None,
        })
    })
}

/// Asks before rotating an endpoint's secret.
pub async fn confirm_rotate_webhook(console: Console, Path(id): Path<Uuid>) -> Response {
    Ask {
        title: "Rotate this endpoint's secret?".to_owned(),
        message: "Deliveries are signed with both secrets during the grace window, then with \
                  the new one only."
            .to_owned(),
        action: format!("/console/webhooks/{id}/rotate"),
        button: "Rotate",
        back: "/console/webhooks".to_owned(),
        field: "grace",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Rotates an endpoint's secret and shows the new one once.
pub async fn rotate_webhook(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = RotateKeyRequest {
        grace_seconds: grace(&form),
    };
    let rotated = console.ops.rotate_webhook_secret(Apply, id, request).await;
    or_refused(
        rotated,
        &format!("/console/webhooks/{id}/rotate"),
        |created| webhook_secret(&console, "Secret rotated", created),
    )
}

/// Asks before deleting an endpoint.
pub async fn confirm_delete_webhook(console: Console, Path(id): Path<Uuid>) -> Response {
    Ask {
        title: "Delete this endpoint?".to_owned(),
        message: "Nothing more is delivered to it.".to_owned(),
        action: format!("/console/webhooks/{id}/delete"),
        button: "Delete",
        back: "/console/webhooks".to_owned(),
        field: "",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Deletes an endpoint.
pub async fn delete_webhook(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let deleted = console.ops.delete_webhook(Apply, id).await;
    or_refused(deleted, &format!("/console/webhooks/{id}/delete"), |_| {
        see_other("/console/webhooks")
    })
}

/// Roles: named scope sets keys carry.
pub async fn roles(console: Console) -> Response {
    let write = console.may(Permission::RolesWrite);
    let catalog = console.scope_catalog().await;
    let listed = console.ops.list_roles(page()).await;
    or_refused(listed, "/console/roles", |roles| {
        let rows = roles
            .items
            .iter()
            .map(|role| Row {
                name: role.name.clone(),
                cells: vec![
                    Cell::link(&role.name, format!("/console/roles/{}", role.name)),
                    Cell::text(&role.description),
                    Cell::text(view::list(&role.scopes)),
                ],
                actions: match write {
                    true => vec![action(
                        "Delete",
                        format!("/console/roles/{}/delete", role.name),
                        true,
                    )],
                    false => Vec::new(),
                },
            })
            .collect();
        Page::render(&Table {
            frame: console.frame("roles"),
            title: "Roles".to_owned(),
            intro: "A key's scopes are its own plus its roles', within its instance's ceiling. \
                    A role's page previews what a change would do before saving it."
                .to_owned(),
            empty: "No role yet.",
            columns: vec!["Name", "Description", "Scopes"],
            rows,
            form: write.then(|| FormSpec {
                title: "Create a role",
                action: "/console/roles".to_owned(),
                button: "Create",
                fields: vec![
                    Field::input("name", "Name", "text")
                        .required()
                        .hint("inference-client"),
                    Field::input("description", "Description", "text"),
                    Field::checks("scopes", "Scopes", &catalog),
                ],
            }),
        })
    })
}

/// Creates a role.
pub async fn create_role(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let name = form.one("name");
    let request = PutRoleRequest {
        description: form.given("description"),
        scopes: form.all("scopes"),
    };
    let put = console.ops.put_role(Apply, &name, request).await;
    or_refused(put, "/console/roles", |_| see_other("/console/roles"))
}

/// A role's name from a path: only a name a role may have, so that what
/// is built from it (a form's target) stays the role's.
fn role_name(name: &str) -> Option<String> {
    RoleName::parse(name)
        .ok()
        .map(|name| name.as_str().to_owned())
}

fn no_role() -> Response {
    Page::error(axum::http::StatusCode::NOT_FOUND, "No role of this name.").into_response()
}

/// A role, to read or change.
pub async fn role(console: Console, Path(name): Path<String>) -> Response {
    let Some(name) = role_name(&name) else {
        return no_role();
    };
    let listed = console.ops.list_roles(page()).await;
    let catalog = console.scope_catalog().await;
    or_refused(listed, "/console/roles", |roles| {
        let Some(role) = roles.items.into_iter().find(|role| role.name == name) else {
            return Page::error(axum::http::StatusCode::NOT_FOUND, "No role of this name.")
                .into_response();
        };
        Page::render(&view::Role {
            frame: console.frame("roles"),
            scopes: catalog_with(&catalog, &role.scopes),
            name: role.name,
            description: role.description,
            plan: None,
            nodes: 0,
            may_write: console.may(Permission::RolesWrite),
        })
    })
}

/// Every scope of `catalog`, marked when `scopes` holds it.
fn catalog_with(catalog: &[String], scopes: &[String]) -> Vec<(String, bool)> {
    catalog
        .iter()
        .map(|scope| (scope.clone(), scopes.contains(scope)))
        .collect()
}

/// Previews a role's change (which keys would gain or lose what), or saves it.
pub async fn save_role(console: Console, Path(name): Path<String>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let Some(name) = role_name(&name) else {
        return no_role();
    };
    let here = format!("/console/roles/{name}");
    let scopes = form.all("scopes");
    let request = || PutRoleRequest {
        description: form.given("description"),
        scopes: scopes.clone(),
    };
    if form.one("intent") != "preview" {
        let saved = console.ops.put_role(Apply, &name, request()).await;
        return or_refused(saved, &here, |_| see_other("/console/roles"));
    }
    let planned = console.ops.put_role(DryRun, &name, request()).await;
    let catalog = console.scope_catalog().await;
    or_refused(planned, &here, |plan| {
        Page::render(&view::Role {
            frame: console.frame("roles"),
            scopes: catalog_with(&catalog, &scopes),
            description: form.one("description"),
            plan: Some(
                plan.changes
                    .iter()
                    .map(|change| {
                        (
                            change.key_id.to_string(),
                            view::list(&change.gains),
                            view::list(&change.loses),
                        )
                    })
                    .collect(),
            ),
            nodes: plan.nodes.len(),
            name,
            may_write: true,
        })
    })
}

/// Asks before deleting a role.
pub async fn confirm_delete_role(console: Console, Path(name): Path<String>) -> Response {
    let Some(name) = role_name(&name) else {
        return no_role();
    };
    Ask {
        title: format!("Delete the role {name}?"),
        message: "keyplane refuses while a live key still carries it.".to_owned(),
        action: format!("/console/roles/{name}/delete"),
        button: "Delete",
        back: "/console/roles".to_owned(),
        field: "",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Deletes a role.
pub async fn delete_role(console: Console, Path(name): Path<String>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let Some(name) = role_name(&name) else {
        return no_role();
    };
    let deleted = console.ops.delete_role(Apply, &name).await;
    or_refused(deleted, &format!("/console/roles/{name}/delete"), |_| {
        see_other("/console/roles")
    })
}
