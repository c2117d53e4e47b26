//! The console: keyplane in a browser, rendered by this binary under
//! `/console/`.
//!
//! Every page calls the operations layer as the API's handlers do, so the
//! console keeps no rule of its own: the role matrix decides what a button
//! does, and a page only hides the buttons its operator may not use. Pages
//! are plain HTML forms (usable without script, by keyboard and screen
//! reader); the one script and stylesheet are compiled in, served from
//! keyplane's own origin under a strict Content-Security-Policy.
//!
//! Who is signed in: a person's session cookie (OpenID Connect with MFA),
//! or, in `dev` without an identity provider only, an admin key (or the
//! bootstrap token) typed into the sign-in page, kept in an HttpOnly cookie
//! for the console's paths and shown as such on every page. Every form
//! carries the sign-in's CSRF token.

mod fleet;
mod limits;
mod pages;
mod view;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyplane_domain::{Mode, Permission};

use crate::auth::{self, Credential};
use crate::error::ApiError;
use crate::ops::people::csrf_token;
use crate::ops::{Actor, Operator, Ops, Refusal};
use crate::request::origin;
use crate::state::AppState;

/// The console's own cookie in `dev`: the admin key signed in with.
pub const KEY_COOKIE: &str = "keyplane_console_key";

/// Scripts and styles from keyplane's origin only, no inline script, no
/// framing, forms only to keyplane.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

static STYLE: &str = include_str!("../../assets/console/console.css");
static SCRIPT: &str = include_str!("../../assets/console/console.js");
static ICON: &str = include_str!("../../assets/console/icon.svg");

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { see_other("/console/") }))
        .route("/console/", get(pages::overview))
        .route(
            "/console/sign-in",
            get(pages::sign_in_page).post(pages::sign_in_with_key),
        )
        .route("/console/sign-out", post(pages::sign_out))
        .route(
            "/console/instances",
            get(pages::instances).post(pages::create_instance),
        )
        .route("/console/instances/{id}", get(pages::instance))
        .route("/console/instances/{id}/keys", post(pages::issue_key))
        .route("/console/instances/{id}/status", post(pages::set_status))
        .route(
            "/console/keys/{id}",
            get(pages::key).post(pages::rename_key),
        )
        .route("/console/keys/{id}/enabled", post(pages::set_enabled))
        .route("/console/keys/{id}/limits", post(limits::set_key_limits))
        .route(
            "/console/instances/{id}/limits",
            post(limits::set_instance_limits),
        )
        .route(
            "/console/instances/{id}/revoke-selected",
            get(pages::confirm_revoke_selected).post(pages::revoke_selected),
        )
        .route(
            "/console/keys/{id}/rotate",
            get(pages::confirm_rotate).post(pages::rotate_key),
        )
        .route(
            "/console/keys/{id}/revoke",
            get(pages::confirm_revoke).post(pages::revoke_key),
        )
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/export", get(pages::export_audit))
        .route(
            "/console/instances/{id}/decommission",
            get(pages::confirm_decommission).post(pages::decommission),
        )
        .route("/console/nodes", get(fleet::nodes).post(fleet::create_node))
        .route(
            "/console/nodes/{id}/rotate",
            get(fleet::confirm_rotate_node).post(fleet::rotate_node),
        )
        .route(
            "/console/nodes/{id}/retire",
            get(fleet::confirm_retire_node).post(fleet::retire_node),
        )
        .route(
            "/console/admin-keys",
            get(fleet::admin_keys).post(fleet::create_admin_key),
        )
        .route(
            "/console/admin-keys/{id}/rotate",
            get(fleet::confirm_rotate_admin_key).post(fleet::rotate_admin_key),
        )
        .route(
            "/console/admin-keys/{id}/revoke",
            get(fleet::confirm_revoke_admin_key).post(fleet::revoke_admin_key),
        )
        .route(
            "/console/enrollment-tokens",
            get(fleet::enrollment_tokens).post(fleet::create_enrollment_token),
        )
        .route(
            "/console/enrollment-tokens/{id}/revoke",
            get(fleet::confirm_revoke_token).post(fleet::revoke_token),
        )
        .route(
            "/console/webhooks",
            get(fleet::webhooks).post(fleet::create_webhook),
        )
        .route("/console/webhooks/{id}", get(fleet::deliveries))
        .route(
            "/console/webhooks/{id}/rotate",
            get(fleet::confirm_rotate_webhook).post(fleet::rotate_webhook),
        )
        .route(
            "/console/webhooks/{id}/delete",
            get(fleet::confirm_delete_webhook).post(fleet::delete_webhook),
        )
        .route("/console/roles", get(fleet::roles).post(fleet::create_role))
        .route(
            "/console/roles/{name}",
            get(fleet::role).post(fleet::save_role),
        )
        .route(
            "/console/roles/{name}/delete",
            get(fleet::confirm_delete_role).post(fleet::delete_role),
        )
        .route(
            "/console/sessions",
            get(pages::sessions).post(pages::sign_out_everywhere),
        )
        .layer(axum::middleware::map_response(guard))
        .route("/console/assets/console.css", get(style))
        .route("/console/assets/console.js", get(script))
        .route("/console/assets/icon.svg", get(icon))
}

/// Every page: the policy, never cached (pages show secrets once, and
/// whatever they show may be gone a moment later).
async fn guard(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

/// A 303 to `to` (a path of this origin).
pub fn see_other(to: &str) -> Response {
    let location =
        HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/console/"));
    (StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response()
}

/// How the operator signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedInWith {
    /// The identity provider: a session cookie.
    Session,
    /// An admin key or the bootstrap token, in `dev`.
    Key,
}

/// A signed-in operator at the console: operations on their behalf, and
/// what every page needs to say who they are and to post forms.
pub struct Console {
    /// Operations as this operator.
    pub ops: Ops<Operator>,
    /// The frame every page is drawn in.
    pub frame: Frame,
    token: String,
}

impl Console {
    /// Every scope keys can be granted (built in, then operators' own), for
    /// forms; the built-in ones alone when the catalog cannot be read.
    pub async fn scope_catalog(&self) -> Vec<String> {
        match self.ops.list_scopes().await {
            Ok(list) => list.items.into_iter().map(|scope| scope.name).collect(),
            Err(_) => keyplane_domain::SCOPE_CATALOG
                .iter()
                .map(|scope| (*scope).to_owned())
                .collect(),
        }
    }
}

/// Who is signed in, for the header every page shows.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Their name: the person's email (or subject), or the key.
    pub who: String,
    /// Their role.
    pub role: &'static str,
    /// True when signed in with a key (dev), which every page says.
    pub with_key: bool,
    /// The token every form carries.
    pub csrf: String,
    /// Which part of the console the page belongs to.
    pub section: &'static str,
    /// The parts this operator may read: id, label, address.
    pub nav: Vec<(&'static str, &'static str, &'static str)>,
}

/// The console's parts, and what reading each needs.
const SECTIONS: [(&str, &str, &str, Permission); 9] = [
    (
        "overview",
        "Overview",
        "/console/",
        Permission::InstancesRead,
    ),
    (
        "instances",
        "Instances",
        "/console/instances",
        Permission::InstancesRead,
    ),
    ("nodes", "Nodes", "/console/nodes", Permission::NodesRead),
    ("roles", "Roles", "/console/roles", Permission::RolesRead),
    (
        "admin-keys",
        "Admin keys",
        "/console/admin-keys",
        Permission::AdminKeysRead,
    ),
    (
        "enrollment",
        "Enrollment",
        "/console/enrollment-tokens",
        Permission::KeysRead,
    ),
    (
        "webhooks",
        "Webhooks",
        "/console/webhooks",
        Permission::WebhooksRead,
    ),
    (
        "audit",
        "Audit log",
        "/console/audit",
        Permission::AuditRead,
    ),
    (
        "sessions",
        "Sessions",
        "/console/sessions",
        Permission::InstancesRead,
    ),
];

impl Console {
    /// Whether this operator's role grants `permission`: a page shows a
    /// button only when it does (and the operation checks again).
    pub fn may(&self, permission: Permission) -> bool {
        self.ops.actor().role.allows(permission)
    }

    /// The refusal of a posted form that lacks this sign-in's CSRF token.
    pub fn refuses(&self, form: &Fields) -> Option<Response> {
        self.refuses_csrf(&form.one("csrf"))
    }

    /// The refusal of a form that lacks this sign-in's CSRF token, if it does.
    pub fn refuses_csrf(&self, sent: &str) -> Option<Response> {
        match auth::csrf_matches(sent, &self.token) {
            true => None,
            false => Some(
                Page::error(
                    StatusCode::FORBIDDEN,
                    "This form did not come from this console (its CSRF token is missing or \
                     wrong). Nothing was changed.",
                )
                .into_response(),
            ),
        }
    }

    /// The frame for a page of `section`.
    pub fn frame(&self, section: &'static str) -> Frame {
        Frame {
            section,
            ..self.frame.clone()
        }
    }
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let here = parts
            .uri
            .path_and_query()
            .map_or("/console/", |p| p.as_str())
            .to_owned();
        let (token, via) = match signed_in(parts, state) {
            Some(found) => found,
            None => return Err(to_sign_in(parts, &here)),
        };
        let credential = match via {
            SignedInWith::Session => Credential::Session,
            SignedInWith::Key => Credential::Any,
        };
        let operator = match auth::authenticate(parts, state, &token, credential).await {
            Ok(operator) => operator,
            Err(ApiError::Unauthorized { .. }) => return Err(to_sign_in(parts, &here)),
            Err(err) => return Err(Page::from_api(err).into_response()),
        };
        let who = match &operator.actor {
            Actor::Person(person) => person.email.clone().unwrap_or(person.subject.clone()),
            Actor::Bootstrap => "the bootstrap token".to_owned(),
            other => other.to_string(),
        };
        let frame = Frame {
            who,
            role: operator.role.as_str(),
            with_key: via == SignedInWith::Key,
            csrf: csrf_token(&token),
            section: "",
            nav: SECTIONS
                .iter()
                .filter(|(.., needs)| operator.role.allows(*needs))
                .map(|(id, label, href, _)| (*id, *label, *href))
                .collect(),
        };
        Ok(Console {
            ops: Ops::new(state.clone(), operator, origin(&parts.extensions)),
            frame,
            token,
        })
    }
}

/// The sign-in a request carries: the session cookie, else (in `dev`) the
/// console's key cookie.
fn signed_in(parts: &Parts, state: &AppState) -> Option<(String, SignedInWith)> {
    if let Some(token) = auth::session_cookie(&parts.headers, state) {
        return Some((token, SignedInWith::Session));
    }
    if keys_allowed(state) {
        return auth::cookie(&parts.headers, KEY_COOKIE).map(|t| (t, SignedInWith::Key));
    }
    None
}

/// Whether the console takes an admin key to sign in: in `dev` without an
/// identity provider only.
pub fn keys_allowed(state: &AppState) -> bool {
    state.settings.mode == Mode::Dev
        && state.settings.oidc.is_none()
        && state.settings.admin_keys == crate::config::AdminKeys::Enabled
}

/// Sends a visitor without a sign-in to the sign-in page. A navigation that
/// arrives from another site (the identity provider's redirect back) did
/// not bring the session's SameSite=Strict cookie: the page is loaded once
/// more from here, which does. Only a plain page is reloaded so: a link
/// from elsewhere never becomes a same-site visit to a confirmation page or
/// to a page its query shapes.
fn to_sign_in(parts: &Parts, here: &str) -> Response {
    if cross_site(parts) && parts.method.is_safe() {
        return Page::render(&view::Reload {
            to: landing(here).to_owned(),
        });
    }
    let back = if parts.method.is_safe() {
        here
    } else {
        "/console/"
    };
    see_other(&format!(
        "/console/sign-in?return_to={}",
        view::query_escape(back)
    ))
}

/// A posted form, read as the pairs it is (checkboxes repeat their name).
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`, trimmed; empty when absent.
    pub fn one(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// The first value of `name`, when given and not empty.
    pub fn given(&self, name: &str) -> Option<String> {
        Some(self.one(name)).filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    /// The value of `name` as a whole number, when it is one.
    pub fn number(&self, name: &str) -> Option<i64> {
        self.one(name).parse().ok()
    }
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Fields(
            url::form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

/// Whether the browser says the request comes from another site.
pub fn cross_site(parts: &Parts) -> bool {
    parts
        .headers
        .get("sec-fetch-site")
        .is_some_and(|site| site == "cross-site" || site == "same-site")
}

/// Where a visit from another site may land: `here` when it is a plain
/// page (no query, no action), else the overview.
fn landing(here: &str) -> &str {
    const ACTIONS: [&str; 7] = [
        "/rotate",
        "/revoke",
        "/retire",
        "/delete",
        "/decommission",
        "/revoke-selected",
        "/sign-out",
    ];
    let plain = !here.contains('?') && !ACTIONS.iter().any(|action| here.ends_with(action));
    if plain { here } else { "/console/" }
}

/// A page, or why there is none.
pub struct Page(Response);

impl Page {
    /// A rendered template.
    pub fn render<T: Template>(template: &T) -> Response {
        match template.render() {
            Ok(html) => (
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                )],
                html,
            )
                .into_response(),
            Err(err) => {
                tracing::error!(error = %err, "a console page did not render");
                (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response()
            }
        }
    }

    /// An error page with `status` saying `message`.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Page {
        let page = view::ErrorPage {
            status: status.as_u16(),
            message: message.into(),
        };
        let mut response = Page::render(&page);
        *response.status_mut() = status;
        Page(response)
    }

    /// What the API would have answered, as a page: a step-up refusal sends
    /// the person to sign in again and come back.
    pub fn from_api(err: ApiError) -> Page {
        let status = err.status();
        let message = match &err {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "a console action failed");
                "Something went wrong inside keyplane; nothing is shown here. The log says more."
                    .to_owned()
            }
            other => other.to_string(),
        };
        Page::error(status, message)
    }

    /// A refusal of the operations layer, for a page at `here`.
    pub fn refused(refusal: Refusal, here: &str) -> Page {
        match refusal {
            Refusal::StepUp { .. } => Page(see_other(&format!(
                "/v1/auth/oidc/login?step_up=true&return_to={}",
                view::query_escape(here)
            ))),
            other => Page::from_api(other.into()),
        }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_visit_from_elsewhere_lands_on_plain_pages_only() {
        assert_eq!(landing("/console/instances"), "/console/instances");
        assert_eq!(landing("/console/keys/k/revoke"), "/console/");
        assert_eq!(landing("/console/instances/i/revoke-selected"), "/console/");
        assert_eq!(landing("/console/instances?name=x"), "/console/");
    }
}
