//! TLS for the proxy, with rustls and ring: the listener's certificate
//! (`--tls-cert`, `--tls-key`; HTTP/2 or HTTP/1.1 by ALPN; read again on each
//! reload) and the trust for `https://` upstreams (the system's roots plus
//! `--upstream-ca`).
//!
//! ```no_run
//! use revalidate_cli::serve::tls::{ListenerTls, upstream_config};
//!
//! let listener = ListenerTls::load("cert.pem".as_ref(), "key.pem".as_ref()).unwrap();
//! let upstreams = upstream_config(Some("internal-ca.pem".as_ref())).unwrap();
//! # let _ = (listener, upstreams);
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate, key or authority file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn install_provider() {
    // Once per process; ring, as the Redis tier uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("cannot read certificates from {shown}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{shown}: not a PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(TlsError(format!("{shown} holds no PEM certificate")));
    }
    Ok(certificates)
}

/// The client configuration for `https://` upstreams: the system's roots, and
/// the authorities of `ca_file` (PEM) when given. The connector offers HTTP/1.1
/// alone by ALPN: upstream connections are pooled keep-alive ones either way.
pub fn upstream_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        for certificate in certificates(path)? {
            roots.add(certificate).map_err(|e| {
                TlsError(format!("{}: not a usable authority: {e}", path.display()))
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration that trusts no authority: for a client that must be
/// able to speak TLS in type but is not meant to reach any https:// server.
pub fn no_roots_config() -> rustls::ClientConfig {
    install_provider();
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The listener's certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The listener's TLS, replaceable while serving (see [`ListenerTls::reload`]).
/// Clones share it.
#[derive(Clone)]
pub struct ListenerTls {
    files: TlsFiles,
    acceptor: Arc<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    install_provider();
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError(format!(
            "cannot read a PEM private key from {}: {e}",
            files.key.display()
        ))
    })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError(format!(
                "{} and {} do not make a usable certificate: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl ListenerTls {
    /// The listener's TLS from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let files = TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        let acceptor = acceptor(&files)?;
        Ok(Self {
            files,
            acceptor: Arc::new(RwLock::new(acceptor)),
        })
    }

    /// Reads the files again, for the connections accepted from now on; on an
    /// error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = acceptor(&self.files)?;
        *self
            .acceptor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// Checks that the files make a certificate, without putting it in force.
    pub fn check(&self) -> Result<(), TlsError> {
        acceptor(&self.files).map(drop)
    }

    /// The acceptor in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
