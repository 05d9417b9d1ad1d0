//! Growth: does darkleg stay as fast, as small and as quick to start when the backlog is
//! 100 times larger? For each backlog size: the default-config drain rate (one event per
//! message, window 256) over the first [`SAMPLE`] events, peak RSS while draining, start-up
//! (spawn to `/healthz`), and the database's size on disk.
//!
//!     cargo run --release -p darkleg-bench -- --only growth [--growth 100000,1000000,10000000]

use super::{config_text, http_ok, proc_usage, release_agent, scratch, Counter};
use darkleg_agent::config::Config;
use darkleg_agent::sim::broker::{free_port, terminate, Mosquitto};
use darkleg_tests::{fill_outbox, wait_until};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Events drained per size: the rate at the head of each backlog, so 10M takes minutes, not
/// the hour a full drain would.
pub const SAMPLE: u64 = 200_000;

/// The sizes from `--growth a,b,c`, or 100k, 1M and 10M (100k and 1M with `--quick`).
pub fn sizes(quick: bool) -> Vec<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--growth")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| match quick {
            true => vec![100_000, 1_000_000],
            false => vec![100_000, 1_000_000, 10_000_000],
        })
}

fn dir_mib(dir: &Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    bytes as f64 / (1024.0 * 1024.0)
}

/// One backlog of `n`: built through the store writer with the agent not running, then the
/// agent started with the broker up.
pub fn backlog(n: u64) -> Value {
    let dir = scratch(&format!("growth-{n}"));
    let mut broker = Mosquitto::start(&dir.join("broker")).unwrap();
    broker.stop();
    let http = free_port().unwrap();
    let upstream = format!(
        "[[upstream]]\nname = \"central\"\nurl = \"{}\"\ntopic_prefix = \"darkleg/v1\"\n",
        broker.url()
    );
    let path = dir.join("gateway.toml");
    let text = config_text(&dir, "", &upstream, http);
    std::fs::write(&path, &text).unwrap();
    // Built with synchronous = "normal" (fast; the agent under test runs the default).
    let fill = dir.join("fill.toml");
    std::fs::write(
        &fill,
        format!("{text}\n[store]\nsynchronous = \"normal\"\n"),
    )
    .unwrap();
    let build_rate = fill_outbox(&Config::load(&fill).unwrap(), n);
    let n = (n / 4) * 4;
    let db_mib = dir_mib(&dir.join("data"));
    broker.restart().unwrap();
    let counter = Counter::start(broker.port, "darkleg/v1/+/+/events", "bench-growth");
    // Built (if need be) before the clock starts: start-up is the agent's, not cargo's.
    let _ = darkleg_tests::darkleg_bin();
    let t0 = Instant::now();
    let mut agent = release_agent(&path, &dir.join("agent.log"));
    let up = wait_until(Duration::from_secs(300), || {
        http_ok(http, "/healthz").is_some()
    });
    let startup = t0.elapsed().as_secs_f64();
    let sample = n.min(SAMPLE);
    let mut peak_rss = 0.0f64;
    let done = up
        && wait_until(Duration::from_secs(1800), || {
            peak_rss = peak_rss.max(proc_usage(agent.id()).1);
            counter.n() >= sample
        });
    let elapsed = t0.elapsed().as_secs_f64();
    let first = counter.first_after(t0);
    let (_, hwm) = proc_usage(agent.id());
    terminate(&mut agent, Duration::from_secs(20));
    broker.stop();
    // DARKLEG_BENCH_KEEP keeps the store for a closer look (start-up under perf, say).
    if std::env::var_os("DARKLEG_BENCH_KEEP").is_some() {
        eprintln!("    kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    json!({
        "backlog": n, "sampled": sample, "all_arrived": done,
        "backlog_build_per_s": build_rate, "db_mib": db_mib,
        "startup_s": startup,
        "drain_per_s": sample as f64 / (elapsed - first).max(1e-9),
        "peak_rss_mib": hwm.max(peak_rss),
    })
}

/// Every size, then the spread of the drain rates (goal: within 20 %).
pub fn growth(sizes: &[u64]) -> Value {
    let runs: Vec<Value> = sizes
        .iter()
        .map(|&n| {
            eprintln!("  growth: backlog {n}");
            let r = backlog(n);
            eprintln!("    {r}");
            r
        })
        .collect();
    let rates: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["drain_per_s"].as_f64())
        .collect();
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    json!({
        "runs": runs,
        "drain_slowest_vs_fastest": if hi > 0.0 { lo / hi } else { 0.0 },
        "peak_rss_mib_max": runs.iter().filter_map(|r| r["peak_rss_mib"].as_f64()).fold(0.0, f64::max),
    })
}
