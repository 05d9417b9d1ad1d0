//! (1) Framed and ASCII scanners → agent → subscriber: every event exactly once by event id,
//! per-device order kept, on a clean run; and a clean stop on SIGTERM.

use darkleg_protocol::{EventId, Step};
use darkleg_tests::scanner::{write_ascii_scan, FramedConfig};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn framed_and_ascii_scans_arrive_exactly_once_in_device_order() {
    let mut rig = Rig::new(
        "capture",
        &[
            PortKind::FramedAt("pick"),
            PortKind::Framed,
            PortKind::Ascii("handover"),
        ],
    );
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let [pick, pack, mut dock]: [_; 3] = rig.take_ptys().try_into().ok().unwrap();

    let parcels = 40u64;
    let mut plans = Plans::new();
    let cfg = |device: &str, seed| FramedConfig {
        window: 16,
        retransmit_after: Duration::from_secs(2),
        scan_interval: Duration::from_millis(5),
        ..FramedConfig::new(device, seed)
    };
    let picks = (1..=parcels)
        .flat_map(|n| parcel_scans(n, Step::Pick))
        .collect();
    let packs = (1..=parcels)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let s1 = start_framed(pick, cfg("pick-7", 1), picks, &mut plans);
    let s2 = start_framed(pack, cfg("pack-3", 2), packs, &mut plans);
    let handover: Vec<_> = (1..=parcels)
        .flat_map(|n| parcel_scans(n, Step::Handover))
        .collect();
    for scan in &handover {
        write_ascii_scan(&mut dock.master, scan).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }

    let expected = plans.values().map(Vec::len).sum::<usize>() + handover.len();
    let arrived = wait_until(Duration::from_secs(60), || {
        unique_ids(&rig.collector.messages()) >= expected
    });
    let arrivals = rig.collector.messages();
    assert!(
        arrived,
        "{} of {expected} events arrived",
        unique_ids(&arrivals)
    );
    assert!(
        s1.0.done(s1.1) && s2.0.done(s2.1),
        "every framed scan acked"
    );

    // The ASCII scanner's events: gateway-numbered in line order, under a derived id.
    let device = ascii_device(&dock.slave_path);
    let (ascii, framed): (Vec<_>, Vec<_>) = arrivals
        .into_iter()
        .partition(|a| a.json["device"] == device.as_str());
    assert_eq!(
        ascii.len(),
        handover.len(),
        "ascii scans upstream, each once"
    );
    // Numbered from the store's incarnation: 1 in its low 28 bits, then one by one.
    let first = ascii[0].json["seq"].as_u64().unwrap();
    assert_eq!(first & ((1 << 28) - 1), 1);
    for (i, (a, scan)) in ascii.iter().zip(&handover).enumerate() {
        let seq = first + i as u64;
        assert_eq!(a.json["seq"], seq);
        assert_eq!(a.json["code"], scan.code.as_str());
        assert_eq!(a.json["symbology"], "]C0");
        assert_eq!(a.json["step"], "handover");
        assert_eq!(
            a.json["event_id"],
            EventId::new(&device, seq).to_string().as_str()
        );
        assert_eq!(a.topic, "darkleg/v1/e2e/gw-01/events");
    }
    assert_eq!(
        s1.0.stats().assigned_step,
        Some(Step::Pick),
        "the configured station reached the scanner"
    );
    assert_eq!(
        s2.0.stats().assigned_step,
        None,
        "no station configured, none assigned"
    );
    let duplicates = check_exactly_once(&framed, &plans);
    assert_eq!(
        duplicates, 0,
        "a clean run delivers each event once on the wire too"
    );

    assert_eq!(status(&rig.config)["events"], expected as u64);
    assert!(wait_until(Duration::from_secs(10), || rig.backlog() == Some(0)));
    // SIGTERM: a clean stop, exit status 0.
    let exit = agent.stop().expect("agent was running");
    assert!(exit.success(), "agent exited with {exit}");
}
