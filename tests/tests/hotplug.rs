//! A scanner unplugged and plugged back in is picked up again without restarting the agent:
//! the port is configured as a glob, the "device node" is a symlink to a pty slave that
//! disappears with its scanner and comes back (as a new pty) under the same name.

use darkleg_protocol::Step;
use darkleg_tests::scanner::{FramedConfig, FramedScanner, Pty};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

fn port_connected(config: &std::path::Path, path: &str) -> Option<bool> {
    let st = status(config);
    st["ports"]
        .as_array()?
        .iter()
        .find(|p| p["port"] == path)
        .and_then(|p| p["connected"].as_bool())
}

#[test]
fn unplugged_scanner_is_picked_up_again_and_keeps_its_sequence() {
    // No fixed ports: the rig's scanner entry is replaced by a glob over a device directory.
    let rig = Rig::new("hotplug", &[]);
    let devdir = rig.dir.0.join("dev");
    std::fs::create_dir_all(&devdir).unwrap();
    let pattern = format!("{}/scanner-*", devdir.display());
    let entry = ScannerEntry {
        port: &pattern,
        protocol: "framed",
        station: None,
    };
    let config = write_config(&rig.dir.0, &[entry], Some(&rig.broker.url()));
    let _agent = Agent::start(&config, &rig.log);
    let link = devdir.join("scanner-a");
    let link_path = link.to_string_lossy().into_owned();

    let plan: Vec<_> = (0..20u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let cfg = |resume_after, flash| FramedConfig {
        window: 4,
        retransmit_after: Duration::from_millis(500),
        resume_after,
        flash,
        ..FramedConfig::new("roamer", 5)
    };

    // Plugged in: the first half of the plan.
    let first = Pty::open().unwrap();
    std::os::unix::fs::symlink(&first.slave_path, &link).unwrap();
    assert!(wait_until(Duration::from_secs(20), || port_connected(
        &config, &link_path
    ) == Some(true)));
    let mut s = FramedScanner::start(first.master, cfg(0, None), plan[..10].to_vec());
    assert!(
        wait_until(Duration::from_secs(20), || s.done(10)),
        "first half acked: {:?}",
        s.stats()
    );

    // Unplugged: the scanner and its device node go away (its flash goes with it).
    let flash = s.flash();
    s.stop();
    drop(s);
    std::fs::remove_file(&link).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || port_connected(
            &config, &link_path
        ) == Some(false)),
        "the agent noticed the scanner left"
    );

    // Plugged back in (a new tty behind the same name): the rest of the plan.
    let second = Pty::open().unwrap();
    std::os::unix::fs::symlink(&second.slave_path, &link).unwrap();
    let s = FramedScanner::start(second.master, cfg(10, Some(flash)), plan.clone());
    assert!(
        wait_until(Duration::from_secs(30), || s.done(plan.len())),
        "second half acked: {:?}",
        s.stats()
    );
    assert!(wait_until(Duration::from_secs(20), || unique_ids(
        &rig.collector.messages()
    ) >= plan.len()));
    let mut plans = Plans::new();
    plans.insert("roamer".into(), plan);
    check_exactly_once(&rig.collector.messages(), &plans);
    assert_eq!(port_connected(&config, &link_path), Some(true));
}
