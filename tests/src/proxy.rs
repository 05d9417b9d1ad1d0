//! A TCP proxy between the agent and its broker that misbehaves on command: it stalls
//! (keeps connections open, moves no bytes, so keep-alives time out and TCP buffers fill) or
//! cuts every connection in the middle of whatever it is forwarding — half a packet
//! delivered, then a reset — or holds every chunk for a while before passing it on (a
//! congested VPN or LTE link). Plain threads and std sockets: it must fail exactly as told.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Control {
    stalled: AtomicBool,
    /// Every new connection is closed at once, as by a broker that is down.
    down: AtomicBool,
    /// Each chunk read waits this long before it is forwarded (0: none).
    delay_ms: AtomicU64,
    /// Bumped by `cut`: pumps from an older generation forward half a chunk and hang up.
    generation: AtomicU64,
    cuts_mid_packet: AtomicU64,
    /// Pump threads running (two per proxied connection).
    pumps: AtomicU64,
    stop: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    control: Arc<Control>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let control = Arc::new(Control::default());
        let c = control.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if c.stop.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if c.down.load(SeqCst) {
                    continue;
                }
                // The broker may be down: then the client is dropped, as a dead host would.
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let generation = c.generation.load(SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let c = c.clone();
                    c.pumps.fetch_add(1, SeqCst);
                    std::thread::spawn(move || {
                        pump(from, to, &c, generation);
                        c.pumps.fetch_sub(1, SeqCst);
                    });
                }
            }
        });
        Proxy { port, control }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops moving bytes (connections stay open) until [`resume`](Self::resume).
    pub fn stall(&self) {
        self.control.stalled.store(true, SeqCst);
    }

    pub fn resume(&self) {
        self.control.stalled.store(false, SeqCst);
    }

    /// Holds every chunk, either way, for `per_chunk` before forwarding it (zero: no delay).
    /// A chunk is whatever one read returned, up to 4 KiB.
    pub fn delay(&self, per_chunk: Duration) {
        self.control
            .delay_ms
            .store(per_chunk.as_millis() as u64, SeqCst);
    }

    /// The broker behind it looks down to its clients (the others keep it): open
    /// connections are cut and new ones closed at once, until [`up`](Self::up).
    pub fn down(&self) {
        self.control.down.store(true, SeqCst);
        self.cut();
    }

    pub fn up(&self) {
        self.control.down.store(false, SeqCst);
    }

    /// Cuts every open connection, each in the middle of its next chunk.
    pub fn cut(&self) {
        self.control.generation.fetch_add(1, SeqCst);
    }

    /// Connections open through the proxy now.
    pub fn connections(&self) -> u64 {
        self.control.pumps.load(SeqCst) / 2
    }

    /// Connections cut after forwarding part of a chunk.
    pub fn cuts_mid_packet(&self) -> u64 {
        self.control.cuts_mid_packet.load(SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.control.stop.store(true, SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, c: &Control, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 4096];
    let hang_up = |from: &TcpStream, to: &TcpStream| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    // When a cut was asked for: wait this long for a chunk to tear, then just hang up.
    let mut cut_since: Option<std::time::Instant> = None;
    loop {
        while c.stalled.load(SeqCst) && c.generation.load(SeqCst) == generation {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cut = c.generation.load(SeqCst) != generation;
        if cut && cut_since.is_none() {
            cut_since = Some(std::time::Instant::now());
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return hang_up(&from, &to),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if cut_since.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                    return hang_up(&from, &to);
                }
                continue;
            }
            Err(_) => return hang_up(&from, &to),
        };
        if cut {
            // Half of what was in flight, then gone: the receiver sees a torn packet.
            let half = n.div_ceil(2);
            let _ = to.write_all(&buf[..half]);
            if half < n {
                c.cuts_mid_packet.fetch_add(1, SeqCst);
            }
            return hang_up(&from, &to);
        }
        let delay = c.delay_ms.load(SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if to.write_all(&buf[..n]).is_err() {
            return hang_up(&from, &to);
        }
    }
}
