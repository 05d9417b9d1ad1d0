//! RFC 3339 timestamps from Unix milliseconds (UTC, millisecond precision), without a
//! calendar crate: the civil-from-days conversion is a dozen lines and runs on the MCU too.

use core::fmt;

/// Displays as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        if !(0..=9999).contains(&y) {
            // Outside four digits (a corrupt clock): the general path, sign and all.
            return write!(
                f,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
        }
        // Digits written straight into a buffer: every scan message carries two of these.
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, m as u64);
        put(8, 2, d as u64);
        put(11, 2, rem / 3600);
        put(14, 2, rem / 60 % 60);
        put(17, 2, rem % 60);
        put(20, 3, ms);
        f.write_str(core::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` (the form [`Rfc3339`] writes) back to Unix ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[23] != b'Z' || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' {
        return None;
    }
    let n = |r: core::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // days_from_civil (Howard Hinnant), the inverse of `civil_from_days`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_rfc3339_ms, Rfc3339};

    #[test]
    fn parses_back_what_it_writes() {
        for ms in [0u64, 951_782_400_000, 1_795_300_000_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&Rfc3339(ms).to_string()), Some(ms));
        }
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00.000Z"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-22 20:26:40"), None);
    }

    /// The fast path writes what the formatter would, across the whole four-digit range and
    /// past it.
    #[test]
    fn digits_match_the_formatter() {
        use super::civil_from_days;
        let reference = |ms: u64| {
            let (secs, rem_ms) = (ms / 1000, ms % 1000);
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            std::format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{rem_ms:03}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            )
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly within year 9999 (253,402,300,799,999 ms), some far beyond it.
            let ms = if i % 10 == 0 {
                x >> 8
            } else {
                x % 253_402_300_800_000
            };
            assert_eq!(Rfc3339(ms).to_string(), reference(ms), "{ms}");
        }
        assert_eq!(
            Rfc3339(253_402_300_799_999).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn known_instants() {
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Rfc3339(1_795_300_000_123).to_string(),
            "2026-11-21T22:26:40.123Z"
        );
        assert_eq!(
            Rfc3339(4_102_444_799_999).to_string(),
            "2099-12-31T23:59:59.999Z"
        );
    }
}
