//! The webhook's serving certificate: loaded from PEM files, re-read every
//! `inject.reload_interval`, swapped under running connections' feet.
//!
//! A Kubernetes Secret volume updates by swapping a `..data` symlink, so file mtimes say
//! little: the reload compares the files' *content*. A new pair that does not parse, or whose
//! key does not match its certificate, is logged and counted once and ignored: the last good
//! certificate keeps being served. The one certificate is served whatever the client's SNI
//! (or none: kube-apiserver calling a Service by IP, a probe by address).

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("inject.cert_file: {0} holds no PEM CERTIFICATE")]
    NoCertificate(String),
    #[error("inject.cert_file: {path}: {message}")]
    BadCertificate { path: String, message: String },
    #[error("inject.key_file: {path}: {message}")]
    BadKey { path: String, message: String },
}

/// The files' bytes, read together: what a reload compares.
#[derive(PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// Parses a chain (leaf first) and its private key, checking that they belong together.
fn certified(
    pem: &Pem,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: cert_path.display().to_string(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(cert_path.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| CertError::BadKey {
        path: key_path.display().to_string(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| CertError::BadKey {
        path: key_path.display().to_string(),
        message: format!("{e} (does the key belong to the certificate?)"),
    })
}

/// The certificate in force, for every handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // SNI or not, any name: the one configured certificate (the client verifies it).
        Some(self.current.read().clone())
    }
}

/// Watches the two files and keeps [`CertStore`] current.
pub struct CertReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
    last: Pem,
}

/// What one reload tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded,
    /// New content that does not load: the old certificate stays.
    Failed,
}

impl CertReloader {
    /// Loads the pair now: a start-up failure is a configuration error.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<CertReloader, CertError> {
        let pem = Pem {
            cert: read("inject.cert_file", cert_path)?,
            key: read("inject.key_file", key_path)?,
        };
        let ck = certified(&pem, cert_path, key_path, &provider)?;
        Ok(CertReloader {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            store: Arc::new(CertStore {
                current: RwLock::new(Arc::new(ck)),
            }),
            last: pem,
        })
    }

    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// Re-reads both files; loads them if their content changed.
    pub fn tick(&mut self) -> Reload {
        let pem = match (
            read("inject.cert_file", &self.cert_path),
            read("inject.key_file", &self.key_path),
        ) {
            (Ok(cert), Ok(key)) => Pem { cert, key },
            (Err(e), _) | (_, Err(e)) => {
                // mid-swap, or the volume is gone: try again next tick, keep serving
                tracing::debug!(error = %e, "certificate files unreadable; keeping the current one");
                return Reload::Unchanged;
            }
        };
        if pem == self.last {
            return Reload::Unchanged;
        }
        let result = certified(&pem, &self.cert_path, &self.key_path, &self.provider);
        // remembered either way: a broken pair is reported once, not every tick
        self.last = pem;
        match result {
            Ok(ck) => {
                *self.store.current.write() = Arc::new(ck);
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                Reload::Loaded
            }
            Err(e) => {
                tracing::error!(error = %e, "new serving certificate does not load; keeping the previous one");
                Reload::Failed
            }
        }
    }

    /// Ticks every `every` until `stop`, reporting each load to `on`.
    pub async fn run(
        mut self,
        every: Duration,
        on: impl Fn(Reload) + Send,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let r = self.tick();
            if r != Reload::Unchanged {
                on(r);
            }
        }
    }
}

/// The server config: TLS 1.2/1.3 with the aws-lc-rs provider, HTTP/1.1 only (ALPN), the
/// certificate from `store`.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
