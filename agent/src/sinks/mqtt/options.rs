//! Upstream config → `rumqttc::MqttOptions`: a persistent session, the window as inflight
//! limit, credentials from the environment, and TLS with the system's roots or a given CA.

use crate::config::Upstream;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::sync::Arc;

/// Largest packet either way. Batches stay under [`MAX_BATCH_BYTES`], which fits the
/// smallest limit of the clustered and managed brokers darkleg targets (AWS IoT: 128 KiB).
pub const MAX_PACKET: usize = 256 * 1024;
pub const MAX_BATCH_BYTES: usize = 120 * 1024;

pub fn mqtt_options(u: &Upstream) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(&u.client_id, &u.host, u.port);
    o.set_keep_alive(u.keep_alive);
    // A persistent session keeps the broker's side (subscriptions, QoS state) across our
    // reconnects; our own in-flight publishes are resent from SQLite regardless.
    o.set_clean_session(false);
    o.set_inflight(u.window.min(u16::MAX as usize) as u16);
    // rumqttc refuses packets over 10 KiB by default; batches are cut at MAX_BATCH_BYTES.
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &u.username {
        let password = match &u.password_env {
            Some(var) => std::env::var(var).map_err(|_| {
                format!(
                    "upstream {}: environment variable {var} (password_env) is not set",
                    u.name
                )
            })?,
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    if u.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(u)?),
        )));
    }
    Ok(o)
}

fn tls_config(u: &Upstream) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &u.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("upstream {}: ca_file {}: {e}", u.name, path.display()))?
            {
                let cert = cert
                    .map_err(|e| format!("upstream {}: ca_file {}: {e}", u.name, path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("upstream {}: ca_file {}: {e}", u.name, path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "upstream {}: no trusted CA certificates (hint: install ca-certificates or set ca_file)",
            u.name
        ));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}
