//! The gateway's server certificate, read from files (a mounted `kubernetes.io/tls` Secret) and
//! read again when they change, so a rotated certificate (cert-manager renews well before
//! expiry) is served without a restart. A rotation caught half-written, or files that do not
//! match, keep the certificate being served and are tried again at the next check.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::error::Error;

/// How often the files' modification times are compared.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The certificate and key files and what was last loaded from them.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    time(cert).max(time(key))
}

/// Reads a certificate chain and its key (PEM) and checks that they belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, Error> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("reading certificates in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("reading the private key {}: {e}", key.display())))?;
    CertifiedKey::from_der(certs, private, &rustls::crypto::ring::default_provider())
        .map_err(|e| Error::Tls(format!("the certificate and key do not match: {e}")))
}

impl ReloadingCert {
    /// Loads the files once; an error here stops the gateway from starting.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, Error> {
        let stamp = modified(cert, key);
        let loaded = load(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((Arc::new(loaded), stamp)),
        }))
    }

    /// Loads the files again if they changed since the last load. Returns whether the served
    /// certificate changed.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = modified(&self.cert, &self.key);
        let last = self.current.read().unwrap_or_else(|e| e.into_inner()).1;
        if stamp == last {
            return false;
        }
        match load(&self.cert, &self.key) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    (Arc::new(loaded), stamp);
                info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                true
            }
            Err(error) => {
                warn!(%error, "the TLS files changed but do not load; serving the previous certificate");
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_CHECK`] until the process ends.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }

    /// A server configuration that serves whatever is current at each handshake.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}
