//! A framed scan whose code cannot be a barcode (control characters: a misread) is refused
//! with Nack(Rejected) — the scanner's error tone — while its sequence number is consumed,
//! so the scanner goes on with the next scan and nothing else is held up.

use darkleg_protocol::{EventId, Step};
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::{parcel_scans, PlannedScan};
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn a_misread_is_refused_and_the_scans_after_it_flow_on() {
    let mut rig = Rig::new("refused", &[PortKind::Framed]);
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let mut plan: Vec<PlannedScan> = (0..5u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    plan[2].code = "0008712345\u{7}000003".into();
    let mut plans = Plans::new();
    let pty = rig.take_ptys().pop().unwrap();
    let (s, n) = start_framed(
        pty,
        FramedConfig::new("misreader", 9),
        plan.clone(),
        &mut plans,
    );
    assert!(
        wait_until(Duration::from_secs(20), || s.done(n)),
        "all five retired: {:?}",
        s.stats()
    );
    assert!(
        s.stats().nacks >= 1,
        "the refused scan was nacked: {:?}",
        s.stats()
    );
    assert!(wait_until(Duration::from_secs(20), || rig.collector.len() >= 4));
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<u64> = rig
        .collector
        .messages()
        .iter()
        .map(|a| a.json["seq"].as_u64().unwrap())
        .collect();
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
