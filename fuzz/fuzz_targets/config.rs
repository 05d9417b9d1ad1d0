#![no_main]
//! Any config text: parsing and validation must not panic — a broken config is an error
//! with a line number, never a crash.

use darkleg_agent::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::parse(text, "fuzz.toml") {
        assert!(!e.to_string().is_empty());
    }
});
