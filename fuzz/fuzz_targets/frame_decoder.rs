#![no_main]
//! Any byte stream: the decoders must not panic, and whatever frame they accept must
//! re-encode to a frame that decodes to the same value.

use darkleg_protocol::ascii::LineDecoder;
use darkleg_protocol::frame::{Decoded, FrameDecoder, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frames = FrameDecoder::new();
    let mut lines = LineDecoder::new();
    for &b in data {
        let _ = lines.push(b);
        if let Decoded::Frame(f) = frames.push(b) {
            let mut out = [0u8; MAX_FRAME];
            let n = f.encode(&mut out).expect("an accepted frame re-encodes");
            let mut again = FrameDecoder::new();
            let back = out[..n].iter().find_map(|&b| match again.push(b) {
                Decoded::Frame(g) => Some(g == f),
                _ => None,
            });
            assert_eq!(back, Some(true));
        }
    }
});
