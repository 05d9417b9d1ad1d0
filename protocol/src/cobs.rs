//! Consistent Overhead Byte Stuffing: removes every 0x00 from a payload so 0x00 can delimit
//! frames, at a cost of one byte per 254. A receiver that lands mid-frame (scanner plugged in
//! while sending, line noise) simply waits for the next 0x00 — that is the resync.

/// Encodes `src` into `dst`, returning the encoded length, or `None` if `dst` is too small.
pub(crate) fn encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut code_at = 0usize;
    let mut out = 1usize;
    let mut code: u8 = 1;
    if dst.is_empty() {
        return None;
    }
    for &b in src {
        if b == 0 {
            *dst.get_mut(code_at)? = code;
            code_at = out;
            out += 1;
            code = 1;
        } else {
            *dst.get_mut(out)? = b;
            out += 1;
            code += 1;
            if code == 0xFF {
                *dst.get_mut(code_at)? = code;
                code_at = out;
                out += 1;
                code = 1;
            }
        }
    }
    *dst.get_mut(code_at)? = code;
    Some(out)
}

/// Decodes a COBS block (without its 0x00 delimiter) in place, returning the decoded length,
/// or `None` if the block is malformed (a zero byte inside, or a code running past the end).
pub(crate) fn decode_in_place(buf: &mut [u8]) -> Option<usize> {
    let mut read = 0usize;
    let mut write = 0usize;
    while read < buf.len() {
        let code = buf[read];
        if code == 0 {
            return None;
        }
        read += 1;
        let run = code as usize - 1;
        if read + run > buf.len() {
            return None;
        }
        for i in 0..run {
            let b = buf[read + i];
            if b == 0 {
                return None;
            }
            buf[write] = b;
            write += 1;
        }
        read += run;
        // A code below 0xFF stands for a zero, except at the very end of the block.
        if code != 0xFF && read < buf.len() {
            buf[write] = 0;
            write += 1;
        }
    }
    Some(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut enc = vec![0u8; data.len() + data.len() / 254 + 2];
            let n = encode(&data, &mut enc).unwrap();
            prop_assert!(!enc[..n].contains(&0));
            let mut block = enc[..n].to_vec();
            let m = decode_in_place(&mut block).unwrap();
            prop_assert_eq!(&block[..m], &data[..]);
        }
    }

    #[test]
    fn known_vectors() {
        let mut out = [0u8; 8];
        let n = encode(&[0x11, 0x22, 0x00, 0x33], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x03, 0x11, 0x22, 0x02, 0x33]);
        let n = encode(&[0x00], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x01, 0x01]);
        assert!(encode(&[1, 2, 3], &mut [0u8; 3]).is_none());
    }
}
