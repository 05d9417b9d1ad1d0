//! Eviction under a full outbox and the deriver's watermark: a delivered event the deriver
//! has not read yet stays, so no milestone or alert is lost to a full disk.

use crate::config::Config;
use crate::store::{FramedScan, StoreHandle, WriteOp};
use darkleg_protocol::Step;

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        "[gateway]\nsite = \"s\"\nid = \"g\"\ndata_dir = \"{}\"\n\n[[upstream]]\nname = \"a\"\nurl = \"mqtt://127.0.0.1:1\"\n",
        dir.display()
    );
    Config::parse(&text, "t.toml").unwrap()
}

fn store_scan(s: &StoreHandle, seq: u64) {
    let scan = FramedScan {
        seq,
        step: Step::Pick,
        code: format!("CODE-{seq}"),
        symbology: None,
        operator: None,
        captured_at_ms: 1_000 + seq,
        station: None,
        received_at_ms: 1_000 + seq,
        refused: false,
        client: crate::store::SeqClient::Firmware,
    };
    s.framed_blocking("d".into(), "p".into(), scan)
        .blocking_recv()
        .unwrap()
        .unwrap();
}

#[test]
fn eviction_never_removes_an_event_the_deriver_has_not_read() {
    let dir = std::env::temp_dir().join(format!("darkleg-evict-watermark-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = config(&dir);
    let (s, join) = StoreHandle::open(&config).unwrap();
    for seq in 1..=4 {
        store_scan(&s, seq);
    }
    let mut conn = rusqlite::Connection::open(config.db_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    let rows: Vec<i64> = conn
        .prepare("SELECT row FROM events ORDER BY row")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 4);
    // The upstream has all four; the deriver has read the first two only.
    s.send_blocking(WriteOp::Delivered {
        upstream: "a".into(),
        rows: rows.clone(),
        at_ms: crate::clock::now_ms(),
    })
    .unwrap();
    drop(s);
    join.join().unwrap();
    conn.execute("UPDATE derive_watermark SET last_row = ?1", [rows[1]])
        .unwrap();
    let mut tx = conn.transaction().unwrap();
    let evicted = crate::store::ops::evict_delivered(&mut tx, 100).unwrap();
    tx.commit().unwrap();
    let left: Vec<i64> = conn
        .prepare("SELECT row FROM events ORDER BY row")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(evicted, 2, "only the two derived events went");
    assert_eq!(
        left,
        rows[2..],
        "the events past the watermark are still there"
    );
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}
