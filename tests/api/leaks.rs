//! The leak test: a whole scenario through the real binary, capturing every
//! log line (at debug level), every error body, the audit log and the
//! metrics, and failing if any whole key of any type appears in any of them.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::idp::{Browser, CLIENT_ID, CLIENT_SECRET, Idp, Person, set_cookie};
use crate::support::{
    BOOTSTRAP, Gate, MASTER_KEY, eventually, free_port, fresh_database, stub_upstream,
};

#[tokio::test]
async fn no_whole_key_appears_in_logs_errors_audit_or_metrics() {
    let url = fresh_database().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = Idp::start(&format!("{base}/v1/auth/oidc/callback")).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .arg("serve")
        .env("KEYPLANE_OIDC_ISSUER", &idp.issuer)
        .env("KEYPLANE_OIDC_CLIENT_ID", CLIENT_ID)
        .env("KEYPLANE_OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env(
            "KEYPLANE_OIDC_REDIRECT_URL",
            format!("{base}/v1/auth/oidc/callback"),
        )
        .env("KEYPLANE_OIDC_ROLE_MAP", "keyplane-admins=admin")
        .env("KEYPLANE_OIDC_REQUIRE_AMR", "mfa,otp")
        .env("DATABASE_URL", &url)
        .env("KEYPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYPLANE_BOOTSTRAP_TOKEN", BOOTSTRAP)
        .env("KEYPLANE_MASTER_KEY", MASTER_KEY)
        .env("KEYPLANE_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(60), "keyplane to be ready", || {
        let request = client.get(format!("{base}/readyz")).send();
        async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
    })
    .await;

    let mut bodies: Vec<String> = Vec::new();
    let mut secrets: Vec<String> = vec![
        BOOTSTRAP.to_owned(),
        MASTER_KEY.to_owned(),
        CLIENT_SECRET.to_owned(),
    ];
    macro_rules! send {
        ($token:expr, $method:expr, $path:expr, $body:expr) => {{
            let request = client
                .request($method, format!("{base}{}", $path))
                .bearer_auth($token);
            let request = match $body {
                Some(body) => request.json(&body),
                None => request,
            };
            let text = request.send().await.unwrap().text().await.unwrap();
            let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
            // A key is shown once, in the answer that creates it; that answer
            // is kept with the key cut out, everything else whole.
            match value.as_object().filter(|o| o.contains_key("secret")) {
                Some(object) => {
                    let mut object = object.clone();
                    object.remove("secret");
                    bodies.push(Value::Object(object).to_string());
                }
                None => bodies.push(text),
            }
            value
        }};
    }

    let admin = send!(
        BOOTSTRAP,
        Method::POST,
        "/v1/admin-keys",
        Some(json!({"name": "ops", "role": "admin"}))
    );
    let admin_key = admin["secret"].as_str().unwrap().to_owned();
    let node = send!(
        &admin_key,
        Method::POST,
        "/v1/nodes",
        Some(json!({"name": "cortex"}))
    );
    let node_key = node["secret"].as_str().unwrap().to_owned();
    let instance = send!(
        &admin_key,
        Method::POST,
        "/v1/instances",
        Some(json!({"name": "jan"}))
    );
    let instance_id = instance["id"].as_str().unwrap().to_owned();
    let first = send!(
        &admin_key,
        Method::POST,
        format!("/v1/instances/{instance_id}/keys"),
        Some(json!({"name": "k", "roles": ["inference-client"]}))
    );
    let first_key = first["secret"].as_str().unwrap().to_owned();
    let second = send!(
        &admin_key,
        Method::POST,
        format!("/v1/keys/{}/rotate", first["id"].as_str().unwrap()),
        Some(json!({"grace_seconds": 30}))
    );
    let second_key = second["secret"].as_str().unwrap().to_owned();
    secrets.extend([
        admin_key.clone(),
        node_key.clone(),
        first_key.clone(),
        second_key.clone(),
    ]);

    // The fleet's own keys rotate: a node its own and by an operator, an
    // admin key its own and another's.
    let node_rotated = send!(
        &node_key,
        Method::POST,
        "/v1/nodes/self/rotate",
        None::<Value>
    );
    let node_second = node_rotated["secret"].as_str().unwrap().to_owned();
    send!(&node_second, Method::GET, "/v1/nodes/self", None::<Value>);
    let node_third = send!(
        &admin_key,
        Method::POST,
        format!("/v1/nodes/{}/rotate", node["id"].as_str().unwrap()),
        Some(json!({"grace_seconds": 60}))
    );
    // From here on the node uses its newest key.
    let node_key = node_third["secret"].as_str().unwrap().to_owned();
    let spare = send!(
        &admin_key,
        Method::POST,
        "/v1/admin-keys",
        Some(json!({"name": "spare", "role": "viewer"}))
    );
    let spare_key = spare["secret"].as_str().unwrap().to_owned();
    let spare_rotated = send!(
        &admin_key,
        Method::POST,
        format!("/v1/admin-keys/{}/rotate", spare["id"].as_str().unwrap()),
        None::<Value>
    );
    let own_rotated = send!(
        &admin_key,
        Method::POST,
        "/v1/admin-keys/self/rotate",
        None::<Value>
    );
    // The old key asks again (refused: its successor is fresh, but it was
    // never lost), and the new one reads itself.
    let own_second = own_rotated["secret"].as_str().unwrap().to_owned();
    send!(
        &own_second,
        Method::GET,
        "/v1/admin-keys/self",
        None::<Value>
    );
    secrets.extend([
        node_second,
        node_key.clone(),
        spare_key,
        spare_rotated["secret"].as_str().unwrap().to_owned(),
        own_second,
    ]);

    // Self-service: an enrollment, the holder's own view and rotation, and a
    // webhook whose signing secret is shown once.
    let token = send!(
        &admin_key,
        Method::POST,
        "/v1/enrollment-tokens",
        Some(json!({"name": "fleet", "roles": ["inference-client"], "uses": 2}))
    );
    let enrollment_token = token["secret"].as_str().unwrap().to_owned();
    let enrolled = send!(
        &enrollment_token,
        Method::POST,
        "/v1/enroll",
        Some(json!({"name": "jan-enrolled"}))
    );
    let enrolled_key = enrolled["secret"].as_str().unwrap().to_owned();
    send!(&enrolled_key, Method::GET, "/v1/self", None::<Value>);
    let rotated = send!(
        &enrolled_key,
        Method::POST,
        "/v1/self/rotate",
        None::<Value>
    );
    let rotated_key = rotated["secret"].as_str().unwrap().to_owned();
    // A spent-for-nothing enrollment (bad body) and a key in the wrong place.
    send!(
        &enrollment_token,
        Method::POST,
        "/v1/enroll",
        Some(json!({"name": enrolled_key}))
    );
    send!(
        &enrolled_key,
        Method::POST,
        "/v1/enroll",
        Some(json!({"name": "x"}))
    );
    let hook = send!(
        &admin_key,
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["key.revoked", "key.rotated"]}))
    );
    let webhook_secret = hook["secret"].as_str().unwrap().to_owned();
    send!(
        &admin_key,
        Method::GET,
        format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
        None::<Value>
    );
    send!(
        &admin_key,
        Method::GET,
        "/v1/enrollment-tokens",
        None::<Value>
    );
    secrets.extend([
        enrollment_token.clone(),
        enrolled_key.clone(),
        rotated_key.clone(),
        webhook_secret.trim_start_matches("whsec_").to_owned(),
    ]);

    // Introspection, good and bad, and forward auth.
    for token in [
        first_key.as_str(),
        second_key.as_str(),
        "kpi_garbage",
        &first_key[..30],
    ] {
        let text = client
            .post(format!("{base}/v1/introspect"))
            .bearer_auth(&node_key)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        bodies.push(text);
    }
    let forward = client
        .get(format!("{base}/v1/authz/check"))
        .header("x-keyplane-node-key", &node_key)
        .header("x-original-method", "POST")
        .header("x-original-uri", "/v1/embeddings")
        .header("x-real-ip", "127.0.0.1")
        .bearer_auth(&second_key)
        .send()
        .await
        .unwrap();
    bodies.push(forward.text().await.unwrap());

    // Gate traffic: keyplane-gate in front of a stub upstream, logging at debug.
    let upstream_url = stub_upstream().await;
    let upstream_key = "sk-upstream-0123456789abcdef0123456789abcdef";
    secrets.push(upstream_key.to_owned());
    let gate_log = tempfile::NamedTempFile::new().unwrap();
    let mut gate = Gate::start(
        &[
            ("KEYPLANE_URL", &base),
            ("KEYPLANE_NODE_KEY", &node_key),
            ("KEYPLANE_GATE_UPSTREAM", &upstream_url),
            ("KEYPLANE_GATE_UPSTREAM_KEY", upstream_key),
            ("RUST_LOG", "debug"),
        ],
        gate_log.reopen().unwrap().into(),
    )
    .await;
    let gate_base = gate.base.clone();
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for (token, path) in [
        (first_key.clone(), "/v1/chat/completions".to_owned()),
        (format!("{first_key}x"), "/v1/chat/completions".to_owned()),
        (
            second_key.clone(),
            format!("/v1/chat/completions?key={second_key}"),
        ),
        (first_key.clone(), format!("/v1/models/{first_key}")),
        (node_key.clone(), "/v1/embeddings".to_owned()),
        (String::new(), "/v1/chat/completions".to_owned()),
    ] {
        let response = client
            .post(format!("{gate_base}{path}"))
            .bearer_auth(&token)
            .json(&chat)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        bodies.push(format!("{:?}", response.headers()));
        bodies.push(response.text().await.unwrap());
    }
    assert_eq!(
        statuses,
        [200, 401, 200, 403, 401, 401],
        "the gate's answers"
    );
    bodies.push(
        client
            .get(format!("{gate_base}/_keyplane/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    gate.stop();
    let gate_logs = std::fs::read_to_string(gate_log.path()).unwrap();
    assert!(gate_logs.contains("refused"), "the gate's log was captured");
    bodies.push(gate_logs);

    // People: a sign-in (its PKCE verifier in a cookie, the provider's
    // code in the callback's query, the session token in the session
    // cookie), a refused one, a terminal's device flow, and a session
    // token reported leaked.
    let browser = Browser::default();
    let person = Person::in_group("alice", "keyplane-admins");
    let login = browser
        .client
        .get(format!("{base}/v1/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    secrets.push(set_cookie(&login, "keyplane_sign_in").unwrap());
    let to_idp = login.headers()["location"].to_str().unwrap().to_owned();
    let callback = browser.authorize(&to_idp, &person).await;
    let code = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "code")
        .unwrap()
        .1
        .into_owned();
    secrets.push(code);
    let signed_in = browser.client.get(&callback).send().await.unwrap();
    let session = set_cookie(&signed_in, "keyplane_session").unwrap();
    secrets.push(session.clone());
    let again = browser.client.get(&callback).send().await.unwrap();
    bodies.push(again.text().await.unwrap());
    send!(&session, Method::GET, "/v1/auth/session", None::<Value>);
    send!(&session, Method::GET, "/v1/sessions", None::<Value>);
    send!(
        &format!("{session}x"),
        Method::GET,
        "/v1/sessions",
        None::<Value>
    );
    let refused = Browser::default()
        .sign_in(
            &format!("{base}/v1/auth/oidc/login"),
            &Person {
                mischief: Some("tampered"),
                ..Person::in_group("mallory", "keyplane-admins")
            },
        )
        .await;
    bodies.push(refused.text().await.unwrap());
    let device: Value = client
        .post(format!("{base}/v1/auth/device"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_code = device["device_code"].as_str().unwrap().to_owned();
    secrets.push(device_code.clone());
    let approved = Browser::default()
        .approve_terminal(&base, device["user_code"].as_str().unwrap(), &person)
        .await;
    bodies.push(approved.text().await.unwrap());
    let terminal: Value = client
        .post(format!("{base}/v1/auth/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let terminal_token = terminal["access_token"].as_str().unwrap().to_owned();
    secrets.push(terminal_token.clone());
    send!(&terminal_token, Method::GET, "/v1/instances", None::<Value>);
    let reported = client
        .post(format!("{base}/v1/leaks"))
        .json(&json!({"token": terminal_token, "url": "https://paste.example/1", "source": "test"}))
        .send()
        .await
        .unwrap();
    bodies.push(reported.text().await.unwrap());
    let after = send!(&terminal_token, Method::GET, "/v1/instances", None::<Value>);
    assert_eq!(
        after["code"], "session_ended",
        "a leaked session token stops"
    );

    // Errors of every kind, several carrying keys where they do not belong.
    send!(&first_key, Method::GET, "/v1/instances", None::<Value>);
    send!(&node_key, Method::GET, "/v1/keys", None::<Value>);
    send!(
        format!("{admin_key}x"),
        Method::GET,
        "/v1/keys",
        None::<Value>
    );
    send!(
        &admin_key,
        Method::POST,
        "/v1/instances",
        Some(json!({"name": "x", "labels": admin_key}))
    );
    send!(
        &admin_key,
        Method::POST,
        "/v1/instances",
        Some(json!({"name": first_key, "oops": second_key}))
    );
    send!(
        &admin_key,
        Method::GET,
        format!("/v1/keys/{first_key}"),
        None::<Value>
    );
    send!(
        &admin_key,
        Method::GET,
        format!("/v1/nothing/{node_key}"),
        None::<Value>
    );
    send!(
        &admin_key,
        Method::GET,
        format!("/v1/audit?cursor={second_key}"),
        None::<Value>
    );
    let malformed = client
        .post(format!("{base}/v1/instances"))
        .bearer_auth(&admin_key)
        .header("content-type", "application/json")
        .header("x-request-id", first_key.as_str())
        .body(format!("{{\"name\": \"{second_key}"))
        .send()
        .await
        .unwrap();
    bodies.push(format!("{:?}", malformed.headers()));
    bodies.push(malformed.text().await.unwrap());
    send!(
        &admin_key,
        Method::POST,
        format!("/v1/keys/{}/revoke", second["id"].as_str().unwrap()),
        Some(json!({"reason": "done"}))
    );

    let audit_export = send!(&admin_key, Method::GET, "/v1/audit/export", None::<Value>);
    let _ = audit_export;
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    bodies.push(metrics);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.lines().count() > 20, "the log was captured");

    let everything = format!("{}\n{}", logs, bodies.join("\n"));
    for secret in &secrets {
        if let Some(at) = everything.find(secret.as_str()) {
            // Show where, without repeating the secret itself.
            let start = everything[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            let end = everything[at..]
                .char_indices()
                .nth(secret.len() + 100)
                .map_or(everything.len(), |(i, _)| at + i);
            let context = everything[start..end].replace(secret.as_str(), "<SECRET>");
            panic!("a whole secret ({}…) leaked here:\n{context}", &secret[..4]);
        }
    }
    // Requests are traceable to the route, node, instance and key behind them.
    assert!(
        logs.contains(r#""route":"/v1/keys/{id}/rotate""#),
        "route templates are logged"
    );
    assert!(logs.contains(&format!(r#""key_id":"{}""#, first["id"].as_str().unwrap())));
    assert!(logs.contains(&format!(r#""instance_id":"{instance_id}""#)));
    assert!(logs.contains(&format!(r#""node_id":"{}""#, node["id"].as_str().unwrap())));
    // The masked forms are there: the evidence is kept, the keys are not.
    assert!(everything.contains(&format!("kpi_…{}", &first_key[38..])));
}
