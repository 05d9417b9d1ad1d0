//! docs/frame-vectors.json against the codec, and against docs/frame-protocol.md: each
//! vector's bytes decode to its fields and its fields encode to its bytes (the codec), and
//! the bytes are also taken apart here with a COBS decoder, a bit-by-bit CRC-32 and a
//! postcard writer written from the document, not from the crate — so the document, the
//! vectors and the codec are checked against each other.

use darkleg_protocol::frame::{FrameDecoder, MAX_FRAME, PROTOCOL_VERSION};
use darkleg_protocol::{Decoded, EventFrame, Frame, FrameError, NackReason, Step};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/frame-vectors.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["protocol_version"], u64::from(PROTOCOL_VERSION));
    doc["vectors"].as_array().unwrap().clone()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "{s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn step(s: &Value) -> Step {
    s.as_str().unwrap().parse().unwrap()
}

fn reason(s: &Value) -> NackReason {
    match s.as_str().unwrap() {
        "no_hello" => NackReason::NoHello,
        "out_of_order" => NackReason::OutOfOrder,
        "storage" => NackReason::Storage,
        "rejected" => NackReason::Rejected,
        other => panic!("unknown nack reason {other}"),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// The vector's message as the codec's type (borrowing from the JSON).
fn frame(f: &Value) -> Frame<'_> {
    match text(&f["type"]) {
        "Hello" => Frame::Hello {
            device: text(&f["device"]),
            firmware: text(&f["firmware"]),
            last_acked: num(&f["last_acked"]),
        },
        "Event" => Frame::Event(EventFrame {
            seq: num(&f["seq"]),
            step: step(&f["step"]),
            code: text(&f["code"]),
            symbology: f["symbology"].as_str(),
            operator: f["operator"].as_str(),
            captured_at_ms: num(&f["captured_at_ms"]),
        }),
        "Ack" => Frame::Ack {
            up_to: num(&f["up_to"]),
        },
        "Nack" => Frame::Nack {
            seq: num(&f["seq"]),
            reason: reason(&f["reason"]),
        },
        "TimeSync" => Frame::TimeSync {
            unix_ms: num(&f["unix_ms"]),
        },
        "SetStep" => Frame::SetStep {
            step: step(&f["step"]),
        },
        other => panic!("unknown frame type {other}"),
    }
}

// ---- Written from docs/frame-protocol.md, not from the crate. ----

/// §3: LEB128, 7 bits a byte, least significant group first, high bit = more follows.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let low = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn option(out: &mut Vec<u8>, s: &Value) {
    match s.as_str() {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            string(out, s);
        }
    }
}

/// §3's tables: variant numbers and field order.
fn postcard_by_hand(f: &Value) -> Vec<u8> {
    let steps = ["pick", "pack", "handover", "return_receipt", "exception"];
    let reasons = ["no_hello", "out_of_order", "storage", "rejected"];
    let index = |names: &[&str], v: &Value| names.iter().position(|n| *n == text(v)).unwrap();
    let mut out = Vec::new();
    match text(&f["type"]) {
        "Hello" => {
            out.push(0);
            string(&mut out, text(&f["device"]));
            string(&mut out, text(&f["firmware"]));
            varint(&mut out, num(&f["last_acked"]));
        }
        "Event" => {
            out.push(1);
            varint(&mut out, num(&f["seq"]));
            out.push(index(&steps, &f["step"]) as u8);
            string(&mut out, text(&f["code"]));
            option(&mut out, &f["symbology"]);
            option(&mut out, &f["operator"]);
            varint(&mut out, num(&f["captured_at_ms"]));
        }
        "Ack" => {
            out.push(2);
            varint(&mut out, num(&f["up_to"]));
        }
        "Nack" => {
            out.push(3);
            varint(&mut out, num(&f["seq"]));
            out.push(index(&reasons, &f["reason"]) as u8);
        }
        "TimeSync" => {
            out.push(4);
            varint(&mut out, num(&f["unix_ms"]));
        }
        "SetStep" => {
            out.push(5);
            out.push(index(&steps, &f["step"]) as u8);
        }
        other => panic!("{other}"),
    }
    out
}

/// §2: CRC-32/ISO-HDLC — reflected polynomial 0xEDB88320, init 0xFFFFFFFF, reflected
/// input and output, final XOR 0xFFFFFFFF; one bit at a time, no table.
fn crc32_bitwise(data: &[u8]) -> u32 {
    let mut reg = 0xFFFF_FFFFu32;
    for &byte in data {
        reg ^= u32::from(byte);
        for _ in 0..8 {
            reg = if reg & 1 == 1 {
                (reg >> 1) ^ 0xEDB8_8320
            } else {
                reg >> 1
            };
        }
    }
    reg ^ 0xFFFF_FFFF
}

/// §1: each code byte n is followed by n - 1 data bytes, then a zero unless n is 0xFF or
/// the block ends there.
fn cobs_decode(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let n = block[i] as usize;
        assert!(n > 0, "no zero inside a block");
        out.extend_from_slice(&block[i + 1..i + n]);
        i += n;
        if n != 0xFF && i < block.len() {
            out.push(0);
        }
    }
    out
}

#[test]
fn every_vector_decodes_to_its_fields_and_encodes_to_its_bytes() {
    let vectors = vectors();
    assert!(vectors.len() >= 12);
    for v in &vectors {
        let name = text(&v["name"]);
        let wire = unhex(text(&v["wire"]));
        let want = frame(&v["frame"]);

        let mut dec = FrameDecoder::new();
        let got: Vec<String> = wire
            .iter()
            .filter_map(|&b| match dec.push(b) {
                Decoded::Pending => None,
                Decoded::Frame(f) => Some(format!("{f:?}")),
                Decoded::Rejected(e) => panic!("{name}: rejected: {e}"),
            })
            .collect();
        assert_eq!(got, vec![format!("{want:?}")], "{name}: decoded");

        let mut out = [0u8; MAX_FRAME];
        let n = want.encode(&mut out).unwrap();
        assert_eq!(&out[..n], &wire[..], "{name}: encoded");
    }
}

#[test]
fn every_vector_matches_the_document_byte_by_byte() {
    let (mut types, mut longest) = (std::collections::BTreeSet::new(), 0);
    for v in &vectors() {
        let name = text(&v["name"]);
        let wire = unhex(text(&v["wire"]));
        types.insert(text(&v["frame"]["type"]).to_string());
        // §1: 0x00, a COBS block with no 0x00 in it, 0x00.
        let (first, block, last) = (wire[0], &wire[1..wire.len() - 1], wire[wire.len() - 1]);
        assert_eq!((first, last), (0, 0), "{name}");
        assert!(!block.contains(&0), "{name}");
        assert!(wire.len() <= MAX_FRAME, "{name}");
        let raw = cobs_decode(block);
        // §2: version ‖ payload ‖ CRC-32 little-endian over version ‖ payload.
        let (body, crc) = raw.split_at(raw.len() - 4);
        assert_eq!(body[0], 1, "{name}: version byte");
        let crc = u32::from_le_bytes(crc.try_into().unwrap());
        assert_eq!(crc, crc32_bitwise(body), "{name}: CRC");
        assert_eq!(
            format!("{crc:08x}"),
            text(&v["crc32"]),
            "{name}: CRC in the file"
        );
        assert_eq!(&body[1..], &unhex(text(&v["postcard"]))[..], "{name}");
        // §3: the payload is the fields, written by the document's rules.
        assert_eq!(
            body[1..],
            postcard_by_hand(&v["frame"])[..],
            "{name}: payload"
        );
        longest = longest.max(block.len());
    }
    assert_eq!(types.len(), 6, "a vector for every message: {types:?}");
    assert!(longest > 254, "one vector needs a COBS run of 254 bytes");
}

#[test]
fn the_known_check_value_and_damaged_vectors_are_refused() {
    // The parameter set's published check value: CRC of ASCII "123456789".
    assert_eq!(crc32_bitwise(b"123456789"), 0xCBF4_3926);
    for v in &vectors() {
        let wire = unhex(text(&v["wire"]));
        // A flipped bit in the last CRC byte: rejected as a checksum error, then the next
        // frame on the line still decodes.
        let mut bad = wire.clone();
        let at = bad.len() - 2;
        bad[at] ^= 0x01;
        if bad[at] == 0 {
            continue;
        }
        bad.extend_from_slice(&wire);
        let mut dec = FrameDecoder::new();
        let mut seen = Vec::new();
        for &b in &bad {
            match dec.push(b) {
                Decoded::Pending => {}
                Decoded::Frame(_) => seen.push("frame".to_string()),
                Decoded::Rejected(e) => seen.push(format!("{e:?}")),
            }
        }
        assert_eq!(
            seen,
            vec![format!("{:?}", FrameError::Checksum), "frame".to_string()],
            "{}",
            text(&v["name"])
        );
    }
}

/// The document's own text, read by the test: a vendor implements what it says, so what it
/// says — variant numbers, enum tables, the CRC check value, the worked examples' bytes —
/// must be what the codec does, not only what this file hard-codes.
#[test]
fn the_documents_tables_and_worked_examples_are_what_the_codec_does() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/frame-protocol.md"),
    )
    .unwrap();
    let encode = |f: &Frame| {
        let mut out = [0u8; MAX_FRAME];
        let n = f.encode(&mut out).unwrap();
        let block = &out[1..n - 1];
        cobs_decode(block)[1..].to_vec() // the postcard payload, after the version byte
    };
    // §3's message table: `| # | `Name` | …`; the payload starts with the variant number.
    let samples = [
        (
            "Hello",
            Frame::Hello {
                device: "d",
                firmware: "f",
                last_acked: 0,
            },
        ),
        (
            "Event",
            Frame::Event(EventFrame {
                seq: 1,
                step: Step::Pick,
                code: "c",
                symbology: None,
                operator: None,
                captured_at_ms: 0,
            }),
        ),
        ("Ack", Frame::Ack { up_to: 0 }),
        (
            "Nack",
            Frame::Nack {
                seq: 1,
                reason: NackReason::NoHello,
            },
        ),
        ("TimeSync", Frame::TimeSync { unix_ms: 0 }),
        ("SetStep", Frame::SetStep { step: Step::Pick }),
    ];
    let mut rows = 0;
    for line in doc.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Ok(n), Some(name)) = (
            cells[1].parse::<u8>(),
            cells.get(2).map(|c| c.trim_matches('`')),
        ) else {
            continue;
        };
        let (_, f) = samples
            .iter()
            .find(|(s, _)| *s == name)
            .unwrap_or_else(|| panic!("the table names an unknown message {name}"));
        assert_eq!(encode(f)[0], n, "{name}'s variant number");
        rows += 1;
    }
    assert_eq!(rows, samples.len(), "every message in the table");
    // The enum lines: "`Step`: `0` pick, `1` pack, …".
    let enum_line = |name: &str| -> Vec<(u8, String)> {
        let l = doc
            .lines()
            .find(|l| l.starts_with(&format!("`{name}`:")))
            .unwrap_or_else(|| panic!("no {name} line"));
        l.split_once(':')
            .unwrap()
            .1
            .trim_end_matches('.')
            .split(',')
            .map(|p| {
                let (n, v) = p.trim().split_once(' ').unwrap();
                (n.trim_matches('`').parse().unwrap(), v.trim().to_string())
            })
            .collect()
    };
    for (n, v) in enum_line("Step") {
        let step: Step = v.parse().unwrap_or_else(|_| panic!("step {v}"));
        assert_eq!(encode(&Frame::SetStep { step })[1], n, "Step {v}");
    }
    let reasons = [
        NackReason::NoHello,
        NackReason::OutOfOrder,
        NackReason::Storage,
        NackReason::Rejected,
    ];
    for (n, v) in enum_line("NackReason") {
        let reason = *reasons
            .iter()
            .find(|r| format!("{r:?}") == v)
            .unwrap_or_else(|| panic!("reason {v}"));
        assert_eq!(
            encode(&Frame::Nack { seq: 1, reason })[2],
            n,
            "NackReason {v}"
        );
    }
    // The check value in §2's table, and the version byte.
    assert!(doc.contains(&format!("`0x{:08X}`", crc32_bitwise(b"123456789"))));
    assert!(doc.contains(&format!("`0x{PROTOCOL_VERSION:02X}`")));
    // Each worked example's "on the wire:" bytes decode to one frame and encode back.
    let mut examples = 0;
    for line in doc.lines() {
        let Some(rest) = line.split("on the wire: `").nth(1) else {
            continue;
        };
        let wire = unhex(&rest.split('`').next().unwrap().replace(' ', ""));
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for &b in &wire {
            match dec.push(b) {
                Decoded::Pending => {}
                Decoded::Frame(f) => {
                    let mut out = [0u8; MAX_FRAME];
                    let n = f.encode(&mut out).unwrap();
                    frames.push(out[..n].to_vec());
                }
                Decoded::Rejected(e) => panic!("{line}: {e}"),
            }
        }
        assert_eq!(frames, vec![wire.clone()], "{line}");
        examples += 1;
    }
    assert!(examples >= 3, "the worked examples were found");
}
