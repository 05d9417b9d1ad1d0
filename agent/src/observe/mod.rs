//! What a supervisor and a monitoring system see: Prometheus `/metrics`, `/healthz`, and a
//! gateway status page at `/` (server-rendered HTML that refreshes itself, no external
//! assets), served on `[http] listen`.
//!
//! Deliberately a few dozen lines of HTTP/1.1 on tokio's TcpListener rather than a web
//! framework: three GET routes on a local address do not earn a dependency tree.

pub mod errors;
pub mod faults;
pub mod latency;
pub mod page;

use crate::config::Config;
use crate::store::{Reader, Status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything a page or a scrape shows, read in one go.
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
        now_ms: crate::now_ms(),
    })
}

/// Serves until `shutdown`. Errors on one connection are that connection's problem.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    db: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let peaks: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("status page: accept failed: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (config, db, peaks) = (config.clone(), db.clone(), peaks.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // The request head only; bodies are not accepted.
            while n < buf.len() {
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[n..]),
                )
                .await;
                match read {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, ctype, body) = if method != "GET" {
                (405, "text/plain", "only GET\n".to_string())
            } else {
                let path = path.split('?').next().unwrap_or(path).to_string();
                let snap = tokio::task::spawn_blocking(move || snapshot(&db, &peaks)).await;
                match (path.as_str(), snap) {
                    ("/healthz", Ok(Ok(_))) => (200, "text/plain", "ok\n".into()),
                    ("/healthz", _) => (503, "text/plain", "store unreadable\n".into()),
                    ("/metrics", Ok(Ok(s))) => {
                        (200, "text/plain; version=0.0.4", page::metrics(&s))
                    }
                    ("/", Ok(Ok(s))) => (200, "text/html; charset=utf-8", page::html(&s, &config)),
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
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Binds `listen` now, so a taken port is a start-up error, not a silent missing page.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| {
        format!("http.listen {listen}: {e} (hint: another process has the port, or pick another in [http])")
    })
}
