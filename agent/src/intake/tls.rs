//! The `[http]` listener's TLS when `[intake] tls_cert` is set: rustls (ring, as for the
//! upstreams), HTTP/1.1 only.

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("intake.tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "intake.tls_cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    // Only the key's path goes into an error, never its content.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("intake.tls_key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| format!("intake.tls_cert/tls_key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
