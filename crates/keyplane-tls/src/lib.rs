//! Serving keyplane and the gate: HTTPS with rustls (TLS 1.2 and 1.3 only,
//! each handshake off the accept path so one slow client cannot stall the
//! rest; plain HTTP sent to the port fails its handshake and is dropped),
//! certificates renewed on disk picked up, and connections bounded in number
//! and in how long they may ask for nothing (see [`serve`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
mod serve;

pub use rustls::ServerConfig;
pub use serve::{ConnectionLimits, serve};

/// Reads a PEM certificate chain and its private key, and checks they match.
/// With `client_ca`, clients may present a certificate, which must then chain
/// to one of its certificates (a client without one is still served).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("KEYPLANE_TLS_CERT: cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "KEYPLANE_TLS_CERT: {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "KEYPLANE_TLS_CERT: {} holds no certificate",
        cert.display()
    );
    let private = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "KEYPLANE_TLS_KEY: {} is not a readable PEM private key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .context("KEYPLANE_TLS_CERT and KEYPLANE_TLS_KEY do not belong together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies client certificates against the CA certificates in `path`;
/// clients without a certificate are let through to authenticate otherwise.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("KEYPLANE_TLS_CLIENT_CA: cannot read {}", path.display()))?
    {
        let certificate = certificate.with_context(|| {
            format!(
                "KEYPLANE_TLS_CLIENT_CA: {} is not a PEM certificate bundle",
                path.display()
            )
        })?;
        roots.add(certificate).with_context(|| {
            format!(
                "KEYPLANE_TLS_CLIENT_CA: {} holds a certificate that is not a usable CA",
                path.display()
            )
        })?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "KEYPLANE_TLS_CLIENT_CA: {} holds no certificate",
        path.display()
    );
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .context("KEYPLANE_TLS_CLIENT_CA")
}

/// The certificate a client presented and the handshake verified against
/// the client CA, as requests on its connection see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// SHA-256 of the certificate (DER).
    pub fingerprint: [u8; 32],
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Its URI subject alternative names (e.g. `urn:keyplane:node:<id>`).
    pub uris: Vec<String>,
    /// The end of its validity (Unix seconds).
    pub not_after: i64,
}

impl ClientCertificate {
    /// Reads what identifies the client from a verified end-entity certificate.
    pub fn from_der(der: &[u8]) -> Option<ClientCertificate> {
        use sha2::Digest;
        use x509_parser::extensions::GeneralName;
        let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
        let names: Vec<GeneralName<'_>> = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.clone())
            .unwrap_or_default();
        let dns_names = names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        let uris = names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect();
        Some(ClientCertificate {
            fingerprint: sha2::Sha256::digest(der).into(),
            dns_names,
            uris,
            not_after: parsed.validity().not_after.timestamp(),
        })
    }

    /// Whether the certificate names `name` (case-insensitively).
    pub fn names(&self, name: &str) -> bool {
        self.dns_names
            .iter()
            .any(|dns| dns.eq_ignore_ascii_case(name))
    }

    /// The node id the certificate is bound to, when it carries a URI SAN
    /// `urn:keyplane:node:<id>` (as the text after the prefix).
    pub fn node_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .find_map(|uri| uri.strip_prefix(NODE_URI_PREFIX))
    }
}

/// The URI SAN prefix that binds a client certificate to a node id.
pub const NODE_URI_PREFIX: &str = "urn:keyplane:node:";

/// A certificate and key that can be renewed on disk while serving: each new
/// connection gets the current pair; connections already open keep theirs.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Certificates {
    /// Reads and checks the pair.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Certificates>> {
        Certificates::load_with_client_ca(cert, key, None)
    }

    /// Reads and checks the pair, and the CA client certificates are checked
    /// against (re-read with the pair).
    pub fn load_with_client_ca(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<Arc<Certificates>> {
        Ok(Arc::new(Certificates {
            current: RwLock::new(server_config(cert, key, client_ca)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.map(Path::to_owned),
        }))
    }

    /// The pair new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; a pair that does not read or match is refused
    /// and the one in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = server_config(&self.cert, &self.key, self.client_ca.as_deref())?;
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Reloads on SIGHUP, and when either file changes on disk (checked
    /// every `every`), for as long as the returned task runs.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let certificates = Arc::clone(self);
        tokio::spawn(async move {
            let stamp = |c: &Certificates| {
                [&c.cert, &c.key]
                    .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            };
            let mut seen = stamp(&certificates);
            let mut ticks = tokio::time::interval(every);
            #[cfg(unix)]
            let mut hangups =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hangups.as_mut() {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                let asked = tokio::select! {
                    () = hangup => true,
                    _ = ticks.tick() => false,
                };
                let now = stamp(&certificates);
                if !asked && now == seen {
                    continue;
                }
                seen = now;
                match certificates.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %certificates.cert.display(), "TLS certificate reloaded")
                    }
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), "TLS certificate not reloaded; keeping the one in use")
                    }
                }
            }
        })
    }
}
