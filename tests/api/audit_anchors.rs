//! The audit log held to account outside its database: someone who can
//! write to the database rewrites the whole chain consistently, cuts it
//! short, or plants a signing key of their own. Each is caught, online
//! (`/v1/audit/verify`) and offline (`keyplane audit verify --trust`).

use keyplane_store::audit::Entry;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, admin_settings_for, fresh_database};

/// A server with some history and a signed checkpoint of its head.
async fn checkpointed(url: &str) -> (TestServer, sqlx::PgPool, Value) {
    let server = TestServer::start_with(admin_settings_for(url)).await;
    for i in 0..4 {
        server
            .instance(&format!("jan-{i}"), &["inference:chat"])
            .await;
    }
    let (status, checkpoint) = server
        .admin(Method::POST, "/v1/audit/checkpoints", None)
        .await;
    assert_eq!(status, 200, "{checkpoint}");
    let db = sqlx::PgPool::connect(url).await.unwrap();
    (server, db, checkpoint)
}

async fn verify(server: &TestServer) -> Value {
    let (status, body) = server.admin(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Rewrites every entry from `from_seq` on, editing the first, and
/// recomputes every hash and link as keyplane would: a consistent forgery.
async fn rewrite_chain(db: &sqlx::PgPool, from_seq: i64) {
    let rows: Vec<Entry> = sqlx::query_as("select * from audit_log where seq >= $1 order by seq")
        .bind(from_seq)
        .fetch_all(db)
        .await
        .unwrap();
    let mut prev = rows[0].prev_hash.clone().unwrap();
    for (i, mut row) in rows.into_iter().enumerate() {
        if i == 0 {
            row.details = sqlx::types::Json(json!({"name": "nobody-was-here"}));
        }
        let hash = row.expected_hash(&prev).to_vec();
        sqlx::query("update audit_log set details = $2, prev_hash = $3, hash = $4 where id = $1")
            .bind(row.id)
            .bind(&row.details)
            .bind(&prev)
            .bind(&hash)
            .execute(db)
            .await
            .unwrap();
        prev = hash;
    }
}

#[tokio::test]
async fn a_chain_rewritten_consistently_in_sql_disagrees_with_its_checkpoints() {
    let url = fresh_database().await;
    let (server, db, _) = checkpointed(&url).await;
    let before = verify(&server).await;
    assert_eq!(before["valid"], true, "{before}");
    assert_eq!(before["checkpoints"], 1);

    rewrite_chain(&db, 2).await;
    // Every link and hash is consistent again: only the checkpoint knows.
    let walk = keyplane_store::audit::verify(&db, Vec::new())
        .await
        .unwrap();
    assert!(walk.valid, "the forgery is consistent by itself");
    let after = verify(&server).await;
    assert_eq!(after["valid"], false, "{after}");
    assert!(
        after["problem"].as_str().unwrap().contains("rewritten"),
        "{after}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_chain_cut_short_at_either_end_is_caught() {
    for end in ["head", "tail"] {
        let url = fresh_database().await;
        let (server, db, checkpoint) = checkpointed(&url).await;
        let head = checkpoint["seq"].as_i64().unwrap();
        let cut = if end == "head" { head } else { 1 };
        sqlx::query("delete from audit_log where seq = $1")
            .bind(cut)
            .execute(&db)
            .await
            .unwrap();
        let verdict = verify(&server).await;
        assert_eq!(verdict["valid"], false, "{end}: {verdict}");
        let problem = verdict["problem"].as_str().unwrap();
        match end {
            "head" => assert!(problem.contains("removed from the head"), "{problem}"),
            _ => assert!(problem.contains("removed from its start"), "{problem}"),
        }
        server.stop().await.unwrap();
    }
}

/// A signing key and a checkpoint someone with database access made, to
/// cover a rewritten chain: the key was never sealed with the master key.
async fn plant_a_key(db: &sqlx::PgPool) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let seed = [7u8; 32];
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    sqlx::query(
        "insert into signing_keys (kid, public_key, sealed_private_key, created_at, active_from)
         values ('planted', $1, $2, now() + interval '1 hour', now())",
    )
    .bind(public.as_slice())
    .bind(vec![0u8; 60])
    .execute(db)
    .await
    .unwrap();
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("select seq, hash from audit_log order by seq desc limit 1")
            .fetch_one(db)
            .await
            .unwrap();
    let head_hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("keyplane-audit-checkpoint+jwt".to_owned());
    header.kid = Some("planted".to_owned());
    let der = key.to_pkcs8_der().unwrap();
    let signature = jsonwebtoken::encode(
        &header,
        &json!({"seq": seq, "head_hash": head_hash, "iat": 0, "iss": "forger"}),
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap();
    sqlx::query("delete from audit_checkpoints")
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "insert into audit_checkpoints (seq, head_hash, at, signature) values ($1, $2, now(), $3)",
    )
    .bind(seq)
    .bind(&hash)
    .bind(&signature)
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_signing_key_keyplane_did_not_seal_is_neither_believed_nor_published() {
    let url = fresh_database().await;
    let (server, db, _) = checkpointed(&url).await;
    // The forger rewrites the chain, throws the honest checkpoints away and
    // signs one of their own with a key they put in the table.
    rewrite_chain(&db, 2).await;
    plant_a_key(&db).await;
    let verdict = verify(&server).await;
    assert_eq!(verdict["valid"], false, "{verdict}");
    assert!(
        verdict["problem"].as_str().unwrap().contains("not trusted"),
        "{verdict}"
    );
    server.stop().await.unwrap();

    // A keyplane starting on that database refuses the planted key, though
    // it is the newest: not published, never signs.
    let server = TestServer::start_with(admin_settings_for(&url)).await;
    let jwks: Value = server
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(!kids.contains(&"planted"), "{kids:?}");
    assert!(!kids.is_empty());
    server.instance("after", &["inference:chat"]).await;
    let (_, checkpoint) = server
        .admin(Method::POST, "/v1/audit/checkpoints", None)
        .await;
    let kid = jsonwebtoken::decode_header(checkpoint["signature"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap();
    assert_ne!(kid, "planted");
    assert_eq!(
        verify(&server).await["valid"],
        false,
        "the forgery stays caught"
    );
    server.stop().await.unwrap();
}

/// Runs `keyplane audit verify` and answers its exit code and verdict.
fn verify_offline(args: &[&std::ffi::OsStr]) -> (Option<i32>, Value) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    let verdict = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code(), verdict)
}

#[tokio::test]
async fn an_export_is_anchored_by_its_signed_trailer_and_checkpoints() {
    let url = fresh_database().await;
    let (server, db, _) = checkpointed(&url).await;
    server.instance("jan-after", &["inference:chat"]).await;
    let export = server
        .as_(crate::support::BOOTSTRAP, Method::GET, "/v1/audit/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = export.lines().collect();
    let is = |line: &str, kind: &str| {
        serde_json::from_str::<Value>(line)
            .unwrap()
            .get(kind)
            .is_some()
    };
    assert!(
        is(lines.last().unwrap(), "export"),
        "a signed trailer ends it"
    );
    assert_eq!(lines.iter().filter(|l| is(l, "checkpoint")).count(), 1);
    let entries: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !is(l, "export") && !is(l, "checkpoint") && !is(l, "signing_key"))
        .collect();
    assert_eq!(entries.len(), 5, "{entries:?}");

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, lines: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    };
    let jwks = dir.path().join("jwks.json");
    let published: Value = server
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    std::fs::write(&jwks, published.to_string()).unwrap();
    let pin = published["keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");

    let whole = write("whole.ndjson", &lines);
    let (code, verdict) =
        verify_offline(&[whole.as_os_str(), "--trust".as_ref(), jwks.as_os_str()]);
    assert_eq!(code, Some(0), "{verdict}");
    assert_eq!(verdict["anchored"], true);
    assert_eq!(verdict["checkpoints"], 1);
    let (code, verdict) = verify_offline(&[whole.as_os_str(), "--trust".as_ref(), pin.as_ref()]);
    assert_eq!(
        code,
        Some(0),
        "a pinned fingerprint trusts the export's own key: {verdict}"
    );
    let (code, _) = verify_offline(&[whole.as_os_str()]);
    assert_eq!(code, Some(0), "without --trust the chain alone is checked");

    // Cut at either end, the chain still links, the trailer does not agree.
    let without_last_entry: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| *l != *entries.last().unwrap())
        .collect();
    let without_first_entry: Vec<&str> =
        lines.iter().copied().filter(|l| *l != entries[0]).collect();
    let without_trailer: Vec<&str> = lines[..lines.len() - 1].to_vec();
    for (name, cut) in [
        ("head.ndjson", without_last_entry),
        ("tail.ndjson", without_first_entry),
        ("trailer.ndjson", without_trailer),
    ] {
        let path = write(name, &cut);
        let (code, verdict) =
            verify_offline(&[path.as_os_str(), "--trust".as_ref(), jwks.as_os_str()]);
        assert_eq!(code, Some(1), "{name}: {verdict}");
        assert_eq!(verdict["valid"], false, "{name}");
    }
    // A fingerprint nobody pinned trusts nothing.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (code, verdict) = verify_offline(&[whole.as_os_str(), "--trust".as_ref(), wrong.as_ref()]);
    assert_eq!(code, Some(1), "{verdict}");

    // The chain rewritten in the database, exported again, checked against
    // the checkpoints an operator kept from before.
    let (_, kept) = server
        .admin(Method::GET, "/v1/audit/checkpoints", None)
        .await;
    let kept_file = dir.path().join("checkpoints.json");
    std::fs::write(&kept_file, kept.to_string()).unwrap();
    rewrite_chain(&db, 2).await;
    sqlx::query("delete from audit_checkpoints")
        .execute(&db)
        .await
        .unwrap();
    let forged = server
        .as_(crate::support::BOOTSTRAP, Method::GET, "/v1/audit/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forged_file = dir.path().join("forged.ndjson");
    std::fs::write(&forged_file, &forged).unwrap();
    let (code, verdict) = verify_offline(&[
        forged_file.as_os_str(),
        "--trust".as_ref(),
        jwks.as_os_str(),
    ]);
    assert_eq!(
        code,
        Some(0),
        "alone, a consistent forgery signed on export holds: {verdict}"
    );
    let (code, verdict) = verify_offline(&[
        forged_file.as_os_str(),
        "--trust".as_ref(),
        jwks.as_os_str(),
        "--checkpoints".as_ref(),
        kept_file.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{verdict}");
    assert!(
        verdict["problem"].as_str().unwrap().contains("rewritten"),
        "{verdict}"
    );
    server.stop().await.unwrap();
}
