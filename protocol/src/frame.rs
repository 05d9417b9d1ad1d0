//! The framed serial protocol between smart scanners and a gateway.
//!
//! On the wire a frame is `0x00 COBS(version ‖ postcard(Frame) ‖ CRC-32 LE) 0x00`. The
//! leading delimiter is deliberate: whatever garbage preceded the frame ends there, so one
//! burst of line noise costs at most the frame it landed in, never the next one.
//!
//! Flow: the scanner sends `Hello` on connect; the gateway answers `Ack(last durable seq)`,
//! `TimeSync` and, when its config names the station, `SetStep`. The scanner streams `Event`s in sequence order; the gateway stores them
//! and acks cumulatively once they are durable, or `Nack`s one it cannot take.

use crate::{cobs, crc32::crc32, event::Step};
use core::fmt;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Frame`]; a receiver rejects other versions.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest postcard payload of one frame. Barcodes are short (GS1-128 ≤ 48 characters, a
/// 2D code on a label rarely above 200), so this bounds buffers without cutting real scans.
pub const MAX_PAYLOAD: usize = 480;

/// Largest encoded frame including both delimiters.
pub const MAX_FRAME: usize = 2 + cobs_max(1 + MAX_PAYLOAD + 4);

const fn cobs_max(n: usize) -> usize {
    n + n / 254 + 1
}

/// Why a gateway refused one event; the scanner tells the operator with the error tone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackReason {
    /// Events arrived before a `Hello`; send `Hello` and retransmit.
    NoHello,
    /// Not the next sequence number; retransmit from the last ack.
    OutOfOrder,
    /// The gateway could not store it (disk full, I/O error); retry later.
    Storage,
    /// The scan itself is not acceptable at this station.
    Rejected,
}

/// One scan as a scanner sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFrame<'a> {
    pub seq: u64,
    pub step: Step,
    #[serde(borrow)]
    pub code: &'a str,
    #[serde(borrow)]
    pub symbology: Option<&'a str>,
    #[serde(borrow)]
    pub operator: Option<&'a str>,
    /// Unix milliseconds by the scanner's clock after applying its `TimeSync` offset; 0 if
    /// unknown (taken before any `TimeSync`, and the scanner rebooted since), in which case
    /// the gateway uses its receive time.
    pub captured_at_ms: u64,
}

/// Every message on a framed scanner link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<'a> {
    /// Scanner → gateway on connect: who it is and the last seq the gateway acked to it.
    Hello {
        #[serde(borrow)]
        device: &'a str,
        #[serde(borrow)]
        firmware: &'a str,
        last_acked: u64,
    },
    /// Scanner → gateway.
    #[serde(borrow)]
    Event(EventFrame<'a>),
    /// Gateway → scanner: every seq up to and including `up_to` is durable.
    Ack { up_to: u64 },
    /// Gateway → scanner: `seq` was not taken.
    Nack { seq: u64, reason: NackReason },
    /// Gateway → scanner: the gateway's clock, for scanners without an RTC.
    TimeSync { unix_ms: u64 },
    /// Gateway → scanner: the station this scanner serves now; its next scans mean `step`.
    SetStep { step: Step },
}

/// Why encoding failed: the frame does not fit [`MAX_PAYLOAD`] or the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeError;

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame larger than {MAX_PAYLOAD} payload bytes or the output buffer"
        )
    }
}

impl Frame<'_> {
    /// Writes the frame, with both delimiters, into `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut raw = [0u8; 1 + MAX_PAYLOAD + 4];
        raw[0] = PROTOCOL_VERSION;
        let used = postcard::to_slice(self, &mut raw[1..1 + MAX_PAYLOAD])
            .map_err(|_| EncodeError)?
            .len();
        let body = 1 + used;
        let crc = crc32(&raw[..body]);
        raw[body..body + 4].copy_from_slice(&crc.to_le_bytes());
        if out.len() < 2 {
            return Err(EncodeError);
        }
        out[0] = 0;
        let n = cobs::encode(&raw[..body + 4], &mut out[1..]).ok_or(EncodeError)?;
        *out.get_mut(1 + n).ok_or(EncodeError)? = 0;
        Ok(n + 2)
    }
}

/// Why a received block was not a frame. Each is counted by the receiver, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More than [`MAX_FRAME`] bytes without a delimiter.
    TooLong,
    /// Not valid COBS.
    Cobs,
    /// Too short to hold a version and a CRC.
    Short,
    /// The CRC does not match: corrupted on the line.
    Checksum,
    /// A protocol version this build does not speak.
    Version(u8),
    /// CRC fine, but the payload is not a frame this version knows.
    Payload,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong => write!(f, "no delimiter within {MAX_FRAME} bytes"),
            FrameError::Cobs => f.write_str("malformed COBS block"),
            FrameError::Short => f.write_str("block too short for a frame"),
            FrameError::Checksum => f.write_str("CRC-32 mismatch"),
            FrameError::Version(v) => write!(
                f,
                "protocol version {v}, this build speaks {PROTOCOL_VERSION}"
            ),
            FrameError::Payload => f.write_str("checksum ok but payload is not a known frame"),
        }
    }
}

/// What one byte fed to a [`FrameDecoder`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Still inside a frame (or between frames).
    Pending,
    Frame(Frame<'a>),
    Rejected(FrameError),
}

/// Incremental, allocation-free frame decoder. Feed it bytes as they arrive; it never
/// panics and resynchronises on the next delimiter after any error.
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME],
    len: usize,
    overflowed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_FRAME],
            len: 0,
            overflowed: false,
        }
    }

    /// Forgets a partial frame, e.g. after the link dropped.
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    pub fn push(&mut self, byte: u8) -> Decoded<'_> {
        if byte != 0 {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return Decoded::Pending;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflowed) {
            return Decoded::Rejected(FrameError::TooLong);
        }
        if len == 0 {
            // Back-to-back delimiters: the idle/leading marker, not an error.
            return Decoded::Pending;
        }
        match Self::parse(&mut self.buf[..len]) {
            Ok(frame) => Decoded::Frame(frame),
            Err(e) => Decoded::Rejected(e),
        }
    }

    fn parse(block: &mut [u8]) -> Result<Frame<'_>, FrameError> {
        let n = cobs::decode_in_place(block).ok_or(FrameError::Cobs)?;
        if n < 1 + 4 {
            return Err(FrameError::Short);
        }
        let (body, crc) = block[..n].split_at(n - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32(body) != crc {
            return Err(FrameError::Checksum);
        }
        if body[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version(body[0]));
        }
        match postcard::take_from_bytes::<Frame<'_>>(&body[1..]) {
            Ok((frame, [])) => Ok(frame),
            _ => Err(FrameError::Payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> (Vec<String>, Vec<FrameError>) {
        let mut dec = FrameDecoder::new();
        let (mut frames, mut errors) = (Vec::new(), Vec::new());
        for &b in bytes {
            match dec.push(b) {
                Decoded::Pending => {}
                Decoded::Frame(f) => frames.push(format!("{f:?}")),
                Decoded::Rejected(e) => errors.push(e),
            }
        }
        (frames, errors)
    }

    fn encoded(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        let n = frame.encode(&mut out).unwrap();
        out[..n].to_vec()
    }

    fn arb_text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[ -~\u{1d}äöü€]{{0,{max}}}")).unwrap()
    }

    prop_compose! {
        fn arb_event()(seq in any::<u64>(), step in 0usize..5, code in arb_text(120),
                       sym in proptest::option::of("\\][A-Za-z][0-9]"),
                       op in proptest::option::of(arb_text(16)), at in any::<u64>())
                       -> (u64, Step, String, Option<String>, Option<String>, u64) {
            (seq, Step::ALL[step], code, sym, op, at)
        }
    }

    fn with_frame<R>(
        kind: u8,
        e: &(u64, Step, String, Option<String>, Option<String>, u64),
        f: impl FnOnce(Frame<'_>) -> R,
    ) -> R {
        let frame = match kind % 6 {
            0 => Frame::Hello {
                device: &e.2,
                firmware: "1.0.0",
                last_acked: e.0,
            },
            1 => Frame::Ack { up_to: e.0 },
            2 => Frame::Nack {
                seq: e.0,
                reason: NackReason::OutOfOrder,
            },
            3 => Frame::TimeSync { unix_ms: e.5 },
            4 => Frame::SetStep { step: e.1 },
            _ => Frame::Event(EventFrame {
                seq: e.0,
                step: e.1,
                code: &e.2,
                symbology: e.3.as_deref(),
                operator: e.4.as_deref(),
                captured_at_ms: e.5,
            }),
        };
        f(frame)
    }

    proptest! {
        #[test]
        fn round_trip(kind in any::<u8>(), e in arb_event()) {
            with_frame(kind, &e, |frame| {
                let bytes = encoded(&frame);
                let mut dec = FrameDecoder::new();
                let mut got = None;
                for &b in &bytes {
                    if let Decoded::Frame(f) = dec.push(b) {
                        got = Some(format!("{f:?}"));
                    }
                }
                assert_eq!(got, Some(format!("{frame:?}")));
            });
        }

        #[test]
        fn any_corruption_is_rejected(kind in any::<u8>(), e in arb_event(),
                                      pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            with_frame(kind, &e, |frame| {
                let mut bytes = encoded(&frame);
                // Corrupt one byte strictly inside the frame (not a delimiter).
                let i = 1 + pos.index(bytes.len() - 2);
                bytes[i] ^= flip;
                let (frames, _) = decode_all(&bytes);
                assert!(frames.is_empty(), "corrupted frame accepted: {frames:?}");
            });
        }

        #[test]
        fn resyncs_after_random_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..2000),
                                        kind in any::<u8>(), e in arb_event()) {
            with_frame(kind, &e, |frame| {
                let mut bytes = garbage.clone();
                bytes.extend(encoded(&frame));
                let (frames, _) = decode_all(&bytes);
                // Garbage could (with odds of 2^-32) hold a valid frame itself; the last
                // frame decoded must be ours.
                assert_eq!(frames.last(), Some(&format!("{frame:?}")));
            });
        }
    }

    #[test]
    fn oversized_block_is_rejected_then_decoder_recovers() {
        let mut bytes = vec![0x55u8; MAX_FRAME * 3];
        let ack = Frame::Ack { up_to: 9 };
        bytes.extend(encoded(&ack));
        let (frames, errors) = decode_all(&bytes);
        assert_eq!(errors, vec![FrameError::TooLong]);
        assert_eq!(frames, vec![format!("{ack:?}")]);
    }

    #[test]
    fn other_versions_are_rejected_by_name() {
        let mut raw = vec![2u8];
        let mut payload = [0u8; 16];
        raw.extend_from_slice(postcard::to_slice(&Frame::Ack { up_to: 1 }, &mut payload).unwrap());
        raw.extend_from_slice(&crc32(&raw).to_le_bytes());
        let mut block = vec![0u8; 64];
        let n = cobs::encode(&raw, &mut block).unwrap();
        let mut bytes = vec![0];
        bytes.extend_from_slice(&block[..n]);
        bytes.push(0);
        assert_eq!(decode_all(&bytes).1, vec![FrameError::Version(2)]);
    }

    #[test]
    fn a_code_too_long_for_a_frame_fails_to_encode() {
        let code = "x".repeat(MAX_PAYLOAD);
        let frame = Frame::Event(EventFrame {
            seq: 1,
            step: Step::Pick,
            code: &code,
            symbology: None,
            operator: None,
            captured_at_ms: 0,
        });
        assert_eq!(frame.encode(&mut [0u8; MAX_FRAME]), Err(EncodeError));
    }
}
