//! `/v1/nodes`: the nodes (Cortex nodes, gates) that may introspect keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{KeyKind, KeySecret, Permission};
use keyplane_store::{audit, nodes};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Audit, Operator, RequestMeta};
use crate::error::{ApiError, Problem};
use crate::events::Event;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::pagination::{PageParams, page_type};
use crate::routes::input;
use crate::routes::keys::created;
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
}

impl From<nodes::Node> for NodeResponse {
    fn from(row: nodes::Node) -> Self {
        NodeResponse {
            id: row.id,
            name: row.name,
            description: row.description,
            masked_key: row.masked,
            created_at: row.created_at,
            expires_at: row.expires_at,
            retired_at: row.retired_at,
            last_seen_at: row.last_seen_at,
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
    let now = state.clock.now();
    let lifetime = Duration::seconds(
        i64::try_from(state.settings.max_key_lifetime.as_secs()).unwrap_or(i64::MAX),
    );
    let audit = Audit::new(&operator, meta, now);
    let secret = KeySecret::generate(KeyKind::Node).map_err(|e| ApiError::Internal(e.into()))?;

    let mut tx = state.db.pool().begin().await?;
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
        },
    )
    .await?;
    audit::append(
        &mut tx,
        &audit.entry(
            "node.create",
            "node",
            row.id,
            json!({ "name": row.name, "masked": row.masked }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(created(CreatedNodeResponse {
        node: row.into(),
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
        items: rows.into_iter().map(Into::into).collect(),
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
    Ok(Json(row.into()))
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
    Ok(StatusCode::NO_CONTENT)
}
