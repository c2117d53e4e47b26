//! The command line: bad settings exit with status 2 and one line that names
//! the variable at fault.

use std::process::Command;

fn keyplane(envs: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyplane"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_READ_URL")
        .env_remove("KEYPLANE_MODE")
        .env_remove("KEYPLANE_BOOTSTRAP_TOKEN")
        .env_remove("KEYPLANE_MASTER_KEY")
        .env_remove("KEYPLANE_TLS_CERT")
        .env_remove("KEYPLANE_TLS_KEY")
        .env_remove("KEYPLANE_AUTH")
        .env_remove("KEYPLANE_CONFIG");
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command.output().expect("keyplane runs");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_bad_setting_exits_2_with_one_line_naming_the_variable() {
    let cases = [
        (
            ("KEYPLANE_MODE", "production"),
            "KEYPLANE_MODE: expected one of dev, mixed, prod",
        ),
        (
            ("KEYPLANE_LISTEN", "localhost"),
            "KEYPLANE_LISTEN: expected an address and port",
        ),
        (
            ("KEYPLANE_BODY_LIMIT", "huge"),
            "KEYPLANE_BODY_LIMIT: expected bytes",
        ),
        (
            ("KEYPLANE_MAX_KEY_LIFETIME", "-3d"),
            "KEYPLANE_MAX_KEY_LIFETIME: expected seconds",
        ),
        (
            ("DATABASE_URL", "mysql://x"),
            "DATABASE_URL: expected a PostgreSQL URL",
        ),
        (
            ("DATABASE_READ_URL", "postgres://standby/keyplane"),
            "DATABASE_READ_URL: a standby of DATABASE_URL, which is not set",
        ),
    ];
    for ((name, value), expected) in cases {
        let (status, stderr) = keyplane(&[(name, value)], &["serve"]);
        assert_eq!(status, 2, "{name}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("keyplane: {expected}")),
            "{stderr}"
        );
    }
}

#[test]
fn a_short_bootstrap_token_is_refused_without_being_printed() {
    let (status, stderr) = keyplane(
        &[("KEYPLANE_BOOTSTRAP_TOKEN", "tooshort-secret")],
        &["serve"],
    );
    assert_eq!(status, 2);
    assert!(stderr.contains("KEYPLANE_BOOTSTRAP_TOKEN: expected at least 32 characters"));
    assert!(!stderr.contains("tooshort-secret"));
}

#[test]
fn a_standby_is_checked_as_the_primary_is() {
    let primary = "postgres://keyplane@db.example/keyplane?sslmode=verify-full";
    let (status, stderr) = keyplane(
        &[
            ("KEYPLANE_MODE", "prod"),
            ("DATABASE_URL", primary),
            (
                "DATABASE_READ_URL",
                "postgres://keyplane:s3cret@standby.example/keyplane",
            ),
        ],
        &["serve"],
    );
    assert_eq!(status, 2, "{stderr}");
    assert!(
        stderr.starts_with("keyplane: DATABASE_READ_URL: prod mode talks to PostgreSQL over TLS"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn prod_without_a_database_url_refuses_to_start() {
    let (status, stderr) = keyplane(&[("KEYPLANE_MODE", "prod")], &["serve"]);
    assert_eq!(status, 2);
    assert_eq!(
        stderr,
        "keyplane: DATABASE_URL: required in prod mode (the embedded database is for dev only)"
    );
}

#[tokio::test]
async fn admin_key_create_prints_a_working_key_once() {
    let url = crate::support::fresh_database().await;
    let output = Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .args([
            "admin-key",
            "create",
            "--name",
            "first-operator",
            "--role",
            "operator",
        ])
        .env("DATABASE_URL", &url)
        .env_remove("KEYPLANE_BOOTSTRAP_TOKEN")
        .output()
        .expect("keyplane runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.trim();
    assert!(key.starts_with("kpa_") && key.len() == 42, "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(key), "the key was logged");

    let server = crate::support::TestServer::start_with(crate::support::settings_for(&url)).await;
    let (status, _) =
        crate::support::call(server.as_(key, reqwest::Method::GET, "/v1/instances"), None).await;
    assert_eq!(status, 200);
    let (status, _) = crate::support::call(
        server.as_(key, reqwest::Method::GET, "/v1/admin-keys"),
        None,
    )
    .await;
    assert_eq!(status, 403, "an operator key cannot read admin keys");
    server.stop().await.unwrap();

    let (status, stderr) = keyplane(
        &[("DATABASE_URL", &url)],
        &["admin-key", "create", "--name", "x", "--role", "root"],
    );
    assert_ne!(status, 0);
    assert!(stderr.contains("--role"), "{stderr}");
}

/// A throwaway CA-less certificate for 127.0.0.1 and its key, as PEM files.
pub fn certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Sign-in settings that prod accepts, with `changes`.
fn oidc(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("KEYPLANE_OIDC_ISSUER", "https://login.example.com"),
        ("KEYPLANE_OIDC_CLIENT_ID", "keyplane"),
        (
            "KEYPLANE_OIDC_REDIRECT_URL",
            "https://keyplane.example.com/v1/auth/oidc/callback",
        ),
        ("KEYPLANE_OIDC_ROLE_MAP", "keyplane-admins=admin"),
    ];
    env.retain(|(name, _)| !changes.iter().any(|(changed, _)| changed == name));
    env.extend_from_slice(changes);
    env
}

#[test]
fn prod_refuses_to_start_on_anything_insecure_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server");
    let (_, other_key) = certificate(dir.path(), "other");
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, "bootstrap_token = \"x\"\n").unwrap();
    let cert = cert.to_str().unwrap();
    let key = key.to_str().unwrap();
    let good_db = "postgres://keyplane@db.internal/keyplane?sslmode=verify-full";
    let master = crate::support::MASTER_KEY;
    let secure: Vec<(&str, &str)> = vec![
        ("KEYPLANE_MODE", "prod"),
        ("DATABASE_URL", good_db),
        ("KEYPLANE_TLS_CERT", cert),
        ("KEYPLANE_TLS_KEY", key),
        ("KEYPLANE_MASTER_KEY", master),
    ];
    let with = |changes: &[(&'static str, &str)], removed: &[&str]| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = secure
            .iter()
            .filter(|(name, _)| !removed.contains(name) && !changes.iter().any(|(c, _)| c == name))
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        env.extend(
            changes
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        env
    };
    let other_key = other_key.to_str().unwrap();
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (
            with(&[], &["KEYPLANE_TLS_CERT", "KEYPLANE_TLS_KEY"]),
            "KEYPLANE_TLS_CERT: required in prod mode",
        ),
        (
            with(&[], &["KEYPLANE_TLS_KEY"]),
            "KEYPLANE_TLS_KEY: required with KEYPLANE_TLS_CERT",
        ),
        (
            with(&[("KEYPLANE_TLS_CERT", "/nonexistent/cert.pem")], &[]),
            "KEYPLANE_TLS_CERT: cannot read",
        ),
        (
            with(&[("KEYPLANE_TLS_KEY", other_key)], &[]),
            "do not belong together",
        ),
        (
            with(&[], &["DATABASE_URL"]),
            "DATABASE_URL: required in prod mode",
        ),
        (
            with(
                &[(
                    "DATABASE_URL",
                    "postgres://keyplane:hunter2@db.internal/keyplane?sslmode=disable",
                )],
                &[],
            ),
            "DATABASE_URL: prod mode talks to PostgreSQL over TLS",
        ),
        (
            with(
                &[(
                    "DATABASE_URL",
                    "postgres://keyplane:hunter2@db.internal/keyplane",
                )],
                &[],
            ),
            "DATABASE_URL: prod mode talks to PostgreSQL over TLS",
        ),
        (
            with(&[("KEYPLANE_AUTH", "disabled")], &[]),
            "KEYPLANE_AUTH: ",
        ),
        (
            with(&[("KEYPLANE_BOOTSTRAP_TOKEN", "short-but-secret")], &[]),
            "KEYPLANE_BOOTSTRAP_TOKEN: expected at least 32",
        ),
        (
            with(&[("KEYPLANE_CONFIG", config.to_str().unwrap())], &[]),
            "KEYPLANE_CONFIG: `bootstrap_token` is a secret",
        ),
        (
            with(&[], &["KEYPLANE_MASTER_KEY"]),
            "KEYPLANE_MASTER_KEY: required in prod mode",
        ),
        (
            with(&[("KEYPLANE_ROUTE_SCOPES", "GET /v1/models=public")], &[]),
            "KEYPLANE_ROUTE_SCOPES: prod serves no route without a key",
        ),
        (
            with(&[("KEYPLANE_FORWARD_AUTH_PROXY", "haproxy")], &[]),
            "KEYPLANE_FORWARD_AUTH_PROXY: expected nginx, traefik, caddy or envoy",
        ),
        (
            with(&oidc(&[("KEYPLANE_OIDC_REQUIRE_AMR", "none")]), &[]),
            "KEYPLANE_OIDC_REQUIRE_AMR: prod mode signs people in only with MFA",
        ),
        (
            with(
                &oidc(&[("KEYPLANE_OIDC_ISSUER", "http://login.example.com")]),
                &[],
            ),
            "KEYPLANE_OIDC_ISSUER: must be an https:// URL in prod mode",
        ),
        (
            with(
                &[("KEYPLANE_OIDC_ISSUER", "https://login.example.com")],
                &[],
            ),
            "KEYPLANE_OIDC_CLIENT_ID: required with the other KEYPLANE_OIDC_ settings",
        ),
        (
            // Everything but the role map.
            with(&oidc(&[])[..3], &[]),
            "KEYPLANE_OIDC_ROLE_MAP: required with KEYPLANE_OIDC_ISSUER",
        ),
        (
            with(&[("KEYPLANE_ADMIN_KEYS", "disabled")], &[]),
            "KEYPLANE_ADMIN_KEYS: disabled leaves no one able to manage keyplane",
        ),
    ];
    for (env, expected) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let (status, stderr) = keyplane(&env, &["serve"]);
        assert_eq!(status, 2, "{expected}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "want {expected:?}, got {stderr}");
        for secret in ["hunter2", "short-but-secret", master] {
            assert!(!stderr.contains(secret), "a secret was printed: {stderr}");
        }
    }
    // A Unix socket needs no TLS: that configuration gets past every check
    // (and then fails only to reach a database that is not there).
    let (status, stderr) = keyplane(
        &with(
            &[
                (
                    "DATABASE_URL",
                    "postgres://keyplane@localhost/keyplane?host=/nonexistent",
                ),
                ("KEYPLANE_DB_STARTUP_WAIT", "1s"),
            ],
            &[],
        )
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect::<Vec<_>>(),
        &["serve"],
    );
    assert_ne!(status, 2, "{stderr}");
}
