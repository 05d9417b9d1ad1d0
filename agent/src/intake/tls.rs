//! The `[http]` listener's TLS when `[intake] tls_cert` is set: rustls (ring, as for the
//! upstreams), HTTP/1.1 only. The certificate and key are read at start and again on each
//! SIGHUP, so a renewed certificate (certbot, an internal CA's rotation) is served without a
//! restart; a renewal that does not load keeps the pair in use and says why.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
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

    /// Reads the pair again (SIGHUP). On failure the pair in use stays and the error says why;
    /// so does a certificate out of its validity period (a renewal copied from the wrong
    /// place), which every client would refuse.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Certificate::load(&self.cert, &self.key, &self.provider)?;
        if let Some(why) = out_of_date(&fresh.cert, &self.provider) {
            return Err(format!("intake.tls_cert {}: {why}", self.cert.display()));
        }
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

/// Why clients would refuse `chain` for its dates alone (expired, or not valid yet); `None`
/// if they would not — or if the chain cannot be checked here, which is left to clients.
/// The check is a chain verification with the chain's own last certificate as the root:
/// webpki checks the dates before the name, so the placeholder name never matters.
fn out_of_date(
    chain: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Option<String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::CertificateError::{Expired, ExpiredContext, NotValidYet, NotValidYetContext};
    let (leaf, rest) = chain.split_first()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain.last()?.clone()).ok()?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .ok()?;
    let between = &rest[..rest.len().saturating_sub(1)];
    let name = rustls::pki_types::ServerName::try_from("darkleg.invalid").ok()?;
    let now = rustls::pki_types::UnixTime::now();
    match verifier.verify_server_cert(leaf, between, &name, &[], now) {
        Err(rustls::Error::InvalidCertificate(
            e @ (Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. }),
        )) => Some(format!("not within its validity period ({e})")),
        _ => None,
    }
}

pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<Certificate>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = Certificate::load(cert, key, &provider)?;
    // At start it is served anyway (the intake's clients may pin it; the scans do not
    // depend on it), but said loudly.
    if let Some(why) = out_of_date(&pair.cert, &provider) {
        tracing::error!("intake.tls_cert {}: {why}: clients will refuse the connection until it is renewed (then SIGHUP)", cert.display());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl on PATH");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed `localhost` pair valid for `days` (negative: expired that long ago).
    fn pair(dir: &Path, name: &str, days: i32) {
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
            ],
        );
        if days != 1 {
            let days = days.to_string();
            openssl(
                dir,
                &[
                    "x509", "-in", &cert, "-signkey", &key, "-days", &days, "-out", &cert,
                ],
            );
        }
    }

    #[test]
    fn a_renewal_out_of_date_or_mismatched_keeps_the_pair_in_use() {
        let dir = std::env::temp_dir().join(format!("darkleg-tls-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        pair(&dir, "good", 1);
        pair(&dir, "expired", -1);
        pair(&dir, "other", 30);
        // A CA-signed leaf with its CA in the chain: in date, so never refused.
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=test CA",
                "-days",
                "2",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "san.ext",
                "-days",
                "1",
                "-out",
                "leaf.pem",
            ],
        );
        let chain = [
            std::fs::read(dir.join("leaf.pem")).unwrap(),
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.join("chain.pem"), chain).unwrap();

        let (cert, key) = (dir.join("serve.pem"), dir.join("serve.key"));
        let install = |name: &str, key_of: &str| {
            std::fs::copy(dir.join(format!("{name}.pem")), &cert).unwrap();
            std::fs::copy(dir.join(format!("{key_of}.key")), &key).unwrap();
        };
        install("good", "good");
        let (_, serving) = acceptor(&cert, &key).unwrap();
        let first = serving.serving();

        install("expired", "expired");
        let e = serving.reload().unwrap_err();
        assert!(e.contains("validity period"), "{e}");
        assert_eq!(serving.serving(), first, "the pair in use stays");

        install("other", "good");
        let e = serving.reload().unwrap_err();
        assert!(e.contains("usable pair"), "{e}");
        assert_eq!(serving.serving(), first);

        install("chain", "leaf");
        serving.reload().unwrap();
        assert_ne!(serving.serving(), first, "an in-date chain is taken");
        install("other", "other");
        serving.reload().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
