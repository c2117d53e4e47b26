//! The nodes (Cortex nodes, gates) that may introspect keys, and what they
//! report of themselves.

use chrono::{DateTime, Duration, Utc};
use keyplane_domain::{ForwardAuthProxy, KeyKind, KeySecret, Mode, Permission, RouteMap};
use keyplane_store::nodes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::Settings;
use crate::events::Event;
use crate::ops::keys::{RotateKeyRequest, max_lifetime_seconds};
use crate::ops::rotation::{self, MAX_HOLDER_GRACE_SECONDS, RotatedBy};
use crate::ops::self_service::SelfRotateRequest;
use crate::ops::{Actor, Change, Credential, Node, Operator, Ops, Refusal, Run, input};
use crate::pagination::{PageParams, page_type};

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
    /// When its current node key was made.
    pub key_created_at: DateTime<Utc>,
    /// When its node key should be rotated: four fifths into its life.
    pub rotation_due_at: DateTime<Utc>,
    /// When the node first used its current key: after a rotation, when it
    /// picked the new key up.
    pub key_used_at: Option<DateTime<Utc>>,
    /// When its key was last rotated, if ever.
    pub rotated_at: Option<DateTime<Utc>>,
    /// The key it had before, while that still works.
    pub previous_key: Option<PreviousNodeKey>,
}

/// A node's previous key, working until the end of its grace window.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousNodeKey {
    /// The key, masked.
    #[schema(example = "kpn_…7a1b")]
    pub masked_key: String,
    /// When it stops working.
    pub until: DateTime<Utc>,
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
            key_created_at: row.key_created_at,
            rotation_due_at: rotation::due_at(row.key_created_at, row.expires_at, None),
            key_used_at: row.key_used_at,
            rotated_at: row.rotated_at,
            previous_key: match (row.previous_masked, row.previous_until) {
                (Some(masked_key), Some(until)) => Some(PreviousNodeKey { masked_key, until }),
                _ => None,
            },
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
    /// The node's own credential, as keyplane sees it.
    #[serde(flatten)]
    pub key: NodeKeyState,
}

/// The state of the node key a node presented, by keyplane's clock.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeKeyState {
    /// `current`, or `previous` (replaced by a rotation, working until
    /// `key_expires_at`); `certificate` when the node sent no key;
    /// `replaced` for a key that stopped a moment ago.
    #[schema(example = "current")]
    pub presented_key: &'static str,
    /// When the presented key stops working.
    pub key_expires_at: DateTime<Utc>,
    /// True when the node should rotate its key now (`POST
    /// /v1/nodes/self/rotate`): its current key is past its rotation date.
    pub rotation_due: bool,
}

/// A node's own record, read with its node key.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeSelfResponse {
    /// The node.
    #[serde(flatten)]
    pub node: NodeResponse,
    /// Its key.
    #[serde(flatten)]
    pub key: NodeKeyState,
}

const MAX_PUBLIC_ROUTES: usize = 64;
const LIST: &str = "nodes";

fn not_found() -> Refusal {
    Refusal::NotFound("no node with this id".to_owned())
}

/// A proxy name from input, or None for the deployment's default.
fn proxy_setting(text: Option<&str>) -> Result<Option<String>, Refusal> {
    text.map(|text| {
        text.parse::<ForwardAuthProxy>()
            .map(|proxy| proxy.as_str().to_owned())
            .map_err(|err| Refusal::invalid("forward_auth_proxy", err.to_string()))
    })
    .transpose()
}

/// Whether a stored digest is `digest` (compared in constant time).
fn same(stored: &[u8], digest: &[u8; 32]) -> bool {
    stored.ct_eq(digest.as_slice()).into()
}

/// Which of a node's keys `presented` (a digest; None for a certificate) is.
fn key_state(row: &nodes::Node, presented: Option<&[u8; 32]>, now: DateTime<Utc>) -> NodeKeyState {
    let current = NodeKeyState {
        presented_key: "current",
        key_expires_at: row.expires_at,
        rotation_due: now >= rotation::due_at(row.key_created_at, row.expires_at, None),
    };
    match presented {
        None => NodeKeyState {
            presented_key: "certificate",
            ..current
        },
        Some(digest)
            if row
                .previous_digest
                .as_deref()
                .is_some_and(|d| same(d, digest)) =>
        {
            NodeKeyState {
                presented_key: "previous",
                key_expires_at: row.previous_until.unwrap_or(now),
                rotation_due: false,
            }
        }
        Some(digest) if same(&row.digest, digest) => current,
        // A key replaced a moment ago (a cached answer not yet dropped).
        Some(_) => NodeKeyState {
            presented_key: "replaced",
            key_expires_at: now,
            rotation_due: false,
        },
    }
}

/// Gives the node of `row` (locked within `change`) a new key, answered
/// once. The key it replaces works `grace_seconds` more, never past its own
/// expiry; with `replace_unused`, the current key (unused, made by the
/// node's own rotation whose answer it lost) is replaced instead and the
/// previous key stays as it is.
async fn rekey<R: Run>(
    change: &mut Change<'_, R>,
    settings: &Settings,
    row: &nodes::Node,
    grace_seconds: i64,
    by: RotatedBy,
    replace_unused: bool,
) -> Result<CreatedNodeResponse, Refusal> {
    let now = change.at();
    let secret = KeySecret::generate(KeyKind::Node).map_err(|e| Refusal::Internal(e.into()))?;
    let lifetime = Duration::seconds(max_lifetime_seconds(settings));
    let rekey = nodes::Rekey {
        digest: secret.digest().as_bytes().to_vec(),
        masked: secret.masked(),
        expires_at: now + lifetime,
        by: by.as_str(),
        previous_until: (grace_seconds > 0)
            .then(|| rotation::grace_until(now, grace_seconds, row.expires_at)),
    };
    let after = if replace_unused {
        nodes::replace_unused_key(change.db(), row.id, &rekey, now).await?
    } else {
        nodes::rekey(change.db(), row.id, &rekey, now).await?
    };
    change
        .audit(
            "node.rotate",
            "node",
            row.id,
            json!({
                "masked": row.masked,
                "successor_masked": after.masked,
                "grace_seconds": grace_seconds,
                "previous_until": after.previous_until,
                "by": by.as_str(),
                "replaced_unused_key": replace_unused,
            }),
        )
        .await?;
    change.publish(Event::Node { id: row.id });
    change.credential(secret.digest().as_bytes(), Credential::Node, true);
    let still_working = after.previous_digest.as_deref();
    for stopped in [Some(&row.digest), row.previous_digest.as_ref()]
        .into_iter()
        .flatten()
        .filter(|digest| Some(digest.as_slice()) != still_working)
    {
        change.credential(stopped, Credential::Node, false);
    }
    Ok(CreatedNodeResponse {
        node: NodeResponse::new(after, settings),
        secret: secret.expose().to_owned(),
    })
}

impl Ops<Operator> {
    /// Registers a node; its node key is in the answer only.
    pub async fn create_node<R: Run>(
        &self,
        run: R,
        input: CreateNodeRequest,
    ) -> Result<R::Answer<CreatedNodeResponse>, Refusal> {
        self.actor.require(Permission::NodesWrite)?;
        let name = input::name("name", &input.name)?;
        let description = input::description(input.description)?;
        let forward_auth_proxy = proxy_setting(input.forward_auth_proxy.as_deref())?;
        let now = self.now();
        let lifetime = Duration::seconds(max_lifetime_seconds(&self.state.settings));
        let secret = KeySecret::generate(KeyKind::Node).map_err(|e| Refusal::Internal(e.into()))?;

        let mut change = self.begin(run, now).await?;
        if let Some(until) = nodes::name_held_until(change.db(), name.as_str(), now).await? {
            return Err(Refusal::Conflict(format!(
                "a retired node of this name has a client certificate valid until {until}, which \
                 would pass for the new node: choose another name (certificates bound to a node's \
                 id, by a URI SAN urn:keyplane:node:<id>, never pass for another)"
            )));
        }
        let row = nodes::insert(
            change.db(),
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
                key_created_at: now,
                key_used_at: None,
                rotated_at: None,
                rotated_by: None,
                previous_digest: None,
                previous_masked: None,
                previous_until: None,
            },
        )
        .await?;
        change
            .audit(
                "node.create",
                "node",
                row.id,
                json!({
                    "name": row.name,
                    "masked": row.masked,
                    "forward_auth_proxy": row.forward_auth_proxy,
                }),
            )
            .await?;
        change.publish(Event::Node { id: row.id });
        change.credential(secret.digest().as_bytes(), Credential::Node, true);
        change
            .finish(CreatedNodeResponse {
                node: NodeResponse::new(row, &self.state.settings),
                secret: secret.expose().to_owned(),
            })
            .await
    }

    /// A page of nodes; retired ones too when asked for.
    pub async fn list_nodes(
        &self,
        include_retired: bool,
        page: PageParams,
    ) -> Result<NodePage, Refusal> {
        self.actor.require(Permission::NodesRead)?;
        let cursors = &self.state.cursors;
        let (limit, after) = page.resolve(cursors, LIST)?;
        let (rows, next) = nodes::list(self.state.db.pool(), include_retired, after, limit).await?;
        Ok(NodePage {
            items: rows
                .into_iter()
                .map(|row| NodeResponse::new(row, &self.state.settings))
                .collect(),
            next_cursor: next.map(|after| cursors.encode(LIST, after)),
        })
    }

    /// One node.
    pub async fn get_node(&self, id: Uuid) -> Result<NodeResponse, Refusal> {
        self.actor.require(Permission::NodesRead)?;
        let row = nodes::get(self.state.db.pool(), id)
            .await?
            .ok_or_else(not_found)?;
        Ok(NodeResponse::new(row, &self.state.settings))
    }

    /// Changes a node's description, or the proxy whose headers forward
    /// auth believes for it. Cached answers about the node are dropped.
    pub async fn update_node<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: UpdateNodeRequest,
    ) -> Result<R::Answer<NodeResponse>, Refusal> {
        self.actor.require(Permission::NodesWrite)?;
        let description = input
            .description
            .map(|d| input::description(Some(d)))
            .transpose()?;
        let proxy = input
            .forward_auth_proxy
            .map(|p| proxy_setting(p.as_deref()))
            .transpose()?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let before = nodes::lock_live(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        let mut after = before.clone();
        if let Some(description) = description {
            after.description = description;
        }
        if let Some(proxy) = proxy {
            after.forward_auth_proxy = proxy;
        }
        let after = nodes::save(change.db(), &after).await?;
        change
            .audit(
                "node.update",
                "node",
                id,
                json!({
                    "before": { "description": before.description, "forward_auth_proxy": before.forward_auth_proxy },
                    "after": { "description": after.description, "forward_auth_proxy": after.forward_auth_proxy },
                }),
            )
            .await?;
        change.publish(Event::Node { id });
        change
            .finish(NodeResponse::new(after, &self.state.settings))
            .await
    }

    /// Gives a node a new key, answered once; its id (and so every key whose
    /// audience names it) stays. The old key works for the grace window; a
    /// key older still, from an earlier rotation, stops at once.
    pub async fn rotate_node<R: Run>(
        &self,
        run: R,
        id: Uuid,
        input: RotateKeyRequest,
    ) -> Result<R::Answer<CreatedNodeResponse>, Refusal> {
        self.actor.require(Permission::NodesWrite)?;
        let settings = &self.state.settings;
        let grace = rotation::grace_seconds(input.grace_seconds, max_lifetime_seconds(settings))?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let row = nodes::lock_live(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        let rotated = rekey(
            &mut change,
            settings,
            &row,
            grace,
            RotatedBy::Operator,
            false,
        )
        .await?;
        change.finish(rotated).await
    }

    /// Retires a node: its node key stops working at once.
    pub async fn retire_node<R: Run>(&self, run: R, id: Uuid) -> Result<R::Answer<()>, Refusal> {
        self.actor.require(Permission::NodesWrite)?;
        let now = self.now();
        let mut change = self.begin(run, now).await?;
        let node = nodes::retire(change.db(), id, now)
            .await?
            .ok_or_else(not_found)?;
        change
            .audit("node.retire", "node", id, json!({ "name": node.name }))
            .await?;
        change.publish(Event::Node { id });
        change.credential(&node.digest, Credential::Node, false);
        if let Some(previous) = &node.previous_digest {
            change.credential(previous, Credential::Node, false);
        }
        change.finish(()).await
    }
}

impl Ops<Node> {
    /// The node's own record and the state of the key it presented.
    pub async fn get_self(&self) -> Result<NodeSelfResponse, Refusal> {
        let row = nodes::get(self.state.db.pool(), self.actor.id)
            .await?
            .filter(|row| row.retired_at.is_none())
            .ok_or_else(not_found)?;
        let key = key_state(&row, self.actor.key.as_ref(), self.now());
        Ok(NodeSelfResponse {
            node: NodeResponse::new(row, &self.state.settings),
            key,
        })
    }

    /// The node rotates its own key: answers the new key once; the key it
    /// presented works for the grace window. A node presenting its previous
    /// key lost the answer to an earlier rotation: that rotation is made
    /// again only where [`rotation::may_retry`] allows.
    pub async fn rotate_self<R: Run>(
        &self,
        run: R,
        input: SelfRotateRequest,
    ) -> Result<R::Answer<CreatedNodeResponse>, Refusal> {
        let grace = rotation::grace_seconds(input.grace_seconds, MAX_HOLDER_GRACE_SECONDS)?;
        let now = self.now();
        let id = self.actor.id;
        let mut change = self.change(run, &Actor::Node(id), now).await?;
        let row = nodes::lock_live(change.db(), id)
            .await?
            .ok_or_else(not_found)?;
        let state = key_state(&row, self.actor.key.as_ref(), now);
        let refused = |refusal: Refusal| {
            let details =
                json!({ "masked": row.masked, "by": "holder", "refused": refusal.to_string() });
            (details, refusal)
        };
        let retry = state.presented_key == "previous";
        let allowed = if state.presented_key == "replaced" {
            Err(Refusal::Conflict(
                "this node key has been replaced: use the node's current key".to_owned(),
            ))
        } else if retry {
            rotation::may_retry(
                row.rotated_by.as_deref(),
                row.rotated_at,
                row.key_used_at.is_some(),
                now,
            )
        } else if state.key_expires_at <= now {
            Err(Refusal::Conflict(
                "this node key no longer works".to_owned(),
            ))
        } else {
            Ok(())
        };
        // A plan rotates nothing, so it spends none of the rotation budget.
        let allowed = allowed.and_then(|()| match R::DRY {
            true => Ok(()),
            false => self
                .state
                .limits
                .check_self_rotation(id)
                .map_err(Refusal::from),
        });
        if let Err(refusal) = allowed {
            let (details, refusal) = refused(refusal);
            return Err(change
                .refuse("node.rotate", "node", id, details, refusal)
                .await);
        }
        let settings = &self.state.settings;
        let rotated = rekey(&mut change, settings, &row, grace, RotatedBy::Holder, retry).await?;
        change.finish(rotated).await
    }

    /// Records what the node says of itself: its mode, version and public
    /// routes. Operators hear (by webhook) of a node weaker than keyplane,
    /// once per change of its mode.
    pub async fn heartbeat<R: Run>(
        &self,
        run: R,
        report: HeartbeatRequest,
    ) -> Result<R::Answer<HeartbeatResponse>, Refusal> {
        let node = &self.actor;
        let mode: Mode = report
            .mode
            .parse()
            .map_err(|_| Refusal::invalid("mode", "expected one of dev, mixed, prod"))?;
        if report.version.is_empty()
            || report.version.len() > 64
            || report.version.chars().any(char::is_control)
        {
            return Err(Refusal::invalid(
                "version",
                "expected 1 to 64 printable characters",
            ));
        }
        if report.public_routes.len() > MAX_PUBLIC_ROUTES {
            return Err(Refusal::invalid("public_routes", "at most 64 routes"));
        }
        for rule in &report.public_routes {
            RouteMap::parse(rule)
                .map_err(|err| Refusal::invalid("public_routes", err.to_string()))?;
        }
        let own_mode = self.state.settings.mode;
        let now = self.now();
        let stored = nodes::Report {
            mode: mode.as_str().to_owned(),
            version: report.version,
            public_routes: report.public_routes,
        };
        let mut change = self.change(run, &Actor::Node(node.id), now).await?;
        let before = nodes::lock_reported_mode(change.db(), node.id).await?;
        let row = nodes::report(change.db(), node.id, &stored, now)
            .await?
            .ok_or_else(not_found)?;
        let weaker = mode < own_mode;
        if weaker {
            tracing::warn!(node = %node.id, node_mode = %mode, "a node runs in a weaker mode than keyplane");
            if before.as_deref() != Some(mode.as_str()) {
                change
                    .notify(
                        "node.mode_weaker",
                        json!({
                            "node_id": node.id,
                            "node_name": node.name,
                            "node_mode": mode.as_str(),
                            "keyplane_mode": own_mode.as_str(),
                        }),
                    )
                    .await?;
            }
        }
        change
            .finish(HeartbeatResponse {
                mode: own_mode,
                mode_weaker: weaker,
                key: key_state(&row, node.key.as_ref(), now),
            })
            .await
    }
}
