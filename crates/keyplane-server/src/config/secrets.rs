//! The secrets, from the environment only (or files it names): the
//! bootstrap token and the master key; and auth, which keyplane never
//! turns off outside `dev`.

use keyplane_domain::Mode;
use secrecy::ExposeSecret;

use crate::config::sources::secret_from_env;
use crate::config::{ConfigError, Settings};
use crate::signing::MasterKey;

/// Reads the secrets into `settings`.
pub(super) fn read(settings: &mut Settings) -> Result<(), ConfigError> {
    let mode = settings.mode;
    let bootstrap_token = secret_from_env("KEYPLANE_BOOTSTRAP_TOKEN")?;
    if bootstrap_token
        .as_ref()
        .is_some_and(|token| token.expose_secret().chars().count() < 32)
    {
        return Err(ConfigError::new(
            "KEYPLANE_BOOTSTRAP_TOKEN",
            "expected at least 32 characters",
        ));
    }
    settings.bootstrap_token = bootstrap_token;

    // Only the gate can run without auth (dev, loopback); keyplane never can.
    if mode != Mode::Dev
        && std::env::var("KEYPLANE_AUTH").is_ok_and(|v| v.eq_ignore_ascii_case("disabled"))
    {
        return Err(ConfigError::new(
            "KEYPLANE_AUTH",
            format!("auth cannot be disabled in {mode} mode"),
        ));
    }

    let master_key = secret_from_env("KEYPLANE_MASTER_KEY")?;
    match &master_key {
        Some(key) => {
            MasterKey::parse(key.expose_secret())
                .map_err(|err| ConfigError::new("KEYPLANE_MASTER_KEY", err.to_string()))?;
        }
        None if mode != Mode::Dev => {
            return Err(ConfigError::new(
                "KEYPLANE_MASTER_KEY",
                format!("required in {mode} mode (32 bytes, e.g. `openssl rand -base64 32`)"),
            ));
        }
        None => {}
    }
    // The key being rotated away from: it opens what it sealed, never seals.
    let previous = secret_from_env("KEYPLANE_MASTER_KEY_PREVIOUS")?;
    if let Some(key) = &previous {
        MasterKey::parse(key.expose_secret())
            .map_err(|err| ConfigError::new("KEYPLANE_MASTER_KEY_PREVIOUS", err.to_string()))?;
        if master_key.is_none() {
            return Err(ConfigError::new(
                "KEYPLANE_MASTER_KEY_PREVIOUS",
                "set only beside KEYPLANE_MASTER_KEY (the key it is being replaced by)",
            ));
        }
    }
    settings.master_key = master_key;
    settings.master_key_previous = previous;
    Ok(())
}
