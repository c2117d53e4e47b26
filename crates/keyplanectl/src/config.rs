//! Where keyplane is and what to present: flags, then `KEYPLANE_URL` and
//! `KEYPLANE_TOKEN` (or `KEYPLANE_TOKEN_FILE`), then a named profile in
//! `~/.config/keyplane/config.toml` (mode 0600; `keyplanectl login`
//! writes it). A token never comes from a flag: flags show in `ps`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The profiles file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProfileFile {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    /// The profiles, by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One keyplane, and the credential for it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Its URL (several, comma-separated, are tried in turn).
    pub url: Option<String>,
    /// The token: a session (`kps_…`) or an admin key (`kpa_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where the profiles file is.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("keyplane/config.toml"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".config/keyplane/config.toml"))
}

/// Reads the profiles file; none is an empty one. A file others can read
/// is refused: it holds tokens.
pub fn read() -> anyhow::Result<ProfileFile> {
    let path = path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(ProfileFile::default()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let mode = std::fs::metadata(&path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    toml::from_str(&text).map_err(|err| anyhow!("{}: {}", path.display(), err.message()))
}

/// Writes the profiles file, mode 0600.
pub fn write(file: &ProfileFile) -> anyhow::Result<PathBuf> {
    let path = path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string_pretty(file)?;
    let temporary = path.with_extension("toml.new");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// What a command runs against.
#[derive(Debug, Clone)]
pub struct Target {
    /// keyplane's URLs, tried in turn.
    pub urls: Vec<String>,
    /// The bearer token, if any.
    pub token: Option<String>,
}

/// The target: `url` (a flag), the environment, then the profile
/// `profile` (or the default one).
pub fn target(url: Option<String>, profile: Option<&str>) -> anyhow::Result<Target> {
    let file = read()?;
    let chosen = profile
        .map(str::to_owned)
        .or_else(|| std::env::var("KEYPLANE_PROFILE").ok())
        .or(file.default_profile.clone());
    let from_profile = match &chosen {
        Some(name) => Some(
            file.profiles
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow!("no profile named {name:?} in {}", path_text()))?,
        ),
        None => None,
    };
    let url = url
        .or_else(|| std::env::var("KEYPLANE_URL").ok().filter(|u| !u.is_empty()))
        .or_else(|| from_profile.as_ref().and_then(|p| p.url.clone()))
        .ok_or_else(|| {
            anyhow!("where is keyplane? set KEYPLANE_URL, --url, or a profile (keyplanectl login)")
        })?;
    let token = match std::env::var("KEYPLANE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(token) => Some(token),
        None => match std::env::var_os("KEYPLANE_TOKEN_FILE") {
            Some(file) => Some(
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!("reading KEYPLANE_TOKEN_FILE {}", file.to_string_lossy())
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => from_profile.and_then(|p| p.token),
        },
    };
    let urls = url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    Ok(Target { urls, token })
}

fn path_text() -> String {
    path().map_or_else(
        |_| "the profiles file".to_owned(),
        |p| p.display().to_string(),
    )
}

/// Saves `token` for `url` as profile `name` (and makes it the default
/// when there is none).
pub fn save_login(name: &str, url: &str, token: &str) -> anyhow::Result<PathBuf> {
    let mut file = read()?;
    file.profiles.insert(
        name.to_owned(),
        Profile {
            url: Some(url.to_owned()),
            token: Some(token.to_owned()),
        },
    );
    if file.default_profile.is_none() {
        file.default_profile = Some(name.to_owned());
    }
    write(&file)
}
