//! The store writer alone: K producer threads submit framed scans, each keeping a window of
//! 64 unanswered, through the real one-writer group commit (synchronous=FULL, on this disk).
//! Baseline in the same run: group commit off (`max_batch = 1`). Medians of RUNS runs.
//!
//!     cargo bench -p darkleg-tests --bench store

use darkleg_agent::config::Config;
use darkleg_agent::store::{FramedOutcome, FramedScan, StoreHandle, WriteOp};
use darkleg_protocol::Step;
use darkleg_tests::median;
use std::time::Instant;

const RUNS: usize = 3;
const PRODUCERS: usize = 4;
const PER_PRODUCER: u64 = 25_000;
const WINDOW: usize = 64;

fn run(store_toml: &str, i: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("darkleg-bench-store-{}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "[gateway]\nsite = \"b\"\nid = \"g\"\ndata_dir = \"{}\"\n{store_toml}\n\
         [[upstream]]\nname = \"central\"\nurl = \"mqtt://127.0.0.1:1\"\n",
        dir.display()
    );
    let config = Config::parse(&text, "bench.toml").expect("bench config");
    let (store, writer) = StoreHandle::open(&config).expect("store");
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let store = store.clone();
            std::thread::spawn(move || {
                let device = format!("bench-{p}");
                let hello = store.request_blocking(|reply| WriteOp::Hello {
                    device: device.clone(),
                    firmware: "b".into(),
                    port: "p".into(),
                    last_acked: 0,
                    reply,
                });
                hello.blocking_recv().unwrap().unwrap();
                let mut window = std::collections::VecDeque::new();
                for seq in 1..=PER_PRODUCER {
                    let scan = FramedScan {
                        seq,
                        step: Step::Pack,
                        code: format!("00087123450{seq:09}"),
                        symbology: Some("]C1".into()),
                        operator: None,
                        captured_at_ms: seq,
                        station: None,
                        received_at_ms: seq,
                        refused: false,
                        client: darkleg_agent::store::SeqClient::Firmware,
                    };
                    window.push_back(store.framed_blocking(device.clone(), "p".into(), scan));
                    if window.len() == WINDOW {
                        let out = window
                            .pop_front()
                            .unwrap()
                            .blocking_recv()
                            .unwrap()
                            .unwrap();
                        assert!(matches!(out, FramedOutcome::Stored { .. }));
                    }
                }
                for rx in window {
                    rx.blocking_recv().unwrap().unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let rate = (PRODUCERS as u64 * PER_PRODUCER) as f64 / start.elapsed().as_secs_f64();
    drop(store);
    writer.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("store writer: {PRODUCERS} producers × {PER_PRODUCER} framed scans, window {WINDOW}, synchronous=FULL");
    let group = median((0..RUNS).map(|i| run("", i)).collect());
    let single = median(
        (0..RUNS)
            .map(|i| run("[store]\nmax_batch = 1\n", i))
            .collect(),
    );
    println!("  group commit      {group:>9.0} events/s (median of {RUNS})");
    println!("  one commit each   {single:>9.0} events/s (median of {RUNS})");
    println!("  ratio             {:.1}×", group / single);
}
