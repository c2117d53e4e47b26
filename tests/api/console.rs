//! The console, driven as a browser drives it (cookies, forms, redirects):
//! sign-in through the real provider with MFA, a key issued and shown
//! once, every change behind the sign-in's CSRF token and the role matrix.
//! (tests/browser/console.mjs drives it in Chromium.)

use keyplane_domain::ManagementRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::idp::{Browser, Person, keyplane_with_idp};
use crate::support::{BOOTSTRAP, TestServer, admin_settings_for, fresh_database};

/// The value of the first `name="csrf"` field of `html`.
fn csrf(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

async fn page(browser: &Browser, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let response = browser.client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn post(browser: &Browser, url: &str, form: &[(&str, &str)]) -> (u16, String, String) {
    let response = browser.client.post(url).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, response.text().await.unwrap())
}

async fn signed_in(origin: &str, person: &Person) -> Browser {
    let browser = Browser::default();
    let login = format!("{origin}/v1/auth/oidc/login?return_to=/console/");
    let response = browser.sign_in(&login, person).await;
    assert_eq!(response.status(), 302, "{:?}", response.text().await);
    assert_eq!(response.headers()["location"], "/console/");
    browser
}

async fn key_status(server: &TestServer, id: &str) -> Value {
    server
        .admin(Method::GET, &format!("/v1/keys/{id}"), None)
        .await
        .1["status"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_issue_a_key_once_and_every_change_keeps_its_checks() {
    let url = fresh_database().await;
    let (mut settings, _idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    if let Some(oidc) = settings.oidc.as_mut() {
        oidc.role_map
            .push(("keyplane-viewers".to_owned(), ManagementRole::Viewer));
    }
    let server = TestServer::start_with(settings).await;
    let instance = server
        .instance("jan-console", &["inference:chat", "models:read"])
        .await;

    // No sign-in: to the sign-in page, which offers the provider.
    let stranger = Browser::default();
    let (status, headers, _) = page(&stranger, &format!("{origin}/console/")).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/console/sign-in?return_to=/console/");
    let (status, headers, html) = page(&stranger, &format!("{origin}/console/sign-in")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("/v1/auth/oidc/login?return_to=/console/"),
        "{html}"
    );
    assert!(
        !html.contains(r#"name="key""#),
        "no admin keys once people sign in"
    );
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(!policy.contains("unsafe-inline"));
    // Back from the provider, a browser leaves the SameSite=Strict cookie
    // behind: the page loads itself once more, from here.
    let response = stranger
        .client
        .get(format!("{origin}/console/instances"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(
        html.contains(r#"content="0; url=/console/instances""#),
        "{html}"
    );
    // Never onto a confirmation page, or a page its query shapes: a link
    // from elsewhere lands on the overview.
    for path in [
        "/console/keys/0f8fad5b-d9cb-469f-a165-70867728950e/revoke",
        "/console/instances/x/revoke-selected?key=y",
    ] {
        let html = stranger
            .client
            .get(format!("{origin}{path}"))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            html.contains(r#"content="0; url=/console/""#),
            "{path}: {html}"
        );
    }

    // An operator issues a key and sees its secret once.
    let operator = signed_in(&origin, &Person::in_group("olga", "keyplane-ops")).await;
    let (status, headers, html) = page(&operator, &format!("{origin}/console/")).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(html.contains("olga@example.com") && html.contains("operator"));
    let instance_page = format!("{origin}/console/instances/{instance}");
    let (_, _, html) = page(&operator, &instance_page).await;
    assert!(html.contains("Issue a key"), "{html}");
    let token = csrf(&html);
    let issue = format!("{instance_page}/keys");

    // Without the CSRF token (another site's form): refused, nothing made.
    let (status, _, _) = post(
        &operator,
        &issue,
        &[("name", "forged"), ("scopes", "inference:chat")],
    )
    .await;
    assert_eq!(status, 403);
    let (_, keys) = server
        .admin(
            Method::GET,
            &format!("/v1/keys?instance_id={instance}"),
            None,
        )
        .await;
    assert_eq!(keys["items"], json!([]));

    let response = operator
        .client
        .post(&issue)
        .form(&[
            ("csrf", token.as_str()),
            ("name", "laptop"),
            ("scopes", "inference:chat"),
            ("scopes", "models:read"),
            ("expires_in_days", "30"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.unwrap();
    let at = html.find("kpi_").expect("the secret, shown once");
    let secret = &html[at..at + 42];
    assert!(html.contains("you will not see it again"));
    let (_, keys) = server
        .admin(
            Method::GET,
            &format!("/v1/keys?instance_id={instance}"),
            None,
        )
        .await;
    let key = &keys["items"][0];
    assert_eq!(
        key["effective_scopes"],
        json!(["inference:chat", "models:read"])
    );
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (_, _, html) = page(&operator, &instance_page).await;
    assert!(!html.contains(secret), "the secret is shown once only");
    assert!(html.contains(key["masked_key"].as_str().unwrap()));

    // Disabled and enabled again; the instance suspended and resumed.
    for (enabled, status) in [("false", "disabled"), ("true", "active")] {
        let (code, _, _) = post(
            &operator,
            &format!("{origin}/console/keys/{key_id}/enabled"),
            &[("csrf", token.as_str()), ("enabled", enabled)],
        )
        .await;
        assert_eq!(code, 303);
        assert_eq!(key_status(&server, &key_id).await, status);
    }
    for status in ["suspended", "active"] {
        let (code, _, _) = post(
            &operator,
            &format!("{instance_page}/status"),
            &[("csrf", token.as_str()), ("status", status)],
        )
        .await;
        assert_eq!(code, 303);
        let (_, body) = server
            .admin(Method::GET, &format!("/v1/instances/{instance}"), None)
            .await;
        assert_eq!(body["status"], status);
    }

    // A viewer sees no button, and a crafted form is refused anyway.
    let viewer = signed_in(&origin, &Person::in_group("vic", "keyplane-viewers")).await;
    let (status, _, html) = page(&viewer, &instance_page).await;
    assert_eq!(status, 200);
    assert!(!html.contains("Issue a key") && !html.contains("Revoke") && !html.contains("Suspend"));
    let viewer_token = csrf(&html);
    let (status, _, html) = post(
        &viewer,
        &format!("{origin}/console/keys/{key_id}/revoke"),
        &[("csrf", viewer_token.as_str())],
    )
    .await;
    assert_eq!(status, 403, "{html}");
    assert_eq!(key_status(&server, &key_id).await, "active");

    // The operator revokes it, after a confirmation page.
    let confirm = format!("{origin}/console/keys/{key_id}/revoke");
    let (status, _, html) = page(&operator, &confirm).await;
    assert_eq!(status, 200);
    assert!(html.contains("Revoke laptop?"));
    let (status, location, _) = post(
        &operator,
        &confirm,
        &[("csrf", token.as_str()), ("reason", "lost laptop")],
    )
    .await;
    assert_eq!(
        (status, location.as_str()),
        (303, format!("/console/instances/{instance}").as_str())
    );
    assert_eq!(key_status(&server, &key_id).await, "revoked");

    // Two more keys, renamed and then revoked together as a selection.
    let mut picked = Vec::new();
    for name in ["a", "b"] {
        let key = server
            .key(
                &instance,
                json!({ "name": name, "scopes": ["inference:chat"] }),
            )
            .await;
        picked.push(key["id"].as_str().unwrap().to_owned());
    }
    let (status, location, _) = post(
        &operator,
        &format!("{origin}/console/keys/{}", picked[0]),
        &[("csrf", token.as_str()), ("name", "renamed")],
    )
    .await;
    assert_eq!(status, 303, "{location}");
    let (_, key) = server
        .admin(Method::GET, &format!("/v1/keys/{}", picked[0]), None)
        .await;
    assert_eq!(key["name"], "renamed");
    let (status, _, html) = page(
        &operator,
        &format!(
            "{instance_page}/revoke-selected?key={}&key={}",
            picked[0], picked[1]
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(html.contains("Revoke 2 keys?"), "{html}");
    let (status, _, _) = post(
        &operator,
        &format!("{instance_page}/revoke-selected"),
        &[
            ("csrf", token.as_str()),
            ("key", picked[0].as_str()),
            ("key", picked[1].as_str()),
            ("reason", "offboarding"),
        ],
    )
    .await;
    assert_eq!(status, 303);
    for id in &picked {
        assert_eq!(key_status(&server, id).await, "revoked");
    }
    // A key of another instance is not part of this one's selection.
    let other = server.instance("jan-other", &["inference:chat"]).await;
    let stranger_key = server
        .key(
            &other,
            json!({ "name": "theirs", "scopes": ["inference:chat"] }),
        )
        .await;
    let stranger_id = stranger_key["id"].as_str().unwrap();
    let (status, _, _) = post(
        &operator,
        &format!("{instance_page}/revoke-selected"),
        &[("csrf", token.as_str()), ("key", stranger_id)],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(key_status(&server, stranger_id).await, "active");

    // Signed out: the cookie no longer opens anything.
    let (status, location, _) = post(
        &operator,
        &format!("{origin}/console/sign-out"),
        &[("csrf", token.as_str())],
    )
    .await;
    assert_eq!((status, location.as_str()), (303, "/console/sign-in"));
    let (status, headers, _) = page(&operator, &instance_page).await;
    assert_eq!(status, 303);
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/console/sign-in")
    );
}

#[tokio::test]
async fn in_dev_an_admin_key_signs_in_to_the_console_and_says_so() {
    let server = TestServer::start_admin().await;
    let origin = server.url("");
    let browser = Browser::default();
    let (status, _, html) = page(&browser, &format!("{origin}/console/sign-in")).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"name="key""#), "{html}");

    let (status, _, html) = post(
        &browser,
        &format!("{origin}/console/sign-in"),
        &[
            ("key", "kpa_not-a-real-key"),
            ("return_to", "/console/instances"),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert!(html.contains("not a live admin key") && !html.contains("kpa_not-a-real-key"));

    let response = browser
        .client
        .post(format!("{origin}/console/sign-in"))
        .form(&[("key", BOOTSTRAP), ("return_to", "https://evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    // Never sent anywhere but the console.
    assert_eq!(response.headers()["location"], "/console/");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/console"),
        "{cookie}"
    );
    let (status, _, html) = page(&browser, &format!("{origin}/console/")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("signed in with a key (dev)"));
    assert!(html.contains("Recent denials and suspected probes"));
    // Another site's form cannot sign a browser in with its own key.
    let response = Browser::default()
        .client
        .post(format!("{origin}/console/sign-in"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("key", BOOTSTRAP)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(html.contains("The hash chain verifies"));
    // The cookie is the console's: the API does not take it.
    let (status, _, _) = page(&browser, &format!("{origin}/v1/instances")).await;
    assert_eq!(status, 401);
}

/// Where a test's screenshots go, for people to look at: `target/console-screenshots`.
fn screenshot_dir() -> std::path::PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_chromium() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/browser/console.mjs");
    let chromium = std::env::var("KEYPLANE_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists()
            && std::path::Path::new(&chromium).exists(),
        "scripts/test installs Chromium and playwright-core (npm ci in tests/browser)"
    );

    let url = fresh_database().await;
    let (mut settings, _idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    if let Some(oidc) = settings.oidc.as_mut() {
        oidc.role_map
            .push(("keyplane-viewers".to_owned(), ManagementRole::Viewer));
    }
    let (server, clock) = TestServer::start_with_clock(settings).await;
    // Something on every page.
    server
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({ "url": "http://127.0.0.1:9/k", "events": ["key.revoked"] })),
        )
        .await;
    server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({ "name": "ci-deploy", "role": "operator" })),
        )
        .await;
    server
        .admin(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(json!({ "name": "lab laptops", "scopes": ["inference:chat"] })),
        )
        .await;
    let instance = server
        .instance("jan-browser", &["inference:chat", "models:read"])
        .await;
    let (status, node) = server
        .admin(
            Method::POST,
            "/v1/nodes",
            Some(json!({ "name": "gate-browser" })),
        )
        .await;
    assert_eq!(status, 201, "{node}");
    let upstream = crate::support::stub_upstream().await;
    let _gate = crate::support::Gate::start(
        &[
            ("KEYPLANE_URL", origin.as_str()),
            ("KEYPLANE_NODE_KEY", node["secret"].as_str().unwrap()),
            ("KEYPLANE_GATE_UPSTREAM", upstream.as_str()),
        ],
        Stdio::null(),
    )
    .await;
    let gate = _gate.base.clone();
    let out = screenshot_dir();

    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .env("KEYPLANE", &origin)
        .env("GATE", &gate)
        .env("INSTANCE", &instance)
        .env("OUT", &out)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let finding: Value = serde_json::from_str(&line).unwrap_or(json!({ "text": line }));
            if let Some(seconds) = finding["advance"].as_i64() {
                clock.advance(chrono::Duration::seconds(seconds));
                stdin.write_all(b"ok\n").await.unwrap();
            }
            said.push(finding);
        }
        child.wait().await.unwrap()
    };
    let exit = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the browser test ends within 3 minutes");
    let findings = serde_json::to_string_pretty(&said).unwrap();
    assert!(exit.success(), "the browser test failed:\n{findings}");
    assert!(said.iter().any(|f| f["done"] == true), "{findings}");
    let shots = said.iter().filter(|f| f["screenshot"].is_string()).count();
    assert!(shots >= 18, "a screenshot of every page: {findings}");
    let took = said
        .iter()
        .find_map(|f| f["revoked_refused_after_ms"].as_u64())
        .unwrap();
    println!("the gate refused the revoked key {took} ms after the console revoked it");
}

#[tokio::test]
async fn every_section_works_for_an_admin_and_makes_what_it_offers() {
    let server = TestServer::start_admin().await;
    let origin = server.url("");
    let browser = Browser::default();
    let (status, _, _) = post(
        &browser,
        &format!("{origin}/console/sign-in"),
        &[("key", BOOTSTRAP)],
    )
    .await;
    assert_eq!(status, 303);
    let (_, _, html) = page(&browser, &format!("{origin}/console/")).await;
    let token = csrf(&html);
    for section in [
        "/console/",
        "/console/instances",
        "/console/nodes",
        "/console/roles",
        "/console/roles/inference-client",
        "/console/admin-keys",
        "/console/enrollment-tokens",
        "/console/webhooks",
        "/console/audit",
        "/console/sessions",
    ] {
        let (status, headers, html) = page(&browser, &format!("{origin}{section}")).await;
        assert_eq!(status, 200, "{section}: {html}");
        assert!(headers.contains_key("content-security-policy"), "{section}");
        assert!(html.contains("<h1>"), "{section}");
    }

    // Each section makes what its form offers, and shows a secret once.
    let made = [
        (
            "/console/instances",
            vec![
                ("name", "jan-made"),
                ("allowed_scopes", "inference:chat"),
                ("labels", "env=lab"),
            ],
            303,
            "",
        ),
        ("/console/nodes", vec![("name", "cortex-made")], 200, "kpn_"),
        (
            "/console/admin-keys",
            vec![("name", "ci"), ("role", "viewer"), ("expires_in_days", "7")],
            200,
            "kpa_",
        ),
        (
            "/console/enrollment-tokens",
            vec![
                ("name", "lab"),
                ("scopes", "inference:chat"),
                ("uses", "2"),
                ("expires_in_hours", "1"),
            ],
            200,
            "kpe_",
        ),
        (
            "/console/webhooks",
            vec![
                ("url", "http://127.0.0.1:9/made"),
                ("events", "key.revoked"),
            ],
            200,
            "whsec_",
        ),
        (
            "/console/roles",
            vec![("name", "readers"), ("scopes", "models:read")],
            303,
            "",
        ),
    ];
    for (path, fields, expected, secret) in made {
        let mut form = fields.clone();
        form.push(("csrf", token.as_str()));
        let (status, _, html) = post(&browser, &format!("{origin}{path}"), &form).await;
        assert_eq!(status, expected, "{path}: {html}");
        assert!(
            html.contains(secret),
            "{path} shows its secret once: {html}"
        );
    }
    let (_, roles) = server.admin(Method::GET, "/v1/roles", None).await;
    assert!(
        roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "readers")
    );

    // A role's name from a path steers no form anywhere else.
    let (status, _, html) = page(
        &browser,
        &format!("{origin}/console/roles/..%2Fadmin-keys%2Fx%2Frevoke%3F/delete"),
    )
    .await;
    assert_eq!(status, 404, "{html}");
    assert!(!html.contains("admin-keys/x/revoke"));

    // A role change is previewed, and changes nothing until saved.
    let (status, _, html) = post(
        &browser,
        &format!("{origin}/console/roles/readers"),
        &[
            ("csrf", token.as_str()),
            ("scopes", "models:write"),
            ("intent", "preview"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("What saving would change"));
    let (_, roles) = server.admin(Method::GET, "/v1/roles", None).await;
    let readers = roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "readers")
        .unwrap()
        .clone();
    assert_eq!(readers["scopes"], json!(["models:read"]));

    // The audit log, exported from the console.
    let response = browser
        .client
        .get(format!("{origin}/console/audit/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let export = response.text().await.unwrap();
    assert!(
        export.lines().count() >= 6 && export.contains("role.create"),
        "{export}"
    );
    assert!(!export.contains(BOOTSTRAP));
    let (status, listed) = server
        .admin(Method::GET, "/v1/audit?outcome=success&limit=2", None)
        .await;
    assert_eq!(status, 200, "{listed}");
    let items = listed["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.iter().all(|e| e["outcome"] == "success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_set_and_usage_is_drawn_in_the_console() {
    let server = TestServer::start_admin().await;
    let origin = server.url("");
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let key_id = key["id"].as_str().unwrap();
    // Some usage, as a node reports it.
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gate-1"})))
        .await;
    let node_key = node["secret"].as_str().unwrap();
    let answer: Value = server
        .client
        .post(server.url("/v1/introspect"))
        .bearer_auth(node_key)
        .form(&[("token", key["secret"].as_str().unwrap())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], true);
    let (status, _) = crate::support::call(
        server.as_(node_key, Method::POST, "/v1/usage/reports"),
        Some(
            json!({"items": [{"key_id": key_id, "model": "llama3", "minute": chrono::Utc::now(),
                               "requests": 4, "prompt_tokens": 300, "completion_tokens": 120}]}),
        ),
    )
    .await;
    assert_eq!(status, 200);

    let browser = Browser::default();
    let response = browser
        .client
        .post(format!("{origin}/console/sign-in"))
        .form(&[("key", BOOTSTRAP), ("return_to", "/console/")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let key_page = format!("{origin}/console/keys/{key_id}");
    let (status, _, html) = page(&browser, &key_page).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("<h2 id=\"limits\">Limits</h2>") && html.contains("none"),
        "{html}"
    );
    assert!(html.contains("420 tokens in 4 requests"), "{html}");
    assert!(
        html.contains("<rect ") && html.contains("420 tokens, 4 requests"),
        "{html}"
    );

    let token = csrf(&html);
    let limits_url = format!("{key_page}/limits");
    let (status, location, _) = post(
        &browser,
        &limits_url,
        &[
            ("csrf", &token),
            ("rpm", "60"),
            ("tpm", ""),
            ("daily_tokens", "50000"),
            ("monthly_tokens", ""),
            ("models", "llama3*, phi3"),
        ],
    )
    .await;
    assert_eq!(
        (status, location.as_str()),
        (303, format!("/console/keys/{key_id}").as_str())
    );
    let (_, stored) = server
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(
        stored["limits"],
        json!({"rpm": 60, "tpm": null, "daily_tokens": 50000, "monthly_tokens": null})
    );
    assert_eq!(stored["models"], json!(["llama3*", "phi3"]));
    let (_, _, html) = page(&browser, &key_page).await;
    assert!(
        html.contains("60 requests/min; 50000 tokens/day; models: llama3*, phi3"),
        "{html}"
    );

    // Not a number, or out of bounds: refused, nothing changed.
    for (rpm, status) in [("lots", 422), ("-5", 422)] {
        let (got, _, html) = post(&browser, &limits_url, &[("csrf", &token), ("rpm", rpm)]).await;
        assert_eq!(got, status, "{rpm}: {html}");
    }
    let (_, stored) = server
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(stored["limits"]["rpm"], 60);
    // Without the sign-in's CSRF token: refused.
    let (status, _, _) = post(&browser, &limits_url, &[("rpm", "1")]).await;
    assert_eq!(status, 403);

    // The instance's, for each of its keys.
    let instance_page = format!("{origin}/console/instances/{instance}");
    let (status, location, _) = post(
        &browser,
        &format!("{instance_page}/limits"),
        &[("csrf", &token), ("tpm", "100000"), ("models", "")],
    )
    .await;
    assert_eq!(status, 303, "{location}");
    let (_, _, html) = page(&browser, &instance_page).await;
    assert!(html.contains("100000 tokens/min"), "{html}");
    assert!(html.contains("420 tokens in 4 requests"), "{html}");
}
