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

    fn chain(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("[tls] cert {}: {e}", self.cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "[tls] cert {} holds no certificate",
            self.cert.display()
        );
        Ok(certs)
    }

    fn private_key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| anyhow::anyhow!("[tls] key {}: {e}", self.key.display()))
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("[tls] ca {}: {e}", self.ca.display()))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("[tls] ca {}: {e}", self.ca.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "[tls] ca {} holds no certificate",
            self.ca.display()
        );
        Ok(Arc::new(roots))
    }

    fn pair_error(&self, e: rustls::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "[tls] cert {} and key {} do not form a usable pair: {e}",
            self.cert.display(),
            self.key.display()
        )
    }

    /// The receiver's config: its certificate, and client certificates required, signed by `ca`.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?)
            .build()
            .map_err(|e| anyhow::anyhow!("[tls] ca {}: {e}", self.ca.display()))?;
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.private_key()?)
            .map_err(|e| self.pair_error(e))?;
        Ok(Arc::new(config))
    }

    /// The sender's config: the receiver's certificate must be signed by `ca`; ours is presented.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.private_key()?)
            .map_err(|e| self.pair_error(e))?;
        Ok(Arc::new(config))
    }
}
