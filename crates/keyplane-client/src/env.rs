//! Secrets from the environment: `NAME` or a file named by `NAME_FILE` (the
//! Docker and Kubernetes secrets convention), never both.

use std::path::Path;

use secrecy::SecretString;

/// A secret's variable is set wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct EnvError {
    /// The variable at fault.
    pub variable: String,
    /// What is wrong (never the value).
    pub reason: String,
}

/// Reads the secret `name` from `$name`, or from the file `$name_FILE` names
/// (one trailing newline dropped). Neither set: None.
pub fn secret_from_env(name: &str) -> Result<Option<SecretString>, EnvError> {
    let file_var = format!("{name}_FILE");
    let error = |variable: &str, reason: String| EnvError {
        variable: variable.to_owned(),
        reason,
    };
    let direct = std::env::var(name).ok().filter(|v| !v.is_empty());
    let path = std::env::var_os(&file_var).filter(|v| !v.is_empty());
    match (direct, path) {
        (Some(_), Some(_)) => Err(error(
            name,
            format!("set either {name} or {file_var}, not both"),
        )),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|err| {
                error(
                    &file_var,
                    format!(
                        "expected a readable file ({}: {err})",
                        Path::new(&path).display()
                    ),
                )
            })?;
            let value = text.trim_end_matches(['\r', '\n']).to_owned();
            if value.is_empty() {
                return Err(error(&file_var, "the file is empty".to_owned()));
            }
            Ok(Some(SecretString::from(value)))
        }
        (None, None) => Ok(None),
    }
}
