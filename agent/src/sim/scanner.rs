//! Virtual scanners on real pseudo-terminals. The test or demo keeps the master end and
//! gives the agent the slave's path, exactly as a USB-serial scanner appears.
//!
//! A [`FramedScanner`] is the real firmware (`darkleg-firmware`'s `Scanner`) on a
//! [`SimBoard`]: a RAM flash, the pty as its UART. A thread plays the operator working
//! through a plan of scans, and the faults a floor sees: battery pulls (some in the middle
//! of a flash write), walks out of radio range, a noisy cable.

use super::board::{
    xorshift, CountingPin, HostClock, NoTrigger, Noise, PtyRx, PtyTx, Radio, SimBoard, SimFlash,
};
use super::workload::PlannedScan;
use darkleg_firmware::link::LinkConfig;
use darkleg_firmware::{Config, Parts, ScanOutcome, Scanner, TriggerMode};
use serialport::{SerialPort, TTYPort};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most scans a bench-load operator makes between two firmware polls.
const BENCH_BURST: usize = 16;

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
    /// Plan entries stored in the scanner's flash so far (including `resume_after`).
    pub scanned: u64,
    /// Highest sequence the gateway acked.
    pub acked: u64,
    /// Stored scans not acked yet (what the scanner still holds).
    pub pending: u64,
    /// Hellos and events sent (retransmits included).
    pub frames_sent: u64,
    /// Events sent again after a timeout or Nack.
    pub retransmits: u64,
    pub nacks: u64,
    pub hellos: u64,
    /// Scans that got the error tone (full flash, power failing mid-write): rescanned.
    pub error_tones: u64,
    /// Scans stored while the gateway was unreachable (the two-beep tone).
    pub stored_offline: u64,
    pub garbage_bytes: u64,
    pub power_cuts: u64,
    /// Power cuts that hit a flash write or erase.
    pub cuts_mid_write: u64,
    pub link_drops: u64,
    /// The station the gateway last assigned with `SetStep`.
    pub assigned_step: Option<darkleg_protocol::Step>,
    /// (seq, code) of every plan scan as the firmware reported it stored.
    pub stored: Vec<(u64, String)>,
}

/// Faults to inject, each as a mean interval between occurrences (`None`: never).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Battery pulls; half of them land inside a flash write or erase.
    pub power_cut_every: Option<Duration>,
    /// Walks out of radio range, each for 0.3–2 s.
    pub link_drop_every: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct FramedConfig {
    pub device: String,
    pub window: u8,
    /// First retransmit timeout (doubles while nothing is acked).
    pub retransmit_after: Duration,
    /// Pause between operator scans.
    pub scan_interval: Duration,
    /// Chance per frame of writing random garbage before it (0.0 = clean line).
    pub garbage: f64,
    pub seed: u64,
    /// The plan's first `resume_after` entries were scanned in an earlier session (with
    /// `flash` from that session, the scanner continues its own sequence).
    pub resume_after: u64,
    /// The scanner's flash chip; `None` = a new 256 KiB blank one.
    pub flash: Option<SimFlash>,
    pub faults: Faults,
    /// The operator starts only once the scanner shows it is connected (a bench load: no
    /// error tones while a new scanner pairs).
    pub wait_online: bool,
    /// How many of the plan's scans the operator may have made so far; `None` = all. A
    /// station upstream raises it as parcels reach this one (the demo's pick → pack line).
    pub released: Option<Arc<AtomicUsize>>,
}

impl FramedConfig {
    /// A well-behaved scanner: window 8, retransmit after 1 s, a scan every 10 ms, a clean
    /// line, no faults. Override fields with struct update syntax.
    pub fn new(device: &str, seed: u64) -> FramedConfig {
        FramedConfig {
            device: device.to_string(),
            window: 8,
            retransmit_after: Duration::from_secs(1),
            scan_interval: Duration::from_millis(10),
            garbage: 0.0,
            seed,
            resume_after: 0,
            flash: None,
            faults: Faults::default(),
            wait_online: false,
            released: None,
        }
    }
}

pub struct FramedScanner {
    pub stats: Arc<Mutex<ScannerStats>>,
    flash: SimFlash,
    stop: Arc<AtomicBool>,
    pull: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl FramedScanner {
    /// Starts the firmware and an operator scanning `plan` in order on `master`, in a thread.
    pub fn start(master: TTYPort, mut cfg: FramedConfig, plan: Vec<PlannedScan>) -> FramedScanner {
        let stats: Arc<Mutex<ScannerStats>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let pull = Arc::new(AtomicBool::new(false));
        let flash = cfg.flash.take().unwrap_or_else(|| SimFlash::blank(256));
        let (s, st, f, p) = (stats.clone(), stop.clone(), flash.clone(), pull.clone());
        let join = std::thread::Builder::new()
            .name(format!("sim-{}", cfg.device))
            .spawn(move || Operator::new(cfg, plan, f, s).run(master, &st, &p))
            .expect("spawning a simulated scanner");
        FramedScanner {
            stats,
            flash,
            stop,
            pull,
            join: Some(join),
        }
    }

    pub fn stats(&self) -> ScannerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pulls the battery now: the firmware's RAM is gone, its flash stays; it boots again a
    /// moment later.
    pub fn pull_battery(&self) {
        self.pull.store(true, Ordering::Relaxed);
    }

    /// The scanner's flash chip, to plug the same scanner in again later.
    pub fn flash(&self) -> SimFlash {
        self.flash.clone()
    }

    /// True once every planned scan was stored and the gateway acked all of them.
    pub fn done(&self, planned: usize) -> bool {
        let s = self.stats();
        s.scanned as usize == planned && s.pending == 0 && s.acked > 0
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

/// The person holding the scanner, and the fates that befall it.
struct Operator {
    cfg: FramedConfig,
    plan: Vec<PlannedScan>,
    flash: SimFlash,
    stats: Arc<Mutex<ScannerStats>>,
    next: usize,
    rng: u64,
    radio: Radio,
    garbage: Arc<AtomicU64>,
    beeps: CountingPin,
    /// Link counters of earlier boots (each boot's firmware starts from zero).
    earlier: LinkTotals,
}

#[derive(Default, Clone, Copy)]
struct LinkTotals {
    frames: u64,
    hellos: u64,
    resent: u64,
    nacks: u64,
}

impl LinkTotals {
    fn of(scanner: &Scanner<'_, SimBoard>) -> LinkTotals {
        let l = scanner.stats().link;
        LinkTotals {
            frames: u64::from(l.hellos + l.events_sent),
            hellos: u64::from(l.hellos),
            resent: u64::from(l.resent),
            nacks: u64::from(l.nacks),
        }
    }

    fn plus(self, o: LinkTotals) -> LinkTotals {
        LinkTotals {
            frames: self.frames + o.frames,
            hellos: self.hellos + o.hellos,
            resent: self.resent + o.resent,
            nacks: self.nacks + o.nacks,
        }
    }
}

impl Operator {
    fn new(
        cfg: FramedConfig,
        plan: Vec<PlannedScan>,
        flash: SimFlash,
        stats: Arc<Mutex<ScannerStats>>,
    ) -> Operator {
        let next = (cfg.resume_after as usize).min(plan.len());
        stats.lock().unwrap_or_else(|e| e.into_inner()).scanned = next as u64;
        Operator {
            rng: cfg.seed | 1,
            cfg,
            plan,
            flash,
            stats,
            next,
            radio: Radio::default(),
            garbage: Arc::default(),
            beeps: CountingPin::default(),
            earlier: LinkTotals::default(),
        }
    }

    fn stat(&self, f: impl FnOnce(&mut ScannerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Exponentially distributed wait with the given mean.
    fn next_fault(&mut self, every: Option<Duration>) -> Option<Instant> {
        let mean = every?.as_secs_f64();
        let u = (xorshift(&mut self.rng) % 1_000_000 + 1) as f64 / 1_000_001.0;
        Some(Instant::now() + Duration::from_secs_f64(-mean * u.ln()))
    }

    fn parts(&mut self, master: &TTYPort) -> Option<Parts<SimBoard>> {
        let tx = master.try_clone_native().ok()?;
        let rx = master.try_clone_native().ok()?;
        Some(Parts {
            flash: self.flash.clone(),
            tx: PtyTx::new(
                tx,
                self.radio.clone(),
                Noise {
                    chance: self.cfg.garbage,
                    rng: xorshift(&mut self.rng) | 1,
                    bytes: self.garbage.clone(),
                },
            ),
            rx: PtyRx {
                port: rx,
                radio: self.radio.clone(),
            },
            clock: HostClock(Instant::now()),
            beeper: self.beeps.clone(),
            good_led: CountingPin::default(),
            error_led: CountingPin::default(),
            trigger: NoTrigger,
        })
    }

    fn run(mut self, master: TTYPort, stop: &AtomicBool, pull: &AtomicBool) {
        let device = self.cfg.device.clone();
        let first_step = self
            .plan
            .first()
            .map_or(darkleg_protocol::Step::Pick, |s| s.step);
        let fw = Config {
            step: first_step,
            link: LinkConfig {
                window: self.cfg.window,
                retransmit_ms: self.cfg.retransmit_after.as_millis() as u32,
                ..LinkConfig::default()
            },
            trigger: TriggerMode::Presentation { repeat_guard_ms: 0 },
            ..Config::new(&device)
        };
        let mut power_cut_at = self.next_fault(self.cfg.faults.power_cut_every);
        let mut link_drop_at = self.next_fault(self.cfg.faults.link_drop_every);
        let mut link_back_at: Option<Instant> = None;
        let mut next_scan = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Some(parts) = self.parts(&master) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let mut scanner = match Scanner::boot(fw, parts) {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::error!(device = %device, "simulated scanner cannot boot: {e:?}");
                    return;
                }
            };
            // Powered: scan, let the firmware work, until stopped or the battery is pulled.
            while !stop.load(Ordering::Relaxed) {
                let acked_before = scanner.stats().acked;
                scanner.poll();
                let now = Instant::now();
                // With no pause between scans the operator goes as fast as the link takes
                // them (a bench load), rather than filling the flash.
                let fw = scanner.stats();
                let keeping_up = (!self.cfg.scan_interval.is_zero()
                    || u64::from(fw.pending) < 2 * u64::from(self.cfg.window))
                    && (!self.cfg.wait_online || fw.online);
                let mut scanned = false;
                let arrived = self
                    .cfg
                    .released
                    .as_ref()
                    .is_none_or(|r| r.load(Ordering::Relaxed) > self.next);
                if !arrived {
                    // Waiting for the parcel: the next scan comes when it arrives, not in a
                    // burst of the scans the wait "saved".
                    next_scan = next_scan.max(now);
                }
                // A bench load (no pause between scans) takes several scans per poll, so the
                // firmware sends them as one burst; a paced operator scans one at a time.
                let burst = if self.cfg.scan_interval.is_zero() {
                    BENCH_BURST
                } else {
                    1
                };
                let mut room = if self.cfg.scan_interval.is_zero() {
                    (2 * u64::from(self.cfg.window)).saturating_sub(u64::from(fw.pending))
                } else {
                    u64::MAX
                };
                for k in 0..burst {
                    // Later scans of a burst: the parcel must have arrived, the flash live.
                    let still = k == 0
                        || (self
                            .cfg
                            .released
                            .as_ref()
                            .is_none_or(|r| r.load(Ordering::Relaxed) > self.next)
                            && !self.flash.chip().is_dead());
                    if !(self.next < self.plan.len()
                        && now >= next_scan
                        && keeping_up
                        && arrived
                        && still
                        && room > 0)
                    {
                        break;
                    }
                    room -= 1;
                    scanned = true;
                    let scan = self.plan[self.next].clone();
                    if scanner.stats().step != scan.step {
                        scanner.set_step(scan.step);
                    }
                    match scanner.on_decode(&scan.code, scan.symbology.as_deref()) {
                        ScanOutcome::Stored { seq, online } => {
                            self.next += 1;
                            next_scan += self.cfg.scan_interval;
                            let n = self.next as u64;
                            // With `scanned`, so `scanned - pending` (acked) is never ahead.
                            let pending = u64::from(scanner.stats().pending);
                            self.stat(|s| {
                                s.scanned = n;
                                s.pending = pending;
                                s.stored.push((seq, scan.code.clone()));
                                if !online {
                                    s.stored_offline += 1;
                                }
                            });
                        }
                        _ => {
                            // Error tone: the operator waits a moment and scans it again.
                            self.stat(|s| s.error_tones += 1);
                            next_scan = now + Duration::from_millis(200);
                        }
                    }
                }
                if power_cut_at.is_some_and(|t| now >= t) {
                    power_cut_at = self.next_fault(self.cfg.faults.power_cut_every);
                    if xorshift(&mut self.rng).is_multiple_of(2) {
                        // Somewhere in the next flash write or erase (records are ≥ 40 bytes,
                        // so the cut always tears one).
                        let at = xorshift(&mut self.rng) % 40;
                        self.flash.chip().cut_power_after(at);
                    } else {
                        break;
                    }
                }
                if pull.swap(false, Ordering::Relaxed) {
                    break;
                }
                if self.flash.chip().is_dead() {
                    self.stat(|s| s.cuts_mid_write += 1);
                    break;
                }
                if link_drop_at.is_some_and(|t| now >= t) {
                    let for_ms = 300 + xorshift(&mut self.rng) % 1_700;
                    link_back_at = Some(now + Duration::from_millis(for_ms));
                    link_drop_at = None;
                    self.radio.set_out_of_range(true);
                    self.stat(|s| s.link_drops += 1);
                }
                if link_back_at.is_some_and(|t| now >= t) {
                    // Back in range; the next walk away is counted from here.
                    link_back_at = None;
                    link_drop_at = self.next_fault(self.cfg.faults.link_drop_every);
                    self.radio.set_out_of_range(false);
                }
                self.publish(&scanner);
                // A real MCU would sleep until the UART interrupt; poll again soon while
                // the link is moving, less often when it is not.
                if !scanned && scanner.stats().acked == acked_before {
                    wait_readable(&master, 1);
                }
            }
            self.publish(&scanner);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // Battery out: RAM is gone, the flash keeps what the cut left.
            self.earlier = self.earlier.plus(LinkTotals::of(&scanner));
            drop(scanner);
            self.stat(|s| s.power_cuts += 1);
            std::thread::sleep(Duration::from_millis(50 + xorshift(&mut self.rng) % 250));
            self.flash.chip().power_on();
            next_scan = Instant::now();
        }
    }

    fn publish(&self, scanner: &Scanner<'_, SimBoard>) {
        let fw = scanner.stats();
        let link = self.earlier.plus(LinkTotals::of(scanner));
        let garbage = self.garbage.load(Ordering::Relaxed);
        self.stat(|s| {
            s.acked = fw.acked;
            s.pending = u64::from(fw.pending);
            s.frames_sent = link.frames;
            s.hellos = link.hellos;
            s.retransmits = link.resent;
            s.nacks = link.nacks;
            s.garbage_bytes = garbage;
            if fw.gateway_step.is_some() {
                s.assigned_step = fw.gateway_step;
            }
        });
    }
}

/// Waits until the gateway has sent something or `ms` pass, like an MCU sleeping until its
/// UART interrupt.
fn wait_readable(port: &TTYPort, ms: i32) {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsRawFd;
    let mut fds = [PollFd::new(port.as_raw_fd(), PollFlags::POLLIN)];
    let readable = poll(&mut fds, ms).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
    // No agent on the other end yet: the master reports a hang-up at once; do not spin.
    if !readable {
        std::thread::sleep(Duration::from_millis(ms as u64));
    }
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
