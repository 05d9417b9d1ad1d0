#![no_main]
//! Any request body to `POST /v1/scans`: parsing never panics, and what it accepts keeps
//! the intake's rules (1..=1,000 scans, printable bounded device names, seqs in SQLite's
//! range); a refusal names a field unless the JSON itself is broken.

use darkleg_agent::intake::parse::{parse, BodyError, MAX_DEVICE, MAX_SCANS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(scans) => {
            assert!(!scans.is_empty() && scans.len() <= MAX_SCANS);
            for s in scans {
                assert!(!s.device.is_empty() && s.device.len() <= MAX_DEVICE);
                assert!(!s.device.chars().any(char::is_control));
                assert!(s.seq >= 1 && s.seq <= i64::MAX as u64);
            }
        }
        Err(BodyError::TooMany(n)) => assert!(n > MAX_SCANS),
        Err(BodyError::Bad { .. }) => {}
    }
});
