//! What a supervisor and a monitoring system see: Prometheus `/metrics`, `/healthz`, and a
//! gateway status page at `/` (server-rendered HTML that refreshes itself, no external
//! assets), served on `[http] listen`.
//!
//! On axum over hyper ([`server`]), the same server as the HTTP intake (`POST /v1/scans`),
//! which [`serve_with`] mounts beside these routes.

pub mod errors;
pub mod latency;
pub mod metrics;
pub mod page;
pub mod server;

use crate::config::Config;
use crate::store::{Reader, Status};
use crate::supervise::Health;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use server::bind;

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

/// The time a status answer may take (a store read on a slow disk).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Pages {
    config: Arc<Config>,
    db: PathBuf,
    peaks: Arc<Mutex<HashMap<String, i64>>>,
    recent: Arc<tokio::sync::Mutex<Recent>>,
    health: Health,
}

/// Serves the status routes until `shutdown`. `/healthz` answers 503 naming every part of
/// the agent that `health` finds dead or stalled.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    db: PathBuf,
    shutdown: watch::Receiver<bool>,
    health: Health,
) {
    serve_with(listener, config, db, shutdown, health, Router::new(), None).await
}

/// [`serve`], with `extra` routes (the intake) on the same listener, behind `tls` if given.
pub async fn serve_with(
    listener: TcpListener,
    config: Arc<Config>,
    db: PathBuf,
    shutdown: watch::Receiver<bool>,
    health: Health,
    extra: Router,
    tls: Option<TlsAcceptor>,
) {
    let max_connections = config.http_max_connections;
    let pages = Pages {
        config,
        db,
        peaks: Arc::default(),
        recent: Arc::default(),
        health,
    };
    let only_get = || async { plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into()) };
    let app = Router::new()
        .route("/", get(status_page).fallback(only_get))
        .route("/metrics", get(metrics_page).fallback(only_get))
        .route("/healthz", get(healthz).fallback(only_get))
        .with_state(pages)
        .merge(extra)
        .fallback(|| async {
            plain(
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics or /healthz\n".into(),
            )
        });
    server::run(listener, app, tls, max_connections, shutdown).await
}

/// A status answer: never cached, and the connection closed after it (as scrapers and the
/// tests' one-shot clients expect).
fn answer(code: StatusCode, ctype: &str, body: String) -> Response {
    let mut r = (code, body).into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(ctype) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn plain(code: StatusCode, body: String) -> Response {
    answer(code, "text/plain", body)
}

/// The snapshot, read off the async threads within [`ANSWER_TIMEOUT`].
/// A snapshot is reused for ten times as long as it took to read, at most [`REUSE_MAX`]:
/// counting a ten-million-row backlog takes about a second, and a page that refreshes
/// itself, `status --watch` and a scraper together must not keep the disk busy with it.
/// Small stores read in milliseconds, so their answers stay current.
const REUSE_FACTOR: u32 = 10;
const REUSE_MAX: Duration = Duration::from_secs(15);

/// The last snapshot read, when, and how long the read took.
type Recent = Option<(Instant, Duration, Arc<Snapshot>)>;

/// The snapshot, read off the async threads within [`ANSWER_TIMEOUT`] or reused (see
/// [`REUSE_FACTOR`]). Requests that come while one reads wait for its answer.
async fn read(p: &Pages) -> Result<Arc<Snapshot>, String> {
    let mut recent = p.recent.lock().await;
    if let Some((at, took, snap)) = recent.as_ref() {
        if at.elapsed() < (*took * REUSE_FACTOR).min(REUSE_MAX) {
            return Ok(snap.clone());
        }
    }
    let (db, peaks) = (p.db.clone(), p.peaks.clone());
    let started = Instant::now();
    let snap = Arc::new(off_thread(move || snapshot(&db, &peaks)).await?);
    *recent = Some((Instant::now(), started.elapsed(), snap.clone()));
    Ok(snap)
}

/// `job` (a store read) on the blocking pool, given up after [`ANSWER_TIMEOUT`].
async fn off_thread<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(ANSWER_TIMEOUT, tokio::task::spawn_blocking(job)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
    }
}

async fn healthz(State(p): State<Pages>) -> Response {
    let mut problems = p.health.problems();
    problems.extend(crate::faults::trouble::problems());
    if !problems.is_empty() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("\n")),
        );
    }
    let db = p.db.clone();
    let probe = off_thread(move || {
        Reader::open(&db)
            .and_then(|r| r.probe())
            .map_err(|e| e.to_string())
    });
    match probe.await {
        Ok(_) => plain(StatusCode::OK, "ok\n".into()),
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "store unreadable\n".into()),
    }
}

async fn metrics_page(State(p): State<Pages>, headers: HeaderMap) -> Response {
    match read(&p).await {
        Ok(s) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (ctype, body) = metrics::render(s, crate::clock::now_ms(), accept);
            answer(StatusCode::OK, ctype, body)
        }
        Err(e) => unreadable(e),
    }
}

async fn status_page(State(p): State<Pages>) -> Response {
    match read(&p).await {
        Ok(s) => answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::html(&s, &p.config),
        ),
        Err(e) => unreadable(e),
    }
}

fn unreadable(e: String) -> Response {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("store unreadable: {e}\n"),
    )
}
