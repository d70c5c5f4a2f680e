//! TLS with rustls on the `ring` provider: installing that provider once
//! for every client and server in the process, and the server's config
//! from PEM certificate and key files (`serve --tls-cert/--tls-key`),
//! whose certificate can be read again while the server runs.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Makes `ring` the process's rustls provider (once; later calls and a
/// provider installed already are fine). Every HTTP client in a process
/// that uses this crate needs it before it is built (reqwest is built
/// without a provider of its own).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file that cannot be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate and key do not make a configuration.
    #[error("the TLS certificate and key cannot be used: {0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration from a PEM certificate chain and a PEM private
/// key (PKCS#8, PKCS#1 or SEC1), offering HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(reloadable_server_config(cert, key)?.0)
}

/// As [`server_config`], with the certificate behind a [`ServerCert`]
/// that can be read again from its files while the server runs (a
/// renewed certificate, or other files), new connections getting it.
pub fn reloadable_server_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServerCert>), TlsError> {
    install_crypto_provider();
    let current = ServerCert::read(cert, key)?;
    let resolver = Arc::new(ServerCert { current: std::sync::RwLock::new(Arc::new(current)) });
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), resolver))
}

/// The server's certificate and key, replaceable while it runs.
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let file_error = |path: &Path, reason: String| TlsError::File { path: path.to_owned(), reason };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_error(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_error(cert, "holds no PEM certificate".into()));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, format!("no PEM private key: {e}")))?;
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        Ok(CertifiedKey::from_der(chain, key_der, &provider)?)
    }

    /// Reads `cert` and `key` again and serves them to new connections;
    /// on an error the certificate in use stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let fresh = Self::read(cert, key)?;
        *crate::sync::write(&self.current) = Arc::new(fresh);
        Ok(())
    }
}

/// Watches a server's certificate files; dropping it stops the watch.
#[derive(Debug)]
pub struct CertWatch {
    _watch: crate::watch::Watch,
}

impl ServerCert {
    /// Reads `cert` and `key` again whenever either changes (a renewal
    /// writing new files), logging the outcome; a bad pair is refused and
    /// the certificate in use stays.
    pub fn watch(self: &Arc<Self>, cert: PathBuf, key: PathBuf) -> Result<CertWatch, crate::watch::WatchError> {
        // The watcher names changed files by absolute paths; any change in
        // their folders is looked at (a Kubernetes secret swaps a symlink
        // beside them), and only new bytes are loaded.
        let (cert, key) = (std::path::absolute(&cert).unwrap_or(cert), std::path::absolute(&key).unwrap_or(key));
        let mut last = (std::fs::read(&cert).ok(), std::fs::read(&key).ok());
        let mut dirs = vec![crate::watch::folder_of(&cert), crate::watch::folder_of(&key)];
        dirs.dedup();
        let this = Arc::downgrade(self);
        let watch = crate::watch::start("tls-watch", &dirs, Vec::new(), move |paths, _| {
            let Some(this) = this.upgrade() else { return std::ops::ControlFlow::Break(()) };
            let _ = paths;
            let now = (std::fs::read(&cert).ok(), std::fs::read(&key).ok());
            if now != last {
                last = now;
                match this.reload(&cert, &key) {
                    Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
                    Err(error) => tracing::error!(%error, "TLS certificate not reloaded; the one in use stays"),
                }
            }
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(CertWatch { _watch: watch })
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::sync::read(&self.current).clone())
    }
}
