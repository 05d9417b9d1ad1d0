//! Phases that live in their own modules (growth of the backlog, slow storage), turned into
//! rows of the goals table: each returns the module's JSON with a `goals` array of
//! `{"goal": "…", "figure": "…", "met": true|false}`.

use serde_json::{json, Value};

/// Backlogs of 100k, 1M and 10M (100k and 1M with `quick`): drain, RSS, start-up at each.
pub fn growth(quick: bool) -> Option<Value> {
    let mut v = crate::growth::growth(&crate::growth::sizes(quick));
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    let spread = v["drain_slowest_vs_fastest"].as_f64().unwrap_or(0.0);
    let rss = v["peak_rss_mib_max"].as_f64().unwrap_or(f64::NAN);
    let largest = runs.last().cloned().unwrap_or(Value::Null);
    let startup = largest["startup_s"].as_f64().unwrap_or(f64::NAN);
    let sizes: Vec<String> = runs.iter().map(|r| r["backlog"].to_string()).collect();
    v["goals"] = json!([
        {"goal": format!("growth: drain rates within 20 % ({})", sizes.join(" / ")),
         "figure": format!("slowest {:.2}× the fastest", spread), "met": spread >= 0.8},
        {"goal": "growth: peak RSS ≤ 32 MiB at every size",
         "figure": format!("{rss:.1} MiB at most"), "met": rss <= 32.0},
        {"goal": format!("growth: start-up ≤ 1 s at the largest ({})", largest["backlog"]),
         "figure": format!("{startup:.2} s"), "met": startup <= 1.0},
    ]);
    Some(v)
}

/// Ingest and ack latency with a 10 ms fsync: scanners with a window of 255 (what a gateway
/// on an SD card should give them: every commit then carries a whole burst), and with the
/// 64 of the other phases beside it. "2 fsyncs" is twice the mean sync the shim measured
/// (its 10 ms plus the disk's own flush).
pub fn slow_storage(quick: bool) -> Option<Value> {
    let per = if quick { 2_500 } else { 10_000 };
    let mut v = crate::storage::slow_fsync_ingest(per, 10, 255)?;
    let narrow = crate::storage::slow_fsync_ingest(per, 10, 64);
    let rate = v["events_per_s"].as_f64().unwrap_or(f64::NAN);
    let p99 = v["ack_p99_ms"].as_f64().unwrap_or(f64::NAN);
    let two = 2.0 * v["fsync_mean_ms"].as_f64().unwrap_or(f64::NAN);
    v["goals"] = json!([
        {"goal": "slow storage (10 ms fsync): durable ingest ≥ 20k/s (window 255)",
         "figure": format!("{rate:.0}/s"), "met": rate >= 20_000.0},
        {"goal": "slow storage (10 ms fsync): ack p99 ≤ 2 fsyncs (window 255)",
         "figure": format!("≤ {p99} ms (bucket) vs 2 × {:.1} ms", two / 2.0), "met": p99 <= two},
    ]);
    if let Some(n) = &narrow {
        let (r, p) = (
            n["events_per_s"].as_f64().unwrap_or(f64::NAN),
            n["ack_p99_ms"].clone(),
        );
        v["window_64"] = n.clone();
        v["goals"].as_array_mut().expect("set above").push(json!(
            {"goal": "  … the same with window 64 (not a goal row)",
             "figure": format!("{r:.0}/s, ack p99 ≤ {p} ms"), "met": null}));
    }
    Some(v)
}
