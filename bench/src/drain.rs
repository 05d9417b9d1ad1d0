//! darkleg with a backlog: built while the upstream was down, the agent SIGKILLed during the
//! outage (optionally), then the upstream back: start-up, drain rate, peak RSS, CPU.

use crate::measure::{config_text, http_ok, proc_usage, release_agent, scratch, Counter};
use darkleg_agent::config::Config;
use darkleg_agent::sim::broker::{free_port, Mosquitto};
use darkleg_tests::{fill_outbox, wait_until};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `n` backlogged events drained `batch` to a message.
/// `window: None` leaves the upstream's default (what a user who changed nothing gets).
pub fn darkleg_drain(n: u64, batch: u64, window: Option<u64>, kill: bool) -> Value {
    let dir = scratch(&format!("drain-b{batch}"));
    let mut broker = Mosquitto::start(&dir.join("broker")).unwrap();
    broker.stop();
    let http = free_port().unwrap();
    let upstream = format!(
        "[[upstream]]\nname = \"central\"\nurl = \"{}\"\ntopic_prefix = \"darkleg/v1\"\n{window}batch = {batch}\n{extra}",
        broker.url(),
        window = window.map(|w| format!("window = {w}\n")).unwrap_or_default(),
        // For experiments: more upstream keys (`mqtt_version = "3.1.1"`, say).
        extra = std::env::var("DARKLEG_BENCH_UPSTREAM").unwrap_or_default(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir, "", &upstream, http)).unwrap();
    let config = Config::load(&path).unwrap();
    let build_rate = fill_outbox(&config, n);
    let n = (n / 4) * 4;
    let mut survived_kill = None;
    if kill {
        // The outage goes on; the agent is killed mid-way through it.
        let mut a = release_agent(&path, &dir.join("agent-killed.log"));
        assert!(wait_until(Duration::from_secs(60), || http_ok(
            http, "/healthz"
        )
        .is_some()));
        std::thread::sleep(Duration::from_secs(2));
        let _ = a.kill();
        let _ = a.wait();
    }
    broker.restart().unwrap();
    let counter = Counter::start(
        broker.port,
        "darkleg/v1/+/+/events",
        &format!("bench-count-{batch}"),
    );
    let t0 = Instant::now();
    let mut agent = release_agent(&path, &dir.join("agent.log"));
    assert!(wait_until(Duration::from_secs(60), || http_ok(
        http, "/healthz"
    )
    .is_some()));
    let startup = t0.elapsed().as_secs_f64();
    let mut peak_rss = 0.0f64;
    let done = wait_until(Duration::from_secs(1800), || {
        peak_rss = peak_rss.max(proc_usage(agent.id()).1);
        counter.n() >= n
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let first = counter.first_after(t0);
    let (cpu, hwm) = proc_usage(agent.id());
    if kill {
        survived_kill = Some(counter.n().min(n));
    }
    // SIGTERM: a clean stop (and a complete perf file when profiling).
    darkleg_agent::sim::broker::terminate(&mut agent, Duration::from_secs(20));
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "events": n, "batch": batch, "all_arrived": done,
        "backlog_build_per_s": build_rate,
        "startup_s": startup,
        "drain_per_s": n as f64 / (elapsed - first).max(1e-9),
        "drain_incl_startup_per_s": n as f64 / elapsed,
        "peak_rss_mib": hwm.max(peak_rss),
        "cpu_s_per_100k": cpu / n as f64 * 100_000.0,
        "survived_sigkill": survived_kill,
    })
}
