//! keyplanectl drives a real keyplane: sign in, register, issue, rotate by
//! selector, plan a role change, revoke, verify the audit log; and every
//! kind of bad input ends with one line and its documented exit code.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::idp::{Browser, Person, keyplane_with_idp};
use crate::support::{BOOTSTRAP, TestServer, admin_settings_for, fresh_database};

pub(crate) fn binary() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_keyplane")).with_file_name("keyplanectl");
    assert!(
        path.exists(),
        "build keyplanectl first: cargo build -p keyplanectl"
    );
    path
}

/// Runs keyplanectl with `env` and `args`, stdin empty (not a terminal);
/// answers its exit code, standard output and standard error.
pub(crate) fn ctl(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

pub(crate) fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyplanectl_runs_a_whole_scenario_with_parsed_json_and_tables() {
    let server = TestServer::start_admin().await;
    let url = server.url("");
    let config = tempfile::tempdir().unwrap();
    let home = config.path().to_str().unwrap();
    let env = [
        ("KEYPLANE_URL", url.as_str()),
        ("KEYPLANE_TOKEN", BOOTSTRAP),
        ("XDG_CONFIG_HOME", home),
    ];
    let run = |args: &[&str]| {
        let (code, out, err) = ctl(&env, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} said on stderr: {err}");
        out
    };

    let instance = json(&run(&[
        "instances",
        "create",
        "--name",
        "jan-a",
        "--labels",
        "env=prod,team=ml",
        "--allowed-scopes",
        "inference:chat,models:read",
        "-o",
        "json",
    ]));
    let instance_id = instance["id"].as_str().unwrap();
    assert_eq!(instance["labels"]["env"], "prod");
    // A secret alone on standard output, safe to redirect into a file.
    let secret = run(&[
        "keys",
        "create",
        instance_id,
        "--name",
        "laptop",
        "--scopes",
        "inference:chat",
        "--expires-in",
        "30d",
        "--field",
        "secret",
    ]);
    assert!(
        secret.starts_with("kpi_") && secret.trim_end().len() == 42 && secret.lines().count() == 1
    );
    let table = run(&["keys", "list", "--selector", "env=prod"]);
    assert!(
        table.starts_with("ID ") && table.lines().next().unwrap().contains("NAME"),
        "{table}"
    );
    assert!(
        table.contains("laptop") && !table.contains(secret.trim()),
        "{table}"
    );

    // Rotation by selector: planned, refused off a terminal without --yes, done.
    let plan = json(&run(&[
        "keys",
        "rotate",
        "--selector",
        "env=prod",
        "--grace",
        "1h",
        "--dry-run",
        "-o",
        "json",
    ]));
    assert_eq!(plan["dry_run"], true);
    let (code, _, err) = ctl(
        &env,
        &["keys", "rotate", "--selector", "env=prod", "--grace", "1h"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    let rotated = json(&run(&[
        "keys",
        "rotate",
        "--selector",
        "env=prod",
        "--grace",
        "1h",
        "--yes",
        "-o",
        "json",
    ]));
    let successor = &rotated["rotated"][0];
    assert!(successor["rotated_from"].as_str().is_some());
    let successor_id = successor["id"].as_str().unwrap();

    // A role change, planned as YAML; then a revocation and the audit check.
    let yaml = run(&[
        "roles",
        "put",
        "chatter",
        "--scopes",
        "inference:chat",
        "--dry-run",
        "-o",
        "yaml",
    ]);
    assert!(yaml.contains("dry_run: true"), "{yaml}");
    let revoked = json(&run(&[
        "keys",
        "revoke",
        successor_id,
        "--reason",
        "done",
        "--yes",
        "-o",
        "json",
    ]));
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(run(&["audit", "verify", "--field", "valid"]), "true\n");
    let whoami = run(&["whoami", "--field", "actor"]);
    assert_eq!(whoami, "bootstrap\n");

    // Lists page through the API's cursors by themselves.
    for n in 0..7 {
        run(&[
            "instances",
            "create",
            "--name",
            &format!("page-{n}"),
            "-o",
            "json",
        ]);
    }
    let names = run(&["instances", "list", "--limit", "3", "--field", "name"]);
    assert_eq!(names.lines().count(), 8, "{names}");

    // Shell completion.
    assert!(run(&["completion", "bash"]).contains("keyplanectl"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_with_one_line_and_its_exit_code_never_a_secret() {
    let server = TestServer::start_admin().await;
    let url = server.url("");
    let config = tempfile::tempdir().unwrap();
    let home = config.path().to_str().unwrap();
    let with = |extra: &[(&'static str, &str)]| {
        let mut env = vec![("XDG_CONFIG_HOME", home.to_owned())];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    };
    let check = |env: Vec<(&str, String)>, args: &[&str], code: i32, says: &str| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, out, err) = ctl(&env, args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(says), "{args:?}: want {says:?}, got {err}");
        assert!(
            !err.contains("panicked") && !err.contains(BOOTSTRAP),
            "{err}"
        );
    };
    let token = [
        ("KEYPLANE_URL", url.as_str()),
        ("KEYPLANE_TOKEN", BOOTSTRAP),
    ];
    check(
        with(&token),
        &["--profile", "nope", "instances", "list"],
        2,
        "no profile named",
    );
    check(
        with(&[
            ("KEYPLANE_URL", "http://127.0.0.1:9"),
            ("KEYPLANE_TOKEN", BOOTSTRAP),
        ]),
        &["instances", "list"],
        3,
        "cannot be reached",
    );
    check(
        with(&token),
        &["instances", "list", "--selector", "tier in gpu"],
        1,
        "selector",
    );
    check(
        with(&[
            ("KEYPLANE_URL", url.as_str()),
            ("KEYPLANE_TOKEN", "kps_expiredexpiredexpiredexpiredexpire"),
        ]),
        &["instances", "list"],
        1,
        "refused (401",
    );
    check(with(&token), &["keys", "create"], 2, "required");
    check(
        with(&token),
        &["keys", "create", "x", "--expires-in", "soon"],
        2,
        "--expires-in",
    );
    check(
        with(&token),
        &["keys", "get", "not-a-uuid"],
        1,
        "refused (4",
    );
    check(with(&[]), &["instances", "list"], 2, "KEYPLANE_URL");

    // A profile file others can read is refused: it holds tokens.
    let path = config.path().join("keyplane/config.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "[profiles.x]\nurl = \"http://x\"\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    check(with(&token), &["instances", "list"], 2, "chmod 600");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_signs_a_person_in_through_the_browser_and_keeps_the_token_0600() {
    let url = fresh_database().await;
    let (settings, _idp, origin) = keyplane_with_idp(admin_settings_for(&url)).await;
    let server = TestServer::start_with(settings).await;
    let config = tempfile::tempdir().unwrap();
    let home = config.path().to_str().unwrap().to_owned();

    let mut login = Command::new(binary())
        .args(["login", "--url", &origin, "--profile", "ops"])
        .env_clear()
        .env("XDG_CONFIG_HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(login.stderr.take().unwrap()).lines();
    let link = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("Open ")
        .unwrap()
        .to_owned();
    let user_code = link.rsplit("user_code=").next().unwrap().to_owned();
    let approved = Browser::default()
        .approve_terminal(
            &origin,
            &user_code,
            &Person::in_group("nia", "keyplane-ops"),
        )
        .await;
    assert_eq!(approved.status(), 200);
    let status = tokio::task::spawn_blocking(move || login.wait().unwrap())
        .await
        .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("signed in as oidc:nia (operator)")),
        "{rest:?}"
    );

    let path = config.path().join("keyplane/config.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let (code, out, err) = ctl(
        &[("XDG_CONFIG_HOME", &home)],
        &["whoami", "--field", "actor"],
    );
    assert_eq!((code, out.as_str()), (0, "oidc:nia\n"), "{err}");

    // An admin key from standard input, into another profile.
    let (_, key) = server
        .admin(
            reqwest::Method::POST,
            "/v1/admin-keys",
            Some(serde_json::json!({"name": "ci", "role": "viewer"})),
        )
        .await;
    let mut child = Command::new(binary())
        .args(["login", "--admin-key", "--url", &origin, "--profile", "ci"])
        .env_clear()
        .env("XDG_CONFIG_HOME", &home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.take().unwrap(),
        "{}",
        key["secret"].as_str().unwrap()
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (code, out, _) = ctl(
        &[("XDG_CONFIG_HOME", &home)],
        &["--profile", "ci", "whoami", "--field", "role"],
    );
    assert_eq!((code, out.as_str()), (0, "viewer\n"));
    server.stop().await.unwrap();
}
