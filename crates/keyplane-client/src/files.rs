//! Writing secrets to disk: the key files of agents and nodes.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents` atomically (a reader sees the old file or
/// the new one, never part of either), readable and writable by this user
/// only, and durable once this returns. The directory is made if need be.
///
/// The new contents are staged in a file of an unpredictable name, created
/// with `O_EXCL | O_NOFOLLOW`: a symlink or file someone else planted in the
/// directory is never written through, and `path` itself, if a symlink, is
/// replaced rather than followed.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    fn naming(what: &'static str, file: &Path) -> impl Fn(std::io::Error) -> std::io::Error {
        let file = file.display().to_string();
        move |err| std::io::Error::new(err.kind(), format!("{what} {file}: {err}"))
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(naming("creating", dir))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce)
        .map_err(|e| std::io::Error::other(format!("random source failed: {e}")))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = dir.join(format!(
        ".{name}.{}.tmp",
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options
        .open(&staging)
        .map_err(naming("writing", &staging))?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(naming("replacing", path)(err));
    }
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_replaced_never_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"do not touch").unwrap();
        let key = dir.path().join("agent.key");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        // The old, predictable staging name, planted too.
        std::os::unix::fs::symlink(&victim, dir.path().join("agent.key.new")).unwrap();
        write_private(&key, b"kpi_secret").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the symlink itself was replaced"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"kpi_secret");
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0, "no staging file is left behind");
    }
}
