//! (2) The broker stops mid-stream and comes back: the agent keeps capturing (scanners keep
//! getting acks), the backlog waits in the outbox, and nothing is lost when it drains.

use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn broker_stopped_mid_stream_and_restarted_loses_nothing() {
    let mut rig = Rig::new("outage", &[PortKind::Framed; 3]);
    let _agent = rig.start_agent();
    rig.wait_ports_open();

    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for (i, pty) in rig.take_ptys().into_iter().enumerate() {
        // Distinct parcels per scanner, so every code in the test is unique.
        let plan = (0..60u64)
            .flat_map(|n| parcel_scans(1000 * i as u64 + n, Step::Pack))
            .collect();
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(40),
            ..FramedConfig::new(&format!("pack-{i}"), i as u64 + 10)
        };
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }
    let expected: usize = plans.values().map(Vec::len).sum();

    // Let some events through, then pull the broker out from under the agent.
    assert!(wait_until(Duration::from_secs(20), || rig.collector.len() >= 20));
    rig.broker.stop();
    let upstream_before = unique_ids(&rig.collector.messages());
    let acked_before: u64 = scanners.iter().map(|(s, _)| s.stats().acked).sum();
    std::thread::sleep(Duration::from_millis(1500));
    let acked_during: u64 = scanners.iter().map(|(s, _)| s.stats().acked).sum();
    assert!(
        acked_during > acked_before,
        "capture goes on while the broker is away ({acked_before} → {acked_during})"
    );
    assert!(
        rig.backlog().unwrap() > 0,
        "scans made during the outage wait in the outbox"
    );
    assert!(unique_ids(&rig.collector.messages()) <= upstream_before + 1);

    rig.broker
        .restart()
        .expect("mosquitto restart on the same port");
    let all = wait_until(Duration::from_secs(60), || {
        unique_ids(&rig.collector.messages()) >= expected
    });
    let arrivals = rig.collector.messages();
    assert!(
        all,
        "{} of {expected} events arrived after the broker came back",
        unique_ids(&arrivals)
    );
    for (s, n) in &scanners {
        assert!(
            s.done(*n),
            "scanner finished and fully acked: {:?}",
            s.stats()
        );
    }
    check_exactly_once(&arrivals, &plans);
    assert!(wait_until(Duration::from_secs(10), || rig.backlog() == Some(0)));
}
