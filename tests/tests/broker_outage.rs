//! (2) The broker stops mid-stream and comes back: the agent keeps capturing (scanners keep
//! getting acks), the backlog waits in the outbox, and nothing is lost when it drains.

use darkleg_protocol::Step;
use darkleg_tests::scanner::{FramedConfig, FramedScanner, Pty};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn broker_stopped_mid_stream_and_restarted_loses_nothing() {
    let dir = Scratch::new("outage");
    let mut broker = Mosquitto::start(&dir.0.join("broker")).expect("mosquitto");
    let collector = Collector::start(broker.port, "darkleg/v1/#", "e2e-outage");
    assert!(collector.wait_subscribed(Duration::from_secs(10)));

    let ptys: Vec<Pty> = (0..3).map(|_| Pty::open().unwrap()).collect();
    let entries: Vec<ScannerEntry<'_>> = ptys
        .iter()
        .map(|p| ScannerEntry {
            port: &p.slave_path,
            protocol: "framed",
            station: None,
        })
        .collect();
    let config = write_config(&dir.0, &entries, Some(&broker.url()));
    let _agent = Agent::start(&config, &dir.0.join("agent.log"));
    assert!(wait_until(Duration::from_secs(20), || {
        status(&config)["ports"]
            .as_array()
            .is_some_and(|p| p.len() == 3 && p.iter().all(|p| p["connected"] == true))
    }));

    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for (i, pty) in ptys.into_iter().enumerate() {
        let device = format!("pack-{i}");
        // Distinct parcels per scanner, so every code in the test is unique.
        let plan: Vec<_> = (0..60u64)
            .flat_map(|n| parcel_scans(1000 * i as u64 + n, Step::Pack))
            .collect();
        let cfg = FramedConfig {
            device: device.clone(),
            window: 8,
            retransmit_after: Duration::from_secs(1),
            scan_interval: Duration::from_millis(40),
            garbage: 0.0,
            resume_after: 0,
            seed: i as u64 + 10,
        };
        scanners.push((
            FramedScanner::start(pty.master, cfg, plan.clone()),
            plan.len(),
        ));
        plans.insert(device, plan);
    }
    let expected: usize = plans.values().map(Vec::len).sum();

    // Let some events through, then pull the broker out from under the agent.
    assert!(wait_until(Duration::from_secs(20), || collector.len() >= 20));
    broker.stop();
    let upstream_before = unique_ids(&collector.messages());
    let acked_before: u64 = scanners.iter().map(|(s, _)| s.stats().acked).sum();
    std::thread::sleep(Duration::from_millis(1500));
    let acked_during: u64 = scanners.iter().map(|(s, _)| s.stats().acked).sum();
    assert!(
        acked_during > acked_before,
        "capture goes on while the broker is away ({acked_before} → {acked_during})"
    );
    let backlog = status(&config)["upstreams"][0]["backlog"].as_u64().unwrap();
    assert!(
        backlog > 0,
        "scans made during the outage wait in the outbox"
    );
    assert!(unique_ids(&collector.messages()) <= upstream_before + 1);

    broker
        .restart()
        .expect("mosquitto restart on the same port");
    let all = wait_until(Duration::from_secs(60), || {
        unique_ids(&collector.messages()) >= expected
    });
    let arrivals = collector.messages();
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
    assert!(wait_until(Duration::from_secs(10), || status(&config)
        ["upstreams"][0]["backlog"]
        == 0));
}
