//! On a slow disk the WAL's fsync runs on a thread of its own beside the store writer (see
//! `agent/src/store/syncer.rs`). The promise it must keep is SQLite FULL's: nothing is
//! answered `stored`, and nothing leaves for an upstream, before a sync of the WAL that
//! began after the scan's commit has returned. The real binary runs with the bench's
//! LD_PRELOAD shim, which makes every fsync take 400 ms: an answer or an arrival sooner
//! than that after the post can only be one that did not wait for its sync.

use darkleg_agent::sim::broker::free_port;
use darkleg_tests::*;
use serde_json::json;
use std::time::{Duration, Instant};

const DELAY_MS: u64 = 400;

#[test]
fn nothing_is_answered_or_published_before_its_wal_sync() {
    let http = free_port().unwrap();
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[intake]\nallow_unauthenticated = true\n\n\
         [intake.stations]\ndock-1 = \"handover\"\n"
    );
    let rig = Rig::with_store("slow-disk", &[], &extra);
    let dir = Scratch::new("slow-disk-shim");
    let so = fsync_shim(&dir.0).expect("a C compiler (cc) builds the fsync shim");
    let log = dir.0.join("fsync.log");
    let (so_s, log_s, delay) = (
        so.display().to_string(),
        log.display().to_string(),
        DELAY_MS.to_string(),
    );
    let _agent = rig.start_agent_with_env(&[
        ("LD_PRELOAD", &so_s),
        ("DARKLEG_FSYNC_DELAY_MS", &delay),
        ("DARKLEG_FSYNC_LOG", &log_s),
    ]);
    assert!(
        wait_until(Duration::from_secs(30), || http_get(http, "/healthz")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))),
        "the agent serves HTTP"
    );
    let post = |seq: u64| {
        let body = json!({"device": "tc52-07", "seq": seq, "code": format!("00012345678905{seq:04}"),
                          "station": "dock-1"});
        let sent_ms = darkleg_agent::clock::now_ms();
        let t = Instant::now();
        let (code, _, answer) =
            post_scans(http, None, &body.to_string()).expect("the intake answers");
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["results"][0]["status"], "stored", "{answer}");
        (sent_ms, t.elapsed())
    };
    // The first commit creates the WAL, whose header SQLite syncs inside the commit itself:
    // a warm-up, so the scans below can only have waited for the syncer's sync.
    post(1);
    let mut sent = Vec::new();
    for seq in 2..=6 {
        let (sent_ms, took) = post(seq);
        assert!(
            took >= Duration::from_millis(DELAY_MS),
            "scan {seq} answered after {took:?}, before any {DELAY_MS} ms sync could have returned"
        );
        sent.push((seq, sent_ms));
    }
    let syncs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        syncs.lines().filter(|l| l.contains("-wal ")).count() >= 5,
        "a WAL sync per answered scan at least:\n{syncs}"
    );
    // Each arrives upstream, and none sooner than a sync after its post.
    assert!(
        wait_until(Duration::from_secs(30), || unique_ids(
            &rig.collector.messages()
        ) >= 6),
        "every scan arrives upstream"
    );
    let arrivals = rig.collector.messages();
    for (seq, sent_ms) in sent {
        let a = arrivals
            .iter()
            .find(|a| a.json["seq"] == seq)
            .unwrap_or_else(|| panic!("scan {seq} upstream"));
        assert!(
            a.at_ms >= sent_ms + DELAY_MS,
            "scan {seq} reached the upstream {} ms after its post: before its sync",
            a.at_ms.saturating_sub(sent_ms)
        );
    }
}
