//! One connection to an upstream broker, in MQTT 5 or 3.1.1, seen by the service as a few
//! events: connected, a publish acknowledged — or refused, which only MQTT 5 can say (its
//! PUBACK carries a reason code; a 3.1.1 broker that will not take a message acks it and
//! drops it, or closes the connection).
//!
//! [`Link::publish`] encodes into a buffer at once and returns the packet id; one task per
//! connection writes whatever has piled up in one write (a burst of publishes is one
//! syscall, not one each) and reads PUBACKs in bulk. The codec and the packet ids are
//! [`crate::mqtt::wire`]; this file is the I/O around it. The handshake runs in that task
//! too, never under a caller's `select!`: a CONNECT on a slow link is not dropped half-way.

use crate::config::{BrokerLink, Upstream};
use crate::mqtt::wire::{self, Incoming, Pkids, Version};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

/// What the broker's CONNACK said about the session and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub session_present: bool,
    /// MQTT 5: the broker takes at most this many unacknowledged publishes.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the broker takes.
    pub max_packet: Option<u32>,
    /// MQTT 5: the broker's keep-alive, which replaces ours (seconds).
    pub server_keep_alive: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Connected(Granted),
    Acked(u16),
    /// The broker answered the publish with a failure reason code (MQTT 5).
    Refused {
        pkid: u16,
        reason: String,
    },
}

/// Encoded packets waiting for the writer, shared between the caller and the connection task.
struct Outbound {
    buf: Mutex<BytesMut>,
    wake: Notify,
    /// A DISCONNECT is queued: the writer ends after writing it.
    closing: AtomicBool,
    /// A PINGREQ went out and its PINGRESP has not come back.
    ping_owed: AtomicBool,
}

impl Outbound {
    fn push(&self, encode: impl FnOnce(&mut BytesMut) -> Result<(), String>) -> Result<(), String> {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        // Nothing may follow the DISCONNECT (a PUBACK owed, a ping): it is the last packet.
        if self.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
        encode(&mut buf)?;
        drop(buf);
        self.wake.notify_one();
        Ok(())
    }
}

pub struct Link {
    version: Version,
    out: Arc<Outbound>,
    pkids: Pkids,
    events: mpsc::UnboundedReceiver<Stamped>,
    /// Events of a batch already received, not yet handed out.
    ready: VecDeque<LinkEvent>,
    /// When the batch of the event last handed out was read off the socket.
    read_at: Instant,
    /// When the connection's end (its error) was read, once it has been handed out.
    ended_at: Option<Instant>,
    _task: AbortOnDrop,
}

/// What the connection task read, and when: the service may handle it much later (its
/// thread waits on a full store queue), and a 3.1.1 ack is judged by how long the
/// connection outlived it on the wire, not by when it was handled.
type Stamped = (Instant, Result<Vec<LinkEvent>, String>);

/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// A write must make this much progress within the write timeout.
const WRITE_PIECE: usize = 16 * 1024;

impl Link {
    /// Starts connecting to `broker` (one of `u`'s); the first event is `Connected` or an
    /// error. Errors returned here are the gateway's own (a password or certificate file).
    pub fn open(u: &Upstream, broker: &BrokerLink, v5: bool) -> Result<Link, String> {
        let what = format!("upstream {}", u.name);
        let dialer = crate::mqtt::Dialer::new(broker, &what)?;
        let version = if v5 { Version::V5 } else { Version::V311 };
        let hello = wire::Hello {
            client_id: broker.client_id.clone(),
            keep_alive_secs: broker.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            credentials: dialer.credentials.clone(),
            session_expiry_secs: 3600,
            max_incoming: crate::mqtt::MAX_PACKET as u32,
        };
        let out = Arc::new(Outbound {
            buf: Mutex::new(BytesMut::with_capacity(READ_CHUNK)),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            ping_owed: AtomicBool::new(false),
        });
        // Unbounded, yet bounded by the window (one PUBACK per publish, one ping): a reader
        // blocked on a full channel would stop reading PINGRESPs and end a good connection.
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            dialer,
            version,
            hello,
            broker.keep_alive,
            out.clone(),
            tx,
        ));
        Ok(Link {
            version,
            out,
            pkids: Pkids::default(),
            events,
            ready: VecDeque::new(),
            read_at: Instant::now(),
            ended_at: None,
            _task: AbortOnDrop(task),
        })
    }

    pub fn is_v5(&self) -> bool {
        self.version == Version::V5
    }

    /// Queues a QoS 1 publish and returns its packet id. The caller keeps within the
    /// window, so running out of packet ids is a bookkeeping error, reported.
    pub fn publish(&mut self, topic: &str, payload: String) -> Result<u16, String> {
        let pkid = self
            .pkids
            .take()
            .ok_or("all 65,535 packet ids are unacknowledged")?;
        let version = self.version;
        self.out
            .push(|buf| wire::publish(version, pkid, topic, Bytes::from(payload), buf))?;
        Ok(pkid)
    }

    /// Sends DISCONNECT and waits (briefly) until it is written and the connection closed;
    /// returns the events that arrived meanwhile (late PUBACKs are still acks), each with
    /// when it was read.
    pub async fn disconnect(&mut self) -> Vec<(LinkEvent, Instant)> {
        let out = &self.out;
        let _ = out.push(|buf| {
            wire::disconnect(buf);
            // Under the buffer's lock: the writer sees the flag with the DISCONNECT in hand.
            out.closing.store(true, Ordering::SeqCst);
            Ok(())
        });
        let mut late = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(ev)) = self.recv().await {
                late.push((ev, self.read_at));
            }
        })
        .await;
        late
    }

    /// The next event; `None` once the connection task ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<LinkEvent, String>> {
        loop {
            if let Some(ev) = self.pop_ready() {
                return Some(Ok(ev));
            }
            let (at, read) = self.events.recv().await?;
            if let Some(e) = self.take(at, read) {
                return Some(Err(e));
            }
        }
    }

    /// Takes in one batch from the connection task; its error, if it was the end.
    fn take(&mut self, at: Instant, read: Result<Vec<LinkEvent>, String>) -> Option<String> {
        self.read_at = at;
        match read {
            Ok(batch) => {
                self.ready.extend(batch);
                None
            }
            Err(e) => {
                self.ended_at = Some(at);
                Some(e)
            }
        }
    }

    /// When the last event handed out was read off the socket.
    pub fn read_at(&self) -> Instant {
        self.read_at
    }

    /// When the connection's end was read (once its error has been handed out).
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// The next event if one has already arrived.
    pub fn try_recv(&mut self) -> Option<Result<LinkEvent, String>> {
        if self.ready.is_empty() {
            let (at, read) = self.events.try_recv().ok()?;
            if let Some(e) = self.take(at, read) {
                return Some(Err(e));
            }
        }
        self.pop_ready().map(Ok)
    }

    /// An acknowledged packet id is free again once its event is handed out.
    fn pop_ready(&mut self) -> Option<LinkEvent> {
        let ev = self.ready.pop_front()?;
        if let LinkEvent::Acked(pkid) | LinkEvent::Refused { pkid, .. } = &ev {
            self.pkids.release(*pkid);
        }
        Some(ev)
    }

    /// Nothing more is waiting right now (a burst of acks has been read).
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.events.is_empty()
    }
}

type Events = mpsc::UnboundedSender<Stamped>;

/// The connection: dial, handshake, then the reader and the writer side by side until one
/// of them fails; the failure is the last event.
async fn run(
    dialer: crate::mqtt::Dialer,
    version: Version,
    hello: wire::Hello,
    keep_alive: Duration,
    out: Arc<Outbound>,
    tx: Events,
) {
    let ended = async {
        let stream = dialer.dial().await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let granted = handshake(version, &hello, &mut rd, &mut wr, &mut inbuf).await?;
        // MQTT 5: a Server Keep Alive in the CONNACK is the one to keep (3.2.2.3.14).
        let keep_alive = granted
            .server_keep_alive
            .map_or(keep_alive, |s| Duration::from_secs(s as u64));
        let connected = LinkEvent::Connected(granted);
        if tx.send((Instant::now(), Ok(vec![connected]))).is_err() {
            return Ok(());
        }
        tokio::select! {
            r = read_loop(version, rd, inbuf, &out, &tx) => r,
            r = write_loop(wr, keep_alive, version, &out) => r,
        }
    };
    if let Err(e) = ended.await {
        let _ = tx.send((Instant::now(), Err(e)));
    }
}

/// CONNECT, then the CONNACK within [`crate::mqtt::HANDSHAKE_SECS`].
async fn handshake(
    version: Version,
    hello: &wire::Hello,
    rd: &mut (impl AsyncReadExt + Unpin),
    wr: &mut (impl AsyncWriteExt + Unpin),
    inbuf: &mut BytesMut,
) -> Result<Granted, String> {
    let secs = crate::mqtt::HANDSHAKE_SECS;
    let exchange = async {
        let mut connect = BytesMut::new();
        wire::connect(version, hello, &mut connect)?;
        wr.write_all(&connect).await.map_err(|e| e.to_string())?;
        wr.flush().await.map_err(|e| e.to_string())?;
        loop {
            if let Some(p) = wire::decode(version, inbuf, hello.max_incoming)? {
                return match p {
                    Incoming::ConnAck {
                        session_present,
                        receive_maximum,
                        max_packet,
                        server_keep_alive,
                    } => Ok(Granted {
                        session_present,
                        receive_maximum,
                        max_packet,
                        server_keep_alive,
                    }),
                    Incoming::ConnRefused(why) => Err(why),
                    Incoming::Disconnect(why) => Err(format!("the broker disconnected: {why}")),
                    other => Err(format!("expected CONNACK, the broker sent {other:?}")),
                };
            }
            inbuf.reserve(READ_CHUNK);
            if rd.read_buf(inbuf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the broker closed the connection before its CONNACK".into());
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(secs), exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {secs} s waiting for the CONNACK")),
    }
}

/// Reads whatever has arrived, decodes every whole packet, hands the acks on as one batch.
async fn read_loop(
    version: Version,
    mut rd: impl AsyncReadExt + Unpin,
    mut inbuf: BytesMut,
    out: &Outbound,
    tx: &Events,
) -> Result<(), String> {
    let max = crate::mqtt::MAX_PACKET as u32;
    let mut read_at = Instant::now();
    loop {
        let mut batch = Vec::new();
        while let Some(p) = wire::decode(version, &mut inbuf, max)? {
            match p {
                Incoming::PubAck {
                    pkid,
                    refusal: None,
                } => batch.push(LinkEvent::Acked(pkid)),
                Incoming::PubAck {
                    pkid,
                    refusal: Some(reason),
                } => batch.push(LinkEvent::Refused { pkid, reason }),
                Incoming::PingResp => out.ping_owed.store(false, Ordering::SeqCst),
                owed @ (Incoming::Publish { .. } | Incoming::PubRel { .. }) => out.push(|buf| {
                    wire::answer(version, &owed, buf);
                    Ok(())
                })?,
                Incoming::Disconnect(why) => {
                    let _ = tx.send((read_at, Ok(batch)));
                    return Err(format!("the broker disconnected: {why}"));
                }
                Incoming::ConnAck { .. } | Incoming::ConnRefused(_) => {
                    return Err("the broker sent a second CONNACK".into())
                }
                Incoming::Other => {}
            }
        }
        if !batch.is_empty() && tx.send((read_at, Ok(batch))).is_err() {
            return Ok(()); // nobody listens: the link was dropped
        }
        inbuf.reserve(READ_CHUNK);
        let read = rd.read_buf(&mut inbuf).await;
        read_at = Instant::now();
        match read {
            Ok(0) => return Err("connection closed by the broker".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Writes what piled up, in one write, whenever woken; pings every `keep_alive` and gives
/// up when the previous ping went unanswered that long.
async fn write_loop(
    mut wr: impl AsyncWriteExt + Unpin,
    keep_alive: Duration,
    version: Version,
    out: &Outbound,
) -> Result<(), String> {
    let write_timeout = Duration::from_secs(crate::mqtt::HANDSHAKE_SECS);
    let pinging = !keep_alive.is_zero();
    let mut tick = tokio::time::interval(keep_alive.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            _ = out.wake.notified() => {}
            _ = tick.tick(), if pinging => {
                if out.ping_owed.swap(true, Ordering::SeqCst) {
                    return Err(format!("no PINGRESP within {} s", keep_alive.as_secs()));
                }
                out.push(|buf| { wire::ping(version, buf); Ok(()) })?;
            }
        }
        let (chunk, closing) = {
            let mut buf = out.buf.lock().unwrap_or_else(|e| e.into_inner());
            (buf.split(), out.closing.load(Ordering::SeqCst))
        };
        if !chunk.is_empty() {
            // The timeout is on progress, not on the whole burst: a full window of
            // batches on a slow uplink takes long, and must not be cut and resent for ever.
            for piece in chunk.chunks(WRITE_PIECE) {
                match tokio::time::timeout(write_timeout, wr.write_all(piece)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => {
                        return Err(format!(
                            "the broker took no {} KiB within {} s",
                            WRITE_PIECE / 1024,
                            write_timeout.as_secs()
                        ))
                    }
                }
            }
            match tokio::time::timeout(write_timeout, wr.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("a flush to the broker did not finish".into()),
            }
        }
        if closing {
            let _ = wr.shutdown().await;
            return Ok(());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_queued_after_the_disconnect() {
        let out = Outbound {
            buf: Mutex::new(BytesMut::new()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            ping_owed: AtomicBool::new(false),
        };
        out.push(|buf| {
            wire::disconnect(buf);
            out.closing.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let disconnect = out.buf.lock().unwrap().clone();
        assert!(!disconnect.is_empty());
        // A ping due, a PUBACK owed: both arrive too late to be sent.
        out.push(|buf| {
            wire::ping(Version::V311, buf);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            *out.buf.lock().unwrap(),
            disconnect,
            "the DISCONNECT stays last"
        );
    }
}
