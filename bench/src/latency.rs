//! A steady 1,000 scans/s from four framed scanners: scan → subscriber and ack latency; alone,
//! and while a backlog drains to a second upstream on another broker (the outage of one
//! upstream must not slow the live path of the other).

use crate::measure::{histogram_quantile, http_ok, proc_usage, Counter};
use darkleg_agent::config::Config;
use darkleg_agent::sim::broker::{free_port, Mosquitto};
use darkleg_protocol::Step;
use darkleg_tests::scanner::{FramedConfig, FramedScanner};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::{fill_outbox, unique_ids, wait_until, PortKind, Rig};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The rig's agent serves `/metrics` here.
fn with_http(rig: &Rig) -> u16 {
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    http
}

/// Four scanners, one scan each every 4 ms, for `secs`; waits until all are acked and at
/// the rig's subscriber.
fn run_steady(rig: &mut Rig, http: u16, secs: u64) -> Value {
    let per = (250 * secs) as usize;
    let mut sims = Vec::new();
    for (k, pty) in rig.take_ptys().into_iter().enumerate() {
        let plan: Vec<_> = (0..per as u64)
            .flat_map(|n| parcel_scans(2_000_000 * (k as u64 + 1) + n, Step::Pack))
            .collect();
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(4),
            wait_online: true,
            ..FramedConfig::new(&format!("steady-{k}"), k as u64 + 9)
        };
        sims.push(FramedScanner::start(pty.master, cfg, plan));
    }
    assert!(wait_until(Duration::from_secs(secs * 4 + 30), || sims
        .iter()
        .all(|s| s.done(per))));
    assert!(wait_until(Duration::from_secs(30), || unique_ids(
        &rig.collector.messages()
    ) >= 4 * per));
    let mut lat: Vec<f64> = rig
        .collector
        .messages()
        .iter()
        .filter_map(|a| {
            let c = darkleg_protocol::time::parse_rfc3339_ms(a.json["captured_at"].as_str()?)?;
            Some(a.at_ms.saturating_sub(c) as f64)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let m = http_ok(http, "/metrics").unwrap_or_default();
    json!({"events": 4 * per, "rate_per_s": 1000, "scan_to_subscriber_p50_ms": q(0.5), "scan_to_subscriber_p99_ms": q(0.99),
           "ack_p50_ms": histogram_quantile(&m, 0.5), "ack_p99_ms": histogram_quantile(&m, 0.99)})
}

/// A steady 1,000 scans/s for `secs`, nothing else going on.
pub fn steady_latency(secs: u64) -> Value {
    let mut rig = Rig::with_store("bench-steady", &[PortKind::Framed; 4], "");
    let http = with_http(&rig);
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    run_steady(&mut rig, http, secs)
}

/// The steady 1,000 scans/s on upstream `central` while a `backlog` of pick scans, built
/// while a second upstream (`far`, its own Mosquitto) was down, drains to it one event per
/// message (its default config). Routes keep the two apart: packs to central, picks to far.
pub fn steady_latency_while_draining(secs: u64, backlog: u64) -> Value {
    let far_dir = darkleg_tests::Scratch::new("bench-steady-far");
    let mut far = Mosquitto::start(&far_dir.0.join("broker")).unwrap();
    far.stop();
    let extra = format!(
        "[[upstream]]\nname = \"far\"\nurl = \"{}\"\ntopic_prefix = \"darkleg/v1\"\n\n\
         [[route]]\nto = [\"central\"]\nsteps = [\"pack\"]\ncarries = [\"events\"]\n\n\
         [[route]]\nto = [\"far\"]\nsteps = [\"pick\"]\ncarries = [\"events\"]\n",
        far.url()
    );
    let mut rig = Rig::with_store("bench-steady-backlog", &[PortKind::Framed; 4], &extra);
    let http = with_http(&rig);
    let config = Config::load(&rig.config).expect("the steady+backlog config");
    fill_outbox(&config, backlog);
    let backlog = (backlog / 4) * 4;
    far.restart().unwrap();
    let far_counter = Counter::start(far.port, "darkleg/v1/+/+/events", "bench-far-count");
    let agent = rig.start_agent();
    rig.wait_ports_open();
    let drained_before = far_counter.n();
    let t0 = Instant::now();
    let mut steady = run_steady(&mut rig, http, secs);
    let steady_s = t0.elapsed().as_secs_f64();
    let drained_during = far_counter.n() - drained_before;
    // The backlog must still have been draining at the end, or part of the run was alone.
    let still_draining = far_counter.n() < backlog;
    let rss = agent.pid().map_or(0.0, |p| proc_usage(p).1);
    wait_until(Duration::from_secs(600), || far_counter.n() >= backlog);
    steady["backlog"] = json!(backlog);
    steady["backlog_drained_during_steady"] = json!(drained_during);
    steady["backlog_drain_per_s_during_steady"] = json!(drained_during as f64 / steady_s);
    steady["backlog_still_draining_at_end"] = json!(still_draining);
    steady["backlog_all_arrived"] = json!(far_counter.n() >= backlog);
    steady["peak_rss_mib"] = json!(rss);
    far.stop();
    steady
}
