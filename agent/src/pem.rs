//! A certificate chain and its private key from PEM files, for the two TLS ends the agent
//! has: the upstreams' client certificates and the intake's server certificate.

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The chain in `cert` and the key in `key`; errors start with `cert_name` or `key_name`
/// (the config keys that named the files) and carry a path, never a key's content.
pub fn pair(
    cert: &Path,
    key: &Path,
    cert_name: &str,
    key_name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert_name} {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_name} {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{key_name} {}: {e}", key.display()))?;
    Ok((chain, key_der))
}
