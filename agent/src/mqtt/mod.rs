//! A broker connection: address, persistent session, credentials read at connect time, TLS
//! with the system's roots or a given CA, and a client certificate (mTLS), with [`backoff`]
//! for reconnects and [`failover`] across `urls`. The upstream sinks speak MQTT themselves
//! ([`wire`] over [`Dialer`]'s stream); the relay source subscribes through rumqttc, with
//! the [`options`] made here.

pub mod backoff;
pub mod failover;
pub mod wire;

use crate::config::BrokerLink;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{pem::PemObject, CertificateDer};
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

/// A connected byte stream to a broker: TCP, or TLS over it.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// What a connection to `link` needs that can fail before the network is touched: the
/// password read now, the TLS config (CA and client certificate files). An error here is
/// the gateway's, not the broker's.
pub struct Dialer {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
}

impl Dialer {
    pub fn new(link: &BrokerLink, what: &str) -> Result<Dialer, String> {
        Ok(Dialer {
            host: link.host.clone(),
            port: link.port,
            tls: match link.tls {
                true => Some(Arc::new(tls_config(link, what)?)),
                false => None,
            },
            credentials: credentials(link, what)?,
        })
    }

    /// TCP (no Nagle: a publish should not wait for the next one) and, for `mqtts://`, the
    /// TLS handshake, within [`HANDSHAKE_SECS`].
    pub async fn dial(&self) -> Result<Box<dyn Stream>, String> {
        let secs = std::time::Duration::from_secs(HANDSHAKE_SECS);
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let Some(config) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn Stream>);
            };
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| format!("{}: not a name TLS can check: {e}", self.host))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(Box::new(tls) as Box<dyn Stream>)
        };
        match tokio::time::timeout(secs, connect).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect timed out after {HANDSHAKE_SECS} s")),
        }
    }
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
            let (chain, key_der) = crate::pem::pair(
                cert,
                key,
                &format!("{what}: client_cert"),
                &format!("{what}: client_key"),
            )?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!("{what}: client_cert/client_key do not form a usable pair: {e}")
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
