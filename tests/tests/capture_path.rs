//! (1) Framed and ASCII scanners → agent → subscriber: every event exactly once by event id,
//! per-device order kept, on a clean run.

use darkleg_protocol::{EventId, Step};
use darkleg_tests::scanner::{write_ascii_scan, FramedConfig, FramedScanner, Pty};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn framed_and_ascii_scans_arrive_exactly_once_in_device_order() {
    let dir = Scratch::new("capture");
    let broker = Mosquitto::start(&dir.0.join("broker")).expect("mosquitto");
    let collector = Collector::start(broker.port, "darkleg/v1/#", "e2e-capture");
    assert!(collector.wait_subscribed(Duration::from_secs(10)));

    let pick = Pty::open().unwrap();
    let pack = Pty::open().unwrap();
    let mut dock = Pty::open().unwrap();
    let config = write_config(
        &dir.0,
        &[
            ScannerEntry {
                port: &pick.slave_path,
                protocol: "framed",
                station: None,
            },
            ScannerEntry {
                port: &pack.slave_path,
                protocol: "framed",
                station: None,
            },
            ScannerEntry {
                port: &dock.slave_path,
                protocol: "ascii",
                station: Some("handover"),
            },
        ],
        Some(&broker.url()),
    );
    let mut agent = Agent::start(&config, &dir.0.join("agent.log"));
    // Scanners start once the agent has their ports open, as on a real dock.
    assert!(wait_until(Duration::from_secs(20), || {
        status(&config)["ports"]
            .as_array()
            .is_some_and(|p| p.len() == 3 && p.iter().all(|p| p["connected"] == true))
    }));

    let parcels = 40u64;
    let mut plans = Plans::new();
    plans.insert(
        "pick-7".into(),
        (1..=parcels)
            .flat_map(|n| parcel_scans(n, Step::Pick))
            .collect(),
    );
    plans.insert(
        "pack-3".into(),
        (1..=parcels)
            .flat_map(|n| parcel_scans(n, Step::Pack))
            .collect(),
    );
    let cfg = |device: &str, seed| FramedConfig {
        device: device.into(),
        window: 16,
        retransmit_after: Duration::from_secs(2),
        scan_interval: Duration::from_millis(5),
        garbage: 0.0,
        resume_after: 0,
        seed,
    };
    let s1 = FramedScanner::start(pick.master, cfg("pick-7", 1), plans["pick-7"].clone());
    let s2 = FramedScanner::start(pack.master, cfg("pack-3", 2), plans["pack-3"].clone());
    let handover: Vec<_> = (1..=parcels)
        .flat_map(|n| parcel_scans(n, Step::Handover))
        .collect();
    for scan in &handover {
        write_ascii_scan(&mut dock.master, scan).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }

    let expected = plans.values().map(Vec::len).sum::<usize>() + handover.len();
    let arrived = wait_until(Duration::from_secs(60), || {
        unique_ids(&collector.messages()) >= expected
    });
    let arrivals = collector.messages();
    assert!(
        arrived,
        "{} of {expected} events arrived",
        unique_ids(&arrivals)
    );
    assert!(
        s1.done(plans["pick-7"].len()) && s2.done(plans["pack-3"].len()),
        "every framed scan acked"
    );

    // The ASCII scanner's events: gateway-numbered 1..=n in line order, under a derived id.
    let device = "gw-01:".to_string()
        + &dock
            .slave_path
            .trim_start_matches("/dev/")
            .replace('/', "_");
    let ascii: Vec<_> = arrivals
        .iter()
        .filter(|a| a.json["device"] == device.as_str())
        .collect();
    assert_eq!(
        ascii.len(),
        handover.len(),
        "ascii scans upstream, each once"
    );
    for (i, (a, scan)) in ascii.iter().zip(&handover).enumerate() {
        let seq = i as u64 + 1;
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
    let framed: Vec<_> = arrivals
        .into_iter()
        .filter(|a| a.json["device"] != device.as_str())
        .collect();
    let duplicates = check_exactly_once(&framed, &plans);
    assert_eq!(
        duplicates, 0,
        "a clean run delivers each event once on the wire too"
    );

    let st = status(&config);
    assert_eq!(st["events"], expected as u64);
    assert!(wait_until(Duration::from_secs(10), || status(&config)
        ["upstreams"][0]["backlog"]
        == 0));

    // SIGTERM: a clean stop, exit status 0.
    let exit = agent.stop().expect("agent was running");
    assert!(exit.success(), "agent exited with {exit}");
}
