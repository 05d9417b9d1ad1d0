//! The scanner: decoded barcodes in, flash ring, link to the gateway, operator feedback.

use crate::feedback::{Feedback, Signal};
use crate::link::{Heard, Link, LinkConfig, LinkStats, Out};
use crate::ring::{self, Captured, MountReport, NewScan, Pos, RecordBuf, Ring, RingError};
use crate::{Board, Monotonic};
use darkleg_protocol::frame::MAX_FRAME;
use darkleg_protocol::{check_code, Decoded, EventFrame, Frame, FrameDecoder, Step};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::InputPin;
use embedded_io::{Read, ReadReady, Write};
use embedded_storage::nor_flash::ReadNorFlash;

/// When a decode counts as a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    /// Handheld: a decode counts only within `window_ms` of a trigger pull, once per pull,
    /// so a code still in view is not taken twice.
    Trigger { window_ms: u32 },
    /// Presentation or fixed mount: every decode counts, except the same code again within
    /// `repeat_guard_ms` (a label held under the reader decodes many times a second).
    Presentation { repeat_guard_ms: u32 },
}

/// Everything a scanner is told at build time.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// Unique per scanner and stable for its life: it names every event it ever sends.
    pub device: &'a str,
    pub firmware: &'a str,
    /// The station until the gateway says otherwise (`SetStep`).
    pub step: Step,
    pub link: LinkConfig,
    pub trigger: TriggerMode,
    /// Flash region for the ring as (offset, length), multiples of the erase size; `None`
    /// uses the whole flash.
    pub ring_region: Option<(u32, u32)>,
}

impl<'a> Config<'a> {
    /// A handheld at a pick station with default link timing, ring over the whole flash.
    pub fn new(device: &'a str) -> Self {
        Config {
            device,
            firmware: concat!("darkleg-fw/", env!("CARGO_PKG_VERSION")),
            step: Step::Pick,
            link: LinkConfig::default(),
            trigger: TriggerMode::Trigger { window_ms: 3_000 },
            ring_region: None,
        }
    }
}

/// The peripherals the scanner takes ownership of.
pub struct Parts<B: Board> {
    pub flash: B::Flash,
    pub tx: B::Tx,
    pub rx: B::Rx,
    pub clock: B::Clock,
    pub beeper: B::Beeper,
    pub good_led: B::GoodLed,
    pub error_led: B::ErrorLed,
    pub trigger: B::Trigger,
}

/// Why the scanner could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// The ring region does not fit the flash geometry (see `Ring::mount`).
    FlashGeometry,
    /// The flash could not be read or the first sector formatted.
    Flash,
}

/// What became of one decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    /// In flash under `seq`; `online` says which tone the operator heard.
    Stored { seq: u64, online: bool },
    /// Not a scan: no trigger pull, or the same label again too soon. Silent.
    Ignored,
    /// Empty or control characters: a misread. Error tone.
    Unreadable,
    /// Longer than the ring stores. Error tone.
    TooLong,
    /// Every sector holds unacked scans. Error tone until the gateway catches up.
    RingFull,
    /// A new (or wiped) scanner has not reached a gateway yet, so it cannot know which
    /// sequence numbers are free: a scan now could be taken for an old one. Error tone;
    /// connect it once.
    NotPaired,
    /// The flash write failed. Error tone; the scan is not stored.
    FlashError,
}

/// Counters and state for diagnostics and the simulator's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Scans stored in flash (each has its own sequence number).
    pub stored: u32,
    /// Decodes refused with the error tone.
    pub refused: u32,
    /// Decodes not counted as scans (no trigger pull, repeat).
    pub ignored: u32,
    /// Scans the gateway refused (`Nack(Rejected)`).
    pub gateway_rejected: u32,
    /// Stored and not acked yet.
    pub pending: u32,
    pub acked: u64,
    pub next_seq: u64,
    pub online: bool,
    /// The gateway's clock is known.
    pub synced: bool,
    /// A gateway has answered at least once since the flash was blank.
    pub paired: bool,
    pub step: Step,
    /// The station the gateway last assigned (`SetStep`), if any.
    pub gateway_step: Option<Step>,
    /// Received blocks that were not frames (line noise).
    pub rx_rejected: u32,
    pub tx_errors: u32,
    pub flash_errors: u32,
    pub link: LinkStats,
}

/// See the crate docs. Owns its peripherals; no allocation.
pub struct Scanner<'a, B: Board> {
    cfg: Config<'a>,
    ring: Ring<B::Flash>,
    tx: B::Tx,
    rx: B::Rx,
    clock: B::Clock,
    trigger: B::Trigger,
    feedback: Feedback<B::Beeper, B::GoodLed, B::ErrorLed>,
    link: Link,
    decoder: FrameDecoder,
    buf: RecordBuf,
    out: [u8; MAX_FRAME],
    step: Step,
    /// Gateway time minus our monotonic time, once a `TimeSync` arrived this boot.
    clock_offset: Option<i64>,
    /// Scans from this sequence on were taken this boot, so their monotonic time converts.
    boot_first_seq: u64,
    /// The last event sent and the ring position after it, to read the next one cheaply.
    cursor: Option<(u64, Pos)>,
    trigger_held: bool,
    armed_until: Option<u64>,
    last_decode: Option<(u32, u64)>,
    /// A gateway has answered since the flash was blank (see [`ScanOutcome::NotPaired`]).
    paired: bool,
    stats: Stats,
}

/// Bytes taken from the UART per poll, so a noisy line cannot starve the loop.
const RX_BUDGET: usize = 1024;

impl<'a, B: Board> Scanner<'a, B> {
    /// Mounts the flash ring (recovering what a power cut left) and takes the peripherals.
    pub fn boot(cfg: Config<'a>, parts: Parts<B>) -> Result<(Self, MountReport), BootError> {
        let (offset, len) = cfg.ring_region.unwrap_or_else(|| {
            let erase = <B::Flash as embedded_storage::nor_flash::NorFlash>::ERASE_SIZE;
            (0, (parts.flash.capacity() / erase * erase) as u32)
        });
        let mut buf = ring::record_buf();
        let (ring, report) =
            Ring::mount(parts.flash, offset, len, &mut buf).map_err(|e| match e {
                RingError::Geometry => BootError::FlashGeometry,
                _ => BootError::Flash,
            })?;
        let feedback = Feedback::new(parts.beeper, parts.good_led, parts.error_led);
        let link = Link::new(cfg.link, ring.acked());
        let boot_first_seq = ring.next_seq();
        let stats = Stats {
            stored: 0,
            refused: 0,
            ignored: 0,
            gateway_rejected: 0,
            pending: ring.pending(),
            acked: ring.acked(),
            next_seq: ring.next_seq(),
            online: false,
            synced: false,
            paired: !report.blank,
            step: cfg.step,
            gateway_step: None,
            rx_rejected: 0,
            tx_errors: 0,
            flash_errors: 0,
            link: link.stats,
        };
        let scanner = Scanner {
            cfg,
            ring,
            tx: parts.tx,
            rx: parts.rx,
            clock: parts.clock,
            trigger: parts.trigger,
            feedback,
            link,
            decoder: FrameDecoder::new(),
            buf,
            out: [0; MAX_FRAME],
            step: cfg.step,
            clock_offset: None,
            boot_first_seq,
            cursor: None,
            trigger_held: false,
            armed_until: None,
            last_decode: None,
            paired: !report.blank,
            stats,
        };
        Ok((scanner, report))
    }

    /// One barcode from the decode engine. Stores it (or says why not) and gives feedback.
    pub fn on_decode(&mut self, code: &str, symbology: Option<&str>) -> ScanOutcome {
        let now = self.clock.now_ms();
        self.sample_trigger(now);
        if !self.counts_as_scan(code, now) {
            self.stats.ignored += 1;
            return ScanOutcome::Ignored;
        }
        let outcome = if check_code(code).is_err() {
            ScanOutcome::Unreadable
        } else if !self.paired {
            ScanOutcome::NotPaired
        } else {
            let captured = match self.clock_offset {
                Some(off) => Captured::Unix(now.saturating_add_signed(off)),
                None => Captured::Monotonic(now),
            };
            let scan = NewScan {
                step: self.step,
                code,
                // An identifier longer than AIM's `]Xn` is the engine's oddity, not a reason
                // to lose the scan.
                symbology: symbology.filter(|s| s.len() <= ring::MAX_SYMBOLOGY_LEN),
                captured,
            };
            match self.ring.append(&scan, &mut self.buf) {
                Ok(seq) => ScanOutcome::Stored {
                    seq,
                    online: self.link.is_up(),
                },
                Err(RingError::Full) => ScanOutcome::RingFull,
                Err(RingError::TooLong) => ScanOutcome::TooLong,
                Err(RingError::Flash(_) | RingError::Geometry) => {
                    self.stats.flash_errors += 1;
                    ScanOutcome::FlashError
                }
            }
        };
        let signal = match outcome {
            ScanOutcome::Stored { online: true, .. } => Signal::Good,
            ScanOutcome::Stored { online: false, .. } => Signal::StoredOffline,
            _ => Signal::Error,
        };
        if signal == Signal::Error {
            self.stats.refused += 1;
            // Presenting the label again right away is how the operator retries.
            self.last_decode = None;
        } else {
            self.stats.stored += 1;
        }
        self.feedback.play(signal, now);
        // Send at once rather than on the next poll: the ack latency is the operator's wait.
        self.pump(now);
        self.refresh_stats();
        outcome
    }

    /// Does the scanner's background work: reads the gateway's frames, sends what the link
    /// allows, advances the feedback pattern, watches the trigger. Call it often.
    pub fn poll(&mut self) {
        let now = self.clock.now_ms();
        self.sample_trigger(now);
        let mut taken = 0;
        let mut chunk = [0u8; 64];
        while taken < RX_BUDGET && matches!(self.rx.read_ready(), Ok(true)) {
            let n = match self.rx.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            taken += n;
            for &b in &chunk[..n] {
                let heard = match self.decoder.push(b) {
                    Decoded::Pending => continue,
                    Decoded::Rejected(_) => {
                        self.stats.rx_rejected += 1;
                        continue;
                    }
                    Decoded::Frame(f) => self.link.on_frame(&f, now),
                };
                self.on_heard(heard, now);
            }
        }
        self.pump(now);
        self.feedback.poll(now);
        self.refresh_stats();
    }

    /// Waits before the next poll: briefly while there is work in flight or a pattern
    /// playing, longer when idle (a real board would sleep until an interrupt instead).
    pub fn idle(&mut self, delay: &mut impl DelayNs) {
        let busy = self.feedback.is_playing() || self.ring.pending() > 0;
        delay.delay_ms(if busy { 1 } else { 10 });
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The operator changed station on the device (a menu, or a station barcode): the next
    /// scans mean `step`, until the gateway assigns another.
    pub fn set_step(&mut self, step: Step) {
        self.step = step;
        self.stats.step = step;
    }

    /// Stops and gives the peripherals back; the flash keeps every unacked scan for the
    /// next [`Scanner::boot`]. (Pulling the battery instead loses nothing either.)
    pub fn release(self) -> Parts<B> {
        let (beeper, good_led, error_led) = self.feedback.release();
        Parts {
            flash: self.ring.release(),
            tx: self.tx,
            rx: self.rx,
            clock: self.clock,
            beeper,
            good_led,
            error_led,
            trigger: self.trigger,
        }
    }

    fn refresh_stats(&mut self) {
        self.stats.pending = self.ring.pending();
        self.stats.acked = self.ring.acked();
        self.stats.next_seq = self.ring.next_seq();
        self.stats.online = self.link.is_up();
        self.stats.synced = self.clock_offset.is_some();
        self.stats.paired = self.paired;
        self.stats.step = self.step;
        self.stats.link = self.link.stats;
    }

    fn sample_trigger(&mut self, now: u64) {
        let held = self.trigger.is_high().unwrap_or(false);
        if held && !self.trigger_held {
            if let TriggerMode::Trigger { window_ms } = self.cfg.trigger {
                self.armed_until = Some(now + u64::from(window_ms));
            }
        }
        self.trigger_held = held;
    }

    fn counts_as_scan(&mut self, code: &str, now: u64) -> bool {
        match self.cfg.trigger {
            TriggerMode::Trigger { .. } => match self.armed_until.take() {
                Some(until) => now <= until,
                None => false,
            },
            TriggerMode::Presentation { repeat_guard_ms } => {
                let h = fnv32(code.as_bytes());
                let repeat = self.last_decode.is_some_and(|(last, at)| {
                    last == h && now.saturating_sub(at) < u64::from(repeat_guard_ms)
                });
                self.last_decode = Some((h, now));
                !repeat
            }
        }
    }

    fn on_heard(&mut self, heard: Heard, now: u64) {
        match heard {
            Heard::Acked { up_to } => {
                let mut ok = self.ring.retire(up_to, &mut self.buf).is_ok();
                if !self.paired && ok {
                    ok = self.ring.record_contact(&mut self.buf).is_ok();
                    self.paired = ok;
                }
                if !ok {
                    self.stats.flash_errors += 1;
                }
            }
            Heard::Rejected { .. } => {
                self.stats.gateway_rejected += 1;
                self.feedback.play(Signal::Error, now);
            }
            Heard::Time { unix_ms } => {
                self.clock_offset = Some(unix_ms as i64 - now as i64);
            }
            Heard::Step(step) => {
                self.step = step;
                self.stats.gateway_step = Some(step);
            }
            Heard::Nothing => {}
        }
    }

    /// Sends everything the link wants sent now.
    fn pump(&mut self, now: u64) {
        let (offset, boot_first) = (self.clock_offset, self.boot_first_seq);
        while let Some(out) = self.link.poll(now, self.ring.next_seq() - 1) {
            let frame_len = match out {
                Out::Hello { last_acked } => Frame::Hello {
                    device: self.cfg.device,
                    firmware: self.cfg.firmware,
                    last_acked,
                }
                .encode(&mut self.out),
                Out::Event { seq } => {
                    let from = self.cursor.filter(|(s, _)| s + 1 == seq).map(|(_, p)| p);
                    let (scan, next) = match self.ring.read(seq, from, &mut self.buf) {
                        Ok(Some(found)) => found,
                        // Acked meanwhile: nothing to send.
                        Ok(None) => continue,
                        Err(_) => {
                            self.stats.flash_errors += 1;
                            return;
                        }
                    };
                    self.cursor = Some((seq, next));
                    let captured_at_ms = match scan.captured {
                        Captured::Unix(t) => t,
                        // Monotonic time from this boot converts; from an earlier boot it
                        // is unknown (0), and the gateway uses its receive time.
                        Captured::Monotonic(t) => match offset {
                            Some(off) if seq >= boot_first => t.saturating_add_signed(off),
                            _ => 0,
                        },
                    };
                    Frame::Event(EventFrame {
                        seq,
                        step: scan.step,
                        code: scan.code,
                        symbology: scan.symbology,
                        operator: None,
                        captured_at_ms,
                    })
                    .encode(&mut self.out)
                }
            };
            // A frame that cannot be written is lost like one dropped on the radio: the
            // retransmit timer covers it.
            match frame_len {
                Ok(n) if self.tx.write_all(&self.out[..n]).is_ok() => {}
                _ => self.stats.tx_errors += 1,
            }
        }
        let _ = self.tx.flush();
    }
}

fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
