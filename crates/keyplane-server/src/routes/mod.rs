//! The HTTP surface: every route, registered once through utoipa-axum so the
//! OpenAPI document is generated from the same code that serves it.

pub mod admin_keys;
pub mod audit;
pub mod enrollment;
pub mod fleet;
pub mod health;
pub mod instances;
pub mod keys;
pub mod leaks;
pub mod node_api;
pub mod nodes;
pub mod people;
pub mod roles;
pub mod scopes;
pub mod self_service;
pub mod signing_keys;
pub mod usage;
pub mod webhooks;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::{Scalar, Servable};

use crate::error::{ApiError, Problem};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyplane",
        description = "Self-hosted API-key control plane: instances, keys, roles, \
                       introspection for inference nodes, and an audit log.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "instances", description = "The registry of client instances"),
        (name = "keys", description = "Instance API keys and their lifecycle"),
        (name = "roles", description = "Named scope sets"),
        (name = "nodes", description = "Nodes that introspect keys"),
        (name = "admin-keys", description = "Operators' keys"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "enrollment", description = "Enrollment tokens, and instances enrolling themselves"),
        (name = "self-service", description = "A key holder's own key: read it, rotate it"),
        (name = "webhooks", description = "Event deliveries to operators' endpoints (Standard Webhooks)"),
        (name = "leaks", description = "Reports of leaked keys, from anyone"),
        (name = "usage", description = "What keys used, as nodes report it, and budget leases"),
        (name = "people", description = "Signing in with the identity provider, and sessions"),
    ),
    paths(node_api::check_access_envoy),
    components(schemas(Problem, PlanResponse)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the management routes name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(
            instances::create_instance,
            instances::list_instances
        ))
        .routes(routes!(
            instances::get_instance,
            instances::update_instance,
            instances::decommission_instance
        ))
        .routes(routes!(keys::create_key))
        .routes(routes!(keys::import_legacy_keys))
        .routes(routes!(keys::list_keys))
        .routes(routes!(keys::get_key, keys::update_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(fleet::rotate_keys))
        .routes(routes!(fleet::revoke_keys))
        .routes(routes!(fleet::suspend_instances))
        .routes(routes!(roles::list_roles))
        .routes(routes!(roles::put_role, roles::delete_role))
        .routes(routes!(scopes::list_scopes))
        .routes(routes!(scopes::put_scope, scopes::delete_scope))
        .routes(routes!(nodes::create_node, nodes::list_nodes))
        .routes(routes!(
            nodes::get_node,
            nodes::update_node,
            nodes::retire_node
        ))
        .routes(routes!(nodes::rotate_node))
        .routes(routes!(nodes::get_node_self))
        .routes(routes!(nodes::rotate_node_self))
        .routes(routes!(nodes::heartbeat))
        .routes(routes!(
            admin_keys::create_admin_key,
            admin_keys::list_admin_keys
        ))
        .routes(routes!(admin_keys::revoke_admin_key))
        .routes(routes!(admin_keys::rotate_admin_key))
        .routes(routes!(admin_keys::get_own_admin_key))
        .routes(routes!(admin_keys::rotate_own_admin_key))
        .routes(routes!(
            enrollment::create_enrollment_token,
            enrollment::list_enrollment_tokens
        ))
        .routes(routes!(enrollment::revoke_enrollment_token))
        .routes(routes!(enrollment::enroll))
        .routes(routes!(self_service::get_self))
        .routes(routes!(self_service::rotate_self))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::delete_webhook))
        .routes(routes!(webhooks::rotate_webhook_secret))
        .routes(routes!(webhooks::list_webhook_deliveries))
        .routes(routes!(leaks::report_leaks))
        .routes(routes!(people::sign_in))
        .routes(routes!(people::sign_in_callback))
        .routes(routes!(people::sign_out))
        .routes(routes!(people::who_am_i))
        .routes(routes!(people::authorize_device))
        .routes(routes!(
            people::device_verification_page,
            people::approve_device
        ))
        .routes(routes!(people::device_token))
        .routes(routes!(people::list_sessions))
        .routes(routes!(people::revoke_session))
        .routes(routes!(people::revoke_all_sessions))
        .routes(routes!(node_api::introspect))
        .routes(routes!(node_api::check_access, node_api::check_access_post))
        // Envoy's path goes on past the prefix: a catch-all route, for any
        // method, documented (in `ApiDoc`) with one `path` parameter.
        .route(
            node_api::ENVOY_CHECK_ROUTE,
            axum::routing::any(node_api::check_access_envoy),
        )
        .routes(routes!(node_api::stream_revocations))
        .routes(routes!(node_api::jwks))
        .routes(routes!(signing_keys::rotate_signing_key))
        .routes(routes!(usage::get_usage))
        .routes(routes!(usage::report_usage))
        .routes(routes!(usage::lease_budget))
        .routes(routes!(audit::list_audit_entries))
        .routes(routes!(audit::verify_audit_log))
        .routes(routes!(audit::export_audit_log))
        .routes(routes!(
            audit::list_audit_checkpoints,
            audit::create_audit_checkpoint
        ))
}

/// `?dry_run=true`: answer what would change, and change nothing.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DryRunParams {
    /// Plan only: answer which keys would gain or lose which scopes, and
    /// which nodes would see it; change nothing.
    pub dry_run: Option<bool>,
}

impl DryRunParams {
    /// Whether to plan only.
    pub fn planning(&self) -> bool {
        self.dry_run == Some(true)
    }
}

/// What a change would do, as a dry run answers it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PlanResponse {
    /// Always true: nothing was changed.
    pub dry_run: bool,
    /// The keys whose working scopes would change.
    pub changes: Vec<crate::ops::KeyChange>,
    /// The live nodes that would see the change.
    pub nodes: Vec<uuid::Uuid>,
    /// The audit entries it would write, by action.
    pub actions: Vec<&'static str>,
}

/// Answers a plan: 200, `dry_run: true`.
pub fn planned(plan: crate::ops::Plan) -> axum::response::Response {
    axum::Json(PlanResponse {
        dry_run: true,
        changes: plan.changes,
        nodes: plan.nodes,
        actions: plan.actions,
    })
    .into_response()
}

/// Answers a freshly made secret: 201, never cached.
pub fn created<T: serde::Serialize>(body: T) -> axum::response::Response {
    let mut response = (axum::http::StatusCode::CREATED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The OpenAPI document, as served at `/openapi.json` and committed in
/// `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// Every documented operation: its method and path template (as axum
/// matches them), e.g. `(POST, "/v1/keys/{id}/revoke")`.
pub fn documented_routes() -> Vec<(axum::http::Method, String)> {
    let spec = serde_json::to_value(openapi()).unwrap_or_default();
    let Some(paths) = spec["paths"].as_object() else {
        return Vec::new();
    };
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|operations| operations.keys())
                .filter_map(|method| method.to_uppercase().parse().ok())
                .map(move |method| (method, axum_template(path)))
        })
        .collect()
}

/// The template axum matches for a documented path: the same, but for the
/// catch-all route that OpenAPI can only spell with a plain parameter.
fn axum_template(path: &str) -> String {
    match path {
        "/v1/authz/check/{path}" => node_api::ENVOY_CHECK_ROUTE.to_owned(),
        other => other.to_owned(),
    }
}

/// The API reference page: Scalar, its script served by keyplane itself.
const DOCS_PAGE: &str = r#"<!doctype html>
<html>
<head>
<title>keyplane API</title>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
</head>
<body>
<script id="api-reference" type="application/json" data-configuration='{"withDefaultFonts": false, "telemetry": false, "showDeveloperTools": "never", "agent": {"disabled": true}}'>
$spec
</script>
<script src="/docs/scalar.js"></script>
</body>
</html>
"#;

/// Where the page's script is served.
const DOCS_SCRIPT: &str = "/docs/scalar.js";

/// Scalar's API reference (`@scalar/api-reference`, MIT), vendored; see
/// `assets/scalar/README.md`.
static SCALAR_JS_GZ: &[u8] = include_bytes!("../../assets/scalar/standalone.js.gz");

/// The page runs only keyplane's own script, talks only to keyplane, and
/// loads nothing from anywhere else. (Scalar injects its styles at run time.)
const DOCS_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Scalar's script, as stored: gzip, which every browser takes.
async fn docs_script() -> axum::response::Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CONTENT_ENCODING, "gzip"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        SCALAR_JS_GZ,
    )
        .into_response()
}

/// Every route, with the API documentation routes, bound to `state`.
pub fn router(state: AppState) -> Router {
    let (api, spec) = api_router().split_for_parts();
    let spec_json = spec.clone();
    api.route_layer(crate::request::ObserveRouteLayer(state.clone()))
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(spec_json) }),
        )
        .merge(
            Router::from(Scalar::with_url("/docs", spec).custom_html(DOCS_PAGE)).layer(
                axum::middleware::map_response(|mut response: axum::response::Response| async {
                    response.headers_mut().insert(
                        axum::http::header::CONTENT_SECURITY_POLICY,
                        axum::http::HeaderValue::from_static(DOCS_POLICY),
                    );
                    response
                }),
            ),
        )
        .route(DOCS_SCRIPT, get(docs_script))
        .merge(crate::console::router())
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .with_state(state)
}
