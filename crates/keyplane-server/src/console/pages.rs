//! The console's pages and forms: each extracts, calls one operation (or a
//! few reads), and renders.

use axum::Form;
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use keyplane_domain::Permission;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth;
use crate::console::limits::{LimitsView, UsageChart};
use crate::console::view::{self, KeyRow};
use crate::console::{Console, Fields, KEY_COOKIE, Page, keys_allowed, see_other};
use crate::ops::Apply;
use crate::ops::audit::AuditFilter;
use crate::ops::instances::{CreateInstanceRequest, InstanceStatus, UpdateInstanceRequest};
use crate::ops::keys::{
    CreateKeyRequest, KeyFilter, RevokeKeyRequest, RotateKeyRequest, UpdateKeyRequest,
};
use crate::ops::people::RevokeAllRequest;
use crate::pagination::PageParams;
use crate::state::AppState;

fn page(limit: i64) -> PageParams {
    PageParams {
        limit: Some(limit),
        cursor: None,
    }
}

/// The overview: what needs attention, at a glance. A section the
/// operator's role may not read is left out.
pub async fn overview(console: Console) -> Response {
    let ops = &console.ops;
    let now = ops.state().clock.now();
    let nodes = match console.may(Permission::NodesRead) {
        true => match ops.list_nodes(false, page(100)).await {
            Ok(nodes) => Some(
                nodes
                    .items
                    .iter()
                    .map(|n| view::NodeRow::new(n, now))
                    .collect(),
            ),
            Err(refusal) => return Page::refused(refusal, "/console/").into_response(),
        },
        false => None,
    };
    let (verification, recent) = match console.may(Permission::AuditRead) {
        true => {
            let verification = match ops.verify_audit_log().await {
                Ok(verification) => verification,
                Err(refusal) => return Page::refused(refusal, "/console/").into_response(),
            };
            let denied = AuditFilter {
                outcome: Some("denied".to_owned()),
                ..AuditFilter::default()
            };
            let (recent, denials) = match (
                ops.latest_audit_entries(AuditFilter::default(), 10).await,
                ops.latest_audit_entries(denied, 10).await,
            ) {
                (Ok(recent), Ok(denials)) => (recent, denials),
                (Err(refusal), _) | (_, Err(refusal)) => {
                    return Page::refused(refusal, "/console/").into_response();
                }
            };
            let rows = |entries: Vec<crate::audit_trail::AuditEntry>| {
                entries.iter().map(view::AuditRow::from).collect::<Vec<_>>()
            };
            (Some(verification), Some((rows(recent), rows(denials))))
        }
        false => (None, None),
    };
    Page::render(&view::Overview {
        frame: console.frame("overview"),
        warnings: crate::ops::health::warnings(ops.state()),
        verification,
        nodes,
        recent,
    })
}

/// Where to go after signing in.
#[derive(Debug, Deserialize)]
pub struct ReturnTo {
    return_to: Option<String>,
}

/// A path of the console, else the overview: a sign-in never sends anyone
/// elsewhere (the rules of the identity provider's `return_to`, within
/// the console).
fn console_path(asked: Option<&str>) -> String {
    crate::ops::people::safe_return_to(asked)
        .ok()
        .filter(|path| path.starts_with("/console/"))
        .unwrap_or_else(|| "/console/".to_owned())
}

/// The sign-in page: the identity provider, and in `dev` an admin key.
pub async fn sign_in_page(
    State(state): State<AppState>,
    Query(query): Query<ReturnTo>,
) -> Response {
    let return_to = console_path(query.return_to.as_deref());
    Page::render(&view::SignIn {
        provider: state.settings.oidc.as_ref().map(|_| {
            format!(
                "/v1/auth/oidc/login?return_to={}",
                view::query_escape(&return_to)
            )
        }),
        keys: keys_allowed(&state),
        return_to,
        problem: None,
    })
}

/// An admin key typed into the sign-in page.
#[derive(Deserialize)]
pub struct KeySignIn {
    key: String,
    return_to: Option<String>,
}

/// Signs in with an admin key (or the bootstrap token), in `dev` only: it
/// is checked as the API checks it, then kept in an HttpOnly cookie for
/// the console's paths.
pub async fn sign_in_with_key(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(Form(form)) = Form::<KeySignIn>::from_request(
        axum::extract::Request::from_parts(parts.clone(), body),
        &state,
    )
    .await
    else {
        return Page::error(StatusCode::BAD_REQUEST, "The form could not be read.").into_response();
    };
    let return_to = console_path(form.return_to.as_deref());
    // Another site's form must not sign a browser in with its own key.
    if crate::console::cross_site(&parts) {
        return Page::error(StatusCode::FORBIDDEN, "Sign in from keyplane's own page.")
            .into_response();
    }
    if !keys_allowed(&state) {
        return Page::error(
            StatusCode::FORBIDDEN,
            "Signing in with a key is for dev only: sign in with the identity provider.",
        )
        .into_response();
    }
    let key = form.key.trim();
    // Only what a cookie carries as it is (admin keys and sane tokens do).
    let cookie_safe = key
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    let signed_in = match cookie_safe {
        true => auth::authenticate(&parts, &state, key, auth::Credential::Any).await,
        false => Err(crate::error::ApiError::Unauthorized {
            code: "invalid_credentials",
            detail: "not a key",
        }),
    };
    match signed_in {
        Ok(_) => {
            let secure = if state.settings.tls.is_some() {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{KEY_COOKIE}={key}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=28800{secure}"
            );
            let mut response = see_other(&return_to);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, value);
            }
            response
        }
        Err(err) => {
            let problem = match err {
                crate::error::ApiError::TooManyRequests { .. } => {
                    "Too many failed sign-ins from here: wait a minute."
                }
                _ => "That is not a live admin key.",
            };
            let mut response = Page::render(&view::SignIn {
                provider: None,
                keys: true,
                return_to,
                problem: Some(problem.to_owned()),
            });
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

/// Signs out: a person's session ends; a key's cookie is dropped.
pub async fn sign_out(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    if !console.frame.with_key
        && let Err(refusal) = console.ops.sign_out().await
    {
        return Page::refused(refusal, "/console/").into_response();
    }
    let mut response = see_other("/console/sign-in");
    let state = console.ops.state();
    for cookie in [
        format!("{KEY_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            auth::session_cookie_name(state),
            if auth::session_cookie_name(state).starts_with("__Host-") {
                "; Secure"
            } else {
                ""
            }
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

/// The instance list's filters.
#[derive(Debug, Default, Deserialize)]
pub struct InstanceQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    selector: String,
    #[serde(default)]
    status: String,
}

/// The instances, by name, label selector and status.
pub async fn instances(console: Console, Query(query): Query<InstanceQuery>) -> Response {
    let status = match query.status.as_str() {
        "active" => Some(InstanceStatus::Active),
        "suspended" => Some(InstanceStatus::Suspended),
        "decommissioned" => Some(InstanceStatus::Decommissioned),
        _ => None,
    };
    let name = query.name.trim();
    let selector = query.selector.trim();
    let listed = console
        .ops
        .list_instances(
            status,
            (!selector.is_empty()).then_some(selector),
            (!name.is_empty()).then_some(name),
            page(200),
        )
        .await;
    let found = match listed {
        Ok(found) => found,
        Err(refusal) => return Page::refused(refusal, "/console/instances").into_response(),
    };
    Page::render(&view::Instances {
        frame: console.frame("instances"),
        rows: found.items.iter().map(view::InstanceRow::from).collect(),
        more: found.next_cursor.is_some(),
        name: name.to_owned(),
        selector: selector.to_owned(),
        status: query.status,
        register: match console.may(Permission::InstancesWrite) {
            true => Some(console.scope_catalog().await),
            false => None,
        },
    })
}

/// One instance and its keys.
pub async fn instance(console: Console, Path(id): Path<Uuid>) -> Response {
    let here = format!("/console/instances/{id}");
    let ops = &console.ops;
    let instance = match ops.get_instance(id).await {
        Ok(instance) => instance,
        Err(refusal) => return Page::refused(refusal, &here).into_response(),
    };
    let filter = KeyFilter {
        instance_id: Some(id),
        ..KeyFilter::default()
    };
    let keys = match ops.list_keys(filter, page(500)).await {
        Ok(keys) => keys.items,
        Err(refusal) => return Page::refused(refusal, &here).into_response(),
    };
    let now = ops.state().clock.now();
    let usage = match console.may(Permission::UsageRead) {
        true => Some(UsageChart::of(&console, Some(id), None).await),
        false => None,
    };
    let mut rows: Vec<KeyRow> = keys.iter().map(|k| KeyRow::new(k, now)).collect();
    // Live keys first, newest first.
    rows.reverse();
    rows.sort_by_key(|row| !row.live);
    Page::render(&view::Instance {
        frame: console.frame("instances"),
        id: id.to_string(),
        name: instance.name,
        description: instance.description,
        status: instance.status.as_str().to_owned(),
        labels: view::labels(&instance.labels),
        ceiling: instance.allowed_scopes,
        cidrs: view::list(&instance.allowed_cidrs),
        keys: rows,
        may_write_keys: console.may(Permission::KeysWrite),
        may_write_instance: console.may(Permission::InstancesWrite),
        limits: LimitsView::new(&instance.limits, instance.models.as_deref()),
        limits_note: "For each of its keys.".to_owned(),
        limits_action: format!("/console/instances/{id}/limits"),
        may_limit: console.may(Permission::InstancesWrite)
            && instance.status != InstanceStatus::Decommissioned,
        usage,
    })
}

/// Issues a key and shows its secret, this once.
pub async fn issue_key(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    let here = format!("/console/instances/{id}");
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = CreateKeyRequest {
        name: form.one("name"),
        scopes: Some(form.all("scopes")),
        roles: None,
        expires_in: form
            .number("expires_in_days")
            .map(|days| days.saturating_mul(86_400)),
        expires_at: None,
        audience: None,
        rotate_after: None,
        limits: None,
        models: None,
    };
    match console.ops.issue_key(Apply, id, request).await {
        Ok(created) => Page::render(&view::Secret::key(
            console.frame("instances"),
            "Key issued",
            created,
        )),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}

/// Suspends an instance (all its keys stop at once) or resumes it.
pub async fn set_status(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    let here = format!("/console/instances/{id}");
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let status = match form.one("status").as_str() {
        "suspended" => InstanceStatus::Suspended,
        "active" => InstanceStatus::Active,
        _ => {
            return Page::error(StatusCode::BAD_REQUEST, "Unknown status.").into_response();
        }
    };
    let request = UpdateInstanceRequest {
        status: Some(status),
        ..UpdateInstanceRequest::default()
    };
    match console.ops.update_instance(Apply, id, request).await {
        Ok(_) => see_other(&here),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}

/// Disables a key (reversibly) or enables it again.
pub async fn set_enabled(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = UpdateKeyRequest {
        name: None,
        enabled: Some(form.one("enabled") == "true"),
        ..UpdateKeyRequest::default()
    };
    match console.ops.update_key(Apply, id, request).await {
        Ok(key) => see_other(&format!("/console/instances/{}", key.instance_id)),
        Err(refusal) => Page::refused(refusal, "/console/instances").into_response(),
    }
}

/// Asks before revoking a key.
pub async fn confirm_revoke(console: Console, Path(id): Path<Uuid>) -> Response {
    confirm(console, id, Action::Revoke).await
}

/// Asks before rotating a key.
pub async fn confirm_rotate(console: Console, Path(id): Path<Uuid>) -> Response {
    confirm(console, id, Action::Rotate).await
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Revoke,
    Rotate,
}

async fn confirm(console: Console, id: Uuid, action: Action) -> Response {
    let key = match console.ops.get_key(id).await {
        Ok(key) => key,
        Err(refusal) => return Page::refused(refusal, "/console/instances").into_response(),
    };
    let back = format!("/console/instances/{}", key.instance_id);
    let ask = match action {
        Action::Revoke => Ask {
            title: format!("Revoke {}?", key.name),
            message: format!(
                "{} stops working at every node at once, for good. Whoever holds it will be \
                 refused.",
                key.masked_key
            ),
            action: format!("/console/keys/{id}/revoke"),
            button: "Revoke",
            back,
            field: "reason",
            hidden: Vec::new(),
        },
        Action::Rotate => Ask {
            title: format!("Rotate {}?", key.name),
            message: format!(
                "A new key replaces {}; the old one keeps working for the grace window, then \
                 stops. The new key is shown once.",
                key.masked_key
            ),
            action: format!("/console/keys/{id}/rotate"),
            button: "Rotate",
            back,
            field: "grace",
            hidden: Vec::new(),
        },
    };
    ask.page(&console)
}

/// What a confirmation page asks.
pub struct Ask {
    /// The question.
    pub title: String,
    /// What will happen.
    pub message: String,
    /// Where the form posts.
    pub action: String,
    /// The button's label.
    pub button: &'static str,
    /// Where Cancel goes.
    pub back: String,
    /// `reason`, `grace` or nothing: the field the form adds.
    pub field: &'static str,
    /// Fields the form carries as they are.
    pub hidden: Vec<(String, String)>,
}

impl Ask {
    /// The confirmation page.
    pub fn page(self, console: &Console) -> Response {
        Page::render(&view::Confirm {
            frame: console.frame(console.frame.section),
            title: self.title,
            message: self.message,
            action: self.action,
            button: self.button.to_owned(),
            back: self.back,
            field: self.field,
            hidden: self.hidden,
        })
    }
}

/// Revokes a key, for good.
pub async fn revoke_key(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    let here = format!("/console/keys/{id}/revoke");
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = RevokeKeyRequest {
        reason: form.given("reason"),
    };
    match console.ops.revoke_key(Apply, id, request).await {
        Ok(key) => see_other(&format!("/console/instances/{}", key.instance_id)),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}

/// Rotates a key and shows its successor's secret, this once.
pub async fn rotate_key(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    let here = format!("/console/keys/{id}/rotate");
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = RotateKeyRequest {
        grace_seconds: form.number("grace_minutes").map(|m| m.saturating_mul(60)),
    };
    match console.ops.rotate_key(Apply, id, request).await {
        Ok(created) => Page::render(&view::Secret::key(
            console.frame("instances"),
            "Key rotated",
            created,
        )),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}

/// One key's page: everything about it, and its name to change.
pub async fn key(console: Console, Path(id): Path<Uuid>) -> Response {
    let key = match console.ops.get_key(id).await {
        Ok(key) => key,
        Err(refusal) => return Page::refused(refusal, "/console/instances").into_response(),
    };
    let now = console.ops.state().clock.now();
    let mut facts = vec![
        ("Issued".to_owned(), view::at(&key.created_at)),
        ("Roles".to_owned(), view::list(&key.roles)),
        ("Own scopes".to_owned(), view::list(&key.scopes)),
    ];
    if let Some(until) = &key.grace_until {
        facts.push(("Works until (rotated)".to_owned(), view::at(until)));
    }
    if let Some(reason) = &key.revoked_reason {
        facts.push(("Revoked because".to_owned(), reason.clone()));
    }
    let may_write = console.may(Permission::KeysWrite);
    let usage = match console.may(Permission::UsageRead) {
        true => Some(UsageChart::of(&console, None, Some(id)).await),
        false => None,
    };
    let row = KeyRow::new(&key, now);
    Page::render(&view::Key {
        frame: console.frame("instances"),
        instance_id: key.instance_id.to_string(),
        limits: LimitsView::new(&key.limits, key.models.as_deref()),
        limits_note: "Its own; its instance's apply too.".to_owned(),
        limits_action: format!("/console/keys/{id}/limits"),
        may_limit: may_write && row.live,
        usage,
        key: row,
        facts,
        may_write,
    })
}

/// Renames a key.
pub async fn rename_key(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let request = UpdateKeyRequest {
        name: Some(form.one("name")),
        ..UpdateKeyRequest::default()
    };
    match console.ops.update_key(Apply, id, request).await {
        Ok(_) => see_other(&format!("/console/keys/{id}")),
        Err(refusal) => Page::refused(refusal, &format!("/console/keys/{id}")).into_response(),
    }
}

/// The most keys one selection revokes.
const MOST_SELECTED: usize = 100;

/// The selected keys, each of which must be of instance `id`: answers
/// their ids and names (masked key included), or the page that refuses.
async fn selection(
    console: &Console,
    id: Uuid,
    keys: &[String],
) -> Result<Vec<(Uuid, String)>, (StatusCode, String)> {
    if keys.is_empty() || keys.len() > MOST_SELECTED {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("Select 1 to {MOST_SELECTED} keys of this instance first."),
        ));
    }
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        let key = match key.parse::<Uuid>() {
            Ok(key) => console.ops.get_key(key).await.ok(),
            Err(_) => None,
        };
        match key {
            Some(key) if key.instance_id == id => {
                found.push((key.id, format!("{} ({})", key.name, key.masked_key)));
            }
            _ => {
                return Err((
                    StatusCode::NOT_FOUND,
                    "A selected key is not a key of this instance.".to_owned(),
                ));
            }
        }
    }
    Ok(found)
}

/// Asks before revoking the keys selected on an instance's page, naming each.
pub async fn confirm_revoke_selected(
    console: Console,
    Path(id): Path<Uuid>,
    uri: axum::http::Uri,
) -> Response {
    let keys: Vec<String> = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
        .collect();
    let selected = match selection(&console, id, &keys).await {
        Ok(selected) => selected,
        Err((status, message)) => return Page::error(status, message).into_response(),
    };
    let names: Vec<String> = selected.iter().map(|(_, name)| name.clone()).collect();
    Ask {
        title: format!("Revoke {} keys?", selected.len()),
        message: format!(
            "{} stop working at every node at once, for good.",
            names.join(", ")
        ),
        action: format!("/console/instances/{id}/revoke-selected"),
        button: "Revoke them",
        back: format!("/console/instances/{id}"),
        field: "reason",
        hidden: selected
            .iter()
            .map(|(key, _)| ("key".to_owned(), key.to_string()))
            .collect(),
    }
    .page(&console)
}

/// Revokes the selected keys (all of this instance, checked before any is
/// revoked), one operation each: every rule (and audit entry) of a single
/// revocation holds for each.
pub async fn revoke_selected(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let here = format!("/console/instances/{id}");
    let selected = match selection(&console, id, &form.all("key")).await {
        Ok(selected) => selected,
        Err((status, message)) => return Page::error(status, message).into_response(),
    };
    for (key, _) in selected {
        let request = RevokeKeyRequest {
            reason: form.given("reason"),
        };
        if let Err(refusal) = console.ops.revoke_key(Apply, key, request).await {
            return Page::refused(refusal, &here).into_response();
        }
    }
    see_other(&here)
}

/// Asks before decommissioning an instance.
pub async fn confirm_decommission(console: Console, Path(id): Path<Uuid>) -> Response {
    let instance = match console.ops.get_instance(id).await {
        Ok(instance) => instance,
        Err(refusal) => return Page::refused(refusal, "/console/instances").into_response(),
    };
    Ask {
        title: format!("Decommission {}?", instance.name),
        message: "The instance and every key of it stop working at once, for good; its name \
                  becomes free."
            .to_owned(),
        action: format!("/console/instances/{id}/decommission"),
        button: "Decommission",
        back: format!("/console/instances/{id}"),
        field: "",
        hidden: Vec::new(),
    }
    .page(&console)
}

/// Decommissions an instance: it and all its keys stop at once.
pub async fn decommission(console: Console, Path(id): Path<Uuid>, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let here = format!("/console/instances/{id}/decommission");
    match console.ops.decommission_instance(Apply, id).await {
        Ok(_) => see_other("/console/instances"),
        Err(refusal) => Page::refused(refusal, &here).into_response(),
    }
}

/// Registers an instance.
pub async fn create_instance(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    let labels = match labels(&form.one("labels")) {
        Some(labels) => labels,
        None => {
            return Page::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Labels are key=value pairs, separated by commas.",
            )
            .into_response();
        }
    };
    let request = CreateInstanceRequest {
        name: form.one("name"),
        description: form.given("description"),
        labels: Some(labels),
        allowed_scopes: Some(form.all("allowed_scopes")),
        allowed_cidrs: None,
        self_rotation: None,
        limits: None,
        models: None,
    };
    match console.ops.create_instance(Apply, request).await {
        Ok(instance) => see_other(&format!("/console/instances/{}", instance.id)),
        Err(refusal) => Page::refused(refusal, "/console/instances").into_response(),
    }
}

/// `k=v, k=v` as labels; None when a pair has no `=`.
pub fn labels(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The whole audit log as JSON lines, to keep elsewhere.
pub async fn export_audit(console: Console) -> Response {
    match console.ops.export_audit_log(None, None) {
        Ok(lines) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"keyplane-audit.jsonl\""),
                ),
            ],
            axum::body::Body::from_stream(lines),
        )
            .into_response(),
        Err(refusal) => Page::refused(refusal, "/console/audit").into_response(),
    }
}

/// The audit log's filters.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
}

/// The audit log: the chain's verification, then the latest entries.
pub async fn audit(console: Console, Query(query): Query<AuditQuery>) -> Response {
    let ops = &console.ops;
    let verification = match ops.verify_audit_log().await {
        Ok(verification) => verification,
        Err(refusal) => return Page::refused(refusal, "/console/audit").into_response(),
    };
    let given = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let filter = AuditFilter {
        actor: given(&query.actor),
        action: given(&query.action),
        outcome: given(&query.outcome),
        ..AuditFilter::default()
    };
    let entries = match ops.latest_audit_entries(filter, 200).await {
        Ok(entries) => entries,
        Err(refusal) => return Page::refused(refusal, "/console/audit").into_response(),
    };
    Page::render(&view::Audit {
        frame: console.frame("audit"),
        actor: query.actor,
        action: query.action,
        outcome: query.outcome,
        verification,
        recent: entries.iter().map(view::AuditRow::from).collect(),
    })
}

/// People's live sessions (an admin sees everyone's).
pub async fn sessions(console: Console) -> Response {
    let now = console.ops.state().clock.now();
    let person = !console.frame.with_key;
    let rows = match console.ops.list_sessions(page(200)).await {
        Ok(found) => found
            .items
            .iter()
            .map(|s| view::SessionRow::new(s, now))
            .collect(),
        Err(refusal) => return Page::refused(refusal, "/console/sessions").into_response(),
    };
    Page::render(&view::Sessions {
        frame: console.frame("sessions"),
        rows,
        person,
    })
}

/// Ends every session of the person signed in, this one included.
pub async fn sign_out_everywhere(console: Console, form: Fields) -> Response {
    if let Some(refusal) = console.refuses(&form) {
        return refusal;
    }
    match console
        .ops
        .revoke_all_sessions(RevokeAllRequest { subject: None })
        .await
    {
        Ok(_) => see_other("/console/sign-in"),
        Err(refusal) => Page::refused(refusal, "/console/sessions").into_response(),
    }
}
