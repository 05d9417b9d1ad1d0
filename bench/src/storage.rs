//! Slow storage: the durable ingest on a gateway whose fsyncs take as long as an SD card's or
//! an eMMC's (5–30 ms), through an LD_PRELOAD shim (`shim/slowfsync.c`) that delays every
//! fsync and logs which file it flushed, so the report can say where the syncs went: the WAL
//! (one per commit) or the database file (checkpoints).

use super::{durable_ingest_with, scratch};
use serde_json::{json, Value};
use std::path::Path;

/// Where the agent's fsyncs went during a run, from the shim's log.
#[derive(Default)]
struct Syncs {
    wal: u64,
    db: u64,
    other: u64,
    /// Mean time per sync (the delay plus the real flush), ms.
    mean_ms: f64,
}

fn read_log(log: &Path) -> Syncs {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut s = Syncs::default();
    let mut total_ms = 0.0;
    for line in text.lines() {
        let Some((file, ms)) = line.rsplit_once(' ') else {
            continue;
        };
        total_ms += ms.parse::<f64>().unwrap_or(0.0);
        if file.ends_with("-wal") {
            s.wal += 1;
        } else if file.ends_with(".db") {
            s.db += 1;
        } else {
            s.other += 1;
        }
    }
    let n = s.wal + s.db + s.other;
    if n > 0 {
        s.mean_ms = total_ms / n as f64;
    }
    s
}

/// The durable ingest again with every fsync taking `ms` longer, from scanners that keep up
/// to `window` scans unacked. `None` without a cc.
pub fn slow_fsync_ingest(per_scanner: usize, ms: u64, window: u8) -> Option<Value> {
    let dir = scratch("slowfsync");
    let Some(so) = darkleg_tests::fsync_shim(&dir) else {
        eprintln!("  slow storage: no C compiler to build the fsync shim; phase skipped");
        return None;
    };
    let (count, log) = (dir.join("fsyncs"), dir.join("fsync.log"));
    let (so_s, count_s, log_s, ms_s) = (
        so.display().to_string(),
        count.display().to_string(),
        log.display().to_string(),
        ms.to_string(),
    );
    let (rate, p50, p99) = durable_ingest_with(
        per_scanner,
        true,
        window,
        &[
            ("LD_PRELOAD", &so_s),
            ("DARKLEG_FSYNC_DELAY_MS", &ms_s),
            ("DARKLEG_FSYNC_COUNT_FILE", &count_s),
            ("DARKLEG_FSYNC_LOG", &log_s),
        ],
    );
    let fsyncs: u64 = std::fs::read_to_string(&count)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let s = read_log(&log);
    let _ = std::fs::remove_dir_all(&dir);
    let events = 4 * per_scanner;
    Some(json!({
        "fsync_delay_ms": ms, "window": window, "events_per_s": rate, "ack_p50_ms": p50, "ack_p99_ms": p99,
        "fsyncs": fsyncs, "events": events,
        "wal_fsyncs": s.wal, "db_fsyncs": s.db, "other_fsyncs": s.other,
        "fsync_mean_ms": s.mean_ms,
        // Each commit syncs the WAL once: scans per commit, at most 4 scanners × window.
        "scans_per_wal_fsync": events as f64 / s.wal.max(1) as f64,
    }))
}
