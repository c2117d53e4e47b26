//! The one place settings are looked up: a flag wins over the environment
//! (clap has already merged those two into the arguments), and either over
//! the configuration file (`KEYPLANE_CONFIG`, TOML, no secrets). A setting
//! is named by its environment variable; its key in the file is the same
//! name without `KEYPLANE_`, in lower case (`KEYPLANE_DB_MAX_CONNECTIONS` is
//! `db_max_connections`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use keyplane_domain::parse_duration;
use secrecy::SecretString;

use crate::config::{ConfigError, SettingsArgs};

/// Settings that are secrets and so may never come from the configuration file.
const SECRET_SETTINGS: [&str; 4] = [
    "DATABASE_URL",
    "KEYPLANE_BOOTSTRAP_TOKEN",
    "KEYPLANE_MASTER_KEY",
    "KEYPLANE_OIDC_CLIENT_SECRET",
];

/// The variable naming the configuration file itself.
const CONFIG: &str = "KEYPLANE_CONFIG";

/// The arguments, and the configuration file they name (if any).
pub(super) struct Sources<'a> {
    args: &'a SettingsArgs,
    file: toml::Table,
}

impl<'a> Sources<'a> {
    /// The arguments, with the file they name read and checked: TOML, only
    /// known settings, no secrets.
    pub(super) fn read(args: &'a SettingsArgs) -> Result<Sources<'a>, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        Ok(Sources { args, file })
    }

    /// The arguments as given.
    pub(super) fn args(&self) -> &'a SettingsArgs {
        self.args
    }

    /// The setting `variable` as text: its argument, else its key in the file
    /// (numbers may be written there bare or quoted).
    pub(super) fn text(
        &self,
        variable: &str,
        arg: &Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(value) = arg {
            return Ok(Some(value.clone()));
        }
        match self.file.get(&file_key(variable)) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text.clone())),
            Some(value @ (toml::Value::Integer(_) | toml::Value::Float(_))) => {
                Ok(Some(value.to_string()))
            }
            Some(_) => Err(ConfigError::new(
                CONFIG,
                format!("`{}` must be a string or a number", file_key(variable)),
            )),
        }
    }

    /// The setting `variable` as a path.
    pub(super) fn path(
        &self,
        variable: &str,
        arg: &Option<PathBuf>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let arg = arg.as_ref().map(|path| path.to_string_lossy().into_owned());
        Ok(self.text(variable, &arg)?.map(PathBuf::from))
    }

    /// The setting `variable`, read by `parse`; a value it refuses is named
    /// with what it expects.
    pub(super) fn parsed<T, E: fmt::Display>(
        &self,
        variable: &str,
        arg: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        self.text(variable, arg)?
            .map(|value| parse_with(variable, &value, parse))
            .transpose()
    }

    /// The setting `variable` as a whole number.
    pub(super) fn number(
        &self,
        variable: &str,
        arg: &Option<String>,
    ) -> Result<Option<u64>, ConfigError> {
        self.parsed(variable, arg, |text| {
            text.parse::<u64>().map_err(|_| "expected a whole number")
        })
    }

    /// The setting `variable` as a duration (`30s`, `5m`, `90d`, or seconds).
    pub(super) fn duration(
        &self,
        variable: &str,
        arg: &Option<String>,
    ) -> Result<Option<Duration>, ConfigError> {
        self.parsed(variable, arg, parse_duration)
    }
}

/// Reads `value` with `parse`; a refusal names `variable`, what it expects
/// and (cut short) what it got.
pub(super) fn parse_with<T, E: fmt::Display>(
    variable: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    parse(value.trim()).map_err(|err| {
        let shown: String = value.chars().take(64).collect();
        ConfigError::new(variable, format!("{err}, got {shown:?}"))
    })
}

/// Reads the secret `name` from `$name` or from the file `$name_FILE` names.
pub fn secret_from_env(name: &str) -> Result<Option<SecretString>, ConfigError> {
    keyplane_client::secret_from_env(name)
        .map_err(|err| ConfigError::new(&err.variable, err.reason))
}

/// A setting's key in the configuration file.
fn file_key(variable: &str) -> String {
    variable
        .strip_prefix("KEYPLANE_")
        .unwrap_or(variable)
        .to_ascii_lowercase()
}

/// The keys the configuration file may hold: every setting the arguments
/// know, but the file itself and the secrets.
fn known_keys() -> Vec<String> {
    let command = SettingsArgs::augment_args(clap::Command::new("keyplane"));
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .filter_map(|env| env.to_str())
        .filter(|env| *env != CONFIG)
        .map(file_key)
        .collect()
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(
            CONFIG,
            format!("expected a readable file ({}: {err})", path.display()),
        )
    })?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|err| ConfigError::new(CONFIG, format!("expected TOML ({})", err.message())))?;
    for variable in SECRET_SETTINGS {
        let key = file_key(variable);
        if table.contains_key(&key) {
            return Err(ConfigError::new(
                CONFIG,
                format!(
                    "`{key}` is a secret: set {variable} or {variable}_FILE in the environment instead"
                ),
            ));
        }
    }
    let known = known_keys();
    if let Some(unknown) = table.keys().find(|key| !known.contains(key)) {
        let unknown: String = unknown.chars().take(64).collect();
        return Err(ConfigError::new(
            CONFIG,
            format!(
                "expected known settings, got `{unknown}` (known: {})",
                known.join(", ")
            ),
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_are_the_variables_without_their_prefix() {
        assert_eq!(
            file_key("KEYPLANE_DB_MAX_CONNECTIONS"),
            "db_max_connections"
        );
        assert_eq!(file_key("DATABASE_URL"), "database_url");
        let known = known_keys();
        for key in ["mode", "listen", "tls_cert", "rate_auth_failures", "issuer"] {
            assert!(known.contains(&key.to_owned()), "{key}: {known:?}");
        }
        assert!(!known.contains(&"config".to_owned()));
    }
}
