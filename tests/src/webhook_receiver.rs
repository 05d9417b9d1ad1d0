//! A local HTTPS webhook receiver for the tests: hyper on rustls with the test CA's
//! `localhost` certificate. It checks every request's Standard Webhooks signature with its
//! own HMAC (ring, not the agent's code), records what came, and answers as the test's
//! policy says — a status, a Retry-After, or a stall past the sender's timeout.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub timestamp: u64,
    /// Signatures in the header, and whether every one of them verified with some key.
    pub signatures: usize,
    pub signed_ok: bool,
    pub content_type: String,
    pub kind: String,
    pub parcel: Option<String>,
    pub order: Option<String>,
    pub merchant: Option<String>,
    pub at: Instant,
    /// What the receiver answered; 0 for a request it stalled past the sender's patience.
    pub answered: u16,
}

impl Hit {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// How to answer the `n`th request (0-based) `hit`.
pub enum Reply {
    Status(u16, Option<String>),
    Stall(Duration),
}

pub type Policy = Box<dyn Fn(&Hit, usize) -> Reply + Send + Sync>;

pub struct Receiver {
    pub port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
    policy: Arc<Mutex<Policy>>,
    _rt: tokio::runtime::Runtime,
}

/// A Standard Webhooks secret (`whsec_` + base64) for `key`.
pub fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", B64.encode(key))
}

impl Receiver {
    /// Listens on `127.0.0.1:port` with `dir/server.pem` and `dir/server.key` (see
    /// [`crate::tls::make_certs`]); verifies with `keys` (raw key bytes).
    pub fn start(port: u16, dir: &Path, keys: Vec<Vec<u8>>, policy: Policy) -> Receiver {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("binding the webhook receiver");
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let policy = Arc::new(Mutex::new(policy));
        let keys: Arc<Vec<hmac::Key>> = Arc::new(
            keys.iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k))
                .collect(),
        );
        let (h, p) = (hits.clone(), policy.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, hits, policy, keys) =
                    (acceptor.clone(), h.clone(), p.clone(), keys.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let (hits, policy, keys) = (hits.clone(), policy.clone(), keys.clone());
                        async move { answer(req, &hits, &policy, &keys).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Receiver {
            port,
            hits,
            policy,
            _rt: rt,
        }
    }

    pub fn set_policy(&self, p: Policy) {
        *self.policy.lock().unwrap() = p;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(Hit::accepted).collect()
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    hits: &Mutex<Vec<Hit>>,
    policy: &Mutex<Policy>,
    keys: &[hmac::Key],
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts, sig, ctype) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        header("content-type"),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", &body].concat();
    let sigs: Vec<&str> = sig.split(' ').filter(|s| !s.is_empty()).collect();
    let signed_ok = !sigs.is_empty()
        && sigs.iter().all(|s| {
            let Some(b) = s.strip_prefix("v1,").and_then(|b| B64.decode(b).ok()) else {
                return false;
            };
            keys.iter().any(|k| hmac::verify(k, &signed, &b).is_ok())
        });
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let s = |x: &serde_json::Value| x.as_str().map(str::to_string);
    let mut hit = Hit {
        id,
        timestamp: ts.parse().unwrap_or(0),
        signatures: sigs.len(),
        signed_ok,
        content_type: ctype,
        kind: s(&v["type"]).unwrap_or_default(),
        parcel: s(&v["data"]["parcel"]),
        order: s(&v["data"]["order"]),
        merchant: s(&v["data"]["merchant"]),
        at: Instant::now(),
        answered: 0,
    };
    let n = hits.lock().unwrap().len();
    let reply = (policy.lock().unwrap())(&hit, n);
    let (status, retry_after) = match reply {
        Reply::Status(c, ra) => (c, ra),
        Reply::Stall(d) => {
            hits.lock().unwrap().push(hit);
            tokio::time::sleep(d).await;
            // The sender gave up long ago; this answer goes nowhere.
            return Ok(hyper::Response::new(Full::new(Bytes::new())));
        }
    };
    hit.answered = status;
    hits.lock().unwrap().push(hit);
    let mut resp = hyper::Response::builder().status(status);
    if let Some(ra) = retry_after {
        resp = resp.header("retry-after", ra);
    }
    Ok(resp.body(Full::new(Bytes::from_static(b"ok"))).unwrap())
}
