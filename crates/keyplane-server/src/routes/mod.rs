//! The HTTP surface: every route, registered once through utoipa-axum so the
//! OpenAPI document is generated from the same code that serves it.

pub mod health;

use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;
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
    ),
    components(schemas(Problem)),
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// The OpenAPI document, as served at `/openapi.json` and committed in
/// `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// Every route, with the API documentation routes, bound to `state`.
pub fn router(state: AppState) -> Router {
    let (api, spec) = api_router().split_for_parts();
    let spec_json = spec.clone();
    api.route(
        "/openapi.json",
        get(move || async move { axum::Json(spec_json) }),
    )
    .merge(Scalar::with_url("/docs", spec))
    .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
    .with_state(state)
}
