//! Handhelds on the floor network: DataWedge's IP Output (Remote Wedge off) and anything else
//! that sends raw scans — one per suffix-ended line over TCP, one per datagram over UDP.
//!
//! DataWedge waits for no answer, so nothing here can ask it to resend. What this source
//! promises instead: a line is read off the socket only once the scans read before it on
//! that connection are durable, so what the agent holds between the socket and a commit is
//! one read (at most [`READ_BUF`] bytes) per connection; the rest waits in the kernel's
//! receive buffer (fixed at [`RECV_BUF`] for TCP, so it does not grow by autotuning), where
//! TCP flow control stops the handheld when it is full. A gateway that dies loses what was in
//! those buffers and on the wire. A scan the store refuses for now is held and offered again
//! with backoff ([`super::retry`]): the connection is not read meanwhile; a UDP listener reads
//! on and holds up to a bound. Past `max_connections`, connections wait for a slot; an
//! open one silent for `evict_idle_secs` is evicted for a waiting one (see [`connection`]).
//! Garbage (control bytes, invalid UTF-8, empty or over-long
//! lines) is counted on the listener's row in the ports table and never stored.

mod connection;
pub mod load;

use super::ascii_device;
use super::retry::RetryQueue;
use crate::config::{NetworkScanner, Transport};
use crate::store::{AsciiScan, PortReport, StoreError, StoreHandle, WriteOp};
use connection::{connection, Seen};
use darkleg_protocol::ascii::parse_line;
use load::Load;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Bytes taken off a connection per read: the most a connection has in flight in the agent.
pub const READ_BUF: usize = 4096;
/// TCP receive buffer per connection (the kernel doubles it for its bookkeeping).
pub const RECV_BUF: u32 = 64 * 1024;
/// Datagrams taken per UDP batch before waiting for their commit.
const UDP_BATCH: usize = 256;
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long connections get to finish their commits after the agent is told to stop.
const DRAIN_ON_STOP: Duration = Duration::from_secs(5);

pub enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds the listener at start, so a taken port stops the agent with a clear error.
pub async fn bind(cfg: &NetworkScanner) -> Result<Bound, String> {
    let name = cfg.port_name();
    let fail = |e: std::io::Error| {
        format!("{name}: cannot listen: {e} (hint: is another program on that port? change network_scanner.listen)")
    };
    match cfg.transport {
        Transport::Tcp => {
            let sock = match cfg.listen {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(fail)?;
            sock.set_reuseaddr(true).map_err(fail)?;
            // Set before listen, inherited by accepted sockets; a fixed size also turns off
            // autotuning, which would let the loss window grow to megabytes.
            sock.set_recv_buffer_size(RECV_BUF).map_err(fail)?;
            sock.bind(cfg.listen).map_err(fail)?;
            Ok(Bound::Tcp(sock.listen(1024).map_err(fail)?))
        }
        Transport::Udp => Ok(Bound::Udp(UdpSocket::bind(cfg.listen).await.map_err(fail)?)),
    }
}

struct Ctx {
    cfg: NetworkScanner,
    port: String,
    gateway: String,
    store: StoreHandle,
    counters: Mutex<PortReport>,
    /// Warned once that its handhelds send GS1 labels without their AIM identifier.
    bare_gs1_warned: std::sync::atomic::AtomicBool,
    overrun_warned: super::Throttle,
}

impl Ctx {
    fn device(&self, ip: IpAddr) -> String {
        let ip = ip.to_canonical();
        match self.cfg.devices.get(&ip) {
            Some(d) => d.clone(),
            None => ascii_device(&self.gateway, &ip.to_string()),
        }
    }

    fn reject(&self, why: String) {
        tracing::debug!(port = %self.port, "rejected: {why}");
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.rejected += 1;
        c.last_reject = Some(why);
    }

    /// A line ran past `max_line` without its suffix: discarded and counted, and said at
    /// WARN (once a minute) — a handheld sending no suffix makes every scan one.
    fn overrun(&self, device: &str) {
        let max_line = self.cfg.max_line;
        self.reject(format!(
            "line longer than max_line ({max_line}) from {device}: skipped to its end"
        ));
        if self.overrun_warned.due(Duration::from_secs(60)) {
            tracing::warn!(port = %self.port, device, max_line, suffix = ?self.cfg.suffix,
                "a line ran past max_line without its suffix: discarded and counted as rejected, and so is every further max_line bytes of it. Most likely the handheld sends no suffix (DataWedge: IP Output's Basic Data Formatting, \"Send ENTER key\" off) or another one than this listener's `suffix`; said at most once a minute");
        }
    }

    /// Sends the counters accumulated since the last report (or only the connected state).
    async fn flush(&self, connected: bool, force: bool) {
        let report = {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            if !force && c.frames == 0 && c.rejected == 0 {
                return;
            }
            let mut r = std::mem::take(&mut *c);
            r.connected = connected;
            r
        };
        let _ = self
            .store
            .send(WriteOp::Port {
                port: self.port.clone(),
                protocol: "datawedge",
                report,
            })
            .await;
    }

    /// One scan line (suffix stripped) to the store; `None` if it was garbage (counted).
    /// Waits for room in the writer's queue: that wait is the backpressure.
    async fn submit(&self, line: &[u8], device: &str) -> Option<Pending> {
        if line.is_empty() {
            self.reject(format!("empty line from {device}"));
            return None;
        }
        if line.len() > self.cfg.max_line {
            self.reject(format!(
                "line of {} bytes or more from {device}, longer than max_line ({})",
                line.len(),
                self.cfg.max_line
            ));
            return None;
        }
        let scan = match parse_line(line) {
            Ok(s) => s,
            Err(e) => {
                self.reject(format!("{e} from {device}"));
                return None;
            }
        };
        let scan = AsciiScan {
            step: self.cfg.step,
            code: scan.code.to_string(),
            symbology: scan.symbology.map(str::to_string),
            station: Some(self.cfg.station_name.clone()),
            received_at_ms: crate::clock::now_ms(),
        };
        if super::bare_sscc(&scan.code, scan.symbology.as_deref())
            && !self.bare_gs1_warned.swap(true, Relaxed)
        {
            super::warn_bare_sscc(&self.port, device, &scan.code, "set the handhelds' Code ID Type to AIM (DataWedge: the barcode input); said once per listener");
        }
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .frames += 1;
        Some(self.store_scan(device.to_string(), scan).await)
    }

    /// Hands a scan to the writer (again, for a retry: with its original received_at).
    async fn store_scan(&self, device: String, scan: AsciiScan) -> Pending {
        let kept = scan.clone();
        let rx = self
            .store
            .request(|reply| WriteOp::Ascii {
                device: device.clone(),
                port: self.port.clone(),
                scan,
                reply,
            })
            .await;
        (device, kept, rx)
    }
}

/// A scan handed to the writer: its device, the scan (to offer again), the writer's answer.
type Pending = (
    String,
    AsciiScan,
    oneshot::Receiver<Result<u64, StoreError>>,
);

/// Waits until every submitted scan has its answer. A handheld cannot be asked to resend:
/// a scan the store refused for now is held in `retry` to be offered again; only a
/// permanent refusal, or one past the queue's bound, is logged loudly and counted.
async fn settle(ctx: &Ctx, pending: &mut Vec<Pending>, retry: &mut RetryQueue) -> Result<(), ()> {
    for (device, scan, rx) in pending.drain(..) {
        match rx.await {
            Ok(Ok(_)) => retry.stored(),
            Ok(Err(e)) if !e.permanent => {
                if !retry.keep(device.clone(), scan.clone(), &e) {
                    ctx.reject(format!(
                        "scan {} from {device} NOT stored (retry queue full), rescan it: {e}",
                        scan.code
                    ));
                }
            }
            Ok(Err(e)) => {
                let code = scan.code;
                tracing::error!(port = %ctx.port, device = %device, code = %code, "scan NOT stored, rescan it: {e}");
                ctx.reject(format!(
                    "scan {code} from {device} NOT stored, rescan it: {e}"
                ));
            }
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Offers the held scans again once due; their answers go through [`settle`].
async fn offer_again(ctx: &Ctx, retry: &mut RetryQueue) -> Result<(), ()> {
    let mut pending = Vec::new();
    for (device, scan) in retry.take_due() {
        pending.push(ctx.store_scan(device, scan).await);
    }
    settle(ctx, &mut pending, retry).await
}

/// Until every held scan is stored (`Ok(true)`) or the agent stops (`Ok(false)`).
async fn retry_until_stored(
    ctx: &Ctx,
    retry: &mut RetryQueue,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, ()> {
    while let Some(due) = retry.due() {
        if *stop.borrow() {
            return Ok(false);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => offer_again(ctx, retry).await?,
            r = stop.changed() => if r.is_err() { return Ok(false) },
        }
    }
    Ok(true)
}

/// What is still held when a connection or listener ends is lost: logged, counted.
fn give_up(ctx: &Ctx, retry: &mut RetryQueue, why: &str) {
    let n = retry.give_up(why);
    if n > 0 {
        let mut c = ctx.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.rejected += n as u64;
        c.last_reject = Some(format!(
            "{n} scans the store refused were NOT stored by the stop"
        ));
    }
}

/// Serves one listener until `stop` turns true.
pub async fn run(
    cfg: NetworkScanner,
    bound: Bound,
    gateway: String,
    store: StoreHandle,
    stop: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Ctx {
        port: cfg.port_name(),
        cfg,
        gateway,
        store,
        counters: Mutex::new(PortReport::default()),
        bare_gs1_warned: Default::default(),
        overrun_warned: Default::default(),
    });
    tracing::info!(port = %ctx.port, station = %ctx.cfg.station_name, "network scanner listening");
    ctx.flush(true, true).await;
    match bound {
        Bound::Tcp(l) => serve_tcp(&ctx, l, stop).await,
        Bound::Udp(s) => serve_udp(&ctx, s, stop).await,
    }
    ctx.flush(false, true).await;
}

/// An accepted connection that found every slot taken.
struct Waiting {
    stream: TcpStream,
    peer: SocketAddr,
    since: Instant,
}

/// The open connections of one listener, for eviction and the load gauge.
type Open = HashMap<tokio::task::Id, Arc<Seen>>;

fn spawn_connection(
    ctx: &Arc<Ctx>,
    conns: &mut JoinSet<()>,
    open: &mut Open,
    (stream, peer): (TcpStream, SocketAddr),
    stop: &watch::Receiver<bool>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let seen = Arc::new(Seen::new());
    let (ctx, stop, mine) = (ctx.clone(), stop.clone(), seen.clone());
    let task = conns.spawn(async move {
        connection(&ctx, stream, peer, stop, &mine).await;
        drop(slot);
    });
    open.insert(task.id(), seen);
}

/// Rings the longest-silent open connection that has been silent at least `evict_idle`,
/// unless one is already closing for the waiting handheld.
fn evict_one(ctx: &Ctx, open: &Open) {
    let Some(after) = ctx.cfg.evict_idle else {
        return;
    };
    if open.values().any(|s| s.evicting()) {
        return;
    }
    let quietest = open
        .values()
        .map(|s| (s.silent_for(), s))
        .max_by_key(|(silent, _)| *silent);
    if let Some((silent, seen)) = quietest {
        if silent >= after {
            crate::faults::NETWORK_EVICTED.fetch_add(1, Relaxed);
            seen.evict();
        }
    }
}

async fn serve_tcp(ctx: &Arc<Ctx>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ctx.cfg.max_connections));
    let mut conns = JoinSet::new();
    let mut open = Open::new();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut last_full_log: Option<Instant> = None;
    // Past max_connections one more connection is accepted and waits here, unread, while
    // the longest-silent open one is evicted for it (see `evict_idle`); the rest wait in
    // the kernel's backlog, their scans in their receive buffers. Closing them at accept
    // lost what they had written.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let mut waiting: Option<Waiting> = None;
    while !*stop.borrow() {
        tokio::select! {
            permit = slots.clone().acquire_owned(), if slot.is_none() => {
                slot = permit.ok();
            }
            accepted = listener.accept(), if waiting.is_none() => match accepted {
                Ok((stream, peer)) => {
                    if slot.is_none() && slots.available_permits() == 0 {
                        crate::faults::NETWORK_FULL.fetch_add(1, Relaxed);
                        if last_full_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            last_full_log = Some(Instant::now());
                            let until = match ctx.cfg.evict_idle {
                                Some(d) => format!("one closes or one silent for {}s is evicted", d.as_secs()),
                                None => "one closes (evict_idle_secs = 0)".to_string(),
                            };
                            tracing::warn!(port = %ctx.port, %peer, max_connections = ctx.cfg.max_connections, "every connection slot is taken: a new connection waits, unread, until {until} (raise max_connections?)");
                        }
                    }
                    waiting = Some(Waiting { stream, peer, since: Instant::now() });
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    tracing::warn!(port = %ctx.port, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tick.tick() => {
                ctx.flush(true, false).await;
                if waiting.is_some() && slot.is_none() {
                    // A connection that already ended must not be the one picked (select!
                    // may run this branch before the join branch sees it).
                    while let Some(done) = conns.try_join_next_with_id() {
                        open.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
                    }
                    // One that ended freed its slot: the acquire branch takes it next turn.
                    if slots.available_permits() == 0 {
                        evict_one(ctx, &open);
                    }
                }
            }
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                open.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
            }
            _ = stop.changed() => {}
        }
        if slot.is_some() {
            if let Some(w) = waiting.take() {
                let held = slot.take();
                spawn_connection(ctx, &mut conns, &mut open, (w.stream, w.peer), &stop, held);
            }
        }
        load::set(
            &ctx.port,
            Load {
                open: open.len(),
                waiting_since: waiting.as_ref().map(|w| w.since),
            },
        );
    }
    // The connection waiting for a slot and those still in the backlog hold scans their
    // handhelds counted sent: each is read once, as the open ones are, before the close.
    if let Some(w) = waiting.take() {
        spawn_connection(ctx, &mut conns, &mut open, (w.stream, w.peer), &stop, None);
    }
    drain_backlog(ctx, listener, &stop, &mut conns, &mut open);
    // Connections see the stop too and end after their commits; a stuck one is cut off so
    // the store writer (which stops once every handle is dropped) is not held.
    let drained = tokio::time::timeout(DRAIN_ON_STOP, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Commits stuck, or a handheld still sending: what it read and had not stored is lost.
        tracing::error!(port = %ctx.port, connections = conns.len(), "connections still committing {DRAIN_ON_STOP:?} into the stop are cut off: a line read from them but not yet stored is lost (check the store's health)");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    load::remove(&ctx.port);
}

fn drain_backlog(
    ctx: &Arc<Ctx>,
    listener: TcpListener,
    stop: &watch::Receiver<bool>,
    conns: &mut JoinSet<()>,
    open: &mut Open,
) {
    let Ok(listener) = listener.into_std() else {
        return;
    };
    // Non-blocking (as tokio left it): the loop ends at the first empty accept. Any other
    // error (an aborted handshake, EINTR, out of descriptors) is skipped, up to 16 of them,
    // rather than ending the drain and resetting everything still queued.
    let mut errors = 0;
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                errors += 1;
                tracing::warn!(port = %ctx.port, "accepting a waiting connection at stop: {e}");
                if errors > 16 {
                    break;
                }
                continue;
            }
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        let Ok(stream) = stream else { continue };
        spawn_connection(ctx, conns, open, (stream, peer), stop, None);
    }
}

async fn serve_udp(ctx: &Arc<Ctx>, sock: UdpSocket, mut stop: watch::Receiver<bool>) {
    // Room for a maximal scan, its suffix and one byte more to see that it is too long.
    let mut buf = vec![0u8; ctx.cfg.max_line + 3];
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut pending: Vec<Pending> = Vec::new();
    // Datagrams are read on while refused scans wait here: holding the socket unread would
    // have the kernel drop what arrives once its buffer is full.
    let mut retry = RetryQueue::new(&ctx.port);
    while !*stop.borrow() {
        let due = retry.due();
        let first = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = tick.tick() => { ctx.flush(true, false).await; continue; }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                if offer_again(ctx, &mut retry).await.is_err() {
                    break;
                }
                continue;
            }
            _ = stop.changed() => break,
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(r) = next.take() {
            match r {
                Ok((n, peer)) => {
                    let device = ctx.device(peer.ip());
                    let data = ctx.cfg.suffix.strip(&buf[..n]);
                    if let Some(p) = ctx.submit(data, &device).await {
                        pending.push(p);
                    }
                }
                // An ICMP error from an earlier send, or a truncation: nothing to keep.
                Err(e) => tracing::debug!(port = %ctx.port, "recv failed: {e}"),
            }
            taken += 1;
            if taken < UDP_BATCH {
                next = match sock.try_recv_from(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    r => Some(r),
                };
            }
        }
        // One commit for the whole batch before more is read: datagrams that arrive meanwhile
        // wait in the socket buffer (the kernel drops them when it is full).
        if settle(ctx, &mut pending, &mut retry).await.is_err() {
            break;
        }
    }
    give_up(ctx, &mut retry, "listener stopping");
}
