//! Two hops: a dock gateway (framed scanners on ptys) publishes to the site's Mosquitto; the
//! 3PL's relay gateway takes those events from it and routes each merchant's scans and
//! milestones to that merchant's own Mosquitto. One merchant's broker is down for the whole
//! run and must not delay the other's; when it comes back it gets exactly its own events.
//! Junk on the site broker (oversized, malformed, forged, looping) is rejected and counted;
//! a replayed event is not forwarded twice.

use darkleg_agent::sim::broker::Mosquitto;
use darkleg_agent::sim::collector::{Arrival, Collector};
use darkleg_protocol::EventId;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const ORDERS: u64 = 12;

/// Event id → code of every planned scan whose code names `merchant` (order prefix or SSCC
/// company prefix).
fn expected(plans: &Plans, merchant: &str) -> BTreeMap<String, String> {
    let (order, gs1) = match merchant {
        "acme" => ("400ACME-", "0008712345"),
        _ => ("400GLX-", "0008799999"),
    };
    let mut out = BTreeMap::new();
    for (device, plan) in plans {
        for (i, s) in plan.iter().enumerate() {
            if s.code.starts_with(order) || s.code.starts_with(gs1) {
                let id = EventId::new(device, i as u64 + 1).to_string();
                out.insert(id, s.code.clone());
            }
        }
    }
    out
}

fn scans(arrivals: &[Arrival]) -> Vec<Arrival> {
    expand_batches(arrivals)
        .into_iter()
        .filter(|a| a.json["schema"] == "darkleg.scan.v1")
        .collect()
}

fn ids(arrivals: &[Arrival]) -> BTreeSet<String> {
    scans(arrivals)
        .iter()
        .map(|a| a.json["event_id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn two_hops_route_each_merchant_its_own_and_a_dead_broker_holds_back_nobody() {
    // Hop 1: the dock gateway, its site broker (the rig's) and two framed scanners.
    let mut dock = Rig::new(
        "relay-dock",
        &[PortKind::FramedAt("pick"), PortKind::FramedAt("pack")],
    );
    // Hop 2: the 3PL gateway and one broker per merchant; globex's is down from the start.
    let acme_broker = Mosquitto::start(&dock.dir.0.join("acme-broker")).unwrap();
    let mut globex_broker = Mosquitto::start(&dock.dir.0.join("globex-broker")).unwrap();
    // globex's subscriber has a persistent session: the broker keeps its subscription.
    let globex = Collector::start(globex_broker.port, "darkleg/v1/#", "globex-subscriber");
    assert!(globex.wait_subscribed(Duration::from_secs(10)));
    globex_broker.stop();
    let acme = Collector::start(acme_broker.port, "darkleg/v1/#", "acme-subscriber");
    assert!(acme.wait_subscribed(Duration::from_secs(10)));
    let relay_dir = dock.dir.0.join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let relay_config = relay_dir.join("gateway.toml");
    let http = darkleg_agent::sim::broker::free_port().unwrap();
    std::fs::write(
        &relay_config,
        format!(
            r#"
[gateway]
site = "3pl"
id = "relay"
data_dir = "{data}"

[http]
listen = "127.0.0.1:{http}"

[[relay]]
name = "site"
url = "{site}"
topics = ["darkleg/v1/+/+/events"]
max_payload_kb = 16

{merchants}

[[upstream]]
name = "acme"
url = "{acme}"
keep_alive_secs = 5

[[upstream]]
name = "globex"
url = "{globex}"
keep_alive_secs = 5

# The 3PL also archives everything on the site broker: its own publications come back on
# the relay's subscription and must be skipped, not relayed again nor counted as junk.
[[upstream]]
name = "site-archive"
url = "{site}"
keep_alive_secs = 5

[[route]]
to = ["acme"]
merchant = "acme"
carries = ["events", "milestones"]

[[route]]
to = ["globex"]
merchant = "globex"
carries = ["events", "milestones"]
"#,
            merchants = TWO_MERCHANTS,
            data = relay_dir.join("data").display(),
            http = http,
            site = dock.broker.url(),
            acme = acme_broker.url(),
            globex = globex_broker.url(),
        ),
    )
    .unwrap();
    let _relay = Agent::start(&relay_config, &relay_dir.join("agent.log"));
    let _dock_agent = dock.start_agent();
    dock.wait_ports_open();
    assert!(
        wait_until(Duration::from_secs(20), || status(&relay_config)["ports"]
            .as_array()
            .is_some_and(|p| p
                .iter()
                .any(|p| p["port"] == "relay:site" && p["connected"] == true))),
        "relay subscribed to the site broker"
    );

    // Orders alternate between the merchants: picked (order barcode), packed (order, then
    // the parcel's SSCC under the merchant's company prefix).
    let (picks, packs) = two_merchant_orders(ORDERS);
    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for (pty, (plan, name)) in dock
        .take_ptys()
        .into_iter()
        .zip([(picks, "picker"), (packs, "packer")])
    {
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(10),
            ..FramedConfig::new(name, 3)
        };
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || scanners
            .iter()
            .all(|(s, n)| s.done(*n))),
        "every scan acked at the dock"
    );
    let want_acme = expected(&plans, "acme");
    let want_globex = expected(&plans, "globex");
    assert_eq!(want_acme.len() + want_globex.len(), ORDERS as usize * 3);

    // acme gets all of its scans while globex's broker is down.
    assert!(
        wait_until(Duration::from_secs(30), || ids(&acme.messages()).len()
            >= want_acme.len()),
        "acme got {} of {} scans",
        ids(&acme.messages()).len(),
        want_acme.len()
    );
    let acme_done = started.elapsed();
    let got = scans(&acme.messages());
    assert_eq!(
        ids(&got),
        want_acme.keys().cloned().collect(),
        "acme: exactly its own scans"
    );
    for a in &got {
        let j = &a.json;
        let id = j["event_id"].as_str().unwrap();
        assert_eq!(j["code"].as_str(), Some(want_acme[id].as_str()), "{j}");
        // The original event id, where it was captured, and the way it came.
        assert_eq!(j["site"], "e2e", "{j}");
        assert_eq!(j["gateway"], "gw-01", "{j}");
        assert_eq!(
            j["hops"],
            serde_json::json!(["e2e/gw-01", "3pl/relay"]),
            "{j}"
        );
    }
    // And its parcels' milestones, none of globex's.
    assert!(
        wait_until(Duration::from_secs(20), || acme
            .messages()
            .iter()
            .filter(
                |a| a.json["schema"] == "darkleg.milestone.v1" && a.json["milestone"] == "packed"
            )
            .count()
            >= (ORDERS / 2) as usize),
        "acme's packed milestones"
    );
    assert!(acme
        .messages()
        .iter()
        .filter(|a| a.json["schema"] == "darkleg.milestone.v1")
        .all(|a| a.json["merchant"] == "acme"));
    // globex's scans wait in the relay's outbox, for globex only.
    let st = status(&relay_config);
    let backlog = |name: &str| {
        st["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["backlog"].as_u64().unwrap())
            .unwrap()
    };
    assert!(
        backlog("globex") >= want_globex.len() as u64,
        "globex's backlog holds its scans: {st}"
    );
    // Delivery marks trail the PUBACKs by a moment (they are folded into one commit).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let st = status(&relay_config);
            st["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["name"] == "acme" && u["backlog"] == 0)
        }),
        "acme's backlog drains to 0: {}",
        status(&relay_config)
    );

    // Junk on the site broker is rejected and counted; a replayed event is dropped as a
    // duplicate (not forwarded again).
    let site = dock.broker.port;
    let topic = "darkleg/v1/e2e/gw-99/events";
    let first = got[0].json.clone();
    publish_once(site, topic, &vec![b'x'; 20 * 1024]);
    publish_once(site, topic, b"{\"schema\":\"darkleg.scan.v1\",");
    let mut forged = first.clone();
    forged["device"] = "someone-else".into();
    publish_once(site, topic, forged.to_string().as_bytes());
    let mut looped = first.clone();
    looped["hops"] = serde_json::json!(["e2e/gw-01", "3pl/relay", "hq/gw-7"]);
    publish_once(site, topic, looped.to_string().as_bytes());
    let mut replay = first.clone();
    replay["hops"] = serde_json::json!(["e2e/gw-01"]);
    publish_once(site, topic, replay.to_string().as_bytes());
    let relay_port = |st: &serde_json::Value| {
        st["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == "relay:site")
            .cloned()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || relay_port(&status(
            &relay_config
        ))["rejected"]
            == 4),
        "four rejections counted (the relay's own echoes are not junk): {}",
        relay_port(&status(&relay_config))
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&relay_config);
    assert_eq!(relay_port(&st)["rejected"], 4, "and no more: {st}");
    let archived = st["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "site-archive")
        .map(|u| u["delivered"].as_u64().unwrap())
        .unwrap();
    assert!(
        archived >= 36,
        "the archive (echoed back) got everything: {st}"
    );
    let metrics = http_get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("darkleg_relay_rejected_total{relay=\"site\"} 4\n")
            && metrics.contains("darkleg_relay_connected{relay=\"site\"} 1\n"),
        "{metrics}"
    );
    let page = http_get(http, "/").unwrap();
    assert!(page.contains("Relayed gateways") && page.contains("relay:site"));
    let first_id = first["event_id"].as_str().unwrap();
    assert_eq!(
        scans(&acme.messages())
            .iter()
            .filter(|a| a.json["event_id"] == first_id)
            .count(),
        1,
        "a replayed event is deduplicated at the relay"
    );

    // globex's broker comes back: exactly its own scans arrive.
    globex_broker.restart().unwrap();
    // The relay's reconnect back-off may have grown to 30 s while the broker was away.
    assert!(
        wait_until(Duration::from_secs(60), || ids(&globex.messages()).len()
            >= want_globex.len()),
        "globex got {} of {}",
        ids(&globex.messages()).len(),
        want_globex.len()
    );
    assert_eq!(
        ids(&globex.messages()),
        want_globex.keys().cloned().collect(),
        "globex: exactly its own scans"
    );
    println!(
        "relay: acme {} scans within {:.1} s of the first scan while globex's broker was down; \
         globex {} after it came back",
        want_acme.len(),
        acme_done.as_secs_f64(),
        want_globex.len()
    );
}

/// The relay gateway is SIGKILLed 10 times while the dock streams through it: a message is
/// acknowledged to the site broker only once durable at the relay, so whatever the kill
/// interrupted is redelivered from the relay's persistent session. Every scan arrives at the
/// far end once by id.
#[test]
fn a_relay_killed_ten_times_mid_stream_loses_nothing() {
    const KILLS: u32 = 10;
    let mut dock = Rig::new("relay-kill", &[PortKind::Framed, PortKind::Framed]);
    let far = Mosquitto::start(&dock.dir.0.join("far-broker")).unwrap();
    let collector = Collector::start(far.port, "darkleg/v1/+/+/events", "far-subscriber");
    assert!(collector.wait_subscribed(Duration::from_secs(10)));
    let relay_dir = dock.dir.0.join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let relay_config = relay_dir.join("gateway.toml");
    std::fs::write(
        &relay_config,
        format!(
            "[gateway]\nsite = \"3pl\"\nid = \"relay\"\ndata_dir = \"{}\"\n\n[[relay]]\nname = \"site\"\nurl = \"{}\"\n\n[[upstream]]\nname = \"far\"\nurl = \"{}\"\nkeep_alive_secs = 5\n",
            relay_dir.join("data").display(),
            dock.broker.url(),
            far.url()
        ),
    )
    .unwrap();
    let relay_log = relay_dir.join("agent.log");
    // First start: the relay's session (and subscription) exists before the dock publishes.
    let mut relay = Agent::start(&relay_config, &relay_log);
    assert!(wait_until(Duration::from_secs(20), || status(
        &relay_config
    )["ports"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["connected"] == true))));
    let _dock_agent = dock.start_agent();
    dock.wait_ports_open();
    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for (i, pty) in dock.take_ptys().into_iter().enumerate() {
        let plan: Vec<_> = (0..150u64)
            .flat_map(|n| {
                darkleg_tests::workload::parcel_scans(
                    7_000 * (i as u64 + 1) + n,
                    darkleg_protocol::Step::Pack,
                )
            })
            .collect();
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(8_000 / plan.len() as u64),
            ..FramedConfig::new(&format!("dock-{i}"), 41 + i as u64)
        };
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }
    let mut next = xorshift(0x5851_F42D_4C95_7F2D);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(next(200, 800)));
        relay.kill9();
        std::thread::sleep(Duration::from_millis(next(0, 200)));
        relay = Agent::start(&relay_config, &relay_log);
    }
    let expected: usize = plans.values().map(Vec::len).sum();
    let all = wait_until(Duration::from_secs(60), || {
        scanners.iter().all(|(s, n)| s.done(*n)) && unique_ids(&collector.messages()) >= expected
    });
    assert!(
        all,
        "{} of {expected} arrived through the relay",
        unique_ids(&collector.messages())
    );
    let duplicates = check_exactly_once(&collector.messages(), &plans);
    for a in collector.messages() {
        assert_eq!(
            a.json["hops"],
            serde_json::json!(["e2e/gw-01", "3pl/relay"])
        );
    }
    eprintln!(
        "relay SIGKILLed {KILLS} times mid-stream: {expected} scans, 0 lost, {duplicates} duplicate deliveries (same id)"
    );
    drop(relay);
}

/// A burst: the dock comes online with 20,000 scans waiting and drains them in batches of
/// 100; every scan arrives at the far end. (The relay once stalled after a few dozen
/// messages in such a burst — its PUBACKs waited on a full client request channel that only
/// the same loop drains. The release-build bench, `darkleg-bench --only relay`, hit that;
/// this debug-build test does not reproduce the timing, it guards the volume path.)
#[test]
fn a_relay_takes_a_burst_of_twenty_thousand_without_stalling() {
    const N: u64 = 20_000;
    let dir = Scratch::new("relay-burst");
    let site = Mosquitto::start(&dir.0.join("site-broker")).unwrap();
    let far = Mosquitto::start(&dir.0.join("far-broker")).unwrap();
    let collector = Collector::start(far.port, "darkleg/v1/+/+/events", "burst-far");
    assert!(collector.wait_subscribed(Duration::from_secs(10)));
    let write = |name: &str, body: String| {
        let d = dir.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[gateway]\nsite = \"e2e\"\nid = \"{name}\"\ndata_dir = \"{}\"\n\n{body}",
                d.join("data").display()
            ),
        )
        .unwrap();
        path
    };
    let relay_config = write(
        "relay",
        format!(
            "[[relay]]\nname = \"site\"\nurl = \"{}\"\n\n[[upstream]]\nname = \"far\"\nurl = \"{}\"\nbatch = 100\n",
            site.url(),
            far.url()
        ),
    );
    let dock_config = write(
        "dock",
        format!(
            "[[upstream]]\nname = \"site\"\nurl = \"{}\"\nbatch = 100\n",
            site.url()
        ),
    );
    let _relay = Agent::start(&relay_config, &dir.0.join("relay.log"));
    assert!(wait_until(Duration::from_secs(20), || status(
        &relay_config
    )["ports"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["connected"] == true))));
    fill_outbox(
        &darkleg_agent::config::Config::load(&dock_config).unwrap(),
        N,
    );
    let _dock = Agent::start(&dock_config, &dir.0.join("dock.log"));
    let arrived = |c: &Collector| {
        expand_batches(&c.messages())
            .iter()
            .filter_map(|a| a.json["event_id"].as_str().map(str::to_string))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert!(
        wait_until(Duration::from_secs(60), || arrived(&collector)
            >= N as usize),
        "{} of {N} through the relay; relay: {}",
        arrived(&collector),
        status(&relay_config)
    );
}
