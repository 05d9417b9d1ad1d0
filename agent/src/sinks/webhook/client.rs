//! The HTTP side: one POST per message over HTTP/1.1 (hyper), TLS by rustls with the same
//! root setup as the MQTT links (system roots or `ca_file`), and idle connections kept for
//! reuse — one per request in flight at most.

use crate::config::Webhook;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A response body is read (so the connection can be reused) up to this much, then dropped.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// The longest Retry-After taken at its word.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one attempt came to.
#[derive(Debug)]
pub enum Answer {
    /// The endpoint answered, with its Retry-After if it gave one.
    Status(u16, Option<Duration>),
    /// No answer: connect, TLS, a timeout, a reset. The text names the cause, not the secret.
    Failed(String),
}

pub struct Client {
    hook: Webhook,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    authority: String,
}

impl Client {
    pub fn new(hook: &Webhook) -> Result<Client, String> {
        let what = format!("webhook {}", hook.name);
        let tls = if hook.tls {
            let mut cfg = crate::mqtt::client_tls_config(hook.ca_file.as_deref(), None, &what)?;
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(hook.host.clone())
                .map_err(|e| format!("{what}: {:?} is not a host name for TLS: {e}", hook.host))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        let default_port = if hook.tls { 443 } else { 80 };
        let host = if hook.host.contains(':') {
            format!("[{}]", hook.host)
        } else {
            hook.host.clone()
        };
        Ok(Client {
            authority: if hook.port == default_port {
                host
            } else {
                format!("{host}:{}", hook.port)
            },
            hook: hook.clone(),
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// POSTs `body` with the Standard Webhooks headers, all within the webhook's timeout.
    pub async fn post(&self, id: &str, timestamp: u64, signature: &str, body: Bytes) -> Answer {
        match tokio::time::timeout(
            self.hook.timeout,
            self.attempt(id, timestamp, signature, body),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => Answer::Failed(e),
            Err(_) => Answer::Failed(format!("no answer within {:?}", self.hook.timeout)),
        }
    }

    async fn attempt(
        &self,
        id: &str,
        timestamp: u64,
        signature: &str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut conn = match self.reusable() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let req = hyper::Request::post(&self.hook.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("darkleg/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, crate::clock::now_ms()));
        // Read the answer to its end, or the connection cannot carry the next request.
        let whole = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .is_ok();
        if whole && !conn.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        Ok(Answer::Status(status, retry_after))
    }

    /// An idle connection the server has not closed.
    fn reusable(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if c.is_ready() {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect((self.hook.host.as_str(), self.hook.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.hook.host, self.hook.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((tls, name)) => {
                let s = tls
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.hook.host))?;
                handshake(s).await
            }
        }
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // Drives the connection; ends when the last handle to it is dropped or the peer closes.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("webhook connection ended: {e}");
        }
    });
    Ok(send)
}

/// Retry-After as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), capped.
pub fn retry_after(v: &str, now_ms: u64) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = jiff::fmt::rfc2822::parse(v)
            .ok()?
            .timestamp()
            .as_millisecond();
        Duration::from_millis((at.max(0) as u64).saturating_sub(now_ms))
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(super::retry_after("3", 0), Some(Duration::from_secs(3)));
        // 2026-11-22T14:02:11Z and ten seconds later.
        let now = 1_795_356_131_000;
        assert_eq!(
            super::retry_after("Sun, 22 Nov 2026 14:02:21 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            super::retry_after("Sun, 22 Nov 2026 14:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(super::retry_after("soon", now), None);
        assert_eq!(
            super::retry_after("99999999", 0),
            Some(Duration::from_secs(3600))
        );
    }
}
