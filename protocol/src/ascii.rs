//! Lines from plain serial scanners: `[AIM id]data` ended by CR, LF or CRLF.
//!
//! Most handhelds in serial mode send exactly this. They carry no device sequence, so the
//! gateway numbers their scans and the station config says what step a scan means.

use crate::event::{check_code, CodeError};
use core::fmt;

/// Longest line accepted; real barcodes are far shorter, so longer means a wedged line.
pub const MAX_LINE: usize = 512;

/// One barcode read from an ASCII scanner, borrowed from the decoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsciiScan<'a> {
    pub code: &'a str,
    /// The AIM symbology identifier (`]C1`, `]d2`, …) when the scanner prefixes one.
    pub symbology: Option<&'a str>,
}

/// Why a line was not a scan. Counted by the receiver, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    TooLong,
    /// A control character other than GS (0x1D, the GS1 separator), or invalid UTF-8:
    /// line noise or a scanner in the wrong mode.
    NotText,
    /// Only an AIM identifier, no data.
    Empty,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            LineError::NotText => f.write_str("control characters or invalid UTF-8 in line"),
            LineError::Empty => f.write_str("AIM identifier without data"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum LineDecoded<'a> {
    Pending,
    Scan(AsciiScan<'a>),
    Rejected(LineError),
}

/// Incremental line splitter; never panics, never allocates.
pub struct LineDecoder {
    buf: [u8; MAX_LINE],
    len: usize,
    overflowed: bool,
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LineDecoder {
    pub const fn new() -> Self {
        LineDecoder {
            buf: [0; MAX_LINE],
            len: 0,
            overflowed: false,
        }
    }

    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    pub fn push(&mut self, byte: u8) -> LineDecoded<'_> {
        if byte != b'\r' && byte != b'\n' {
            if self.len < MAX_LINE {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return LineDecoded::Pending;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflowed) {
            return LineDecoded::Rejected(LineError::TooLong);
        }
        if len == 0 {
            // The LF of a CRLF, or a blank line: nothing was scanned.
            return LineDecoded::Pending;
        }
        match parse_line(&self.buf[..len]) {
            Ok(scan) => LineDecoded::Scan(scan),
            Err(e) => LineDecoded::Rejected(e),
        }
    }
}

/// Splits an optional AIM identifier (`]` + symbology letter + modifier) off a line.
pub fn parse_line(line: &[u8]) -> Result<AsciiScan<'_>, LineError> {
    let text = core::str::from_utf8(line).map_err(|_| LineError::NotText)?;
    if check_code(text) == Err(CodeError::ControlCharacters) {
        return Err(LineError::NotText);
    }
    let b = text.as_bytes();
    let (symbology, code) = if b.len() >= 3
        && b[0] == b']'
        && b[1].is_ascii_alphabetic()
        && b[2].is_ascii_alphanumeric()
    {
        (Some(&text[..3]), &text[3..])
    } else {
        (None, text)
    };
    check_code(code).map_err(|_| LineError::Empty)?;
    Ok(AsciiScan { code, symbology })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<(String, Option<String>), LineError>> {
        let mut dec = LineDecoder::new();
        let mut out = Vec::new();
        for &b in input {
            match dec.push(b) {
                LineDecoded::Pending => {}
                LineDecoded::Scan(s) => {
                    out.push(Ok((s.code.to_string(), s.symbology.map(str::to_string))))
                }
                LineDecoded::Rejected(e) => out.push(Err(e)),
            }
        }
        out
    }

    #[test]
    fn splits_crlf_cr_and_lf_and_aim_prefixes() {
        let got = lines(b"]C100340434161094042557\r\nJJD000390007654321\n]d201095011010209171719050810ABC\x1d21XYZ\r");
        assert_eq!(
            got,
            vec![
                Ok(("00340434161094042557".into(), Some("]C1".into()))),
                Ok(("JJD000390007654321".into(), None)),
                Ok((
                    "01095011010209171719050810ABC\u{1d}21XYZ".into(),
                    Some("]d2".into())
                )),
            ]
        );
    }

    #[test]
    fn noise_is_rejected_and_the_next_line_still_reads() {
        let mut input = vec![0x01, 0xff, 0xfe];
        input.extend_from_slice(b"\r\n]C1\r\n");
        input.extend(std::iter::repeat_n(b'7', MAX_LINE + 5));
        input.extend_from_slice(b"\nOK123\n");
        assert_eq!(
            lines(&input),
            vec![
                Err(LineError::NotText),
                Err(LineError::Empty),
                Err(LineError::TooLong),
                Ok(("OK123".into(), None))
            ]
        );
    }
}
