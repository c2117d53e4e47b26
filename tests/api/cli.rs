//! The command line: bad settings exit with status 2 and one line that names
//! the variable at fault.

use std::process::Command;

fn keyplane(envs: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyplane"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KEYPLANE_MODE")
        .env_remove("KEYPLANE_BOOTSTRAP_TOKEN");
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
