//! The `tls` link's certificates: PEM files named in the config, loaded into rustls configs
//! that require a certificate from the other side (mutual authentication).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// `[tls]` in either daemon's config (unknown keys are reported by the config loader).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RawTls {
    /// This end's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// This end's private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA (PEM) that signed the other end's certificate.
    pub ca: Option<PathBuf>,
    /// Sender only: the name in the receiver's certificate (default: the gate's host).
    pub server_name: Option<String>,
}

/// Why the `[tls]` files could not be made into a rustls config. Every case is bad
/// configuration (the operator's PEM files) or local I/O reading them.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `cert` cannot be read or is not PEM.
    #[error("[tls] cert {path}: {error}")]
    Cert {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    /// `cert` holds no certificate.
    #[error("[tls] cert {path} holds no certificate")]
    NoCert { path: PathBuf },
    /// `key` cannot be read or holds no private key.
    #[error("[tls] key {path}: {error}")]
    Key {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    /// `ca` cannot be read or is not PEM.
    #[error("[tls] ca {path}: {error}")]
    Ca {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    /// A certificate in `ca` is not usable as a root.
    #[error("[tls] ca {path}: {error}")]
    CaCert { path: PathBuf, error: rustls::Error },
    /// `ca` holds no certificate.
    #[error("[tls] ca {path} holds no certificate")]
    NoCa { path: PathBuf },
    /// No client verifier can be built on `ca`'s certificates.
    #[error("[tls] ca {path}: {error}")]
    Verifier {
        path: PathBuf,
        error: rustls::server::VerifierBuilderError,
    },
    /// `cert` and `key` do not belong together, or rustls refuses them.
    #[error("[tls] cert {cert} and key {key} do not form a usable pair: {error}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

/// Refuses a private key file that others may read (0640 root:gapsync is right).
fn check_private(problems: &mut Vec<String>, key: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(mode) = std::fs::metadata(key).map(|m| m.permissions().mode() & 0o7777) else {
        return;
    };
    if mode & 0o007 != 0 {
        let p = key.display();
        problems.push(format!(
            "[tls] key {p} is open to others (mode {mode:04o}); only the daemon's group may read it: chown root:{g} {p} && chmod 0640 {p}",
            g = crate::folders::RunningAs::current().group
        ));
    }
}

/// The three files, resolved against the config's folder.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Resolves `raw`, pushing a problem for each missing file.
    pub fn check(problems: &mut Vec<String>, base: &Path, raw: &RawTls) -> Option<TlsFiles> {
        let mut get = |name: &str, v: &Option<PathBuf>| {
            let p = v.as_ref().map(|p| crate::config::abs(base, p));
            if p.is_none() {
                problems.push(format!("[tls] needs `{name}` (a PEM file)"));
            }
            p
        };
        let (cert, key, ca) = (
            get("cert", &raw.cert),
            get("key", &raw.key),
            get("ca", &raw.ca),
        );
        let mut missing = false;
        for (name, p) in [("cert", &cert), ("key", &key), ("ca", &ca)] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_file()) {
                problems.push(format!("[tls] {name} {} does not exist", p.display()));
                missing = true;
            }
        }
        if missing {
            return None;
        }
        if let Some(key) = &key {
            check_private(problems, key);
        }
        Some(TlsFiles {
            cert: cert?,
            key: key?,
            ca: ca?,
        })
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|error| TlsError::Cert {
                path: self.cert.clone(),
                error,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCert {
                path: self.cert.clone(),
            });
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_file(&self.key).map_err(|error| TlsError::Key {
            path: self.key.clone(),
            error,
        })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|error| TlsError::Ca {
                path: self.ca.clone(),
                error,
            })?;
        for c in certs {
            roots.add(c).map_err(|error| TlsError::CaCert {
                path: self.ca.clone(),
                error,
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCa {
                path: self.ca.clone(),
            });
        }
        Ok(Arc::new(roots))
    }

    fn pair_error(&self, error: rustls::Error) -> TlsError {
        TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            error,
        }
    }

    /// The receiver's config: its certificate, and client certificates required, signed by `ca`.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?)
            .build()
            .map_err(|error| TlsError::Verifier {
                path: self.ca.clone(),
                error,
            })?;
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.private_key()?)
            .map_err(|e| self.pair_error(e))?;
        Ok(Arc::new(config))
    }

    /// The sender's config: the receiver's certificate must be signed by `ca`; ours is presented.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.private_key()?)
            .map_err(|e| self.pair_error(e))?;
        Ok(Arc::new(config))
    }
}
