//! darkleg against the setups a user would otherwise pick — a local Mosquitto (persistence
//! on, queue limits lifted) bridged to a central one, and the ThingsBoard IoT Gateway — on
//! the same machine, in the same run.
//!
//!     cargo run --release -p darkleg-bench [-- --quick --backlog N --out FILE
//!                                             --peer-thingsboard PATH --only PHASE]
//!
//! Phases: durable ingest from firmware scanners on ptys (`synchronous = "full"`); scan →
//! subscriber latency at a steady 1,000 events/s, alone and while a backlog drains to a
//! second upstream; a backlog of N events built while the upstream is down, the agent killed
//! with SIGKILL during the outage, then the drain with batching and with one event per
//! message, with the agent's peak RSS, CPU and start-up time; the bridge's ingest, drain and
//! survival of a SIGKILL; the ThingsBoard peer. Prints a table and every goal of issue 15
//! with a verdict; writes JSON. `--quick` shrinks every backlog so the table comes in minutes.

mod drain;
mod growth;
mod hooks;
mod ingest;
mod intake;
mod latency;
mod measure;
mod peer;
mod relay;
mod report;
mod storage;

// Phase modules reach the shared helpers at the crate root (as they did when all lived in
// main.rs); some only other workers' modules use.
#[allow(unused_imports)]
pub(crate) use ingest::durable_ingest_with;
#[allow(unused_imports)]
pub(crate) use measure::{
    config_text, histogram_quantile, http_ok, proc_usage, release_agent, scratch, Counter,
};

use serde_json::{json, Value};
use std::path::PathBuf;

/// What was asked on the command line.
struct Args {
    backlog: u64,
    per_scanner: usize,
    out: String,
    only: Option<String>,
    quick: bool,
    thingsboard: Option<PathBuf>,
    /// Seconds of the steady 1,000 scans/s.
    steady_secs: u64,
    windows: Vec<u8>,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str, default: u64| {
            value(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
            })
        };
        let quick = args.iter().any(|a| a == "--quick");
        Args {
            backlog: number("--backlog", if quick { 100_000 } else { 1_000_000 }),
            per_scanner: number("--ingest-per-scanner", if quick { 5_000 } else { 10_000 })
                as usize,
            out: value("--out").unwrap_or_else(|| "bench-results.json".into()),
            only: value("--only"),
            quick,
            thingsboard: value("--peer-thingsboard").map(PathBuf::from),
            steady_secs: if quick { 5 } else { 10 },
            // `--only slowfsync --windows 64,128,255`: the scanners' windows to try.
            windows: value("--windows").map_or(vec![64, 255], |v| {
                v.split(',')
                    .map(|w| {
                        w.parse()
                            .unwrap_or_else(|_| panic!("--windows {v}: 1..=255 each"))
                    })
                    .collect()
            }),
        }
    }
}

/// `--only PHASE`: one phase alone (for profiling); `false` if PHASE is not one of them.
fn only(args: &Args, phase: &str) -> bool {
    let (n, per) = (args.backlog, args.per_scanner);
    let v = match phase {
        "ingest" => {
            let (rate, p50, p99) = ingest::durable_ingest(per, true);
            let (up, _, _) = ingest::durable_ingest(per, false);
            json!({"events_per_s": rate, "with_upstream_up_per_s": up, "ack_p50_ms": p50, "ack_p99_ms": p99})
        }
        "ascii" => ingest::ascii_ingest(per),
        "slowfsync" => json!(args
            .windows
            .iter()
            .map(|&w| storage::slow_fsync_ingest(per, 10, w))
            .collect::<Vec<_>>()),
        "growth" => growth::growth(&growth::sizes(args.quick)),
        "intake" => json!([
            intake::intake_load(8, 100, 100, 1000, 1000, 10),
            intake::datawedge_load(500, 10)
        ]),
        "relay" => relay::relay_throughput(n / 10, 100),
        "drain1" => drain::darkleg_drain(n / 5, 1, None, false),
        "steady" => latency::steady_latency(args.steady_secs),
        "steady-backlog" => {
            latency::steady_latency_while_draining(args.steady_secs, n.max(300_000))
        }
        "thingsboard" => thingsboard(args),
        _ => return false,
    };
    println!("{v}");
    true
}

/// The ThingsBoard peer's figures, or `{"skipped": why}`.
fn thingsboard(args: &Args) -> Value {
    let n = if args.quick { 5_000 } else { 20_000 };
    let script = match peer::find_thingsboard(args.thingsboard.clone()) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("  ThingsBoard IoT Gateway skipped: {why}");
            return json!({"skipped": why});
        }
    };
    let log = std::env::temp_dir().join(format!(
        "darkleg-bench-thingsboard-{}.log",
        std::process::id()
    ));
    eprintln!(
        "  ThingsBoard IoT Gateway: {} ({n} scans; output in {})",
        script.display(),
        log.display()
    );
    peer::thingsboard(&script, n, &log).unwrap_or_else(|why| {
        eprintln!("  ThingsBoard IoT Gateway failed: {why}");
        json!({"skipped": why})
    })
}

fn main() {
    let args = Args::parse();
    let (backlog, per_scanner) = (args.backlog, args.per_scanner);
    eprintln!(
        "darkleg-bench: backlog {backlog}, ingest 4 × {per_scanner}{}",
        if args.quick {
            " (quick)"
        } else {
            "; this takes a while"
        }
    );
    if let Some(phase) = &args.only {
        if !only(&args, phase) {
            eprintln!("--only {phase}: not a phase (ingest, ascii, slowfsync, growth, intake, relay, drain1, steady, steady-backlog, thingsboard)");
            std::process::exit(2);
        }
        return;
    }
    eprintln!("  [1/8] durable ingest from 4 firmware scanners (upstream down, then up)");
    let (ingest, ack_p50, ack_p99) = ingest::durable_ingest(per_scanner, true);
    let (ingest_up, _, _) = ingest::durable_ingest(per_scanner, false);
    eprintln!("  [1/8] … and from 4 plain (ASCII) scanners: the default config's intake");
    let ascii = ingest::ascii_ingest(per_scanner);
    eprintln!("  [2/8] the HTTP intake: batched posts, then 1,000 devices at 1 scan/s");
    let secs = if args.quick { 5 } else { 10 };
    let http_intake = intake::intake_load(8, 100, 100, 1000, 1000, secs);
    let datawedge = intake::datawedge_load(500, secs);
    eprintln!(
        "  [3/8] steady 1,000 scans/s, alone and while {} drain to another upstream",
        backlog.max(300_000)
    );
    let steady = latency::steady_latency(args.steady_secs);
    // Big enough to still be draining when the steady run ends (one event per message).
    let steady_backlog =
        latency::steady_latency_while_draining(args.steady_secs, backlog.max(300_000));
    eprintln!("  [4/8] darkleg: {backlog} backlog, SIGKILL in the outage, drain with batch = 100");
    let batched = drain::darkleg_drain(backlog, 100, Some(256), true);
    eprintln!(
        "  [5/8] darkleg: {} backlog, drain one event per message (default config)",
        backlog / 5
    );
    let single = drain::darkleg_drain(backlog / 5, 1, None, false);
    eprintln!("  [6/8] the bridge: local Mosquitto bridged to central");
    let base = peer::baseline(backlog, if args.quick { 10_000 } else { 100_000 });
    eprintln!("  [7/8] the ThingsBoard IoT Gateway");
    let tb = thingsboard(&args);
    eprintln!("  [8/8] growth and slow storage");
    let growth = hooks::growth(args.quick);
    let slow_storage = hooks::slow_storage(args.quick);
    let doc = json!({
        "machine": "see BENCHMARKS.md",
        "quick": args.quick,
        "durable_ingest": {"events_per_s": ingest, "with_upstream_up_per_s": ingest_up, "ack_p50_ms": ack_p50, "ack_p99_ms": ack_p99, "scanners": 4, "per_scanner": per_scanner},
        "ascii_ingest": ascii,
        "steady_1000": steady,
        "steady_1000_backlog": steady_backlog,
        "http_intake": http_intake,
        "datawedge": datawedge,
        "drain_batched": batched,
        "drain_single": single,
        "baseline": base,
        "thingsboard": tb,
        "growth": growth,
        "slow_storage": slow_storage,
    });
    report::print(&doc);
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("  (JSON: {})", args.out);
}
