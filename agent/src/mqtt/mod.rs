//! A broker connection as rumqttc options: address, persistent session, credentials read at
//! connect time, TLS with the system's roots or a given CA, and a client certificate (mTLS).
//! Used by the upstream sinks and by the relay source alike, with [`backoff`] for reconnects
//! (rumqttc has none).

pub mod backoff;
pub mod failover;

use crate::config::BrokerLink;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Largest packet either way (rumqttc refuses more than 10 KiB by default).
pub const MAX_PACKET: usize = 256 * 1024;

/// How long a TCP + TLS + MQTT handshake, or one write, may take (rumqttc's default, 5 s,
/// is shorter than a CONNECT over a congested LTE link that holds each chunk for seconds).
pub const HANDSHAKE_SECS: u64 = 20;

pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_connection_timeout(HANDSHAKE_SECS);
    n
}

/// `what` names the config table in errors (`upstream central`, `relay site`).
pub fn options(link: &BrokerLink, what: &str) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(&link.client_id, &link.host, link.port);
    o.set_keep_alive(link.keep_alive);
    // A persistent session keeps the broker's side (subscriptions, QoS state) across our
    // reconnects; our own in-flight publishes are resent from SQLite regardless.
    o.set_clean_session(false);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some((user, password)) = credentials(link, what)? {
        o.set_credentials(user, password);
    }
    if let Some(t) = tls_transport(link, what)? {
        o.set_transport(t);
    }
    Ok(o)
}

/// The same connection for an MQTT 5 client. The session is kept an hour past a
/// disconnect (v5 ends it at once by default); a sink's in-flight state comes from SQLite
/// regardless.
pub fn options_v5(link: &BrokerLink, what: &str) -> Result<rumqttc::v5::MqttOptions, String> {
    let mut o = rumqttc::v5::MqttOptions::new(&link.client_id, &link.host, link.port);
    o.set_keep_alive(link.keep_alive);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    o.set_max_packet_size(Some(MAX_PACKET as u32));
    if let Some((user, password)) = credentials(link, what)? {
        o.set_credentials(user, password);
    }
    if let Some(t) = tls_transport(link, what)? {
        o.set_transport(t);
    }
    Ok(o)
}

/// Username and password, the password read now (a rotated file counts from the next connect).
fn credentials(link: &BrokerLink, what: &str) -> Result<Option<(String, String)>, String> {
    let Some(user) = &link.username else {
        return Ok(None);
    };
    let password = match &link.password {
        Some(secret) => secret.reveal().map_err(|e| format!("{what}: {e}"))?,
        None => String::new(),
    };
    Ok(Some((user.clone(), password)))
}

fn tls_transport(link: &BrokerLink, what: &str) -> Result<Option<Transport>, String> {
    if !link.tls {
        return Ok(None);
    }
    Ok(Some(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(link, what)?),
    ))))
}

fn tls_config(link: &BrokerLink, what: &str) -> Result<rustls::ClientConfig, String> {
    let client = match (&link.client_cert, &link.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    client_tls_config(link.ca_file.as_deref(), client, what)
}

/// A rustls client config: the system's roots or `ca_file`, and an optional client
/// certificate and key (PEM paths) — for broker links and webhooks alike.
pub fn client_tls_config(
    ca_file: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
    what: &str,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad =
                |e: &dyn std::fmt::Display| format!("{what}: ca_file {}: {e}", path.display());
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "{what}: no trusted CA certificates (hint: install ca-certificates or set ca_file)"
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{what}: client_cert {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "{what}: client_cert {}: no certificate in it",
                    cert.display()
                ));
            }
            // The key's content never goes into an error message, only its path.
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("{what}: client_key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!("{what}: client_cert/client_key do not form a usable pair: {e}")
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
