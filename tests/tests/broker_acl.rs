//! The shipped Mosquitto ACL (`configs/mosquitto/darkleg.acl`, used verbatim) confines each
//! merchant to its own tree and each gateway to publishing its own events. A real agent logs
//! in as gateway `ams1-dock-1` (password from a file) and publishes two merchants' parcels;
//! each merchant reads its own milestones and nothing of the other's, even when it asks for
//! everything; the relay user reads the events; another gateway cannot publish as dock-1.

use darkleg_agent::sim::broker::Mosquitto;
use darkleg_agent::sim::collector::Collector;
use darkleg_protocol::EventId;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::*;
use std::path::Path;
use std::time::Duration;

const ORDERS: u64 = 8;
const USERS: [&str; 5] = ["ams1-dock-1", "ams1-dock-2", "ams1-relay", "acme", "globex"];

fn collector(port: u16, filter: &str, user: &str) -> Collector {
    let pw = test_password(user);
    let c = Collector::start_as(
        port,
        filter,
        &format!("acl-{user}-{}", filter.len()),
        Some((user, &pw)),
    );
    assert!(
        c.wait_subscribed(Duration::from_secs(10)),
        "{user} on {filter}"
    );
    c
}

#[test]
fn a_merchant_reads_only_its_own_parcels_and_a_gateway_publishes_only_as_itself() {
    let dir = Scratch::new("acl");
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/mosquitto/darkleg.acl");
    let passwd = dir.0.join("darkleg.passwd");
    mosquitto_passwd(&passwd, &USERS);
    // Anonymous clients are subject to the same ACL: they can do nothing.
    let broker = Mosquitto::start_with(
        &dir.0.join("broker"),
        &format!(
            "password_file {}\nacl_file {}\n",
            passwd.display(),
            acl.display()
        ),
    )
    .expect("mosquitto with the shipped ACL");
    let port = broker.port;
    let acme = collector(port, "darkleg/v1/merchants/acme/#", "acme");
    let acme_spy_all = collector(port, "darkleg/v1/#", "acme");
    let acme_spy_globex = collector(port, "darkleg/v1/merchants/globex/#", "acme");
    let globex = collector(port, "darkleg/v1/merchants/globex/#", "globex");
    let relay = collector(port, "darkleg/v1/+/+/events", "ams1-relay");
    let merchant_on_events = collector(port, "darkleg/v1/+/+/events", "globex");

    // The agent is gateway dock-1 of site ams1, its password in a file.
    let secret = dir.0.join("gateway.password");
    std::fs::write(&secret, format!("{}\n", test_password("ams1-dock-1"))).unwrap();
    let picker = scanner::Pty::open().unwrap();
    let packer = scanner::Pty::open().unwrap();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
site = "ams1"
id = "dock-1"
data_dir = "{data}"

[[scanner]]
port = "{pick}"
protocol = "framed"
station = "pick"

[[scanner]]
port = "{pack}"
protocol = "framed"
station = "pack"

{merchants}

[[upstream]]
name = "site"
url = "{url}"
username = "ams1-dock-1"
password_file = "{secret}"
keep_alive_secs = 5
"#,
            merchants = TWO_MERCHANTS,
            data = dir.0.join("data").display(),
            pick = picker.slave_path,
            pack = packer.slave_path,
            url = broker.url(),
            secret = secret.display(),
        ),
    )
    .unwrap();
    let log = dir.0.join("agent.log");
    let _agent = Agent::start(&config, &log);

    let (picks, packs) = two_merchant_orders(ORDERS);
    let mut plans = Plans::new();
    let a = start_framed(
        picker,
        FramedConfig::new("acl-picker", 5),
        picks,
        &mut plans,
    );
    let b = start_framed(
        packer,
        FramedConfig::new("acl-packer", 7),
        packs,
        &mut plans,
    );
    assert!(wait_until(Duration::from_secs(60), || a.0.done(a.1) && b.0.done(b.1)));

    // Another gateway (or a stolen merchant login) publishing under dock-1's topic.
    let spoof = r#"{"schema":"darkleg.scan.v1","device":"spoof"}"#;
    for (user, topic) in [
        ("ams1-dock-2", "darkleg/v1/ams1/dock-1/events"),
        ("acme", "darkleg/v1/ams1/dock-1/events"),
        ("acme", "darkleg/v1/merchants/globex/alerts"),
    ] {
        // Denied: acknowledged and dropped, or the connection closed — never delivered.
        let _ = publish_as(
            port,
            Some((user, &test_password(user))),
            topic,
            spoof.as_bytes(),
        );
    }

    let packed = |c: &Collector| {
        c.messages()
            .iter()
            .filter(|m| {
                m.json["schema"] == "darkleg.milestone.v1" && m.json["milestone"] == "packed"
            })
            .count()
    };
    let half = (ORDERS / 2) as usize;
    assert!(
        wait_until(Duration::from_secs(30), || packed(&acme) >= half
            && packed(&globex) >= half
            && relay.len() >= plans.values().map(Vec::len).sum::<usize>()),
        "acme {} globex {} relay {}; agent log:\n{}",
        packed(&acme),
        packed(&globex),
        relay.len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(acme.messages().iter().all(|m| m.json["merchant"] == "acme"));
    assert!(
        globex
            .messages()
            .iter()
            .all(|m| m.json["merchant"] == "globex"),
        "globex: its own milestones, no spoofed message from acme"
    );
    assert_eq!(
        acme_spy_globex.len(),
        0,
        "acme cannot read globex's parcels"
    );
    assert!(
        acme_spy_all
            .messages()
            .iter()
            .all(|m| m.topic.starts_with("darkleg/v1/merchants/acme/")),
        "acme asking for everything gets only its own"
    );
    assert_eq!(
        merchant_on_events.len(),
        0,
        "merchants do not read raw gateway events"
    );
    // The relay user reads every scan dock-1 made, and nothing published in its name.
    let want: std::collections::BTreeSet<String> = plans
        .iter()
        .flat_map(|(device, plan)| {
            (1..=plan.len() as u64).map(move |seq| EventId::new(device, seq).to_string())
        })
        .collect();
    let got: std::collections::BTreeSet<String> = relay
        .messages()
        .iter()
        .map(|m| m.json["event_id"].as_str().unwrap_or("spoofed").to_string())
        .collect();
    assert_eq!(got, want);
    // The password is read from its file and never written to the log or status.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let st = status(&config).to_string();
    assert!(
        !text.contains(&test_password("ams1-dock-1"))
            && !st.contains(&test_password("ams1-dock-1"))
    );
}
