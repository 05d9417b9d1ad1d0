#![no_main]
//! Any scanned string: inspecting it (GS1 element strings, Digital Link, tracking numbers,
//! check digits) must not panic, and what it renders must be JSON.

use darkleg_protocol::barcode::{inspect, json::inspection_json, tracking};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(code) = std::str::from_utf8(data) else { return };
    let i = inspect(code);
    let v = inspection_json(code, &i);
    assert!(v.to_string().starts_with('{'));
    let _ = tracking::classify(code);
});
