//! A simulated scanner board: the firmware's [`Board`] traits over a pty master, a RAM
//! flash the harness can cut the power of, the host clock, and pins that only count.
//!
//! The faults live here, below the firmware, where real ones happen: a radio out of range
//! swallows bytes both ways, a noisy cable prepends garbage, a battery pull stops the flash
//! mid-write.

use darkleg_firmware::embedded_hal::digital::{ErrorType as PinErrorType, InputPin, OutputPin};
use darkleg_firmware::embedded_io::{self, ErrorKind};
use darkleg_firmware::embedded_storage::nor_flash::{
    ErrorType as FlashErrorType, NorFlash, ReadNorFlash,
};
use darkleg_firmware::ram::{RamFlash, RamFlashError};
use darkleg_firmware::{Board, Monotonic};
use serialport::{SerialPort, TTYPort};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The simulated board's types.
pub struct SimBoard;

impl Board for SimBoard {
    type Flash = SimFlash;
    type Tx = PtyTx;
    type Rx = PtyRx;
    type Clock = HostClock;
    type Beeper = CountingPin;
    type GoodLed = CountingPin;
    type ErrorLed = CountingPin;
    type Trigger = NoTrigger;
}

/// Flash that outlives the firmware instance using it (the chip survives a reboot), shared
/// with the harness so it can cut the power mid-write.
#[derive(Clone)]
pub struct SimFlash(Arc<Mutex<RamFlash<Vec<u8>, 4, 4096>>>);

impl std::fmt::Debug for SimFlash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimFlash({} KiB)", self.chip().capacity() / 1024)
    }
}

impl SimFlash {
    /// A blank chip of `kib` KiB (4 KiB sectors, 4-byte writes, like many MCUs' flash).
    pub fn blank(kib: usize) -> SimFlash {
        SimFlash(Arc::new(Mutex::new(RamFlash::new(vec![0xFF; kib * 1024]))))
    }

    pub fn chip(&self) -> MutexGuard<'_, RamFlash<Vec<u8>, 4, 4096>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FlashErrorType for SimFlash {
    type Error = RamFlashError;
}

impl ReadNorFlash for SimFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        self.chip().read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.chip().capacity()
    }
}

impl NorFlash for SimFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        self.chip().erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        self.chip().write(offset, bytes)
    }
}

/// The radio between scanner and gateway: when out of range, bytes are lost both ways.
#[derive(Clone, Default)]
pub struct Radio {
    out_of_range: Arc<AtomicBool>,
}

impl Radio {
    pub fn set_out_of_range(&self, out: bool) {
        self.out_of_range.store(out, Ordering::Relaxed);
    }

    fn is_out(&self) -> bool {
        self.out_of_range.load(Ordering::Relaxed)
    }
}

/// Line noise before frames: a probability per write and a generator.
pub struct Noise {
    pub chance: f64,
    pub rng: u64,
    pub bytes: Arc<AtomicU64>,
}

impl Noise {
    pub fn roll(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }
}

pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The scanner's transmit side of the pty: a UART with a DMA buffer. The firmware writes
/// frames into it and flushes once per poll, so a burst of frames costs one `write(2)` (the
/// pty's, not the firmware's, cost dominated a bench load at one syscall a frame).
pub struct PtyTx {
    pub port: TTYPort,
    pub radio: Radio,
    pub noise: Noise,
    /// Frames (and line noise) written since the last flush.
    pub pending: Vec<u8>,
    /// Noise bytes in `pending`, counted once they are on the line.
    pub pending_garbage: u64,
}

impl PtyTx {
    pub fn new(port: TTYPort, radio: Radio, noise: Noise) -> PtyTx {
        PtyTx {
            port,
            radio,
            noise,
            pending: Vec::with_capacity(8192),
            pending_garbage: 0,
        }
    }
}

impl embedded_io::ErrorType for PtyTx {
    type Error = ErrorKind;
}

impl embedded_io::Write for PtyTx {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        if self.radio.is_out() {
            return Ok(buf.len());
        }
        let roll = (self.noise.roll() % 10_000) as f64 / 10_000.0;
        if self.noise.chance > 0.0 && roll < self.noise.chance {
            let n = 1 + self.noise.roll() as usize % 64;
            for _ in 0..n {
                let b = self.noise.roll() as u8;
                self.pending.push(b);
            }
            self.pending_garbage += n as u64;
        }
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// A write that fails or times out (no agent on the other end, buffer full) loses what
    /// was left unsent, as on a radio; the firmware's retransmit covers it.
    fn flush(&mut self) -> Result<(), ErrorKind> {
        let mut sent = 0;
        let result = loop {
            if sent == self.pending.len() {
                break Ok(());
            }
            match self.port.write(&self.pending[sent..]) {
                Ok(0) | Err(_) => break Err(ErrorKind::Other),
                Ok(n) => sent += n,
            }
        };
        if result.is_ok() && self.pending_garbage > 0 {
            self.noise
                .bytes
                .fetch_add(self.pending_garbage, Ordering::Relaxed);
        }
        self.pending.clear();
        self.pending_garbage = 0;
        result
    }
}

/// The scanner's receive side of the pty.
pub struct PtyRx {
    pub port: TTYPort,
    pub radio: Radio,
}

impl embedded_io::ErrorType for PtyRx {
    type Error = ErrorKind;
}

impl embedded_io::Read for PtyRx {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        self.port.read(buf).map_err(|_| ErrorKind::Other)
    }
}

impl embedded_io::ReadReady for PtyRx {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        let waiting = self.port.bytes_to_read().map_err(|_| ErrorKind::Other)?;
        if waiting > 0 && self.radio.is_out() {
            // Out of range: what the gateway sent never arrives.
            let mut sink = [0u8; 256];
            let _ = self.port.read(&mut sink);
            return Ok(false);
        }
        Ok(waiting > 0)
    }
}

/// Milliseconds since this (simulated) boot: a device clock restarts at zero.
pub struct HostClock(pub Instant);

impl Monotonic for HostClock {
    fn now_ms(&mut self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// An output that counts how often it was switched on (beeps, LED flashes).
#[derive(Clone, Default)]
pub struct CountingPin(pub Arc<AtomicU64>);

impl PinErrorType for CountingPin {
    type Error = core::convert::Infallible;
}

impl OutputPin for CountingPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Simulated scanners are presentation readers: no trigger.
pub struct NoTrigger;

impl PinErrorType for NoTrigger {
    type Error = core::convert::Infallible;
}

impl InputPin for NoTrigger {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(false)
    }
    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(true)
    }
}
