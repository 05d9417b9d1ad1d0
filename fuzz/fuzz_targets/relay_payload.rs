#![no_main]
//! Any MQTT payload on a relay's subscription: the parser must not panic, must respect its
//! limits, and whatever it accepts must carry ids that match device and sequence.

use darkleg_protocol::relay::{parse, Limits, MAX_CODE};
use darkleg_protocol::EventId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_bytes: 64 * 1024, max_hops: 8, me: "3pl/relay" };
    if let Ok(scans) = parse(data, limits) {
        assert!(data.len() <= limits.max_bytes);
        for s in scans {
            assert_eq!(s.event.event_id, EventId::new(&s.event.device, s.event.seq));
            assert!(s.event.code.len() <= MAX_CODE);
            assert!(s.hops.len() < limits.max_hops && !s.hops.iter().any(|h| h == limits.me));
        }
    }
});
