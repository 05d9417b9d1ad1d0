//! The shipped site-broker config (`configs/mosquitto/darkleg.conf`) runs as written, only
//! its port and file paths adapted: a gateway with its client certificate and password (from
//! a file) delivers; the same gateway without its certificate, or with a wrong password, is
//! refused and keeps its backlog.

use darkleg_agent::sim::broker::Mosquitto;
use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::tls::gateway_credentials;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn the_shipped_broker_config_takes_a_gateway_with_certificate_and_password_and_no_one_else() {
    let dir = Scratch::new("site-broker");
    let (certs, passwd, _) = gateway_credentials(&dir.0);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/mosquitto");
    let conf = std::fs::read_to_string(shipped.join("darkleg.conf")).unwrap();
    let c = certs.display().to_string();
    let conf = conf
        .replace("listener 8883", "listener {port} 127.0.0.1")
        .replace("/etc/mosquitto/certs/ca.pem", &format!("{c}/ca.pem"))
        .replace(
            "/etc/mosquitto/certs/broker.pem",
            &format!("{c}/server.pem"),
        )
        .replace(
            "/etc/mosquitto/certs/broker.key",
            &format!("{c}/server.key"),
        )
        .replace(
            "/etc/mosquitto/darkleg.passwd",
            &passwd.display().to_string(),
        )
        .replace(
            "/etc/mosquitto/darkleg.acl",
            &shipped.join("darkleg.acl").display().to_string(),
        )
        .replace("/var/lib/mosquitto/", "{dir}/");
    assert!(
        conf.lines()
            .all(|l| l.starts_with('#') || !l.contains("/etc/")),
        "every path adapted:\n{conf}"
    );
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let broker = Mosquitto::start_config(
        &dir.0.join("broker"),
        &format!("{conf}\nuser {user}\nlog_dest file {{dir}}/mosquitto.log\n"),
    )
    .expect("mosquitto on the shipped config");

    std::fs::write(dir.0.join("bad-pw"), "guess\n").unwrap();
    let link = |name: &str, cert: bool, pw: &str| {
        format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"mqtts://localhost:{port}\"\nca_file = \"{c}/ca.pem\"\n{cert}username = \"ams1-dock-1\"\npassword_file = \"{d}/{pw}\"\nkeep_alive_secs = 5\n\n",
            port = broker.port,
            d = dir.0.display(),
            cert = if cert {
                format!("client_cert = \"{c}/client.pem\"\nclient_key = \"{c}/client.key\"\n")
            } else {
                String::new()
            },
        )
    };
    let pty = scanner::Pty::open().unwrap();
    let text = format!(
        "[gateway]\nsite = \"ams1\"\nid = \"dock-1\"\ndata_dir = \"{data}\"\n\n[[scanner]]\nport = \"{port}\"\nprotocol = \"framed\"\n\n{a}{b}{d}",
        data = dir.0.join("data").display(),
        port = pty.slave_path,
        a = link("site", true, "pw"),
        b = link("no-cert", false, "pw"),
        d = link("wrong-password", true, "bad-pw"),
    );
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.0.join("agent.log");
    let _agent = Agent::start(&config, &log);
    let mut plans = Plans::new();
    let plan = (0..10u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let s = start_framed(pty, FramedConfig::new("dock-scanner", 9), plan, &mut plans);
    let upstream = |st: &serde_json::Value, name: &str| {
        st["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .cloned()
            .unwrap()
    };
    let delivered = wait_until(Duration::from_secs(30), || {
        s.0.done(s.1) && upstream(&status(&config), "site")["backlog"] == 0
    });
    let st = status(&config);
    assert!(
        delivered,
        "{st}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(upstream(&st, "site")["delivered"].as_u64() >= Some(10));
    for refused in ["no-cert", "wrong-password"] {
        let u = upstream(&st, refused);
        assert_eq!(u["delivered"], 0, "{refused}: {u}");
        assert!(
            u["backlog"].as_u64() >= Some(10),
            "{refused} keeps its backlog: {u}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains(&test_password("ams1-dock-1")),
        "no password in the log"
    );
}
