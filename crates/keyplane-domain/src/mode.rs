use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How strictly keyplane (or a gate) guards itself.
///
/// The modes are ordered from weakest to strongest, so `a < b` reads "a is
/// weaker than b" (used to flag a node that runs weaker than its control plane).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Zero setup: embedded database, plain HTTP, for a developer's machine.
    #[default]
    Dev,
    /// Production rules for keyed routes; configured routes are public.
    Mixed,
    /// TLS everywhere; refuses to start when anything is insecure.
    Prod,
}

impl Mode {
    /// The name used in configuration, logs and `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Mixed => "mixed",
            Mode::Prod => "prod",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not `dev`, `mixed` or `prod`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of dev, mixed, prod")]
pub struct ModeError;

impl FromStr for Mode {
    type Err = ModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dev" => Ok(Mode::Dev),
            "mixed" => Ok(Mode::Mixed),
            "prod" => Ok(Mode::Prod),
            _ => Err(ModeError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_case_insensitively_and_order_by_strength() {
        assert_eq!("PROD".parse::<Mode>(), Ok(Mode::Prod));
        assert_eq!(" mixed ".parse::<Mode>(), Ok(Mode::Mixed));
        assert_eq!("production".parse::<Mode>(), Err(ModeError));
        assert!(Mode::Dev < Mode::Mixed && Mode::Mixed < Mode::Prod);
        assert_eq!(Mode::default(), Mode::Dev);
    }
}
