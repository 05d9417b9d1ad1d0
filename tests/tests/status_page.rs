//! The gateway status page in a real headless browser (Debian's Chromium), and `/metrics`:
//! what a supervisor on the floor looks for — scanners online, the backlog while the broker is
//! away, an open dark-leg alert, recent errors.

use darkleg_agent::sim::broker::free_port;
use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::{sscc_key, PlannedScan};
use darkleg_tests::*;
use std::process::Command;
use std::time::Duration;

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!("no chromium on PATH (hint: apt-get install chromium; .ci/run does)");
}

/// The page's DOM after the browser loaded and rendered it.
fn dump_dom(url: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=2000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(port: u16, path: &str) -> String {
    http_get(port, path).expect("the agent's HTTP server answers")
}

fn scan(step: Step, code: String, sym: &str) -> PlannedScan {
    PlannedScan {
        step,
        code,
        symbology: Some(sym.into()),
    }
}

#[test]
fn a_supervisor_sees_scanners_backlog_and_alerts() {
    let mut rig = Rig::new(
        "page",
        &[PortKind::FramedAt("pack"), PortKind::FramedAt("handover")],
    );
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    // The central broker is down: the backlog builds.
    rig.broker.stop();
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let label = sscc_key("8712345", 42);
    let packs = vec![scan(Step::Pack, format!("00{label}"), "]C1")];
    // The dock scans the parcel, then a label that is no tracking number: an alert.
    let dock = vec![
        scan(Step::Handover, format!("00{label}"), "]C1"),
        scan(Step::Handover, "HELLO-WORLD".into(), "]C0"),
    ];
    let mut plans = Plans::new();
    let mut ptys = rig.take_ptys().into_iter();
    let a = start_framed(
        ptys.next().unwrap(),
        FramedConfig::new("pack-7", 1),
        packs,
        &mut plans,
    );
    let b = start_framed(
        ptys.next().unwrap(),
        FramedConfig::new("dock-2", 2),
        dock,
        &mut plans,
    );
    assert!(wait_until(Duration::from_secs(30), || a.0.done(a.1) && b.0.done(b.1)));
    assert!(wait_until(Duration::from_secs(20), || get(
        http, "/metrics"
    )
    .contains("darkleg_alerts_open 1")));

    assert!(get(http, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = get(http, "/metrics");
    assert!(metrics.contains("darkleg_scanners_online 2"), "{metrics}");
    assert!(
        metrics.contains("darkleg_events_captured_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("darkleg_ack_latency_seconds_count{source=\"framed\"} 3"),
        "{metrics}"
    );
    assert!(get(http, "/nope").starts_with("HTTP/1.1 404"));

    let dom = dump_dom(&format!("http://127.0.0.1:{http}/"));
    assert!(dom.contains("darkleg — site e2e, gateway gw-01"), "{dom}");
    // Both scanners online, by name.
    assert!(
        dom.contains(r#"<span id="scanners-online">2</span>"#),
        "{dom}"
    );
    for device in ["pack-7", "dock-2"] {
        assert!(dom.contains(device), "{device} on the page: {dom}");
    }
    assert!(dom.matches(r#"class="ok">online"#).count() >= 2, "{dom}");
    // The backlog for the unreachable broker: scans plus the derived messages.
    let upstreams = &dom[dom.find(r#"id="upstreams""#).unwrap()..];
    let row = &upstreams[upstreams
        .find("<td>central</td>")
        .expect("central upstream")..];
    let backlog: u64 = row["<td>central</td><td class=\"bad\">".len()..]
        .split('<')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("backlog cell in {row}"));
    assert!(backlog >= 3, "backlog {backlog}");
    // The open alert, with what is wrong.
    assert!(dom.contains(r#"<span id="alerts-open">1</span>"#), "{dom}");
    assert!(
        dom.contains("invalid_tracking") && dom.contains("HELLO-WORLD"),
        "{dom}"
    );
    // The broker being away shows under recent errors.
    assert!(dom.contains("upstream unavailable"), "{dom}");
}
