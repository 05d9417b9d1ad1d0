//! A framed scan whose code cannot be a barcode (control characters: a misread) is refused
//! with Nack(Rejected) — the scanner's error tone — while its sequence number is consumed,
//! so the scanner goes on with the next scan and nothing else is held up.
//!
//! darkleg's own firmware refuses such a read before it is stored, so this test speaks the
//! frame protocol by hand, as a third-party or older smart scanner would.

use darkleg_protocol::frame::MAX_FRAME;
use darkleg_protocol::{Decoded, EventFrame, EventId, Frame, FrameDecoder, NackReason, Step};
use darkleg_tests::workload::{parcel_scans, PlannedScan};
use darkleg_tests::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn send(port: &mut impl Write, frame: Frame<'_>) {
    let mut out = [0u8; MAX_FRAME];
    let n = frame.encode(&mut out).unwrap();
    port.write_all(&out[..n]).unwrap();
}

/// Reads the gateway's answers until `up_to` is acked; returns the Nacks seen.
fn until_acked(port: &mut impl Read, up_to: u64) -> Vec<(u64, NackReason)> {
    let mut dec = FrameDecoder::new();
    let mut nacks = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(n) = port.read(&mut buf) else { continue };
        for &b in &buf[..n] {
            match dec.push(b) {
                Decoded::Frame(Frame::Ack { up_to: a }) if a >= up_to => return nacks,
                Decoded::Frame(Frame::Nack { seq, reason }) => nacks.push((seq, reason)),
                _ => {}
            }
        }
    }
    panic!("no ack of {up_to} within 20 s (nacks {nacks:?})");
}

#[test]
fn a_misread_is_refused_and_the_scans_after_it_flow_on() {
    let mut rig = Rig::new("refused", &[PortKind::Framed]);
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let mut plan: Vec<PlannedScan> = (0..5u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    plan[2].code = "0008712345\u{7}000003".into();
    let mut port = rig.take_ptys().pop().unwrap().master;
    send(
        &mut port,
        Frame::Hello {
            device: "misreader",
            firmware: "third-party-2.1",
            last_acked: 0,
        },
    );
    until_acked(&mut port, 0);
    for (i, scan) in plan.iter().enumerate() {
        send(
            &mut port,
            Frame::Event(EventFrame {
                seq: i as u64 + 1,
                step: scan.step,
                code: &scan.code,
                symbology: scan.symbology.as_deref(),
                operator: None,
                captured_at_ms: 1_795_300_000_000 + i as u64,
            }),
        );
    }
    let nacks = until_acked(&mut port, plan.len() as u64);
    assert_eq!(
        nacks,
        [(3, NackReason::Rejected)],
        "the misread, and only it"
    );
    assert!(wait_until(Duration::from_secs(20), || rig.collector.len() >= 4));
    std::thread::sleep(Duration::from_millis(300));
    // At-least-once on the wire: a resend may repeat a seq; the order of first arrivals is
    // what a consumer deduplicating by id sees.
    let mut got: Vec<u64> = Vec::new();
    for a in rig.collector.messages() {
        let seq = a.json["seq"].as_u64().unwrap();
        if !got.contains(&seq) {
            got.push(seq);
        }
    }
    assert_eq!(
        got,
        vec![1, 2, 4, 5],
        "everything but the misread, in order"
    );
    let refused_id = EventId::new("misreader", 3).to_string();
    assert!(rig
        .collector
        .messages()
        .iter()
        .all(|a| a.json["event_id"] != refused_id.as_str()));
    let st = status(&rig.config);
    let dev = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "misreader")
        .unwrap()
        .clone();
    assert_eq!(
        (dev["events"].as_u64(), dev["refused"].as_u64()),
        (Some(4), Some(1)),
        "{dev}"
    );
}
