//! Virtual scanners on real pseudo-terminals. The test or demo keeps the master end and
//! gives the agent the slave's path, exactly as a USB-serial scanner appears.
//!
//! [`FramedScanner`] speaks the darkleg frame protocol as a smart scanner does: Hello with
//! its last ack, a window of events in flight, go-back-N retransmission from the last ack
//! on a timeout or Nack, RAM "storage" of unacked scans. (The no_std firmware with its flash
//! ring is a separate crate; this is the gateway's conversation partner.)

use super::workload::PlannedScan;
use darkleg_protocol::frame::MAX_FRAME;
use darkleg_protocol::{Decoded, EventFrame, Frame, FrameDecoder, NackReason};
use serialport::{SerialPort, TTYPort};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pty pair whose slave end is closed, so the agent can open it by path.
pub struct Pty {
    pub master: TTYPort,
    pub slave_path: String,
}

impl Pty {
    pub fn open() -> Result<Pty, String> {
        let (mut master, slave) =
            TTYPort::pair().map_err(|e| format!("creating a pty pair: {e}"))?;
        let slave_path = slave.name().ok_or("pty slave has no name")?;
        drop(slave);
        master
            .set_timeout(Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
        Ok(Pty { master, slave_path })
    }
}

/// What a framed scanner did, readable while it runs.
#[derive(Debug, Clone, Default)]
pub struct ScannerStats {
    /// Scans taken by the operator so far (sequence numbers 1..=scanned).
    pub scanned: u64,
    /// Highest sequence the gateway acked.
    pub acked: u64,
    /// Valid frames written (hellos and events, retransmits included).
    pub frames_sent: u64,
    pub retransmits: u64,
    pub nacks: u64,
    pub garbage_bytes: u64,
    /// Hellos written completely (the agent may have missed some while it was down).
    pub hellos: u64,
    /// The station the gateway last assigned with `SetStep`.
    pub assigned_step: Option<darkleg_protocol::Step>,
}

#[derive(Debug, Clone)]
pub struct FramedConfig {
    pub device: String,
    pub window: u64,
    /// Resend from the last ack when nothing was acked for this long.
    pub retransmit_after: Duration,
    /// Pause between operator scans.
    pub scan_interval: Duration,
    /// Chance per frame of writing random garbage before it (0.0 = clean line).
    pub garbage: f64,
    pub seed: u64,
    /// Scans `1..=resume_after` of the plan were made and acked in an earlier session (a
    /// scanner plugged back in keeps its sequence).
    pub resume_after: u64,
}

impl FramedConfig {
    /// A well-behaved scanner: window 8, retransmit after 1 s, a scan every 10 ms, a clean
    /// line. Override fields with struct update syntax.
    pub fn new(device: &str, seed: u64) -> FramedConfig {
        FramedConfig {
            device: device.to_string(),
            window: 8,
            retransmit_after: Duration::from_secs(1),
            scan_interval: Duration::from_millis(10),
            garbage: 0.0,
            seed,
            resume_after: 0,
        }
    }
}

pub struct FramedScanner {
    pub stats: Arc<Mutex<ScannerStats>>,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl FramedScanner {
    /// Starts scanning `plan` in order on `master`, in a thread.
    pub fn start(master: TTYPort, cfg: FramedConfig, plan: Vec<PlannedScan>) -> FramedScanner {
        let stats: Arc<Mutex<ScannerStats>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let join = std::thread::spawn(move || Link::new(master, cfg, plan, s).run(&st));
        FramedScanner {
            stats,
            stop,
            join: Some(join),
        }
    }

    pub fn stats(&self) -> ScannerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True once every planned scan was made and acked.
    pub fn done(&self, planned: usize) -> bool {
        let s = self.stats();
        s.scanned as usize == planned && s.acked as usize == planned
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for FramedScanner {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Link {
    port: TTYPort,
    cfg: FramedConfig,
    plan: Vec<PlannedScan>,
    captured_at: Vec<u64>,
    stats: Arc<Mutex<ScannerStats>>,
    acked: u64,
    next: u64,
    clock_offset_ms: i64,
    rng: u64,
    last_progress: Instant,
    rto: Duration,
    last_scan: Instant,
}

impl Link {
    fn new(
        port: TTYPort,
        cfg: FramedConfig,
        plan: Vec<PlannedScan>,
        stats: Arc<Mutex<ScannerStats>>,
    ) -> Link {
        let rto = cfg.retransmit_after;
        let rng = cfg.seed | 1;
        let done = cfg.resume_after.min(plan.len() as u64);
        {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            s.scanned = done;
            s.acked = done;
        }
        Link {
            port,
            cfg,
            plan,
            captured_at: vec![0; done as usize],
            stats,
            acked: done,
            next: done + 1,
            clock_offset_ms: 0,
            rng,
            last_progress: Instant::now(),
            rto,
            last_scan: Instant::now(),
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn stat(&self, f: impl FnOnce(&mut ScannerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn send(&mut self, frame: &Frame<'_>) {
        if self.cfg.garbage > 0.0 && (self.rand() % 10_000) as f64 / 10_000.0 < self.cfg.garbage {
            let n = 1 + self.rand() as usize % 64;
            let junk: Vec<u8> = (0..n).map(|_| self.rand() as u8).collect();
            let _ = self.port.write_all(&junk);
            self.stat(|s| s.garbage_bytes += n as u64);
        }
        let mut out = [0u8; MAX_FRAME];
        let Ok(n) = frame.encode(&mut out) else {
            return;
        };
        // A write that fails or times out (agent down, pty buffer full) is a lost frame:
        // retransmission covers it, as on a real radio link.
        if self.port.write_all(&out[..n]).is_ok() {
            let hello = matches!(frame, Frame::Hello { .. });
            self.stat(|s| {
                s.frames_sent += 1;
                if hello {
                    s.hellos += 1;
                }
            });
        }
    }

    fn hello(&mut self) {
        let device = self.cfg.device.clone();
        self.send(&Frame::Hello {
            device: &device,
            firmware: "sim-1",
            last_acked: self.acked,
        });
    }

    fn now_ms(&self) -> u64 {
        (crate::now_ms() as i64 + self.clock_offset_ms) as u64
    }

    fn send_event(&mut self, seq: u64) {
        let i = (seq - 1) as usize;
        let scan = self.plan[i].clone();
        let frame = Frame::Event(EventFrame {
            seq,
            step: scan.step,
            code: &scan.code,
            symbology: scan.symbology.as_deref(),
            operator: None,
            captured_at_ms: self.captured_at[i],
        });
        self.send(&frame);
    }

    fn run(mut self, stop: &AtomicBool) {
        self.hello();
        let mut dec = FrameDecoder::new();
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::Relaxed) {
            // The operator scans at their pace (or, with no interval, as fast as the link
            // takes them); every scan is kept until acked.
            let before = self.captured_at.len();
            while self.captured_at.len() < self.plan.len()
                && (self.cfg.scan_interval.is_zero()
                    || self.last_scan.elapsed() >= self.cfg.scan_interval)
            {
                let at = self.now_ms();
                self.captured_at.push(at);
                self.last_scan += self.cfg.scan_interval;
            }
            if self.captured_at.len() != before {
                let n = self.captured_at.len() as u64;
                self.stat(|s| s.scanned = n);
            }
            let scanned = self.captured_at.len() as u64;
            while self.next <= scanned && self.next <= self.acked + self.cfg.window {
                let seq = self.next;
                self.send_event(seq);
                self.next += 1;
            }
            if self.acked < scanned && self.last_progress.elapsed() > self.rto {
                // No ack for too long: the gateway may have restarted and forgotten us.
                let resent = self.next - 1 - self.acked;
                self.stat(|s| s.retransmits += resent);
                self.hello();
                self.next = self.acked + 1;
                self.last_progress = Instant::now();
                self.rto = (self.rto * 2).min(Duration::from_secs(4));
            }
            let n = match self.port.read(&mut buf) {
                Ok(n) => n,
                Err(_) => {
                    // Timeout, or EIO while no agent has the slave open.
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            let mut replies = Vec::new();
            for &b in &buf[..n] {
                if let Decoded::Frame(f) = dec.push(b) {
                    replies.push(match f {
                        Frame::Ack { up_to } => Reply::Ack(up_to),
                        Frame::Nack { reason, .. } => Reply::Nack(reason),
                        Frame::TimeSync { unix_ms } => Reply::Time(unix_ms),
                        Frame::SetStep { step } => Reply::Step(step),
                        _ => Reply::Other,
                    });
                }
            }
            for r in replies {
                match r {
                    Reply::Ack(up_to) => {
                        if up_to > self.acked {
                            self.acked = up_to.min(scanned);
                            self.last_progress = Instant::now();
                            self.rto = self.cfg.retransmit_after;
                            let a = self.acked;
                            self.stat(|s| s.acked = a);
                        }
                        if self.next <= self.acked {
                            self.next = self.acked + 1;
                        }
                    }
                    // The gateway could not store: keep everything and let the retransmit
                    // timer pace the retry, rather than hammer a full disk.
                    Reply::Nack(NackReason::Storage) => self.stat(|s| s.nacks += 1),
                    // A refused scan is retired by the Ack that follows; nothing to resend.
                    Reply::Nack(NackReason::Rejected) => self.stat(|s| s.nacks += 1),
                    Reply::Nack(reason) => {
                        let resent = self.next - 1 - self.acked;
                        self.stat(|s| {
                            s.nacks += 1;
                            s.retransmits += resent;
                        });
                        if reason == NackReason::NoHello {
                            self.hello();
                        }
                        self.next = self.acked + 1;
                    }
                    Reply::Time(unix_ms) => {
                        self.clock_offset_ms = unix_ms as i64 - crate::now_ms() as i64;
                    }
                    Reply::Step(step) => self.stat(|s| s.assigned_step = Some(step)),
                    Reply::Other => {}
                }
            }
        }
    }
}

enum Reply {
    Ack(u64),
    Nack(NackReason),
    Time(u64),
    Step(darkleg_protocol::Step),
    Other,
}

/// A plain serial scanner: writes `]C1code\r\n`, hears nothing back.
pub fn write_ascii_scan(master: &mut TTYPort, scan: &PlannedScan) -> std::io::Result<()> {
    let mut line = String::new();
    if let Some(sym) = &scan.symbology {
        line.push_str(sym);
    }
    line.push_str(&scan.code);
    line.push_str("\r\n");
    master.write_all(line.as_bytes())
}
