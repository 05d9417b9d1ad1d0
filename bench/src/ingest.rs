//! Durable ingest from firmware scanners on ptys (`synchronous = "full"`, the default), with
//! the upstream down and then while publishing; and again on slow storage.

use crate::measure::{histogram_quantile, http_ok};
use darkleg_agent::sim::broker::free_port;
use darkleg_protocol::Step;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::{wait_until, PortKind, Rig};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

/// Phase 1: firmware scanners on ptys → release agent, until every scan is acked. With
/// `upstream_down`, the broker is stopped first, so ingest is measured alone (no publishing,
/// no subscriber on the same two cores).
pub fn durable_ingest(per_scanner: usize, upstream_down: bool) -> (f64, Option<f64>, Option<f64>) {
    durable_ingest_with(per_scanner, upstream_down, 64, &[])
}

pub fn durable_ingest_with(
    per_scanner: usize,
    upstream_down: bool,
    window: u8,
    env: &[(&str, &str)],
) -> (f64, Option<f64>, Option<f64>) {
    let mut rig = Rig::with_store(
        &format!("bench-ingest-{upstream_down}"),
        &[PortKind::Framed; 4],
        "",
    );
    if upstream_down {
        rig.broker.stop();
    }
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    let _agent = rig.start_agent_with_env(env);
    rig.wait_ports_open();
    let (_, rate) = rig.flood_window(per_scanner, "ingest", Duration::from_secs(1), window);
    let m = http_ok(http, "/metrics").unwrap_or_default();
    (
        rate,
        histogram_quantile(&m, 0.5),
        histogram_quantile(&m, 0.99),
    )
}

/// The default config's intake as the issue measured it: plain (ASCII) scanners at a pack
/// station on ptys, each writing `per_scanner` labels as fast as the pty takes them, the
/// upstream down; scans/s until every one is stored (fsynced: the default `"full"`).
pub fn ascii_ingest(per_scanner: usize) -> Value {
    let mut rig = Rig::with_store("bench-ascii", &[PortKind::Ascii("pack"); 4], "");
    rig.broker.stop();
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let captured = || {
        http_ok(http, "/metrics")
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("darkleg_events_captured_total "))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let total = 4 * per_scanner as u64;
    let start = Instant::now();
    let writers: Vec<_> = rig
        .take_ptys()
        .into_iter()
        .enumerate()
        .map(|(k, pty)| {
            std::thread::spawn(move || {
                let mut master = pty.master;
                let plan = (0..per_scanner as u64)
                    .flat_map(|n| parcel_scans(3_000_000 * (k as u64 + 1) + n, Step::Pack))
                    .take(per_scanner);
                for scan in plan {
                    let line = format!(
                        "{}{}\r\n",
                        scan.symbology.as_deref().unwrap_or(""),
                        scan.code
                    );
                    write_all_patiently(&mut master, line.as_bytes());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let all = wait_until(Duration::from_secs(300), || captured() >= total);
    let rate = captured().min(total) as f64 / start.elapsed().as_secs_f64();
    json!({"events_per_s": rate, "events": total, "all_stored": all, "scanners": 4})
}

/// A pty write that waits out a full buffer (the agent reading slower than we write) rather
/// than dropping part of a line.
fn write_all_patiently(port: &mut impl Write, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match port.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("writing to the ascii scanner's pty: {e}"),
        }
    }
}
