//! The whole scanner on the host: a RAM flash, an in-memory UART with this test playing the
//! gateway (real frames both ways), a settable clock, embedded-hal-mock for the trigger and
//! the delay, and recording pins for the beeper and LEDs.

use darkleg_firmware::link::LinkConfig;
use darkleg_firmware::ram::RamFlash;
use darkleg_firmware::{Board, Config, Monotonic, Parts, ScanOutcome, Scanner, TriggerMode};
use darkleg_protocol::frame::MAX_FRAME;
use darkleg_protocol::{Decoded, Frame, FrameDecoder, NackReason, Step};
use embedded_hal::digital::{ErrorType as PinErrorType, InputPin, OutputPin};
use embedded_hal_mock::eh1::delay::{CheckedDelay, Transaction as DelayT};
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as PinT};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::rc::Rc;

type Flash = RamFlash<Vec<u8>, 4, 4096>;

/// One direction of the cable.
#[derive(Clone, Default)]
struct Wire(Rc<RefCell<VecDeque<u8>>>);

impl embedded_io::ErrorType for Wire {
    type Error = Infallible;
}
impl embedded_io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.0.borrow_mut().extend(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}
impl embedded_io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let mut q = self.0.borrow_mut();
        let n = buf.len().min(q.len());
        for b in buf.iter_mut().take(n) {
            *b = q.pop_front().unwrap_or(0);
        }
        Ok(n)
    }
}
impl embedded_io::ReadReady for Wire {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!self.0.borrow().is_empty())
    }
}

#[derive(Clone, Default)]
struct Clock(Rc<Cell<u64>>);
impl Monotonic for Clock {
    fn now_ms(&mut self) -> u64 {
        self.0.get()
    }
}

/// An output pin that records its level changes.
#[derive(Clone, Default)]
struct Pin(Rc<RefCell<Vec<bool>>>);
impl PinErrorType for Pin {
    type Error = Infallible;
}
impl OutputPin for Pin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.0.borrow_mut().push(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.0.borrow_mut().push(true);
        Ok(())
    }
}
impl Pin {
    /// Rising edges since the last call.
    fn pulses(&self) -> usize {
        let v: Vec<bool> = self.0.borrow_mut().drain(..).collect();
        v.iter().filter(|&&h| h).count()
    }
}

/// A trigger the test holds down or lets go.
#[derive(Clone, Default)]
struct Trigger(Rc<Cell<bool>>);
impl PinErrorType for Trigger {
    type Error = Infallible;
}
impl InputPin for Trigger {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.0.get())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.0.get())
    }
}

struct TestBoard<T>(PhantomData<T>);
impl<T: InputPin> Board for TestBoard<T> {
    type Flash = Flash;
    type Tx = Wire;
    type Rx = Wire;
    type Clock = Clock;
    type Beeper = Pin;
    type GoodLed = Pin;
    type ErrorLed = Pin;
    type Trigger = T;
}

/// The test's side: the gateway end of the cable and the scanner's outputs.
struct Bench {
    to_gateway: Wire,
    to_scanner: Wire,
    clock: Clock,
    beeper: Pin,
    green: Pin,
    red: Pin,
    decoder: FrameDecoder,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            to_gateway: Wire::default(),
            to_scanner: Wire::default(),
            clock: Clock::default(),
            beeper: Pin::default(),
            green: Pin::default(),
            red: Pin::default(),
            decoder: FrameDecoder::new(),
        }
    }

    fn parts<T>(&self, flash: Flash, trigger: T) -> Parts<TestBoard<T>>
    where
        T: InputPin,
    {
        Parts {
            flash,
            tx: self.to_gateway.clone(),
            rx: self.to_scanner.clone(),
            clock: self.clock.clone(),
            beeper: self.beeper.clone(),
            good_led: self.green.clone(),
            error_led: self.red.clone(),
            trigger,
        }
    }

    fn advance(&self, ms: u64) {
        self.clock.0.set(self.clock.0.get() + ms);
    }

    fn send(&self, frame: Frame<'_>) {
        let mut out = [0u8; MAX_FRAME];
        let n = frame.encode(&mut out).unwrap();
        self.to_scanner.0.borrow_mut().extend(&out[..n]);
    }

    /// Frames the scanner wrote, in a form easy to compare.
    fn received(&mut self) -> Vec<Sent> {
        let bytes: Vec<u8> = self.to_gateway.0.borrow_mut().drain(..).collect();
        let mut out = Vec::new();
        for b in bytes {
            if let Decoded::Frame(f) = self.decoder.push(b) {
                out.push(match f {
                    Frame::Hello {
                        device, last_acked, ..
                    } => Sent::Hello(device.to_string(), last_acked),
                    Frame::Event(e) => Sent::Event {
                        seq: e.seq,
                        code: e.code.to_string(),
                        step: e.step,
                        at: e.captured_at_ms,
                    },
                    other => panic!("scanner sent {other:?}"),
                });
            }
        }
        out
    }

    /// Answers a Hello the way the agent does.
    fn welcome(&self, acked: u64, unix_ms: u64, step: Step) {
        self.send(Frame::Ack { up_to: acked });
        self.send(Frame::TimeSync { unix_ms });
        self.send(Frame::SetStep { step });
    }
}

#[derive(Debug, PartialEq)]
enum Sent {
    Hello(String, u64),
    Event {
        seq: u64,
        code: String,
        step: Step,
        at: u64,
    },
}

fn blank() -> Flash {
    RamFlash::new(vec![0xFF; 8 * 4096])
}

fn presentation(device: &str) -> Config<'_> {
    Config {
        trigger: TriggerMode::Presentation {
            repeat_guard_ms: 1_000,
        },
        ..Config::new(device)
    }
}

fn events(sent: &[Sent]) -> Vec<u64> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Event { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

const T0: u64 = 1_795_300_000_000;

#[test]
fn online_scan_is_stored_sent_with_gateway_time_and_retired_by_the_ack() {
    let mut b = Bench::new();
    let (mut s, report) =
        Scanner::boot(presentation("hh-01"), b.parts(blank(), Trigger::default())).unwrap();
    assert!(report.formatted);
    b.advance(5);
    s.poll();
    assert_eq!(b.received(), [Sent::Hello("hh-01".into(), 0)]);
    b.welcome(0, T0, Step::Pack);
    s.poll();
    assert!(s.stats().online && s.stats().synced);

    b.advance(1_000);
    let out = s.on_decode("00340434161094042557", Some("]C1"));
    assert_eq!(
        out,
        ScanOutcome::Stored {
            seq: 1,
            online: true
        }
    );
    assert_eq!(
        b.received(),
        [Sent::Event {
            seq: 1,
            code: "00340434161094042557".into(),
            step: Step::Pack,
            at: T0 + 1_000,
        }]
    );
    assert_eq!(
        (b.beeper.pulses(), b.red.pulses()),
        (1, 0),
        "one beep, no red"
    );
    assert_eq!(s.stats().pending, 1);
    b.send(Frame::Ack { up_to: 1 });
    s.poll();
    assert_eq!((s.stats().pending, s.stats().acked), (0, 1));
}

#[test]
fn a_new_scanner_takes_scans_only_after_its_first_gateway_answer() {
    let b = Bench::new();
    let (mut s, report) =
        Scanner::boot(presentation("hh-09"), b.parts(blank(), Trigger::default())).unwrap();
    assert!(report.blank);
    s.poll();
    // It cannot know which sequence numbers the gateway has seen under its name.
    assert_eq!(s.on_decode("A", None), ScanOutcome::NotPaired);
    assert_eq!(b.red.pulses(), 1);
    // The gateway knows this device up to 41 (its flash was wiped).
    b.send(Frame::Ack { up_to: 41 });
    s.poll();
    assert_eq!(
        s.on_decode("A", None),
        ScanOutcome::Stored {
            seq: 42,
            online: true
        }
    );
    // Paired for good: after a reboot it scans offline at once.
    let (mut s, report) = Scanner::boot(presentation("hh-09"), s.release()).unwrap();
    assert!(!report.blank);
    b.advance(2_000);
    assert_eq!(
        s.on_decode("B", None),
        ScanOutcome::Stored {
            seq: 43,
            online: false
        }
    );
}

/// A scanner that has met its gateway once, rebooted and not connected now.
fn paired_offline(b: &mut Bench, device: &'static str) -> Scanner<'static, TestBoard<Trigger>> {
    let (mut s, _) =
        Scanner::boot(presentation(device), b.parts(blank(), Trigger::default())).unwrap();
    s.poll();
    b.send(Frame::Ack { up_to: 0 });
    s.poll();
    let (s, _) = Scanner::boot(presentation(device), s.release()).unwrap();
    b.received();
    s
}

#[test]
fn offline_scans_get_their_own_tone_and_go_up_when_the_gateway_answers() {
    let mut b = Bench::new();
    let mut s = paired_offline(&mut b, "hh-02");
    s.poll();
    for i in 0..3 {
        b.advance(2_000);
        let out = s.on_decode(&format!("JJD01460000000000{i}"), None);
        assert_eq!(
            out,
            ScanOutcome::Stored {
                seq: i + 1,
                online: false
            }
        );
        b.advance(600);
        s.poll();
        assert_eq!(
            b.beeper.pulses(),
            2,
            "two short beeps: stored, gateway away"
        );
    }
    // Only Hellos so far, with backoff.
    assert!(b.received().iter().all(|f| matches!(f, Sent::Hello(..))));
    b.welcome(0, T0, Step::Pick);
    s.poll();
    let sent = b.received();
    assert_eq!(events(&sent), [1, 2, 3]);
    // Taken before any TimeSync in this boot: converted with the offset learnt later.
    let Sent::Event { at, .. } = &sent[0] else {
        unreachable!()
    };
    assert_eq!(*at, T0 - 2 * 2_600 - 600);
}

#[test]
fn a_reboot_resends_what_was_unacked_and_keeps_counting() {
    let mut b = Bench::new();
    let (mut s, _) =
        Scanner::boot(presentation("hh-03"), b.parts(blank(), Trigger::default())).unwrap();
    s.poll();
    b.welcome(0, T0, Step::Pack);
    s.poll();
    for i in 0..5 {
        b.advance(1_500);
        s.on_decode(&format!("CODE-{i}"), None);
    }
    b.send(Frame::Ack { up_to: 2 });
    s.poll();
    b.received();
    // Battery swap: RAM gone, flash kept.
    let parts = s.release();
    b.to_scanner.0.borrow_mut().clear();
    let (mut s, report) = Scanner::boot(presentation("hh-03"), parts).unwrap();
    // The ack of 1..=2 was not written to flash (acks are, once nothing is pending), so
    // five are pending until the gateway's answer to Hello retires two of them.
    assert_eq!(report.pending, 5);
    s.poll();
    assert_eq!(b.received(), [Sent::Hello("hh-03".into(), 0)]);
    b.welcome(2, T0 + 60_000, Step::Pack);
    s.poll();
    let sent = b.received();
    assert_eq!(events(&sent), [3, 4, 5]);
    assert_eq!(
        s.on_decode("NEW", None),
        ScanOutcome::Stored {
            seq: 6,
            online: true
        }
    );
    // Times were synced when taken, so they survive the reboot.
    for f in &sent {
        if let Sent::Event { at, .. } = f {
            assert!(*at > T0);
        }
    }
}

#[test]
fn timeouts_resend_from_the_first_unacked_scan() {
    let mut b = Bench::new();
    let cfg = Config {
        link: LinkConfig {
            window: 2,
            ..LinkConfig::default()
        },
        ..presentation("hh-04")
    };
    let (mut s, _) = Scanner::boot(cfg, b.parts(blank(), Trigger::default())).unwrap();
    s.poll();
    b.welcome(0, T0, Step::Pack);
    s.poll();
    for i in 0..3 {
        b.advance(10);
        s.on_decode(&format!("C{i}"), None);
    }
    assert_eq!(events(&b.received()), [1, 2], "window of 2");
    b.advance(600);
    s.poll();
    assert_eq!(
        events(&b.received()),
        [1, 2],
        "retransmitted after the timeout"
    );
    b.send(Frame::Ack { up_to: 2 });
    s.poll();
    assert_eq!(events(&b.received()), [3]);
}

#[test]
fn misreads_full_flash_and_gateway_refusals_give_the_error_tone() {
    let b = Bench::new();
    let (mut s, _) = Scanner::boot(
        presentation("hh-05"),
        b.parts(RamFlash::new(vec![0xFF; 2 * 4096]), Trigger::default()),
    )
    .unwrap();
    b.send(Frame::Ack { up_to: 0 });
    s.poll();
    assert_eq!(s.on_decode("bad\u{7}code", None), ScanOutcome::Unreadable);
    assert_eq!(s.on_decode(&"9".repeat(300), None), ScanOutcome::TooLong);
    assert_eq!(b.red.pulses(), 2);
    let mut i = 0;
    let full = loop {
        b.advance(1_001);
        match s.on_decode(&format!("SSCC-{i:020}"), Some("]C1")) {
            ScanOutcome::Stored { .. } => {
                i += 1;
                b.red.pulses(); // amber (green + red) for stored-offline
            }
            other => break other,
        }
    };
    assert_eq!(full, ScanOutcome::RingFull);
    assert!(i > 100);
    assert_eq!(b.red.pulses(), 1);
    // The gateway refuses one scan (e.g. not a carrier label at handover).
    s.poll();
    b.welcome(0, T0, Step::Handover);
    s.poll();
    b.red.pulses();
    b.send(Frame::Nack {
        seq: 1,
        reason: NackReason::Rejected,
    });
    b.send(Frame::Ack { up_to: 1 });
    s.poll();
    assert_eq!(b.red.pulses(), 1);
    assert_eq!(s.stats().gateway_rejected, 1);
    assert_eq!(s.stats().pending as usize, i - 1);
}

#[test]
fn line_noise_is_counted_and_does_not_break_the_link() {
    let b = Bench::new();
    let (mut s, _) =
        Scanner::boot(presentation("hh-06"), b.parts(blank(), Trigger::default())).unwrap();
    s.poll();
    b.to_scanner
        .0
        .borrow_mut()
        .extend([0x00, 0x13, 0x37, 0xFF, 0x00, 0x42, 0x00]);
    b.welcome(0, T0, Step::Pack);
    s.poll();
    assert!(s.stats().online);
    assert!(s.stats().rx_rejected >= 1);
}

#[test]
fn a_handheld_takes_one_scan_per_trigger_pull() {
    let b = Bench::new();
    // Each sample of the trigger pin, in order.
    let levels = [
        State::Low,  // decode
        State::High, // poll: pulled
        State::High, // decode
        State::High, // decode, still held
        State::Low,  // poll: released
        State::High, // poll: pulled again
        State::High, // decode, too late
    ];
    let txs: Vec<PinT> = levels.iter().map(|&l| PinT::get(l)).collect();
    let mut trigger = PinMock::new(&txs);
    let cfg = Config {
        trigger: TriggerMode::Trigger { window_ms: 500 },
        ..Config::new("hh-07")
    };
    let (mut s, _) = Scanner::boot(cfg, b.parts(blank(), trigger.clone())).unwrap();
    // No pull: a stray decode is not a scan.
    assert_eq!(s.on_decode("A", None), ScanOutcome::Ignored);
    b.send(Frame::Ack { up_to: 0 });
    s.poll(); // pulled; the gateway's answer pairs it
    assert!(matches!(
        s.on_decode("A", None),
        ScanOutcome::Stored { seq: 1, .. }
    ));
    // Still held, same pull: the code is still in view, not a second scan.
    assert_eq!(s.on_decode("A", None), ScanOutcome::Ignored);
    s.poll(); // released
    s.poll(); // pulled again
    b.advance(501);
    assert_eq!(
        s.on_decode("B", None),
        ScanOutcome::Ignored,
        "window lapsed"
    );
    assert_eq!(s.stats().ignored, 3);
    drop(s);
    trigger.done();
}

#[test]
fn idle_waits_longer_when_nothing_is_pending() {
    let b = Bench::new();
    let (mut s, _) =
        Scanner::boot(presentation("hh-08"), b.parts(blank(), Trigger::default())).unwrap();
    b.send(Frame::Ack { up_to: 0 });
    s.poll();
    let mut delay = CheckedDelay::new(&[DelayT::delay_ms(10), DelayT::delay_ms(1)]);
    s.idle(&mut delay);
    s.on_decode("X", None);
    s.idle(&mut delay);
    delay.done();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever arrives on the line and whatever the decode engine produces, the scanner
    /// neither panics nor loses what it stored.
    #[test]
    fn arbitrary_line_bytes_and_decodes_never_panic(
        noise in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 1..20),
        codes in proptest::collection::vec(".{0,300}", 1..20),
        syms in proptest::collection::vec(proptest::option::of(".{0,8}"), 1..20),
    ) {
        let b = Bench::new();
        let (mut s, _) =
            Scanner::boot(presentation("fuzz"), b.parts(blank(), Trigger::default())).unwrap();
        b.send(Frame::Ack { up_to: 0 });
        s.poll();
        let mut stored = 0;
        for (i, junk) in noise.iter().enumerate() {
            b.to_scanner.0.borrow_mut().extend(junk);
            b.advance(1_500);
            s.poll();
            let code = &codes[i % codes.len()];
            let sym = syms[i % syms.len()].as_deref();
            if let ScanOutcome::Stored { .. } = s.on_decode(code, sym) {
                stored += 1;
            }
        }
        proptest::prop_assert_eq!(s.stats().stored, stored);
        proptest::prop_assert!(s.stats().pending <= stored);
    }
}
