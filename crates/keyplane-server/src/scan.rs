//! `keyplane scan PATH...`: finds keyplane keys in files (a repository, a
//! build log, a backup), prints each masked with its file and line, and with
//! `--report` sends them to keyplane's `POST /v1/leaks`, which stops every
//! one that still works.
//!
//! A key's checksum makes a false find rare, so a find is worth acting on.
//! Nothing a scan prints or logs holds a whole key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use keyplane_domain::{KeyKind, KeySecret, find_keys};
use serde_json::json;

/// Files larger than this are skipped (and said to be).
const MAX_FILE: u64 = 16 * 1024 * 1024;
/// Findings sent in one report (the endpoint's limit).
const REPORT_BATCH: usize = crate::ops::leaks::MAX_REPORTED;

/// A key found in a file.
#[derive(Debug)]
pub struct Finding {
    /// The file.
    pub path: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// The key.
    pub key: KeySecret,
}

impl Finding {
    /// One line for people: `path:line: kpi_…9f2c (instance key)`.
    pub fn describe(&self) -> String {
        let kind = match self.key.kind() {
            KeyKind::Admin => "admin key",
            KeyKind::Instance => "instance key",
            KeyKind::Node => "node key",
            KeyKind::Enrollment => "enrollment token",
            KeyKind::Session => "session token",
        };
        format!(
            "{}:{}: {} ({kind})",
            self.path.display(),
            self.line,
            self.key.masked()
        )
    }
}

/// What a scan found, and what it could not read.
#[derive(Debug, Default)]
pub struct Scan {
    /// The keys found, in the order of the files and lines.
    pub findings: Vec<Finding>,
    /// Files skipped, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Scans `paths`: files, and folders walked recursively (symbolic links are
/// not followed, so a scan stays within what it was given).
pub fn scan(paths: &[PathBuf]) -> Scan {
    let mut scan = Scan::default();
    for path in paths {
        walk(path, &mut scan);
    }
    scan
}

fn walk(path: &Path, scan: &mut Scan) {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) => return scan.skipped.push((path.to_owned(), err.to_string())),
    };
    if metadata.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(err) => return scan.skipped.push((path.to_owned(), err.to_string())),
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            walk(&child, scan);
        }
    } else if metadata.is_file() {
        if metadata.len() > MAX_FILE {
            return scan
                .skipped
                .push((path.to_owned(), format!("larger than {MAX_FILE} bytes")));
        }
        match std::fs::read(path) {
            Ok(bytes) => scan_text(path, &String::from_utf8_lossy(&bytes), scan),
            Err(err) => scan.skipped.push((path.to_owned(), err.to_string())),
        }
    }
}

fn scan_text(path: &Path, text: &str, scan: &mut Scan) {
    for (number, line) in text.lines().enumerate() {
        for (_, key) in find_keys(line) {
            scan.findings.push(Finding {
                path: path.to_owned(),
                line: number + 1,
                key,
            });
        }
    }
}

/// Sends `findings` to `keyplane` (its base URL) as leak reports, with
/// `file://` URLs of where they were found; a key found twice is reported
/// once. `ca_bundle` is trusted besides the system's roots.
pub async fn report(
    keyplane: &str,
    ca_bundle: Option<&Path>,
    findings: &[Finding],
) -> anyhow::Result<()> {
    let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("reading certificates from {}", path.display()))?
        {
            client = client.add_root_certificate(certificate);
        }
    }
    let client = client.build()?;
    let url = format!("{}/v1/leaks", keyplane.trim_end_matches('/'));
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&Finding> = findings
        .iter()
        .filter(|f| seen.insert(*f.key.digest().as_bytes()))
        .collect();
    for batch in unique.chunks(REPORT_BATCH) {
        let body: Vec<_> = batch
            .iter()
            .map(|finding| {
                let place = std::path::absolute(&finding.path).unwrap_or(finding.path.clone());
                json!({
                    "token": finding.key.expose(),
                    "type": "keyplane",
                    "url": format!("file://{}#L{}", place.display(), finding.line),
                    "source": "keyplane scan",
                })
            })
            .collect();
        let response = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|err| anyhow::anyhow!("cannot reach keyplane at {keyplane}: {err}"))?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "keyplane refused the report: {status} {}",
            keyplane_domain::scrub_keys(&response.text().await.unwrap_or_default())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_found_by_file_and_line_and_shown_masked() {
        let dir = tempfile_dir();
        let key = KeySecret::generate(KeyKind::Instance).unwrap();
        std::fs::create_dir_all(dir.join("nested")).unwrap();
        std::fs::write(
            dir.join("nested/.env"),
            format!("# config\nJAN_KEY={}\n", key.expose()),
        )
        .unwrap();
        std::fs::write(
            dir.join("notes.txt"),
            "kpi_ is the prefix of instance keys\n",
        )
        .unwrap();
        let found = scan(std::slice::from_ref(&dir));
        assert_eq!(found.findings.len(), 1);
        let line = found.findings[0].describe();
        assert!(
            line.ends_with(&format!(".env:2: {} (instance key)", key.masked())),
            "{line}"
        );
        assert!(!line.contains(key.expose()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keyplane-scan-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
