//! The `[http]` listener's TLS when `[intake] tls_cert` is set: rustls (ring, as for the
//! upstreams), HTTP/1.1 only. The certificate and key are read at start and again on each
//! SIGHUP, so a renewed certificate (certbot, an internal CA's rotation) is served without a
//! restart; a renewal that does not load keeps the pair in use and says why.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

/// The pair in use, swapped whole on a reload: a handshake sees the old pair or the new one.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
        let (chain, key_der) = crate::pem::pair(cert, key, "intake.tls_cert", "intake.tls_key")?;
        CertifiedKey::from_der(chain, key_der, provider)
            .map_err(|e| format!("intake.tls_cert/tls_key do not form a usable pair: {e}"))
    }

    /// Reads the pair again (SIGHUP). On failure the pair in use stays and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Certificate::load(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The end-entity certificate in use (DER), for tests and diagnostics.
    pub fn serving(&self) -> Vec<u8> {
        let pair = self.current.read().unwrap_or_else(|e| e.into_inner());
        pair.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<Certificate>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = Certificate::load(cert, key, &provider)?;
    let certificate = Arc::new(Certificate {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        provider: provider.clone(),
        current: RwLock::new(Arc::new(pair)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}
