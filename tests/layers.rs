//! The layers hold: HTTP handlers (and whatever else speaks HTTP) reach the
//! database and the audit log only through the operations layer, and the
//! operations layer knows nothing of HTTP. A rule kept in a handler would be
//! a rule the console and bulk operations do not keep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

/// What the files speaking HTTP must not mention: the store, the database
/// driver, the pool, or the audit log's writers.
const HTTP_MUST_NOT: [&str; 7] = [
    "keyplane_store",
    "sqlx",
    ".pool()",
    ".db.",
    "audit::append",
    "append_alone",
    "NewEntry",
];

/// What the operations layer must not mention: HTTP, and the HTTP layer.
const OPS_MUST_NOT: [&str; 10] = [
    "axum",
    "http::",
    "StatusCode",
    "HeaderMap",
    "crate::error",
    "crate::routes",
    "crate::auth",
    "crate::extract",
    "crate::request",
    "ApiError",
];

/// The lines of `source` that mention any of `banned`, outside comments,
/// as `path:line: text`.
fn violations(path: &str, source: &str, banned: &[&str]) -> Vec<String> {
    source
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let code = line.split("//").next().unwrap_or_default();
            banned
                .iter()
                .any(|word| code.contains(word))
                .then(|| format!("{path}:{}: {}", index + 1, line.trim()))
        })
        .collect()
}

fn server_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn check(files: &[PathBuf], banned: &[&str]) -> Vec<String> {
    let root = server_source();
    files
        .iter()
        .flat_map(|path| {
            let source = std::fs::read_to_string(path).unwrap();
            let shown = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string();
            violations(&shown, &source, banned)
        })
        .collect()
}

#[test]
fn nothing_that_speaks_http_reaches_the_database_or_writes_audit_entries() {
    let src = server_source();
    let mut files = rust_files(&src.join("routes"));
    files.extend(rust_files(&src.join("console")));
    assert!(
        files.len() >= 10,
        "the handlers are where they were: {files:?}"
    );
    for file in ["auth.rs", "extract.rs", "error.rs", "request.rs"] {
        files.push(src.join(file));
    }
    let found = check(&files, &HTTP_MUST_NOT);
    assert!(
        found.is_empty(),
        "the HTTP layer reaches past the operations layer (move this into crates/keyplane-server/src/ops):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_operations_layer_knows_nothing_of_http() {
    let files = rust_files(&server_source().join("ops"));
    assert!(
        files.len() >= 10,
        "the operations are where they were: {files:?}"
    );
    let found = check(&files, &OPS_MUST_NOT);
    assert!(
        found.is_empty(),
        "the operations layer speaks HTTP:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_a_handler_that_reaches_the_database() {
    let handler = r#"
use keyplane_store::keys;
/// Mentions keyplane_store in a comment, which is fine.
pub async fn get_key(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) {
    let row = keys::get(state.db.pool(), id).await; // the database, directly
    audit::append(&mut tx, &entry).await;
}
"#;
    let found = violations("routes/keys.rs", handler, &HTTP_MUST_NOT);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("routes/keys.rs:2: use keyplane_store"));
    assert!(found[1].contains("state.db.pool()"));
    assert!(found[2].contains("audit::append"));

    let operation = "use axum::http::StatusCode;\nfn f() -> Result<(), crate::error::ApiError> {}";
    assert_eq!(violations("ops/keys.rs", operation, &OPS_MUST_NOT).len(), 2);
}
