//! What a supervisor and a monitoring system see: Prometheus `/metrics`, `/healthz`, and a
//! gateway status page at `/` (server-rendered HTML that refreshes itself, no external
//! assets), served on `[http] listen`.
//!
//! Deliberately a few dozen lines of HTTP/1.1 on tokio's TcpListener rather than a web
//! framework: three GET routes on a local address do not earn a dependency tree.

pub mod errors;
pub mod latency;
pub mod metrics;
pub mod page;

use crate::config::Config;
use crate::store::{Reader, Status};
use crate::supervise::Health;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Everything a page or a scrape shows, read in one go.
#[derive(Debug)]
pub struct Snapshot {
    pub status: Status,
    /// (parcel, rule, opened_at, detail).
    pub alerts: Vec<(String, String, u64, String)>,
    /// Highest backlog seen per upstream since the agent started (drain progress).
    pub peak_backlog: HashMap<String, i64>,
    pub now_ms: u64,
}

fn snapshot(db: &std::path::Path, peaks: &Mutex<HashMap<String, i64>>) -> Result<Snapshot, String> {
    let reader = Reader::open(db).map_err(|e| e.to_string())?;
    let status = reader.status().map_err(|e| e.to_string())?;
    let alerts = reader.all_open_alerts().map_err(|e| e.to_string())?;
    let mut peaks = peaks.lock().unwrap_or_else(|e| e.into_inner());
    for u in &status.upstreams {
        let p = peaks.entry(u.name.clone()).or_insert(0);
        // A drained backlog resets the mark, so the next outage starts a new bar.
        *p = if u.backlog == 0 {
            0
        } else {
            (*p).max(u.backlog)
        };
    }
    Ok(Snapshot {
        status,
        alerts,
        peak_backlog: peaks.clone(),
        now_ms: crate::clock::now_ms(),
    })
}

/// At most this many connections are served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// The time a client has to send its request head, and then to take the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown`. Errors on one connection are that connection's problem.
/// `/healthz` answers 503 naming every part of the agent that `health` finds dead or stalled.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    db: PathBuf,
    mut shutdown: watch::Receiver<bool>,
    health: Health,
) {
    let peaks: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("status page: accept failed: {e}");
                    // Out of file descriptors, say: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Every slot taken: close this one at once rather than queue without bound.
            tracing::debug!("status page: {MAX_CONNECTIONS} connections open, closing a new one");
            drop(sock);
            continue;
        };
        let (config, db, peaks, health) =
            (config.clone(), db.clone(), peaks.clone(), health.clone());
        tokio::spawn(async move {
            let _slot = slot;
            answer(sock, &config, db, peaks, &health).await;
        });
    }
}

/// Reads one request head within [`REQUEST_TIMEOUT`] and answers it.
async fn answer(
    mut sock: TcpStream,
    config: &Config,
    db: PathBuf,
    peaks: Arc<Mutex<HashMap<String, i64>>>,
    health: &Health,
) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    // The request head only; bodies are not accepted. One deadline for all of it, so a
    // client sending a byte at a time cannot hold a slot.
    let head = async {
        while n < buf.len() {
            match sock.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, head).await, Ok(true)) {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = if method != "GET" {
        (405, "text/plain", "only GET\n".to_string())
    } else {
        let path = path.split('?').next().unwrap_or(path).to_string();
        let snap = tokio::task::spawn_blocking(move || snapshot(&db, &peaks)).await;
        let problems = health.problems();
        match (path.as_str(), snap) {
            ("/healthz", _) if !problems.is_empty() => {
                (503, "text/plain", format!("{}\n", problems.join("\n")))
            }
            ("/healthz", Ok(Ok(_))) => (200, "text/plain", "ok\n".into()),
            ("/healthz", _) => (503, "text/plain", "store unreadable\n".into()),
            ("/metrics", Ok(Ok(s))) => {
                let (ctype, body) = metrics::render(s, header(&head, "accept"));
                (200, ctype, body)
            }
            ("/", Ok(Ok(s))) => (200, "text/html; charset=utf-8", page::html(&s, config)),
            ("/" | "/metrics", Ok(Err(e))) => {
                (503, "text/plain", format!("store unreadable: {e}\n"))
            }
            _ => (
                404,
                "text/plain",
                "not found: try /, /metrics or /healthz\n".into(),
            ),
        }
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}

/// The value of header `name` (lower case) in a request head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Binds `listen` now, so a taken port is a start-up error, not a silent missing page.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| {
        format!("http.listen {listen}: {e} (hint: another process has the port, or pick another in [http])")
    })
}
