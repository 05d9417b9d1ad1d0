//! An upstream with `batch = 50` gets `darkleg.batch.v1` messages: many scans per MQTT
//! message, each PUBACK retiring all of them. Through a broker outage, every scan still
//! arrives exactly once by event id and in per-device order.

use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn batched_upstream_delivers_every_scan_once_through_an_outage() {
    let mut rig = Rig::new("batch", &[PortKind::Framed; 2]);
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let text = text.replace("keep_alive_secs = 5\n", "keep_alive_secs = 5\nbatch = 50\n");
    assert!(text.contains("batch = 50"));
    std::fs::write(&rig.config, text).unwrap();
    rig.broker.stop();
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for (i, pty) in rig.take_ptys().into_iter().enumerate() {
        let plan = (0..150u64)
            .flat_map(|n| parcel_scans(1000 * i as u64 + n, Step::Pick))
            .collect();
        let cfg = FramedConfig {
            scan_interval: Duration::ZERO,
            ..FramedConfig::new(&format!("batcher-{i}"), i as u64 + 3)
        };
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }
    let expected: usize = plans.values().map(Vec::len).sum();
    assert!(wait_until(Duration::from_secs(60), || scanners
        .iter()
        .all(|(s, n)| s.done(*n))));
    assert!(
        rig.backlog().unwrap() >= expected as u64,
        "a backlog built while the broker was away"
    );
    rig.broker.restart().expect("mosquitto restart");
    assert!(
        wait_until(Duration::from_secs(60), || unique_ids(&expand_batches(
            &rig.collector.messages()
        )) >= expected),
        "{} of {expected}",
        unique_ids(&expand_batches(&rig.collector.messages()))
    );
    let raw = rig.collector.messages();
    assert!(
        raw.iter().all(|a| a.json["schema"] == "darkleg.batch.v1"),
        "scans go batched"
    );
    assert!(
        raw.len() * 10 <= expected,
        "{} messages for {expected} scans",
        raw.len()
    );
    check_exactly_once(&expand_batches(&raw), &plans);
    assert!(wait_until(Duration::from_secs(10), || rig.backlog() == Some(0)));
}
