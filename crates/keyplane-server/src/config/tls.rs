//! HTTPS: keyplane's certificate and key, and the CA that issues nodes'
//! client certificates.

use std::path::PathBuf;
use std::sync::Arc;

use keyplane_domain::Mode;

use crate::config::sources::Sources;
use crate::config::{ConfigError, Settings};

/// keyplane's certificate and key.
#[derive(Clone)]
pub struct TlsSettings {
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// The CA bundle client certificates are checked against, if any.
    pub client_ca: Option<PathBuf>,
    /// The two, read and checked against each other (and re-read when
    /// renewed on disk or on SIGHUP).
    pub certificates: Arc<keyplane_tls::Certificates>,
}

/// Reads the TLS settings into `settings`: HTTPS is required outside `dev`
/// (`mixed` is `prod` for its keyed routes), and the certificate and key
/// must read and belong together.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    let cert = sources.path("KEYPLANE_TLS_CERT", &args.tls_cert)?;
    let key = sources.path("KEYPLANE_TLS_KEY", &args.tls_key)?;
    let client_ca = sources.path("KEYPLANE_TLS_CLIENT_CA", &args.tls_client_ca)?;
    settings.tls = tls_settings(settings.mode, cert, key, client_ca)?;
    Ok(())
}

fn tls_settings(
    mode: Mode,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsSettings>, ConfigError> {
    if client_ca.is_some() && cert.is_none() {
        return Err(ConfigError::new(
            "KEYPLANE_TLS_CLIENT_CA",
            "client certificates need HTTPS: set KEYPLANE_TLS_CERT and KEYPLANE_TLS_KEY",
        ));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let certificates =
                keyplane_tls::Certificates::load_with_client_ca(&cert, &key, client_ca.as_deref())
                    .map_err(|err| {
                        let text = format!("{err:#}");
                        let setting = ["KEYPLANE_TLS_KEY", "KEYPLANE_TLS_CLIENT_CA"]
                            .into_iter()
                            .find(|setting| text.starts_with(setting))
                            .unwrap_or("KEYPLANE_TLS_CERT");
                        let detail = text
                            .strip_prefix(&format!("{setting}: "))
                            .unwrap_or(&text)
                            .to_owned();
                        ConfigError::new(setting, detail)
                    })?;
            Ok(Some(TlsSettings {
                cert,
                key,
                client_ca,
                certificates,
            }))
        }
        (None, None) if mode == Mode::Dev => Ok(None),
        (None, None) => Err(ConfigError::new(
            "KEYPLANE_TLS_CERT",
            format!("required in {mode} mode with KEYPLANE_TLS_KEY: keyplane serves HTTPS only"),
        )),
        (Some(_), None) => Err(ConfigError::new(
            "KEYPLANE_TLS_KEY",
            "required with KEYPLANE_TLS_CERT",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "KEYPLANE_TLS_CERT",
            "required with KEYPLANE_TLS_KEY",
        )),
    }
}
