//! Events/s through the whole chain on this machine: K framed scanners on ptys → the
//! release agent (synchronous=FULL) → a real Mosquitto → a subscriber.
//!
//! Baseline in the same run: the same agent with group commit switched off
//! (`max_batch = 1`, one fsync per write). Prints medians of RUNS runs and the ratio.
//!
//!     cargo bench -p darkleg-tests --bench chain
//!     DARKLEG_BENCH_EVENTS=20000 DARKLEG_BENCH_SCANNERS=8 cargo bench -p darkleg-tests --bench chain

use darkleg_tests::*;
use std::time::Duration;

const RUNS: usize = 3;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    /// Scans per second until every scanner had every scan acked (durable on the gateway).
    ingest: f64,
    /// Scans per second until the subscriber had every event.
    end_to_end: f64,
}

fn one_run(label: &str, i: usize, scanners: usize, per_scanner: usize, store: &str) -> Run {
    let mut rig = Rig::with_store(
        &format!("bench-{label}-{i}"),
        &vec![PortKind::Framed; scanners],
        store,
    );
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let (start, ingest) = rig.flood(per_scanner, "bench", Duration::from_secs(5));
    let total = scanners * per_scanner;
    // Counted by event id: a subscriber that reconnects may get some twice, legitimately.
    let all = wait_until(Duration::from_secs(600), || {
        rig.collector.len() >= total && unique_ids(&rig.collector.messages()) >= total
    });
    assert!(all, "every event arrived");
    let end_to_end = total as f64 / start.elapsed().as_secs_f64();
    Run { ingest, end_to_end }
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let scanners = env_num("DARKLEG_BENCH_SCANNERS", 4);
    let per_scanner = env_num("DARKLEG_BENCH_EVENTS", 5000);
    println!("chain: {scanners} framed scanners × {per_scanner} scans, window 64, synchronous=FULL, {RUNS} runs each");
    let mut rows = Vec::new();
    for (label, store) in [
        ("group-commit", ""),
        ("no-group-commit", "[store]\nmax_batch = 1\n"),
    ] {
        let runs: Vec<Run> = (0..RUNS)
            .map(|i| one_run(label, i, scanners, per_scanner, store))
            .collect();
        let ingest = median(runs.iter().map(|r| r.ingest).collect());
        let e2e = median(runs.iter().map(|r| r.end_to_end).collect());
        println!("  {label:<16} durable ingest {ingest:>9.0} events/s   scan → subscriber {e2e:>9.0} events/s   (medians)");
        rows.push((ingest, e2e));
    }
    println!(
        "  ratio group-commit / baseline: ingest {:.2}×, end to end {:.2}×",
        rows[0].0 / rows[1].0,
        rows[0].1 / rows[1].1
    );
}
