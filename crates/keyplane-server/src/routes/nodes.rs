//! `/v1/nodes` and `/v1/heartbeat`: the nodes (Cortex nodes, gates) that may
//! introspect keys.

use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::ops::keys::RotateKeyRequest;
use crate::ops::nodes::{
    CreateNodeRequest, CreatedNodeResponse, HeartbeatRequest, HeartbeatResponse, NodePage,
    NodeResponse, NodeSelfResponse, UpdateNodeRequest,
};
use crate::ops::self_service::SelfRotateRequest;
use crate::ops::{Apply, Node, Operator, Ops};
use crate::pagination::PageParams;
use crate::routes::created;

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
    ops: Ops<Operator>,
    ApiJson(body): ApiJson<CreateNodeRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.create_node(Apply, body).await?))
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
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ListNodesParams>,
) -> Result<Json<NodePage>, ApiError> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let include_retired = params.include_retired.unwrap_or(false);
    Ok(Json(ops.list_nodes(include_retired, page).await?))
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
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<NodeResponse>, ApiError> {
    Ok(Json(ops.get_node(id).await?))
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
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateNodeRequest>,
) -> Result<Json<NodeResponse>, ApiError> {
    Ok(Json(ops.update_node(Apply, id, body).await?))
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
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    ops.retire_node(Apply, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a node a new node key, shown in this response only. Its id (and so
/// every key whose audience names it) stays; the old key keeps working for
/// `grace_seconds` (default 3600), and a key older still stops at once.
#[utoipa::path(
    post, path = "/v1/nodes/{id}/rotate", operation_id = "rotate_node", tag = "nodes",
    params(("id" = Uuid, Path, description = "The node's id")),
    request_body(content = RotateKeyRequest, description = "Optional"),
    responses(
        (status = 201, description = "The node with its new key; `secret` is shown only here", body = CreatedNodeResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_node(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RotateKeyRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_node(Apply, id, body).await?))
}

/// The calling node's own record, and the state of the key it presented:
/// when it expires and whether its rotation is due.
#[utoipa::path(
    get, path = "/v1/nodes/self", operation_id = "get_node_self", tag = "nodes",
    responses(
        (status = 200, description = "The node", body = NodeSelfResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn get_node_self(ops: Ops<Node>) -> Result<Json<NodeSelfResponse>, ApiError> {
    Ok(Json(ops.get_self().await?))
}

/// The calling node rotates its own key: the new key is shown in this
/// response only; the presented key keeps working for `grace_seconds`
/// (default 3600, at most a day). A node that lost the answer may ask again
/// with its previous key for ten minutes, while the new key is unused;
/// otherwise a key already rotated gets 409.
#[utoipa::path(
    post, path = "/v1/nodes/self/rotate", operation_id = "rotate_node_self", tag = "nodes",
    request_body(content = SelfRotateRequest, description = "Optional"),
    responses(
        (status = 201, description = "The node with its new key; `secret` is shown only here", body = CreatedNodeResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn rotate_node_self(
    ops: Ops<Node>,
    OptionalJson(body): OptionalJson<SelfRotateRequest>,
) -> Result<Response, ApiError> {
    Ok(created(ops.rotate_self(Apply, body).await?))
}

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
    ops: Ops<Node>,
    ApiJson(body): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    Ok(Json(ops.heartbeat(Apply, body).await?))
}
