//! `/v1/nodes`: the nodes (Cortex nodes, gates) that may introspect keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{ForwardAuthProxy, KeyKind, KeySecret, Mode, Permission, RouteMap};
use keyplane_store::{audit, nodes};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::config::Settings;
use crate::error::{ApiError, Problem};
use crate::events::Event;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::routes::keys::created;
use crate::routes::node_api::NodeAuth;
use crate::state::AppState;

page_type!(NodePage, NodeResponse);

/// A node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeResponse {
    /// Its id (the user name for HTTP Basic introspection).
    pub id: Uuid,
    /// Its unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Its node key, masked.
    #[schema(example = "kpn_…7a1b")]
    pub masked_key: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its node key stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was retired, if it was.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it last called keyplane.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// What it last said about itself in a heartbeat, if it ever did.
    pub reported: Option<NodeReport>,
    /// Whether it reported a mode weaker than keyplane's own (e.g. a `dev`
    /// gate in front of a `prod` keyplane).
    pub mode_weaker: bool,
    /// The reverse proxy that calls forward auth for it (`nginx`, `traefik`,
    /// `caddy` or `envoy`): only that proxy's headers describe a request.
    #[schema(example = "nginx")]
    pub forward_auth_proxy: String,
    /// True when `forward_auth_proxy` is the deployment's default
    /// (`KEYPLANE_FORWARD_AUTH_PROXY`) rather than the node's own setting.
    pub forward_auth_proxy_is_default: bool,
}

/// What a node says about itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeReport {
    /// The mode it runs in.
    #[schema(value_type = String, example = "prod")]
    pub mode: Mode,
    /// Its version.
    pub version: String,
    /// The routes it serves without a key, as route rules.
    pub public_routes: Vec<String>,
    /// When it said so.
    pub at: DateTime<Utc>,
}

impl NodeResponse {
    /// The node as operators see it from a keyplane running with `settings`.
    pub fn new(row: nodes::Node, settings: &Settings) -> Self {
        let mode = settings.mode;
        let own_proxy = row
            .forward_auth_proxy
            .as_deref()
            .and_then(|p| p.parse::<ForwardAuthProxy>().ok());
        let reported = match (row.reported_mode, row.reported_at) {
            (Some(reported), Some(at)) => reported.parse().ok().map(|reported| NodeReport {
                mode: reported,
                version: row.reported_version.unwrap_or_default(),
                public_routes: row.reported_public_routes,
                at,
            }),
            _ => None,
        };
        NodeResponse {
            id: row.id,
            name: row.name,
            description: row.description,
            masked_key: row.masked,
            created_at: row.created_at,
            expires_at: row.expires_at,
            retired_at: row.retired_at,
            last_seen_at: row.last_seen_at,
            mode_weaker: reported.as_ref().is_some_and(|r| r.mode < mode),
            reported,
            forward_auth_proxy: own_proxy
                .unwrap_or(settings.forward_auth_proxy)
                .as_str()
                .to_owned(),
            forward_auth_proxy_is_default: own_proxy.is_none(),
        }
    }
}

/// A node just registered, with its node key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedNodeResponse {
    /// The node.
    #[serde(flatten)]
    pub node: NodeResponse,
    /// The whole node key. Shown only in this response.
    pub secret: String,
}

/// Registers a node.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNodeRequest {
    /// Unique, 1 to 128 characters.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The reverse proxy that calls forward auth for it: `nginx`, `traefik`,
    /// `caddy` or `envoy` (default: `KEYPLANE_FORWARD_AUTH_PROXY`).
    pub forward_auth_proxy: Option<String>,
}

/// Changes a node; absent fields stay as they are. Its id, and so every
/// key whose audience names it, never changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNodeRequest {
    /// New free text.
    pub description: Option<String>,
    /// `nginx`, `traefik`, `caddy` or `envoy`; null follows the
    /// deployment's default again.
    #[serde(default, deserialize_with = "input::present")]
    #[schema(value_type = Option<String>)]
    pub forward_auth_proxy: Option<Option<String>>,
}

/// A proxy name from a request, or None for the deployment's default.
fn proxy_setting(text: Option<&str>) -> Result<Option<String>, ApiError> {
    text.map(|text| {
        text.parse::<ForwardAuthProxy>()
            .map(|proxy| proxy.as_str().to_owned())
            .map_err(|err| ApiError::invalid("forward_auth_proxy", err.to_string()))
    })
    .transpose()
}

/// Filters for listing nodes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListNodesParams {
    /// Include retired nodes.
    pub include_retired: Option<bool>,
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const LIST: &str = "nodes";

fn not_found() -> ApiError {
    ApiError::NotFound("no node with this id".to_owned())
}

/// Register a node; its node key is in this response only.
#[utoipa::path(
    post, path = "/v1/nodes", operation_id = "create_node", tag = "nodes",
    request_body = CreateNodeRequest,
    responses(
        (status = 201, description = "Registered; `secret` is shown only here", body = CreatedNodeResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn create_node(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateNodeRequest>,
) -> Result<Response, ApiError> {
    operator.require(Permission::NodesWrite)?;
    let name = input::name("name", &body.name)?;
    let description = input::description(body.description)?;
    let forward_auth_proxy = proxy_setting(body.forward_auth_proxy.as_deref())?;
    let now = state.clock.now();
    let lifetime = Duration::seconds(
        i64::try_from(state.settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX),
    );
    let audit = Audit::new(&operator, meta, now);
    let secret = KeySecret::generate(KeyKind::Node).map_err(|e| ApiError::Internal(e.into()))?;

    let mut tx = state.db.pool().begin().await?;
    if let Some(until) = nodes::name_held_until(&mut *tx, name.as_str(), now).await? {
        return Err(ApiError::Conflict(format!(
            "a retired node of this name has a client certificate valid until {until}, which \
             would pass for the new node: choose another name (certificates bound to a node's \
             id, by a URI SAN urn:keyplane:node:<id>, never pass for another)"
        )));
    }
    let row = nodes::insert(
        &mut tx,
        &nodes::Node {
            id: Uuid::new_v4(),
            name: name.into_string(),
            description,
            digest: secret.digest().as_bytes().to_vec(),
            masked: secret.masked(),
            created_at: now,
            expires_at: now + lifetime,
            retired_at: None,
            last_seen_at: None,
            reported_mode: None,
            reported_version: None,
            reported_public_routes: Vec::new(),
            reported_at: None,
            forward_auth_proxy,
            certificate_valid_until: None,
        },
    )
    .await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "node.create",
            "node",
            row.id,
            json!({
                "name": row.name,
                "masked": row.masked,
                "forward_auth_proxy": row.forward_auth_proxy,
            }),
        ),
    )
    .await?;
    state
        .events
        .commit(tx, &[Event::Node { id: row.id }])
        .await?;
    state.credentials.set_node(secret.digest().as_bytes(), true);
    Ok(created(CreatedNodeResponse {
        node: NodeResponse::new(row, &state.settings),
        secret: secret.expose().to_owned(),
    }))
}

/// List nodes.
#[utoipa::path(
    get, path = "/v1/nodes", operation_id = "list_nodes", tag = "nodes",
    params(ListNodesParams),
    responses(
        (status = 200, description = "A page of nodes", body = NodePage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_nodes(
    State(state): State<AppState>,
    operator: Operator,
    ApiQuery(params): ApiQuery<ListNodesParams>,
) -> Result<Json<NodePage>, ApiError> {
    operator.require(Permission::NodesRead)?;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let (limit, after) = page.resolve(&state.cursors, LIST)?;
    let (rows, next) = nodes::list(
        state.db.pool(),
        params.include_retired.unwrap_or(false),
        after,
        limit,
    )
    .await?;
    Ok(Json(NodePage {
        items: rows
            .into_iter()
            .map(|row| NodeResponse::new(row, &state.settings))
            .collect(),
        next_cursor: next.map(|after| state.cursors.encode(LIST, after)),
    }))
}

/// Get one node.
#[utoipa::path(
    get, path = "/v1/nodes/{id}", operation_id = "get_node", tag = "nodes",
    params(("id" = Uuid, Path, description = "The node's id")),
    responses(
        (status = 200, description = "The node", body = NodeResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn get_node(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<NodeResponse>, ApiError> {
    operator.require(Permission::NodesRead)?;
    let row = nodes::get(state.db.pool(), id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(NodeResponse::new(row, &state.settings)))
}

/// Change a node's description or the proxy whose headers forward auth
/// believes for it. Cached answers about the node are dropped at once.
#[utoipa::path(
    patch, path = "/v1/nodes/{id}", operation_id = "update_node", tag = "nodes",
    params(("id" = Uuid, Path, description = "The node's id")),
    request_body = UpdateNodeRequest,
    responses(
        (status = 200, description = "The changed node", body = NodeResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn update_node(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateNodeRequest>,
) -> Result<Json<NodeResponse>, ApiError> {
    operator.require(Permission::NodesWrite)?;
    let description = body
        .description
        .map(|d| input::description(Some(d)))
        .transpose()?;
    let proxy = body
        .forward_auth_proxy
        .map(|p| proxy_setting(p.as_deref()))
        .transpose()?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);
    let mut tx = state.db.pool().begin().await?;
    let before = nodes::lock_live(&mut tx, id).await?.ok_or_else(not_found)?;
    let mut after = before.clone();
    if let Some(description) = description {
        after.description = description;
    }
    if let Some(proxy) = proxy {
        after.forward_auth_proxy = proxy;
    }
    let after = nodes::save(&mut tx, &after).await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "node.update",
            "node",
            id,
            json!({
                "before": { "description": before.description, "forward_auth_proxy": before.forward_auth_proxy },
                "after": { "description": after.description, "forward_auth_proxy": after.forward_auth_proxy },
            }),
        ),
    )
    .await?;
    state.events.commit(tx, &[Event::Node { id }]).await?;
    Ok(Json(NodeResponse::new(after, &state.settings)))
}

/// Retire a node: its node key stops working at once.
#[utoipa::path(
    delete, path = "/v1/nodes/{id}", operation_id = "retire_node", tag = "nodes",
    params(("id" = Uuid, Path, description = "The node's id")),
    responses(
        (status = 204, description = "Retired"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn retire_node(
    State(state): State<AppState>,
    operator: Operator,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    operator.require(Permission::NodesWrite)?;
    let now = state.clock.now();
    let audit = Audit::new(&operator, meta, now);
    let mut tx = state.db.pool().begin().await?;
    let node = nodes::retire(&mut tx, id, now)
        .await?
        .ok_or_else(not_found)?;
    audit::append(
        &mut tx,
        &audit.entry("node.retire", "node", id, json!({ "name": node.name })),
    )
    .await?;
    state.events.commit(tx, &[Event::Node { id }]).await?;
    state.credentials.set_node(&node.digest, false);
    Ok(StatusCode::NO_CONTENT)
}

/// A node's heartbeat: what it says about itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The mode it runs in.
    #[schema(value_type = String, example = "prod")]
    pub mode: String,
    /// Its version, up to 64 characters.
    pub version: String,
    /// The routes it serves without a key, as route rules
    /// (`GET /v1/models=public`); at most 64.
    #[serde(default)]
    pub public_routes: Vec<String>,
}

/// What keyplane answers a heartbeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    /// keyplane's own mode.
    #[schema(value_type = String, example = "prod")]
    pub mode: Mode,
    /// Whether the node runs weaker than keyplane (operators see it flagged).
    pub mode_weaker: bool,
}

const MAX_PUBLIC_ROUTES: usize = 64;

/// A node reports its mode, version and public routes (its node key
/// authenticates it); `GET /v1/nodes` shows the last report.
#[utoipa::path(
    post, path = "/v1/heartbeat", operation_id = "node_heartbeat", tag = "nodes",
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "Recorded", body = HeartbeatResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    ApiJson(body): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let mode: Mode = body
        .mode
        .parse()
        .map_err(|_| ApiError::invalid("mode", "expected one of dev, mixed, prod"))?;
    if body.version.is_empty()
        || body.version.len() > 64
        || body.version.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "version",
            "expected 1 to 64 printable characters",
        ));
    }
    if body.public_routes.len() > MAX_PUBLIC_ROUTES {
        return Err(ApiError::invalid("public_routes", "at most 64 routes"));
    }
    for rule in &body.public_routes {
        RouteMap::parse(rule).map_err(|err| ApiError::invalid("public_routes", err.to_string()))?;
    }
    let now = state.clock.now();
    let report = nodes::Report {
        mode: mode.as_str().to_owned(),
        version: body.version,
        public_routes: body.public_routes,
    };
    let mut tx = state.db.pool().begin().await?;
    let before = nodes::lock_reported_mode(&mut tx, node.id).await?;
    nodes::report(&mut *tx, node.id, &report, now)
        .await?
        .ok_or_else(not_found)?;
    let weaker = mode < state.settings.mode;
    if weaker {
        tracing::warn!(node = %node.id, node_mode = %mode, "a node runs in a weaker mode than keyplane");
        // Operators hear of it once per change of mode, not every heartbeat.
        if before.as_deref() != Some(mode.as_str()) {
            crate::webhooks::notify(
                &mut tx,
                "node.mode_weaker",
                serde_json::json!({
                    "node_id": node.id,
                    "node_name": node.name,
                    "node_mode": mode.as_str(),
                    "keyplane_mode": state.settings.mode.as_str(),
                }),
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Json(HeartbeatResponse {
        mode: state.settings.mode,
        mode_weaker: weaker,
    }))
}
