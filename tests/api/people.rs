//! People sign in with a real OpenID provider and MFA: sessions that manage
//! keys in their role, refusals for everything an ID token or a sign-in can
//! get wrong, sign-out everywhere, step-up, and terminals through the
//! device flow.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::idp::{Browser, Person, keyplane_with_idp, set_cookie};
use crate::support::{TestServer, admin_settings_for, call, fresh_database};

/// A server with sign-in, and the provider it trusts.
async fn start() -> (TestServer, crate::idp::Idp, String) {
    let url = fresh_database().await;
    let (settings, idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    (TestServer::start_with(settings).await, idp, origin)
}

/// Signs `person` in with a fresh browser; answers the browser and the session token.
async fn signed_in(origin: &str, person: &Person) -> (Browser, String) {
    let browser = Browser::default();
    let login = format!("{origin}/v1/auth/oidc/login?return_to=/v1/auth/session");
    let response = browser.sign_in(&login, person).await;
    assert_eq!(response.status(), 302, "{:?}", response.text().await);
    assert_eq!(response.headers()["location"], "/v1/auth/session");
    let token = set_cookie(&response, "keyplane_session").expect("a session cookie");
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("keyplane_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    (browser, token)
}

/// A request from the browser (its cookies), JSON in and out.
async fn browse(
    browser: &Browser,
    origin: &str,
    method: Method,
    path: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = browser.client.request(method, format!("{origin}{path}"));
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    call(request, body).await
}

async fn audit(server: &TestServer, action: &str) -> Vec<Value> {
    let (_, page) = server
        .admin(
            Method::GET,
            &format!("/v1/audit?action={action}&limit=100"),
            None,
        )
        .await;
    page["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_person_with_mfa_manages_keys_in_their_role_from_a_browser_or_a_terminal() {
    let (server, _idp, origin) = start().await;
    let alice = Person::in_group("alice", "keyplane-ops");
    let (browser, token) = signed_in(&origin, &alice).await;
    assert!(token.starts_with("kps_"));

    let (status, me) = browse(
        &browser,
        &origin,
        Method::GET,
        "/v1/auth/session",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["actor"], "oidc:alice");
    assert_eq!(me["role"], "operator");
    assert_eq!(me["email"], "alice@example.com");
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();

    // A change from the cookie needs the CSRF token; with it, the role decides.
    let instance = json!({"name": "jan-alice", "allowed_scopes": ["inference:chat"]});
    let (status, body) = browse(
        &browser,
        &origin,
        Method::POST,
        "/v1/instances",
        None,
        Some(instance.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = browse(
        &browser,
        &origin,
        Method::POST,
        "/v1/instances",
        Some("not-the-token"),
        Some(instance.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, created) = browse(
        &browser,
        &origin,
        Method::POST,
        "/v1/instances",
        Some(&csrf),
        Some(instance),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, key) = browse(
        &browser,
        &origin,
        Method::POST,
        &format!("/v1/instances/{id}/keys"),
        Some(&csrf),
        Some(json!({"name": "k", "scopes": ["inference:chat"]})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    // An operator makes no admin keys.
    let (status, _) = browse(
        &browser,
        &origin,
        Method::POST,
        "/v1/admin-keys",
        Some(&csrf),
        Some(json!({"name": "x", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 403);

    // The same token as a bearer (a tool) needs no CSRF token.
    let (status, _) = call(
        server.as_(&token, Method::POST, "/v1/instances"),
        Some(json!({"name": "jan-alice-2"})),
    )
    .await;
    assert_eq!(status, 201);

    // The audit log names the person, with their email.
    let entries = audit(&server, "instance.create").await;
    let entry = entries.iter().find(|e| e["target_id"] == id).unwrap();
    assert_eq!(entry["actor"], "oidc:alice");
    assert_eq!(entry["details"]["actor_email"], "alice@example.com");
    let sessions = audit(&server, "session.create").await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["actor"], "oidc:alice");
    assert_eq!(sessions[0]["details"]["amr"], json!(["pwd", "otp"]));
    assert!(!sessions[0].to_string().contains(&token));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_sign_in_without_mfa_or_outside_the_group_map_is_refused_with_a_page_and_audited() {
    let (server, _idp, origin) = start().await;
    let login = format!("{origin}/v1/auth/oidc/login");
    for (person, action) in [
        (
            Person {
                amr: vec!["pwd"],
                ..Person::in_group("bob", "keyplane-admins")
            },
            "auth.mfa_required",
        ),
        (Person::in_group("carol", "interns"), "auth.no_role"),
    ] {
        let browser = Browser::default();
        let response = browser.sign_in(&login, &person).await;
        assert_eq!(response.status(), 403);
        assert!(set_cookie(&response, "keyplane_session").is_none());
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("Sign-in refused"), "{page}");
        let (status, _) = browse(
            &browser,
            &origin,
            Method::GET,
            "/v1/auth/session",
            None,
            None,
        )
        .await;
        assert_eq!(status, 401, "no session for {}", person.sub);
        let entries = crate::support::eventually(
            Duration::from_secs(10),
            "the refusal to be audited",
            || {
                let server = &server;
                let sub = person.sub.clone();
                async move {
                    let entries = audit(server, action).await;
                    entries
                        .into_iter()
                        .find(|e| e["details"]["subject"] == sub.as_str())
                }
            },
        )
        .await;
        assert_eq!(entries["outcome"], "denied");
        assert_eq!(entries["actor"], format!("oidc:{}", person.sub));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_id_tokens_replayed_codes_and_foreign_callbacks_are_refused() {
    let (server, _idp, origin) = start().await;
    let login = format!("{origin}/v1/auth/oidc/login");
    for mischief in [
        "tampered", "alg_none", "hs256", "expired", "audience", "nonce", "issuer",
    ] {
        let person = Person {
            mischief: Some(mischief),
            ..Person::in_group(&format!("mallory-{mischief}"), "keyplane-admins")
        };
        let browser = Browser::default();
        let response = browser.sign_in(&login, &person).await;
        assert_eq!(response.status(), 403, "{mischief}");
        assert!(
            set_cookie(&response, "keyplane_session").is_none(),
            "{mischief}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("not believed"), "{mischief}: {page}");
    }

    // A good sign-in's callback, visited twice: the second is refused.
    let browser = Browser::default();
    let callback = browser
        .authorize(&login, &Person::in_group("dave", "keyplane-ops"))
        .await;
    let first = browser.client.get(&callback).send().await.unwrap();
    assert_eq!(first.status(), 302);
    let again = browser.client.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 403);
    assert!(set_cookie(&again, "keyplane_session").is_none());

    // A callback in a browser that did not start the sign-in (login CSRF).
    let victim = Browser::default();
    let callback = Browser::default()
        .authorize(&login, &Person::in_group("eve", "keyplane-ops"))
        .await;
    let response = victim.client.get(&callback).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(set_cookie(&response, "keyplane_session").is_none());

    // return_to stays on keyplane's origin.
    let response = Browser::default()
        .client
        .get(format!(
            "{origin}/v1/auth/oidc/login?return_to=//evil.example/"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let refusals = audit(&server, "auth.sign_in_refused").await;
    assert!(refusals.len() >= 7, "{refusals:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn signing_out_everywhere_stops_a_stolen_session_cookie_at_once() {
    let (server, _idp, origin) = start().await;
    let frank = Person::in_group("frank", "keyplane-ops");
    let (laptop, _) = signed_in(&origin, &frank).await;
    let (_phone, stolen) = signed_in(&origin, &frank).await;

    // The thief's own client, with the cookie's value.
    let thief = reqwest::Client::new();
    let steal = || {
        thief
            .get(format!("{origin}/v1/instances"))
            .header("cookie", format!("keyplane_session={stolen}"))
    };
    assert_eq!(steal().send().await.unwrap().status(), 200);

    let (_, me) = browse(
        &laptop,
        &origin,
        Method::GET,
        "/v1/auth/session",
        None,
        None,
    )
    .await;
    let csrf = me["csrf_token"].as_str().unwrap();
    let (status, sessions) =
        browse(&laptop, &origin, Method::GET, "/v1/sessions", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(sessions["items"].as_array().unwrap().len(), 2);
    assert!(!sessions.to_string().contains(&stolen));
    let (status, ended) = browse(
        &laptop,
        &origin,
        Method::POST,
        "/v1/sessions/revoke-all",
        Some(csrf),
        None,
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["revoked"], 2);
    let stopped = steal().send().await.unwrap();
    assert_eq!(stopped.status(), 401);
    let (status, _) = browse(&laptop, &origin, Method::GET, "/v1/instances", None, None).await;
    assert_eq!(status, 401, "everywhere means here too");

    // An admin signs someone out (offboarding); one session can end alone.
    let (grace, _) = signed_in(&origin, &Person::in_group("grace", "keyplane-ops")).await;
    let (_, grace_me) = browse(&grace, &origin, Method::GET, "/v1/auth/session", None, None).await;
    let (status, sessions) = server.admin(Method::GET, "/v1/sessions", None).await;
    assert_eq!(status, 200);
    assert_eq!(sessions["items"].as_array().unwrap().len(), 1);
    let id = grace_me["session_id"].as_str().unwrap();
    let (status, _) = server
        .admin(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = browse(&grace, &origin, Method::GET, "/v1/instances", None, None).await;
    assert_eq!(status, 401);
    let (heidi, _) = signed_in(&origin, &Person::in_group("heidi", "keyplane-ops")).await;
    let (status, ended) = server
        .admin(
            Method::POST,
            "/v1/sessions/revoke-all",
            Some(json!({"subject": "heidi"})),
        )
        .await;
    assert_eq!((status, ended["revoked"].clone()), (200, json!(1)));
    let (status, _) = browse(&heidi, &origin, Method::GET, "/v1/instances", None, None).await;
    assert_eq!(status, 401);

    // Sign-out ends the calling session and clears its cookie.
    let (ivan, _) = signed_in(&origin, &Person::in_group("ivan", "keyplane-ops")).await;
    let (_, me) = browse(&ivan, &origin, Method::GET, "/v1/auth/session", None, None).await;
    let response = ivan
        .client
        .post(format!("{origin}/v1/auth/logout"))
        .header("x-csrf-token", me["csrf_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, _) = browse(&ivan, &origin, Method::GET, "/v1/instances", None, None).await;
    assert_eq!(status, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn dangerous_operations_demand_a_recent_mfa_sign_in() {
    let (server, _idp, origin) = start().await;
    // An admin who authenticated at the provider eleven minutes ago.
    let judy = Person {
        auth_age: 660,
        ..Person::in_group("judy", "keyplane-admins")
    };
    let (browser, token) = signed_in(&origin, &judy).await;
    let (status, _) = call(server.as_(&token, Method::GET, "/v1/admin-keys"), None).await;
    assert_eq!(status, 200, "reading needs no step-up");
    let (status, _) = call(
        server.as_(&token, Method::POST, "/v1/instances"),
        Some(json!({"name": "jan-judy"})),
    )
    .await;
    assert_eq!(status, 201, "nor does everyday work");
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/admin-keys",
            json!({"name": "ci", "role": "viewer"}),
        ),
        (
            Method::PUT,
            "/v1/roles/chatter",
            json!({"scopes": ["inference:chat"]}),
        ),
        (
            Method::POST,
            "/v1/keys/revoke",
            json!({"selector": "env=prod"}),
        ),
        (
            Method::POST,
            "/v1/webhooks",
            json!({"url": "https://hooks.example/x", "events": ["key.revoked"]}),
        ),
    ] {
        let response = server
            .as_(&token, method, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains(r#"error="insufficient_user_authentication""#)
                && challenge.contains(r#"max_age="600""#),
            "{challenge}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "step_up_required");
    }
    let (status, plan) = call(
        server.as_(&token, Method::PUT, "/v1/roles/chatter?dry_run=true"),
        Some(json!({"scopes": ["inference:chat"]})),
    )
    .await;
    assert_eq!(
        (status, plan["dry_run"].clone()),
        (200, json!(true)),
        "a dry run changes nothing and needs no step-up: {plan}"
    );

    // Signing in again, now, with MFA: the same browser's session is replaced.
    let step_up = format!("{origin}/v1/auth/oidc/login?step_up=true&return_to=/console/");
    let response = browser
        .sign_in(
            &step_up,
            &Person {
                auth_age: 0,
                ..judy.clone()
            },
        )
        .await;
    assert_eq!(response.status(), 302);
    let fresh = set_cookie(&response, "keyplane_session").unwrap();
    let (status, key) = call(
        server.as_(&fresh, Method::POST, "/v1/admin-keys"),
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let (status, _) = call(server.as_(&token, Method::GET, "/v1/admin-keys"), None).await;
    assert_eq!(status, 401, "the replaced session ended");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_terminal_signs_in_through_a_browser_and_its_token_works_expires_and_can_be_revoked() {
    let url = fresh_database().await;
    let (settings, _idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    let (server, clock) = TestServer::start_with_clock(settings).await;
    let terminal = reqwest::Client::new();
    let poll = |device_code: String| {
        let request = terminal.post(format!("{origin}/v1/auth/token")).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.as_str()),
            ("client_id", "keyplanectl"),
        ]);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let authorize = || async {
        let response = terminal
            .post(format!("{origin}/v1/auth/device"))
            .form(&[("client_id", "keyplanectl")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    };

    let codes = authorize().await;
    let device_code = codes["device_code"].as_str().unwrap().to_owned();
    let user_code = codes["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9, "{user_code}");
    assert_eq!(
        codes["verification_uri"],
        format!("{origin}/v1/auth/device/verify")
    );
    let (status, error) = poll(device_code.clone()).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("authorization_pending")),
        "{error}"
    );
    let (_, error) = poll(device_code.clone()).await;
    assert_eq!(error["error"], "slow_down", "polled again at once");

    // The person opens the link, checks the code and signs in with MFA.
    let browser = Browser::default();
    let page = browser
        .client
        .get(codes["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&user_code.replace('-', "")), "{page}");
    let start = browser
        .client
        .post(format!("{origin}/v1/auth/device/verify"))
        .form(&[("user_code", user_code)])
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 303);
    let idp_url = start.headers()["location"].to_str().unwrap().to_owned();
    assert!(idp_url.contains("prompt=login") && idp_url.contains("max_age=0"));
    let callback = browser
        .authorize(&idp_url, &Person::in_group("kim", "keyplane-ops"))
        .await;
    let approved = browser.client.get(callback).send().await.unwrap();
    assert_eq!(approved.status(), 200);
    assert!(
        set_cookie(&approved, "keyplane_session").is_none(),
        "no browser session"
    );

    clock.advance(chrono::Duration::seconds(11));
    let (status, token) = poll(device_code.clone()).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    let access = token["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("kps_"));
    let (status, me) = call(server.as_(&access, Method::GET, "/v1/auth/session"), None).await;
    assert_eq!((status, me["actor"].as_str()), (200, Some("oidc:kim")));
    let (status, _) = call(
        server.as_(&access, Method::POST, "/v1/instances"),
        Some(json!({"name": "from-a-terminal"})),
    )
    .await;
    assert_eq!(status, 201);
    clock.advance(chrono::Duration::seconds(11));
    let (_, error) = poll(device_code.clone()).await;
    assert_eq!(
        error["error"], "invalid_grant",
        "a device code is spent once"
    );

    // It expires after an hour (idle or not).
    clock.advance(chrono::Duration::minutes(61));
    let (status, _) = call(server.as_(&access, Method::GET, "/v1/instances"), None).await;
    assert_eq!(status, 401);

    // Another terminal's token is revoked from the sessions list.
    let codes = authorize().await;
    let device_code = codes["device_code"].as_str().unwrap().to_owned();
    let approved = Browser::default()
        .approve_terminal(
            &origin,
            codes["user_code"].as_str().unwrap(),
            &Person::in_group("kim", "keyplane-ops"),
        )
        .await;
    assert_eq!(approved.status(), 200);
    let (status, token) = poll(device_code).await;
    assert_eq!(status, 200, "{token}");
    let access = token["access_token"].as_str().unwrap().to_owned();
    let (_, me) = call(server.as_(&access, Method::GET, "/v1/auth/session"), None).await;
    let id = me["session_id"].as_str().unwrap();
    let (status, _) = call(
        server.as_(&access, Method::DELETE, &format!("/v1/sessions/{id}")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(server.as_(&access, Method::GET, "/v1/instances"), None).await;
    assert_eq!(status, 401);

    // A person without MFA is refused, and the terminal hears so.
    let codes = authorize().await;
    let device_code = codes["device_code"].as_str().unwrap().to_owned();
    let person = Person {
        amr: vec!["pwd"],
        ..Person::in_group("kim", "keyplane-ops")
    };
    let refused = Browser::default()
        .approve_terminal(&origin, codes["user_code"].as_str().unwrap(), &person)
        .await;
    assert_eq!(refused.status(), 403);
    clock.advance(chrono::Duration::seconds(11));
    let (_, error) = poll(device_code).await;
    assert_eq!(error["error"], "access_denied");

    // An approval needs an authentication made now, not one the provider
    // kept from before (max_age=0), and comes from keyplane's own page.
    let codes = authorize().await;
    let stale = Person {
        auth_age: 3600,
        ..Person::in_group("kim", "keyplane-ops")
    };
    let refused = Browser::default()
        .approve_terminal(&origin, codes["user_code"].as_str().unwrap(), &stale)
        .await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("afresh"));
    let forged = Browser::default()
        .client
        .post(format!("{origin}/v1/auth/device/verify"))
        .header("origin", "https://attacker.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[("user_code", codes["user_code"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        403,
        "another site cannot post the approval form"
    );

    // A code nobody waits for is a page, not a sign-in.
    let response = Browser::default()
        .client
        .post(format!("{origin}/v1/auth/device/verify"))
        .form(&[("user_code", "BCDF-GHJK")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn with_admin_keys_disabled_only_people_manage_keyplane() {
    let url = fresh_database().await;
    let (settings, _idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    let settings = keyplane_server::config::Settings {
        admin_keys: keyplane_server::config::AdminKeys::Disabled,
        ..settings
    };
    let server = TestServer::start_with(settings).await;
    let (status, problem) = server.admin(Method::GET, "/v1/instances", None).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("admin_keys_disabled"))
    );
    let (_, token) = signed_in(&origin, &Person::in_group("leo", "keyplane-ops")).await;
    let (status, _) = call(server.as_(&token, Method::GET, "/v1/instances"), None).await;
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_browser_session_ends_after_its_idle_time_and_its_life() {
    let url = fresh_database().await;
    let (settings, _idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    let (server, clock) = TestServer::start_with_clock(settings).await;
    let person = Person::in_group("mia", "keyplane-ops");

    // Used every 20 minutes, a session lives on past the idle time...
    let (browser, _) = signed_in(&origin, &person).await;
    for _ in 0..3 {
        clock.advance(chrono::Duration::minutes(20));
        let (status, _) = browse(&browser, &origin, Method::GET, "/v1/instances", None, None).await;
        assert_eq!(status, 200);
    }
    // ...but not past its life (8 hours), however busy.
    for _ in 0..22 {
        clock.advance(chrono::Duration::minutes(20));
        browse(&browser, &origin, Method::GET, "/v1/instances", None, None).await;
    }
    let (status, problem) =
        browse(&browser, &origin, Method::GET, "/v1/instances", None, None).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("session_ended"))
    );

    // Left alone for 31 minutes, it ends.
    let (browser, _) = signed_in(&origin, &person).await;
    clock.advance(chrono::Duration::minutes(31));
    let (status, _) = browse(&browser, &origin, Method::GET, "/v1/instances", None, None).await;
    assert_eq!(status, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn over_https_the_cookies_are_secure_and_bound_to_the_host() {
    let url = fresh_database().await;
    let (settings, _idp, _) = keyplane_with_idp(admin_settings_for(&url)).await;
    let mut oidc = settings.oidc.clone().unwrap();
    oidc.redirect_url = "https://keyplane.example/v1/auth/oidc/callback"
        .parse()
        .unwrap();
    let server = TestServer::start_with(keyplane_server::config::Settings {
        oidc: Some(oidc),
        ..settings
    })
    .await;
    let response = Browser::default()
        .client
        .get(server.url("/v1/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-keyplane_sign_in="), "{cookie}");
    for attribute in [
        "Path=/",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    let location = response.headers()["location"].to_str().unwrap();
    assert!(
        location
            .contains("redirect_uri=https%3A%2F%2Fkeyplane.example%2Fv1%2Fauth%2Foidc%2Fcallback")
            && location.contains("code_challenge_method=S256"),
        "{location}"
    );
    server.stop().await.unwrap();
}
