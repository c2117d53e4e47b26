//! Dry runs: an operation run as a plan answers what it would change, for
//! which keys and nodes, and changes nothing; applied, the same code does
//! what the plan said.

use keyplane_domain::ManagementRole;
use std::time::Duration;

use keyplane_server::App;
use keyplane_server::events::Event;
use keyplane_server::ops::instances::{InstanceStatus, UpdateInstanceRequest};
use keyplane_server::ops::keys::{CreateKeyRequest, RevokeKeyRequest};
use keyplane_server::ops::roles::PutRoleRequest;
use keyplane_server::ops::self_service::SelfRotateRequest;
use keyplane_server::ops::{Actor, Apply, DryRun, Holder, Operator, Ops, Origin, Plan, Refusal};
use keyplane_server::state::AppState;
use reqwest::Method;
use serde_json::json;
use tokio::sync::broadcast::Receiver;
use uuid::Uuid;

use crate::support::{TestServer, admin_settings_for, fresh_database};

/// A server, and operations on its state as the bootstrap admin.
async fn start() -> (TestServer, AppState, sqlx::PgPool) {
    let url = fresh_database().await;
    let app = App::build(admin_settings_for(&url)).await.unwrap();
    let state = app.state().clone();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    (TestServer::from_app(app), state, db)
}

fn admin(state: &AppState) -> Ops<Operator> {
    let operator = Operator {
        actor: Actor::Bootstrap,
        role: ManagementRole::Admin,
    };
    Ops::new(state.clone(), operator, Origin::default())
}

/// What a plan-worthy database holds: audit entries, revocations, keys,
/// and the rows an operation might have touched.
async fn snapshot(db: &sqlx::PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for query in [
        "select count(*) from audit_log",
        "select count(*) from revocations",
        "select count(*) from api_keys",
        "select count(*) from api_keys where revoked_at is not null",
        "select count(*) from instances where status = 'active'",
        "select count(*) from webhook_deliveries",
    ] {
        counts.push(sqlx::query_scalar(query).fetch_one(db).await.unwrap());
    }
    counts
}

/// Waits until every event published so far has reached `events`, echoes
/// that PostgreSQL delivers later by `NOTIFY` included, and answers what
/// arrived first. It changes the `barrier` instance and waits for both copies
/// of that change's event: PostgreSQL delivers notifications in commit order,
/// so once the echo is in, every earlier one is too.
async fn settle(server: &TestServer, barrier: &str, events: &mut Receiver<Event>) -> Vec<Event> {
    let (status, body) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{barrier}"),
            Some(json!({"description": Uuid::new_v4().to_string()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let marker = Event::Instance {
        id: barrier.parse().unwrap(),
    };
    let mut before = Vec::new();
    let mut seen = 0;
    while seen < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the barrier's events arrive")
            .expect("the event channel stays open");
        if event == marker {
            seen += 1;
        } else if seen == 0 {
            before.push(event);
        }
    }
    before
}

fn id(value: &serde_json::Value) -> Uuid {
    value["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_role_change_planned_names_every_key_that_carries_it_and_changes_nothing() {
    let (server, state, db) = start().await;
    let instance = server
        .instance(
            "jan-1",
            &["inference:chat", "inference:embeddings", "models:read"],
        )
        .await;
    let (status, _) = server
        .admin(
            Method::PUT,
            "/v1/roles/chatter",
            Some(json!({"scopes": ["inference:chat", "models:read"]})),
        )
        .await;
    assert_eq!(status, 201);
    let carrier = server
        .key(&instance, json!({"name": "a", "roles": ["chatter"]}))
        .await;
    let own_scope_too = server
        .key(
            &instance,
            json!({"name": "b", "roles": ["chatter"], "scopes": ["models:read"]}),
        )
        .await;
    let unrelated = server
        .key(
            &instance,
            json!({"name": "c", "scopes": ["inference:chat"]}),
        )
        .await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gpu-1"})))
        .await;

    let barrier = server.instance("barrier", &[]).await;

    let ops = admin(&state);
    let mut events = state.events.subscribe();
    settle(&server, &barrier, &mut events).await;
    let before = snapshot(&db).await;
    let narrower = || PutRoleRequest {
        description: None,
        scopes: vec![
            "inference:chat".to_owned(),
            "inference:embeddings".to_owned(),
        ],
    };
    let plan: Plan = ops.put_role(DryRun, "chatter", narrower()).await.unwrap();

    let mut expected = vec![
        (
            id(&carrier),
            vec!["inference:embeddings"],
            vec!["models:read"],
        ),
        // Its own models:read stays: it loses nothing, gains embeddings.
        (id(&own_scope_too), vec!["inference:embeddings"], vec![]),
    ];
    expected.sort();
    let mut got: Vec<(Uuid, Vec<&str>, Vec<&str>)> = plan
        .changes
        .iter()
        .map(|c| {
            (
                c.key_id,
                c.gains.iter().map(String::as_str).collect(),
                c.loses.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, expected, "{plan:?}");
    assert!(
        plan.changes.iter().all(|c| c.key_id != id(&unrelated)),
        "a key without the role is not in the plan"
    );
    assert!(
        plan.changes
            .iter()
            .all(|c| c.instance_id.to_string() == instance)
    );
    assert_eq!(plan.nodes, vec![id(&node)], "keys for any node: every node");
    assert_eq!(plan.actions, vec!["role.replace"]);
    assert_eq!(snapshot(&db).await, before, "a dry run writes nothing");
    assert_eq!(
        settle(&server, &barrier, &mut events).await,
        vec![],
        "a dry run announces nothing"
    );
    let (_, role) = server.admin(Method::GET, "/v1/roles", None).await;
    assert_eq!(
        role["items"][0]["scopes"],
        json!(["inference:chat", "models:read"])
    );

    // Applied, the same change does what the plan said.
    ops.put_role(Apply, "chatter", narrower()).await.unwrap();
    let (_, key) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&carrier)), None)
        .await;
    assert_eq!(
        key["effective_scopes"],
        json!(["inference:chat", "inference:embeddings"])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_suspension_planned_lists_the_keys_that_would_stop_and_the_nodes_they_are_for() {
    let (server, state, db) = start().await;
    let instance = server.instance("jan-2", &["inference:chat"]).await;
    let (_, gpu) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gpu-1"})))
        .await;
    let (_, _cpu) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cpu-1"})))
        .await;
    let pinned = server
        .key(
            &instance,
            json!({"name": "pinned", "scopes": ["inference:chat"], "audience": ["gpu-1"]}),
        )
        .await;
    let revoked = server
        .key(
            &instance,
            json!({"name": "gone", "scopes": ["inference:chat"]}),
        )
        .await;
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", id(&revoked)),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let ops = admin(&state);
    let before = snapshot(&db).await;
    let suspend = || UpdateInstanceRequest {
        name: None,
        description: None,
        labels: None,
        allowed_scopes: None,
        allowed_cidrs: None,
        status: Some(InstanceStatus::Suspended),
        self_rotation: None,
        limits: None,
        models: None,
    };
    let plan = ops
        .update_instance(DryRun, instance.parse().unwrap(), suspend())
        .await
        .unwrap();
    assert_eq!(plan.changes.len(), 1, "only the working key: {plan:?}");
    assert_eq!(plan.changes[0].key_id, id(&pinned));
    assert_eq!(plan.changes[0].loses, vec!["inference:chat"]);
    assert!(plan.changes[0].gains.is_empty());
    assert_eq!(plan.nodes, vec![id(&gpu)], "only the node the key is for");
    assert_eq!(plan.actions, vec!["instance.suspend"]);
    assert_eq!(snapshot(&db).await, before, "still active, nothing revoked");

    // What a dry run refuses, applying refuses the same way.
    let decommissioned = server.instance("jan-3", &["inference:chat"]).await;
    let (status, _) = server
        .admin(
            Method::DELETE,
            &format!("/v1/instances/{decommissioned}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let refused = ops
        .update_instance(DryRun, decommissioned.parse().unwrap(), suspend())
        .await
        .unwrap_err();
    assert!(matches!(refused, Refusal::Conflict(_)), "{refused:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_planned_is_never_made_and_its_secret_never_leaves() {
    let (server, state, db) = start().await;
    let instance = server.instance("jan-4", &["inference:chat"]).await;
    let ops = admin(&state);
    let before = snapshot(&db).await;
    let request = CreateKeyRequest {
        name: "planned".to_owned(),
        scopes: Some(vec!["inference:chat".to_owned()]),
        roles: None,
        expires_in: None,
        expires_at: None,
        audience: None,
        rotate_after: None,
        limits: None,
        models: None,
    };
    // The type says it: a dry run answers a Plan, never the created key.
    let plan: Plan = ops
        .issue_key(DryRun, instance.parse().unwrap(), request)
        .await
        .unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].gains, vec!["inference:chat"]);
    assert_eq!(plan.actions, vec!["key.create"]);
    assert_eq!(snapshot(&db).await, before);

    // Revoking, planned: the key loses everything; nothing is revoked.
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let before = snapshot(&db).await;
    let plan = ops
        .revoke_key(DryRun, id(&key), RevokeKeyRequest { reason: None })
        .await
        .unwrap();
    assert_eq!(plan.changes[0].loses, vec!["inference:chat"]);
    assert_eq!(plan.actions, vec!["key.revoke"]);
    assert_eq!(snapshot(&db).await, before);
    // And a policy refusal is the same refusal either way.
    let too_wide = ops
        .issue_key(
            DryRun,
            instance.parse().unwrap(),
            CreateKeyRequest {
                name: "wide".to_owned(),
                scopes: Some(vec!["models:write".to_owned()]),
                roles: None,
                expires_in: None,
                expires_at: None,
                audience: None,
                rotate_after: None,
                limits: None,
                models: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&too_wide, Refusal::Policy { field, .. } if field == "scopes"),
        "{too_wide:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_planned_self_rotation_spends_none_of_the_rotation_budget() {
    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.limits.self_rotations_per_hour = 1;
    let app = App::build(settings).await.unwrap();
    let state = app.state().clone();
    let server = TestServer::from_app(app);
    let instance = server.instance("jan-5", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let holder = || {
        let secret = key["secret"].as_str().unwrap();
        let key = keyplane_domain::KeySecret::parse(secret).unwrap();
        Ops::new(state.clone(), Holder { key }, Origin::default())
    };
    for _ in 0..3 {
        let plan = holder()
            .rotate_self(DryRun, SelfRotateRequest::default())
            .await
            .unwrap();
        assert_eq!(plan.actions, vec!["key.rotate"]);
    }
    // The one rotation the budget allows is still there.
    let rotated = holder()
        .rotate_self(Apply, SelfRotateRequest::default())
        .await
        .unwrap();
    assert_eq!(rotated.key.rotated_from, Some(id(&key)));
    server.stop().await.unwrap();
}
