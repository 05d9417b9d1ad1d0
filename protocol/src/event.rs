//! What a scan means: the [`Step`] in the dark leg, and the [`EventId`] that names a scan
//! forever, across retransmits, gateway restarts and relay hops.

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};

/// The step of the dark leg a scan records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    Pick,
    Pack,
    Handover,
    ReturnReceipt,
    Exception,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Pick,
        Step::Pack,
        Step::Handover,
        Step::ReturnReceipt,
        Step::Exception,
    ];

    /// The name used in configs and in the upstream JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Pick => "pick",
            Step::Pack => "pack",
            Step::Handover => "handover",
            Step::ReturnReceipt => "return_receipt",
            Step::Exception => "exception",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step name that is not one of [`Step::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownStep;

impl fmt::Display for UnknownStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown step (expected pick, pack, handover, return_receipt or exception)")
    }
}

impl FromStr for Step {
    type Err = UnknownStep;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or(UnknownStep)
    }
}

/// Why a decoded barcode cannot be recorded as a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    Empty,
    /// Control characters other than GS (0x1D, the GS1 separator): a misread or line noise.
    ControlCharacters,
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodeError::Empty => "empty barcode",
            CodeError::ControlCharacters => "control characters in barcode",
        })
    }
}

/// The gateway's rule for every scanned code, whatever the scanner's protocol.
pub fn check_code(code: &str) -> Result<(), CodeError> {
    if code.is_empty() {
        return Err(CodeError::Empty);
    }
    if code.chars().any(|c| c.is_control() && c != '\u{1d}') {
        return Err(CodeError::ControlCharacters);
    }
    Ok(())
}

/// A scan's stable identity: 8 bytes of FNV-1a over the device id, then the device's
/// sequence number, both big-endian.
///
/// Derived, never random: a retransmitted scan gets the same id, so every hop can
/// deduplicate. Within one device the ids sort by sequence, which keeps SQLite's unique
/// index append-mostly (random keys cost ~10x in insert rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    pub fn new(device: &str, seq: u64) -> Self {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&fnv1a64(device.as_bytes()).to_be_bytes());
        id[8..].copy_from_slice(&seq.to_be_bytes());
        EventId(id)
    }

    /// Parses the 32-hex-digit form produced by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            id[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(EventId(id))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write of 32 hex digits: every upstream message carries an id, and sixteen
        // `{:02x}` through the formatter were a visible share of a drain's time.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        // ASCII hex digits only: always UTF-8.
        f.write_str(core::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One scan as the gateway stores and forwards it.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEvent {
    pub event_id: EventId,
    pub device: alloc::string::String,
    pub seq: u64,
    pub step: Step,
    /// The decoded barcode, without AIM prefix or line terminator.
    pub code: alloc::string::String,
    /// AIM symbology identifier such as `]C1`, when the scanner sent one.
    pub symbology: Option<alloc::string::String>,
    pub station: Option<alloc::string::String>,
    pub operator: Option<alloc::string::String>,
    /// When the scan happened, by the scanner's (time-synced) clock, Unix milliseconds.
    pub captured_at_ms: u64,
    /// When the gateway received it, Unix milliseconds.
    pub received_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_stable_and_parses_back() {
        let a = EventId::new("scanner-7", 42);
        assert_eq!(a, EventId::new("scanner-7", 42));
        assert_ne!(a, EventId::new("scanner-7", 43));
        assert_ne!(a, EventId::new("scanner-8", 42));
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.ends_with("000000000000002a"));
        assert_eq!(EventId::parse(&text), Some(a));
        assert_eq!(EventId::parse("zz"), None);
        let all: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        assert_eq!(
            EventId(all).to_string(),
            "00112233445566778899aabbccddeeff",
            "high and low nibbles, in byte order"
        );
    }

    #[test]
    fn codes_keep_gs1_separators_and_refuse_control_characters() {
        assert_eq!(check_code("0109501101020917\u{1d}10ABC"), Ok(()));
        assert_eq!(check_code(""), Err(CodeError::Empty));
        assert_eq!(check_code("12\u{7}34"), Err(CodeError::ControlCharacters));
        assert_eq!(check_code("12\r"), Err(CodeError::ControlCharacters));
    }

    #[test]
    fn steps_round_trip_through_names() {
        for step in Step::ALL {
            assert_eq!(step.as_str().parse::<Step>(), Ok(step));
        }
        assert_eq!("packing".parse::<Step>(), Err(UnknownStep));
    }
}
