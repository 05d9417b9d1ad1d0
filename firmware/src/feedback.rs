//! Beeper and LED patterns, played without blocking the scan loop.
//!
//! Staff scan fast and look at the parcel, not the scanner, so the three outcomes must be
//! told apart by ear alone: one short beep (good), two short beeps (stored, gateway not
//! reachable — keep working), one long double buzz (error — this scan was not taken).

use embedded_hal::digital::OutputPin;

const BEEP: u8 = 1;
const GREEN: u8 = 2;
const RED: u8 = 4;
const AMBER: u8 = GREEN | RED;

/// What the operator should hear and see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stored in flash and the gateway is reachable.
    Good,
    /// Stored in flash; the gateway is not reachable now, the scan goes up later.
    StoredOffline,
    /// Not taken (full flash, unreadable, refused by the gateway): scan again or set aside.
    Error,
}

/// Steps of (duration ms, outputs on).
type Pattern = &'static [(u16, u8)];

const GOOD: Pattern = &[(80, BEEP | GREEN), (220, GREEN)];
const STORED_OFFLINE: Pattern = &[
    (50, BEEP | AMBER),
    (60, AMBER),
    (50, BEEP | AMBER),
    (340, AMBER),
];
const ERROR: Pattern = &[(350, BEEP | RED), (100, RED), (350, BEEP | RED), (400, RED)];

fn pattern(signal: Signal) -> Pattern {
    match signal {
        Signal::Good => GOOD,
        Signal::StoredOffline => STORED_OFFLINE,
        Signal::Error => ERROR,
    }
}

/// Total length of a signal's pattern in milliseconds.
pub fn duration_ms(signal: Signal) -> u32 {
    pattern(signal).iter().map(|&(ms, _)| u32::from(ms)).sum()
}

/// The beeper and two LEDs (a board with a single bicolour LED wires both pins to it).
pub struct Feedback<B, G, R> {
    beeper: B,
    good: G,
    error: R,
    playing: Option<(Pattern, usize, u64)>,
    on: u8,
    /// Pin writes that failed; feedback is best-effort and never stops a scan.
    pub pin_errors: u32,
}

impl<B: OutputPin, G: OutputPin, R: OutputPin> Feedback<B, G, R> {
    /// Takes the pins; all outputs are driven off.
    pub fn new(beeper: B, good: G, error: R) -> Self {
        let mut f = Feedback {
            beeper,
            good,
            error,
            playing: None,
            on: BEEP | GREEN | RED,
            pin_errors: 0,
        };
        f.apply(0);
        f
    }

    /// Starts `signal` now, cutting off whatever was playing (the newest scan matters).
    pub fn play(&mut self, signal: Signal, now: u64) {
        let p = pattern(signal);
        self.playing = Some((p, 0, now + u64::from(p[0].0)));
        // Off first, so a repeat of the same signal is a new beep, not a longer one.
        self.apply(0);
        self.apply(p[0].1);
    }

    /// Advances the pattern; call from the main loop.
    pub fn poll(&mut self, now: u64) {
        while let Some((p, i, until)) = self.playing {
            if now < until {
                return;
            }
            match p.get(i + 1) {
                Some(&(ms, outputs)) => {
                    self.playing = Some((p, i + 1, until + u64::from(ms)));
                    self.apply(outputs);
                }
                None => {
                    self.playing = None;
                    self.apply(0);
                }
            }
        }
    }

    /// Gives the pins back.
    pub fn release(self) -> (B, G, R) {
        (self.beeper, self.good, self.error)
    }

    pub fn is_playing(&self) -> bool {
        self.playing.is_some()
    }

    /// Drives only the pins whose state changes.
    fn apply(&mut self, outputs: u8) {
        let changed = self.on ^ outputs;
        let mut ok = true;
        if changed & BEEP != 0 {
            ok &= set(&mut self.beeper, outputs & BEEP != 0);
        }
        if changed & GREEN != 0 {
            ok &= set(&mut self.good, outputs & GREEN != 0);
        }
        if changed & RED != 0 {
            ok &= set(&mut self.error, outputs & RED != 0);
        }
        if !ok {
            self.pin_errors += 1;
        }
        self.on = outputs;
    }
}

fn set(pin: &mut impl OutputPin, high: bool) -> bool {
    if high { pin.set_high() } else { pin.set_low() }.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

    #[test]
    fn good_is_one_short_beep_with_green() {
        let mut beeper = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let mut green = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let mut red = Mock::new(&[T::set(State::Low)]);
        let mut f = Feedback::new(beeper.clone(), green.clone(), red.clone());
        f.play(Signal::Good, 1_000);
        f.poll(1_079);
        f.poll(1_080); // beep ends, green stays
        f.poll(1_299);
        assert!(f.is_playing());
        f.poll(1_300);
        assert!(!f.is_playing());
        assert_eq!(duration_ms(Signal::Good), 300);
        beeper.done();
        green.done();
        red.done();
    }

    #[test]
    fn offline_is_two_beeps_in_amber() {
        let beeps = [
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
        ];
        let mut beeper = Mock::new(&beeps);
        let mut green = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let mut red = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let mut f = Feedback::new(beeper.clone(), green.clone(), red.clone());
        f.play(Signal::StoredOffline, 0);
        // One late poll catches up through every step.
        f.poll(10_000);
        assert!(!f.is_playing());
        beeper.done();
        green.done();
        red.done();
    }

    #[test]
    fn a_new_signal_cuts_the_old_one_off() {
        let mut beeper = Mock::new(&[
            T::set(State::Low),
            T::set(State::High),
            T::set(State::Low),
            T::set(State::High),
        ]);
        let mut green = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let mut red = Mock::new(&[T::set(State::Low), T::set(State::High)]);
        let mut f = Feedback::new(beeper.clone(), green.clone(), red.clone());
        f.play(Signal::Good, 0);
        f.poll(100); // beep off, green on
        f.play(Signal::Error, 150); // beep on, green off, red on
        beeper.done();
        green.done();
        red.done();
    }
}
