use reqwest::Method;
use serde_json::json;

use crate::support::TestServer;

#[tokio::test]
async fn an_instance_is_registered_read_changed_and_listed() {
    let server = TestServer::start_admin().await;
    let (status, created) = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({
                "name": "jan-laptop",
                "description": "Ana's Jan",
                "labels": {"team": "research"},
                "allowed_scopes": ["inference:chat", "models:read"],
                "allowed_cidrs": ["10.1.2.3/8", "fd00::/8", "192.168.1.7"],
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["labels"]["team"], "research");
    assert_eq!(
        created["allowed_cidrs"],
        json!(["10.0.0.0/8", "fd00::/8", "192.168.1.7/32"])
    );
    let id = created["id"].as_str().unwrap();

    let (status, read) = server
        .admin(Method::GET, &format!("/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(read, created);

    let (status, changed) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{id}"),
            Some(json!({"description": "moved", "status": "suspended"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["status"], "suspended");
    assert_eq!(changed["name"], "jan-laptop");

    // Without an explicit ceiling an instance gets what plain inference needs.
    let other = server.instance("jan-desktop", &[]).await;
    let (_, body) = server
        .admin(Method::GET, &format!("/v1/instances/{other}"), None)
        .await;
    assert_eq!(body["allowed_scopes"], json!([]));
    let (_, defaulted) = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "jan-default"})),
        )
        .await;
    assert_eq!(
        defaulted["allowed_scopes"],
        json!(["inference:chat", "inference:embeddings", "models:read"])
    );

    let (_, page) = server.admin(Method::GET, "/v1/instances", None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["next_cursor"].is_null());
    let (_, suspended) = server
        .admin(Method::GET, "/v1/instances?status=suspended", None)
        .await;
    assert_eq!(suspended["items"].as_array().unwrap().len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn lists_page_with_cursors_and_refuse_a_tampered_one() {
    let server = TestServer::start_admin().await;
    for i in 0..5 {
        server
            .instance(&format!("jan-{i}"), &["inference:chat"])
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/instances?limit=2".to_owned();
    let mut cursors = Vec::new();
    loop {
        let (status, page) = server.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                cursors.push(cursor.to_owned());
                path = format!("/v1/instances?limit=2&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(seen, ["jan-0", "jan-1", "jan-2", "jan-3", "jan-4"]);

    // Flip one character of a real cursor: refused, not misread.
    let mut tampered = cursors[0].clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for cursor in [tampered.as_str(), "not-a-cursor", "AAAA"] {
        let (status, body) = server
            .admin(Method::GET, &format!("/v1/instances?cursor={cursor}"), None)
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], "invalid_cursor");
        assert_eq!(body["field"], "cursor");
    }
    // A cursor from one list is not accepted by another.
    let (status, _) = server
        .admin(
            Method::GET,
            &format!("/v1/keys?cursor={}", cursors[0]),
            None,
        )
        .await;
    assert_eq!(status, 400);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_duplicate_name_is_a_409_and_changes_nothing() {
    let server = TestServer::start_admin().await;
    server.instance("jan-1", &["inference:chat"]).await;
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "jan-1"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");
    let (_, page) = server.admin(Method::GET, "/v1/instances", None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn decommissioning_revokes_every_key_of_the_instance_and_frees_its_name() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-old", &["inference:chat"]).await;
    let first = server
        .key(
            &instance,
            json!({"name": "a", "scopes": ["inference:chat"]}),
        )
        .await;
    let second = server
        .key(
            &instance,
            json!({"name": "b", "scopes": ["inference:chat"]}),
        )
        .await;

    let (status, _) = server
        .admin(Method::DELETE, &format!("/v1/instances/{instance}"), None)
        .await;
    assert_eq!(status, 204);
    for key in [&first, &second] {
        let (_, body) = server
            .admin(
                Method::GET,
                &format!("/v1/keys/{}", key["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(body["status"], "revoked");
        assert_eq!(body["revoked_reason"], "instance decommissioned");
    }
    let (status, body) = server
        .admin(Method::GET, &format!("/v1/instances/{instance}"), None)
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("decommissioned"))
    );
    let (status, _) = server
        .admin(Method::DELETE, &format!("/v1/instances/{instance}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{instance}"),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, 409);
    // Decommissioned instances are not listed unless asked for, and their name is free.
    let (_, page) = server.admin(Method::GET, "/v1/instances", None).await;
    assert!(page["items"].as_array().unwrap().is_empty());
    server.instance("jan-old", &["inference:chat"]).await;
    server.stop().await.unwrap();
}
