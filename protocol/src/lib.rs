//! darkleg's shared vocabulary, used by the scanner firmware and the gateway agent alike.
//!
//! Everything here is `no_std` and allocation-free except what sits behind the `alloc`
//! feature (owned [`ScanEvent`]s and the upstream JSON), so the same frame codec runs on a
//! Cortex-M scanner and on the gateway — one implementation, one set of tests.
//!
//! - [`event`]: steps, stable event ids and (with `alloc`) the owned scan event.
//! - [`frame`]: the framed serial protocol between smart scanners and a gateway
//!   (postcard payload, CRC-32, COBS framing, a version byte).
//! - [`ascii`]: lines from plain serial scanners (`]C1…\r\n`).
//! - [`barcode`]: what a code is — GS1 element strings, Digital Link, carrier tracking
//!   numbers — and whether its check digits hold.
//! - [`time`]: RFC 3339 rendering of Unix milliseconds without a calendar crate.
//! - [`upstream`] (with `alloc`): the `darkleg.scan.v1` JSON payload; [`relay`] reads it
//!   back, bounded and checked, for a gateway relaying other gateways' events.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod ascii;
pub mod barcode;
mod cobs;
pub mod crc32;
pub mod event;
pub mod frame;
#[cfg(feature = "alloc")]
pub mod relay;
pub mod time;
#[cfg(feature = "alloc")]
pub mod upstream;

#[cfg(feature = "alloc")]
pub use event::ScanEvent;
pub use event::{check_code, CodeError, EventId, Step};
pub use frame::{Decoded, EventFrame, Frame, FrameDecoder, FrameError, NackReason};
