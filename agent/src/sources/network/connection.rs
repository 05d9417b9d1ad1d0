//! One handheld's TCP connection: suffix-ended lines read, stored, and only then read more.
//! It ends when the handheld closes it, on silence (`idle_secs`), when the agent stops, or
//! when the listener evicts it to make room for a handheld waiting for a slot.

use super::{give_up, retry_until_stored, settle, Ctx, Pending, READ_BUF};
use crate::config::Suffix;
use crate::sources::retry::RetryQueue;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

/// How long a stopping connection waits for each read of bytes already sent. No total: a
/// full receive buffer (a connection that waited for a slot) takes many commits to read, and
/// what is left at the close would be lost unlogged; the listener's DRAIN_ON_STOP bounds it.
const STOP_READ: Duration = Duration::from_millis(200);
/// How long in all an evicted connection, its FIN sent, still reads what its handheld
/// sends before it closes: a handheld that notices the FIN closes its side and loses
/// nothing. A total, not per read: one that scans on regardless must not keep the slot.
const EVICT_LINGER: Duration = Duration::from_secs(2);

/// Keepalive on a handheld's connection: first probe after this much silence, then one
/// every [`KEEPALIVE_EVERY`]; [`KEEPALIVE_PROBES`] unanswered end it (about 2.5 minutes).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
const KEEPALIVE_PROBES: u32 = 6;

/// What the listener knows of an open connection: when it last read from it, and the
/// bell it rings to evict it.
pub(super) struct Seen {
    epoch: Instant,
    last_read_ms: AtomicU64,
    evict: Notify,
    evicting: AtomicBool,
}

impl Seen {
    pub(super) fn new() -> Seen {
        Seen {
            epoch: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
        }
    }

    fn read_now(&self) {
        self.last_read_ms
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    /// How long nothing has been read from it.
    pub(super) fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub(super) fn evicting(&self) -> bool {
        self.evicting.load(Relaxed)
    }

    /// Asks the connection to close (it reads what is on its way first).
    pub(super) fn evict(&self) {
        self.evicting.store(true, Relaxed);
        // A stored permit: the connection sees it even if it is busy committing right now.
        self.evict.notify_one();
    }
}

/// Why a connection is closing, and until when it reads bytes still on their way.
#[derive(Clone, Copy)]
enum Closing {
    Stopping,
    Evicted(Instant),
}

impl Closing {
    fn evicted() -> Closing {
        Closing::Evicted(Instant::now() + EVICT_LINGER)
    }

    /// How long the next read may wait: zero once the linger is over.
    fn wait(self) -> Duration {
        match self {
            Closing::Stopping => STOP_READ,
            Closing::Evicted(until) => until.saturating_duration_since(Instant::now()),
        }
    }

    fn why(self) -> &'static str {
        match self {
            Closing::Stopping => "agent stopping",
            Closing::Evicted(_) => "evicted for a handheld waiting for a slot",
        }
    }
}

pub(super) async fn connection(
    ctx: &Ctx,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    seen: &Seen,
) {
    let device = ctx.device(peer.ip());
    tracing::debug!(port = %ctx.port, %peer, device, "handheld connected");
    // Connections stay open through silence (the next scan is sent into them); a handheld
    // that vanished without a FIN is found by keepalive probes instead.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_EVERY)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(port = %ctx.port, %peer, "no TCP keepalive: {e}");
    }
    seen.read_now();
    let end = ctx.cfg.suffix.end_byte();
    let mut buf = vec![0u8; READ_BUF];
    let mut line: Vec<u8> = Vec::new();
    // Past max_line: the rest of this line is dropped up to its suffix; every further
    // max_line bytes of it count as one more discarded line (no suffix: each was scans).
    let mut skipping = false;
    let mut skipped = 0usize;
    let mut pending: Vec<Pending> = Vec::new();
    // Scans the store refused for now: offered again before anything more is read, so TCP
    // flow control holds the rest in the handheld (bounded by one read).
    let mut retry = RetryQueue::new(&ctx.port);
    // Once closing: what already sits in the socket (or, after an eviction's FIN, arrives
    // within EVICT_LINGER) is read and committed before the close — the handheld counted
    // it sent.
    let mut closing = stop.borrow().then_some(Closing::Stopping);
    let why = loop {
        let n = if let Some(c) = closing {
            // A short wait, not try_read: a socket just taken from the backlog has no
            // readiness yet until the reactor has polled it, however full its buffer.
            let wait = c.wait();
            if wait.is_zero() {
                break format!("{} (linger over)", c.why());
            }
            match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                Ok(Ok(0)) => break format!("{} (closed by the handheld)", c.why()),
                Ok(Ok(n)) => n,
                _ => break c.why().to_string(),
            }
        } else {
            let read = async {
                match ctx.cfg.idle {
                    Some(idle) => tokio::time::timeout(idle, stream.read(&mut buf)).await,
                    None => Ok(stream.read(&mut buf).await),
                }
            };
            tokio::select! {
                r = read => match r {
                    Err(_) => break format!("idle for {:?}", ctx.cfg.idle.unwrap_or_default()),
                    Ok(Ok(0)) => break "closed by the handheld".to_string(),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => break format!("read failed: {e}"),
                },
                _ = stop.changed() => {
                    closing = Some(Closing::Stopping);
                    continue;
                }
                _ = seen.evict.notified() => {
                    tracing::warn!(port = %ctx.port, %peer, device, silent_secs = seen.silent_for().as_secs(), "closing this handheld's connection to make room for one waiting for a slot (raise max_connections): a scan it sends into the closed connection before it reconnects is lost");
                    // FIN first, reading on: what it sends meanwhile is still stored.
                    let _ = stream.shutdown().await;
                    closing = Some(Closing::evicted());
                    continue;
                }
            }
        };
        seen.read_now();
        for &b in &buf[..n] {
            if b == end {
                line.push(b);
                if !std::mem::take(&mut skipping) {
                    let scan = ctx.cfg.suffix.strip(&line);
                    if let Some(p) = ctx.submit(scan, &device).await {
                        pending.push(p);
                    }
                }
                line.clear();
            } else if !skipping {
                line.push(b);
                // +1: the CR of a CRLF is still in the line until the LF comes.
                if line.len() > ctx.cfg.max_line + 1 {
                    ctx.overrun(&device);
                    line.clear();
                    skipping = true;
                    skipped = 0;
                }
            } else {
                skipped += 1;
                if skipped > ctx.cfg.max_line {
                    ctx.overrun(&device);
                    skipped = 0;
                }
            }
        }
        if settle(ctx, &mut pending, &mut retry).await.is_err() {
            break "store writer stopped".to_string();
        }
        if !matches!(closing, Some(Closing::Stopping)) {
            match retry_until_stored(ctx, &mut retry, &mut stop).await {
                Ok(true) => {}
                Ok(false) => closing = Some(Closing::Stopping),
                Err(()) => break "store writer stopped".to_string(),
            }
        }
    };
    give_up(
        ctx,
        &mut retry,
        &format!("connection from {device} closing ({why})"),
    );
    // A `cr` listener fed CRLF holds the last line's LF: that is the end of a scan, not a
    // torn one.
    let lf_after_cr = ctx.cfg.suffix == Suffix::Cr && line == b"\n";
    if !line.is_empty() && !lf_after_cr {
        ctx.reject(format!(
            "connection from {device} closed in the middle of a line (is the suffix {:?}?)",
            ctx.cfg.suffix
        ));
    }
    tracing::debug!(port = %ctx.port, %peer, device, "handheld disconnected: {why}");
}
