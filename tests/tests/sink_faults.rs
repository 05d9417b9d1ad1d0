//! The MQTT sink against the configs and brokers that broke it:
//! - a batched upstream (`batch = 100, window = 256`, as configs/gateway.toml recommends, and
//!   `batch = 50, window = 8`) whose backlog holds milestones between the scans drains fully
//!   — one outbox read used to turn into more publishes than the client's channel holds;
//! - a broker whose ACL refuses the gateway's topic: with MQTT 5 its PUBACK says "not
//!   authorized", with 3.1.1 it acks and closes — either way no row is counted delivered,
//!   status names the refusal, and once the ACL is fixed every scan arrives.

use darkleg_agent::sim::scanner::write_ascii_scan;
use darkleg_protocol::Step;
use darkleg_tests::workload::{sscc_key, PlannedScan};
use darkleg_tests::*;
use std::collections::HashSet;
use std::time::Duration;

const MERCHANT: &str = "\n[[merchant]]\nid = \"acme\"\ngs1_prefixes = [\"8712345\"]\n";

fn set_upstream(rig: &Rig, keys: &str) {
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let text = text.replace(
        "keep_alive_secs = 5\n",
        &format!("keep_alive_secs = 5\n{keys}"),
    );
    std::fs::write(&rig.config, format!("{text}{MERCHANT}")).unwrap();
}

/// The pack station's day: an order number, then the parcel's SSCC, `n` times.
fn pack_station(n: u64) -> Vec<PlannedScan> {
    (0..n)
        .flat_map(|i| {
            [
                PlannedScan {
                    step: Step::Pack,
                    code: format!("SO-{i:06}"),
                    symbology: None,
                },
                PlannedScan {
                    step: Step::Pack,
                    code: format!("00{}", sscc_key("8712345", i)),
                    symbology: Some("]C1".into()),
                },
            ]
        })
        .collect()
}

/// Distinct event ids among the arrivals (batches opened).
fn distinct_ids(c: &Collector) -> u64 {
    expand_batches(&c.messages())
        .iter()
        .filter_map(|a| a.json["event_id"].as_str().map(String::from))
        .collect::<HashSet<_>>()
        .len() as u64
}

fn events_stored(rig: &Rig) -> u64 {
    status(&rig.config)["events"].as_u64().unwrap_or(0)
}

fn drain_with_milestones(name: &str, batch: usize, window: usize) -> String {
    drain_with_milestones_on(name, &format!("batch = {batch}\nwindow = {window}\n"), "")
}

/// Returns the agent's log.
fn drain_with_milestones_on(name: &str, upstream_keys: &str, broker_extra: &str) -> String {
    const PARCELS: u64 = 2000;
    let mut rig = Rig::with_broker(name, &[PortKind::Ascii("pack")], "", broker_extra);
    set_upstream(&rig, upstream_keys);
    rig.broker.stop();
    let agent = rig.start_agent();
    rig.wait_ports_open();
    let mut pty = rig.take_ptys().remove(0);
    let plan = pack_station(PARCELS);
    let expected = plan.len() as u64;
    // Paced by what the agent has stored, so the pty's buffer never fills (a plain scanner
    // would lose what does not fit; that is not what this test is about).
    for (i, chunk) in plan.chunks(200).enumerate() {
        for s in chunk {
            write_ascii_scan(&mut pty.master, s).unwrap();
        }
        let done = ((i + 1) * 200) as u64;
        assert!(wait_until(Duration::from_secs(30), || events_stored(&rig)
            >= done.min(expected)));
    }
    assert!(
        wait_until(Duration::from_secs(60), || events_stored(&rig) >= expected),
        "{} of {expected} scans stored",
        events_stored(&rig)
    );
    // Every SSCC made a packed milestone: the backlog is scans cut by messages.
    let backlog = rig.backlog().unwrap();
    assert!(backlog > expected, "backlog {backlog} holds milestones too");
    rig.broker.restart().expect("mosquitto restart");
    let arrived = || distinct_ids(&rig.collector);
    assert!(
        wait_until(Duration::from_secs(90), || arrived() >= expected),
        "{upstream_keys}: {} of {expected} scans arrived, backlog {:?}",
        arrived(),
        rig.backlog()
    );
    assert!(wait_until(Duration::from_secs(20), || rig.backlog() == Some(0)));
    let log = std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert!(
        !log.contains("Failed to send mqtt requests"),
        "the client's request channel overflowed"
    );
    drop(agent);
    log
}

/// Mosquitto announces its `max_inflight_messages` as MQTT 5's receive maximum (Debian's
/// default: 20): the agent keeps to it (Mosquitto itself tolerates more, so the limit is
/// unit-tested in the service) and the backlog drains on one connection.
#[test]
fn an_mqtt5_broker_with_a_small_receive_maximum_takes_the_backlog_on_one_connection() {
    let log = drain_with_milestones_on(
        "drain-rm4",
        "mqtt_version = \"5\"\nwindow = 256\n",
        "max_inflight_messages 4\n",
    );
    assert!(
        log.contains("keeping to its receive maximum"),
        "the agent noticed the broker's limit: {log}"
    );
    assert_eq!(
        log.matches("upstream connected").count(),
        1,
        "one connection carried the whole backlog: {log}"
    );
}

#[test]
fn a_batched_backlog_with_milestones_drains_as_recommended() {
    drain_with_milestones("drain-b100", 100, 256);
}

#[test]
fn a_batched_backlog_with_milestones_drains_through_a_narrow_window() {
    drain_with_milestones("drain-b50", 50, 8);
}

/// An ACL where anyone may read everything and write only `elsewhere/#`.
const DENY: &str = "topic read #\ntopic write elsewhere/#\n";
const ALLOW: &str = "topic readwrite #\n";

/// A site whose broker runs `acl`: a subscriber on the events, one ASCII scanner at
/// `station`, the agent's config (with `upstream_keys` in its upstream table and `extra` at
/// the top) and the agent started with every port open.
struct AclSite {
    _dir: Scratch,
    acl: std::path::PathBuf,
    broker: Mosquitto,
    collector: Collector,
    pty: scanner::Pty,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    /// Between the agent and the broker when asked for: the broker can then be down to the
    /// agent alone (a restart would lose what the subscriber's restored session is sent).
    proxy: Option<darkleg_tests::proxy::Proxy>,
    _agent: Agent,
}

impl AclSite {
    fn start(name: &str, acl: &str, station: &str, upstream_keys: &str, extra: &str) -> AclSite {
        AclSite::start_via(name, acl, station, upstream_keys, extra, false)
    }

    fn start_via(
        name: &str,
        acl: &str,
        station: &str,
        upstream_keys: &str,
        extra: &str,
        via_proxy: bool,
    ) -> AclSite {
        let dir = Scratch::new(name);
        let acl_file = dir.0.join("acl");
        std::fs::write(&acl_file, acl).unwrap();
        let broker = Mosquitto::start_with(
            &dir.0.join("broker"),
            &format!("acl_file {}\n", acl_file.display()),
        )
        .expect("mosquitto with an ACL");
        let collector =
            Collector::start(broker.port, "darkleg/v1/+/+/events", &format!("sub-{name}"));
        assert!(collector.wait_subscribed(Duration::from_secs(10)));
        let pty = scanner::Pty::open().unwrap();
        let proxy = via_proxy.then(|| darkleg_tests::proxy::Proxy::start(broker.port));
        let url = proxy.as_ref().map_or_else(|| broker.url(), |p| p.url());
        let config = write_config_with(
            &dir.0,
            &[ScannerEntry {
                port: &pty.slave_path,
                protocol: "ascii",
                station: Some(station),
            }],
            Some(&url),
            extra,
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let keys = format!("keep_alive_secs = 5\n{upstream_keys}");
        std::fs::write(&config, text.replace("keep_alive_secs = 5\n", &keys)).unwrap();
        let log = dir.0.join("agent.log");
        let agent = Agent::start(&config, &log);
        assert!(wait_until(Duration::from_secs(20), || status(&config)
            ["ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["connected"] == true))));
        AclSite {
            _dir: dir,
            acl: acl_file,
            broker,
            collector,
            pty,
            config,
            log,
            proxy,
            _agent: agent,
        }
    }
}

/// `reasons`: what status may name (Mosquitto 2.0 resets the connection after its 0x87
/// PUBACK, which then may or may not reach us).
fn refused_then_fixed(name: &str, version: &str, reasons: &[&str]) {
    const SCANS: u64 = 100;
    let mut site = AclSite::start(
        name,
        DENY,
        "handover",
        &format!("mqtt_version = \"{version}\"\n"),
        "",
    );
    // Borrowed, not moved out: the site (its agent, its scratch) lives to the end.
    let AclSite {
        _dir: scratch,
        acl,
        broker,
        collector,
        pty,
        config,
        log,
        ..
    } = &mut site;
    for i in 0..SCANS {
        let scan = PlannedScan {
            step: Step::Handover,
            code: format!("1Z999AA1{i:010}"),
            symbology: None,
        };
        write_ascii_scan(&mut pty.master, &scan).unwrap();
    }
    let up = |k: &str| status(config)["upstreams"][0][k].clone();
    assert!(
        wait_until(Duration::from_secs(20), || up("refused").as_i64()
            >= Some(1)),
        "the refusal is on record: {}",
        status(config)["upstreams"]
    );
    // A while of refusals: nothing counted delivered, nothing seen, everything still owed.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        up("delivered").as_i64(),
        Some(0),
        "a refused row was counted delivered"
    );
    assert_eq!(up("backlog").as_u64(), Some(SCANS));
    assert!(collector.is_empty(), "the broker dropped them, as refused");
    let reason = up("last_refusal").as_str().unwrap_or_default().to_string();
    assert!(reasons.iter().any(|r| reason.contains(r)), "{reason}");
    // No reconnect storm while refused: the back-off grows.
    let text = std::fs::read_to_string(&*log).unwrap_or_default();
    let connects = text.matches("upstream connected").count();
    assert!(connects <= 15, "{connects} connections in ~5 s");

    // Fixed as an operator would, by a reload. Not a restart: Mosquitto 2.0.11 with an
    // acl_file acks (0x00) and then drops what is published to a persisted session that has
    // not reconnected since the restart, so an agent back before the test's subscriber had
    // its rows counted delivered and the subscriber never saw them.
    std::fs::write(acl, ALLOW).unwrap();
    broker.reload();
    let ids = || distinct_ids(collector);
    assert!(
        wait_until(Duration::from_secs(120), || ids() >= SCANS),
        "{} of {SCANS} after the ACL was fixed; upstream {}\nagent log:\n{}\nbroker log:\n{}",
        ids(),
        status(config)["upstreams"][0],
        tail(log, 120),
        tail(&scratch.0.join("broker/mosquitto.log"), 60),
    );
    assert!(wait_until(Duration::from_secs(10), || up("backlog")
        .as_u64()
        == Some(0)));
}

#[test]
fn an_acl_refusal_over_mqtt5_is_named_and_nothing_is_lost() {
    refused_then_fixed(
        "acl-v5",
        "auto",
        &["not authorized", "connection was closed"],
    );
}

#[test]
fn an_acl_refusal_over_mqtt311_is_noticed_and_nothing_is_lost() {
    refused_then_fixed("acl-v311", "3.1.1", &["connection was closed"]);
}

/// A broker that takes the scans but refuses the milestones' topic (an ACL one line short):
/// the refused rows stay owed and named, and every scan behind them still flows.
#[test]
fn rows_the_broker_refuses_do_not_hold_back_the_rest() {
    // Ten refused milestones between twenty scans: against Mosquitto 2.0, which resets the
    // connection on a denied publish, each costs about two connections to find.
    const PARCELS: u64 = 10;
    let mut site = AclSite::start_via(
        "refused-head",
        "topic read #\ntopic readwrite darkleg/v1/+/+/events\n",
        "pack",
        "",
        MERCHANT,
        true,
    );
    let AclSite {
        proxy,
        collector,
        pty,
        config,
        log,
        ..
    } = &mut site;
    // The backlog builds with the broker away: a refused milestone at its head, scans behind.
    let proxy = proxy.as_ref().unwrap();
    proxy.down();
    let plan = pack_station(PARCELS);
    // Parcel by parcel, so each milestone is derived between the scans (not all at the end).
    for (i, pair) in plan.chunks(2).enumerate() {
        for s in pair {
            write_ascii_scan(&mut pty.master, s).unwrap();
        }
        let n = 2 * (i as u64 + 1);
        assert!(wait_until(Duration::from_secs(10), || status(config)
            ["events"]
            .as_u64()
            .unwrap_or(0)
            >= n));
        std::thread::sleep(Duration::from_millis(40));
    }
    let expected = plan.len() as u64;
    assert!(wait_until(Duration::from_secs(30), || status(config)
        ["events"]
        .as_u64()
        .unwrap_or(0)
        >= expected));
    proxy.up();
    assert!(
        wait_until(Duration::from_secs(90), || distinct_ids(collector)
            >= expected),
        "{} of {expected} scans arrived past the refused milestones; log:\n{}",
        distinct_ids(collector),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let up = status(config)["upstreams"][0].clone();
    assert!(up["refused"].as_i64() > Some(0), "{up}");
    // The refused rows were set aside for the others to pass, by name (a 0x87 PUBACK) or
    // after the broker closed on the same row twice (Mosquitto 2.0 resets the link).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("offered again later") || text.contains("held back"),
        "{text}"
    );
    assert!(
        up["backlog"].as_u64() > Some(0),
        "the refused milestones stay owed: {up}"
    );
}

#[test]
fn a_clean_stop_on_3_1_1_lets_fresh_acks_mature_instead_of_resending_them() {
    // A 3.1.1 ack is trusted only once the connection outlived it by a second (a refusing
    // broker acks, then closes). A shutdown right after the last acks used to drop them as
    // untrusted: every one was sent again after the restart.
    let mut rig = Rig::new("stop-acks", &[PortKind::Framed]);
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str("mqtt_version = \"3.1.1\"\n"); // the last table is the upstream's
    std::fs::write(&rig.config, text).unwrap();
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let pty = rig.take_ptys().remove(0);
    let mut plans = Plans::new();
    let plan = (1..=60u64)
        .flat_map(|n| darkleg_tests::workload::parcel_scans(n, Step::Pack))
        .collect();
    let cfg = darkleg_tests::scanner::FramedConfig {
        scan_interval: Duration::from_millis(2),
        ..darkleg_tests::scanner::FramedConfig::new("stopper", 5)
    };
    let (_scanner, n) = start_framed(pty, cfg, plan, &mut plans);
    assert!(
        wait_until(Duration::from_secs(30), || unique_ids(
            &rig.collector.messages()
        ) >= n),
        "every scan arrived"
    );
    // At once: the newest acks are milliseconds old.
    let exit = agent.stop();
    assert!(exit.is_some_and(|s| s.success()), "clean exit: {exit:?}");
    let before = rig.collector.messages().len();
    assert_eq!(before, n, "no duplicates before the stop");
    let _agent = rig.start_agent();
    std::thread::sleep(Duration::from_secs(3));
    let arrivals = rig.collector.messages();
    assert_eq!(
        arrivals.len() - unique_ids(&arrivals),
        0,
        "nothing sent again after the restart"
    );
    assert_eq!(rig.backlog(), Some(0));
}
