//! Relay throughput (issue 5): a dock gateway drains a backlog to the site broker; the 3PL's
//! relay gateway takes it (durable before PUBACK) and delivers it to a far broker. Measured:
//! scans/s arriving at the far end, from the dock agent's start, and the relay's CPU and RSS.

use super::{config_text, http_ok, proc_usage, release_agent, scratch, Counter};
use darkleg_agent::config::Config;
use darkleg_agent::sim::broker::{free_port, Mosquitto};
use darkleg_tests::{fill_outbox, wait_until};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `n` scans through dock → site broker → relay → far broker, `batch` scans per message on
/// both hops.
pub fn relay_throughput(n: u64, batch: u64) -> Value {
    let dir = scratch(&format!("relay-b{batch}"));
    let site = Mosquitto::start(&dir.join("site-broker")).unwrap();
    let far = Mosquitto::start(&dir.join("far-broker")).unwrap();
    let upstream = |name: &str, url: &str| {
        format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\nwindow = 256\nbatch = {batch}\n")
    };
    // The relay first, so its session (and subscription) exists before the dock publishes.
    let relay_dir = dir.join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let relay_http = free_port().unwrap();
    let relay_text = config_text(
        &relay_dir,
        &format!("[[relay]]\nname = \"site\"\nurl = \"{}\"\n", site.url()),
        &upstream("far", &far.url()),
        relay_http,
    )
    .replace(
        "site = \"bench\"\nid = \"gw-01\"",
        "site = \"bench\"\nid = \"relay\"",
    );
    let relay_path = relay_dir.join("gateway.toml");
    std::fs::write(&relay_path, relay_text).unwrap();
    let mut relay = release_agent(&relay_path, &relay_dir.join("agent.log"));
    assert!(wait_until(Duration::from_secs(60), || http_ok(
        relay_http, "/metrics"
    )
    .is_some_and(
        |m| m.contains("darkleg_relay_connected{relay=\"site\"} 1")
    )));

    let dock_http = free_port().unwrap();
    let dock_path = dir.join("gateway.toml");
    std::fs::write(
        &dock_path,
        config_text(&dir, "", &upstream("site", &site.url()), dock_http),
    )
    .unwrap();
    fill_outbox(&Config::load(&dock_path).unwrap(), n);
    let n = (n / 4) * 4;
    let counter = Counter::start(far.port, "darkleg/v1/+/+/events", "bench-relay-far");
    let t0 = Instant::now();
    let mut dock = release_agent(&dock_path, &dir.join("agent.log"));
    let mut relay_rss = 0.0f64;
    let done = wait_until(Duration::from_secs(1800), || {
        relay_rss = relay_rss.max(proc_usage(relay.id()).1);
        counter.n() >= n
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let (relay_cpu, hwm) = proc_usage(relay.id());
    for agent in [&mut dock, &mut relay] {
        darkleg_agent::sim::broker::terminate(agent, Duration::from_secs(20));
    }
    drop((site, far));
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "events": n, "batch": batch, "all_arrived": done,
        "through_relay_per_s": n as f64 / elapsed,
        "relay_peak_rss_mib": hwm.max(relay_rss),
        "relay_cpu_s_per_100k": relay_cpu / n as f64 * 100_000.0,
    })
}
