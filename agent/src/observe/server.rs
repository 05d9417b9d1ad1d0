//! The HTTP stack under the status page and the intake: hyper 1's HTTP/1.1 server driven
//! connection by connection, so the limits stay ours — at most `[http] max_connections` at
//! once (one more is closed at accept and counted, rather than queued without bound), [`HEAD_TIMEOUT`] for
//! each request head (also on an idle keep-alive connection), a lifetime after which a
//! connection finishes its request and closes — and, with `[intake] tls_cert`, rustls
//! in front of it.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// The time a client has to send a request head (and a TLS handshake).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// After this, a connection answers the request in hand and closes: a keep-alive client
/// cannot hold a slot for ever.
const LIFETIME: Duration = Duration::from_secs(60);
/// How long that last answer may take before the connection is dropped: past the intake's
/// 30 s wait for the store, so a request in hand gets its answer (a 503 at worst), not a cut.
const DRAIN: Duration = Duration::from_secs(40);

/// Serves `app` on `listener` until `shutdown`. Errors on one connection are its own.
pub async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("http: accept failed: {e}");
                    // Out of file descriptors, say: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Counted before the close, so whoever sees the close sees the count.
            crate::faults::HTTP_REFUSED.fetch_add(1, Relaxed);
            drop(sock);
            // Counted each time on /metrics; logged at most every 10 s (a flood is one line).
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    max_connections,
                    "http: connections refused: too many open (raise [http] max_connections?)"
                );
            }
            continue;
        };
        let (app, tls, stop) = (app.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            connection(sock, app, tls, stop).await;
        });
    }
}

async fn connection(
    sock: TcpStream,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let _ = sock.set_nodelay(true);
    match tls {
        None => serve_io(TokioIo::new(sock), app, stop).await,
        Some(acceptor) => match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(sock)).await {
            Ok(Ok(s)) => serve_io(TokioIo::new(s), app, stop).await,
            Ok(Err(e)) => tls_failed(&format!("{e}")),
            Err(_) => tls_failed("timed out"),
        },
    }
}

/// A failed handshake is counted (`darkleg_http_tls_failed_total`) and said at warn once a
/// minute: an intake whose clients all fail TLS takes no scans, and must not look idle.
fn tls_failed(why: &str) {
    use crate::faults::{TLS_FAILED, TLS_FAILED_LOGGED_MS};
    let n = TLS_FAILED.fetch_add(1, Relaxed) + 1;
    let now = crate::clock::now_ms();
    let last = TLS_FAILED_LOGGED_MS.load(Relaxed);
    if now.saturating_sub(last) >= 60_000
        && TLS_FAILED_LOGGED_MS
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    {
        tracing::warn!(failed_so_far = n, "http: a TLS handshake failed: {why} (a plain-http client, or a certificate the client does not trust or that expired?)");
    } else {
        tracing::debug!("http: TLS handshake failed: {why}");
    }
}

/// Serves one connection until it ends, its [`LIFETIME`] is up or the agent stops: then
/// the request in hand is answered and the connection closed — a keep-alive handheld posting
/// on must not hold the store (and the agent's stop) open.
async fn serve_io<I>(io: I, app: Router, stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        // Heads are small; the default 400 KiB buffer per connection is for proxies.
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("http: connection ended: {e}");
            }
        }
        _ = tokio::time::sleep(LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
        () = stopping(stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// Returns once the agent is stopping (at once if it already is).
async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Binds `listen` now, so a taken port is a start-up error, not a silent missing page.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| {
        format!("http.listen {listen}: {e} (hint: another process has the port, or pick another in [http])")
    })
}
