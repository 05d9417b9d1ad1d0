//! `mqtts://` upstreams: the agent verifies the broker against the configured CA and
//! delivers over TLS. Certificates are made for the test with the openssl CLI.

use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::tls::{gateway_credentials, make_certs};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::time::Duration;

#[test]
fn delivers_over_tls_to_a_broker_signed_by_the_configured_ca() {
    let dir = Scratch::new("tls");
    let certs = dir.0.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let tls_port = darkleg_agent::sim::broker::free_port().unwrap();
    let tls_listener = format!(
        "listener {tls_port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n",
        c = certs.display()
    );
    // The subscriber uses the broker's plain listener; the agent only its TLS one.
    let broker =
        Mosquitto::start_with(&dir.0.join("broker"), &tls_listener).expect("mosquitto with TLS");
    let collector = Collector::start(broker.port, "darkleg/v1/+/+/events", "e2e-tls");
    assert!(collector.wait_subscribed(Duration::from_secs(10)));

    let pty = scanner::Pty::open().unwrap();
    let upstream = format!(
        "[[upstream]]\nname = \"central\"\nurl = \"mqtts://localhost:{tls_port}\"\nca_file = \"{}/ca.pem\"\n",
        certs.display()
    );
    let entry = ScannerEntry {
        port: &pty.slave_path,
        protocol: "framed",
        station: None,
    };
    let config = write_config_with(&dir.0, &[entry], None, &upstream);
    let _agent = Agent::start(&config, &dir.0.join("agent.log"));

    let mut plans = Plans::new();
    let plan = (0..25u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let s = start_framed(pty, FramedConfig::new("tls-1", 3), plan, &mut plans);
    let all = wait_until(Duration::from_secs(30), || {
        unique_ids(&collector.messages()) >= s.1 && s.0.done(s.1)
    });
    let log = std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default();
    assert!(
        all,
        "{} of {} arrived over TLS; agent log:\n{log}",
        unique_ids(&collector.messages()),
        s.1
    );
    check_exactly_once(&collector.messages(), &plans);
}

#[test]
fn mutual_tls_with_a_password_from_a_file_delivers_and_a_gateway_without_its_certificate_does_not()
{
    let dir = Scratch::new("mtls");
    let (certs, passwd, _) = gateway_credentials(&dir.0);
    let tls_port = darkleg_agent::sim::broker::free_port().unwrap();
    // The TLS listener demands a client certificate signed by the CA; every login is
    // checked against the password file (the test's plain listener stays anonymous).
    let tls_listener = format!(
        "password_file {p}\nlistener {tls_port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\nrequire_certificate true\n",
        c = certs.display(),
        p = passwd.display(),
    );
    let broker =
        Mosquitto::start_with(&dir.0.join("broker"), &tls_listener).expect("mosquitto with mTLS");
    let collector = Collector::start(broker.port, "darkleg/v1/+/+/events", "e2e-mtls");
    assert!(collector.wait_subscribed(Duration::from_secs(10)));

    let pty = scanner::Pty::open().unwrap();
    let upstreams = format!(
        r#"[[upstream]]
name = "central"
url = "mqtts://localhost:{tls_port}"
ca_file = "{c}/ca.pem"
client_cert = "{c}/client.pem"
client_key = "{c}/client.key"
username = "ams1-dock-1"
password_file = "{d}/pw"

[[upstream]]
name = "no-cert"
url = "mqtts://localhost:{tls_port}"
ca_file = "{c}/ca.pem"
username = "ams1-dock-1"
password_file = "{d}/pw"
topic_prefix = "no-cert"
"#,
        c = certs.display(),
        d = dir.0.display(),
    );
    let entry = ScannerEntry {
        port: &pty.slave_path,
        protocol: "framed",
        station: None,
    };
    let config = write_config_with(&dir.0, &[entry], None, &upstreams);
    let log = dir.0.join("agent.log");
    let _agent = Agent::start(&config, &log);
    let mut plans = Plans::new();
    let plan = (0..10u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let s = start_framed(pty, FramedConfig::new("mtls-1", 3), plan, &mut plans);
    // Every planned scan (a parcel is more than one), and the scanner has all its acks.
    let all = wait_until(Duration::from_secs(30), || {
        unique_ids(&collector.messages()) >= s.1 && s.0.done(s.1)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        all,
        "{} of {} over mTLS; log:\n{text}",
        unique_ids(&collector.messages()),
        s.1
    );
    check_exactly_once(&collector.messages(), &plans);
    // Delivery marks trail the PUBACKs by a moment (folded into one commit), and derived
    // messages (milestones) trail the scans: wait until central owes nothing and its count
    // has caught up before comparing (a moment's match, 2 milestones before the end, made
    // the comparison fail under CI load).
    let settled = || {
        let st = status(&config);
        let ups = st["upstreams"].as_array().cloned().unwrap_or_default();
        let get = |name: &str, key: &str| {
            ups.iter()
                .find(|u| u["name"] == name)
                .map(|u| u[key].clone())
        };
        get("no-cert", "backlog") == ups.first().map(|u| u["delivered"].clone())
            && get("no-cert", "backlog").is_some()
            && get("central", "backlog") == Some(serde_json::json!(0))
    };
    wait_until(Duration::from_secs(5), settled);
    let st = status(&config);
    let no_cert = st["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "no-cert")
        .unwrap();
    // Everything central got (scans and derived messages) waits for the refused upstream.
    let central = &st["upstreams"][0];
    assert!(no_cert["backlog"].as_u64() >= Some(10), "{st}");
    assert_eq!(
        no_cert["backlog"], central["delivered"],
        "without its certificate nothing is delivered: {st}"
    );
    assert_eq!(no_cert["delivered"], 0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("no-cert"),
        "the refused upstream is reported: {text}"
    );
    assert!(
        !text.contains(&test_password("ams1-dock-1"))
            && !st.to_string().contains(&test_password("ams1-dock-1")),
        "the password is never logged or shown"
    );
}
