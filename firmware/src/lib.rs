//! darkleg's scanner firmware logic: every decoded barcode becomes a sequenced scan event,
//! kept in an on-device flash ring until the gateway says it is durable.
//!
//! A handheld scanner is dropped, has its battery swapped, walks out of radio range. None of
//! that may lose a scan, and the operator must hear at once whether a scan was taken. This
//! crate is that logic, with no allocator and no panics on input, generic over the
//! embedded-hal 1.0 / embedded-io / embedded-storage traits so a board support crate only
//! has to hand over its peripherals (see [`Board`]). The same code runs in the host
//! simulator (`darkleg simulate`) over pseudo-terminals and a RAM flash ([`ram::RamFlash`]).
//!
//! - [`ring`]: the flash log of unacked scans; survives a power cut at any byte.
//! - [`link`]: Hello / window / retransmit / ack, as a state machine with no I/O.
//! - [`feedback`]: good / stored-offline / error patterns on a beeper and two LEDs.
//! - [`Scanner`]: ties them to the peripherals; call [`Scanner::on_decode`] for every
//!   barcode the decode engine reads and [`Scanner::poll`] from the main loop.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod feedback;
pub mod link;
pub mod ram;
pub mod ring;
mod scanner;

pub use scanner::{BootError, Config, Parts, ScanOutcome, Scanner, Stats, TriggerMode};

// The trait crates, re-exported so a board crate implements exactly the versions used here.
pub use embedded_hal;
pub use embedded_io;
pub use embedded_storage;

/// Milliseconds since boot from a clock that never goes backwards (a SysTick or RTC
/// counter). Wall-clock time comes from the gateway's `TimeSync`, so no RTC is needed.
pub trait Monotonic {
    fn now_ms(&mut self) -> u64;
}

/// What a board support crate provides: one type per peripheral the scanner owns.
///
/// The UART is split (`Tx`/`Rx`) because the two directions are independent; `Rx` must say
/// whether bytes are waiting (`ReadReady`) so the main loop never blocks on a quiet line.
pub trait Board {
    /// The flash holding the scan ring (a dedicated region of internal or SPI NOR flash).
    type Flash: embedded_storage::nor_flash::NorFlash;
    type Tx: embedded_io::Write;
    type Rx: embedded_io::Read + embedded_io::ReadReady;
    type Clock: Monotonic;
    type Beeper: embedded_hal::digital::OutputPin;
    type GoodLed: embedded_hal::digital::OutputPin;
    type ErrorLed: embedded_hal::digital::OutputPin;
    /// High while the trigger is pulled (invert an active-low button in the board crate).
    type Trigger: embedded_hal::digital::InputPin;
}
