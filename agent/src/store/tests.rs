//! The store's rules, on a real SQLite file: go-back-N sequencing for framed scanners,
//! gateway numbering for ASCII ones, per-upstream outboxes, pruning that never touches an
//! undelivered event, and durability across reopen.

use super::*;
use darkleg_protocol::Step;

#[path = "tests_damage.rs"]
mod damage;

struct Fixture {
    dir: PathBuf,
    config: Config,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        Fixture::with_upstreams(name, &["a", "b"])
    }

    fn with_upstreams(name: &str, upstreams: &[&str]) -> Fixture {
        let dir = std::env::temp_dir().join(format!("darkleg-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Fixture::config(&dir, upstreams, "");
        Fixture { config, dir }
    }

    fn config(dir: &Path, upstreams: &[&str], extra: &str) -> Config {
        let mut text = format!(
            "[gateway]\nsite = \"s\"\nid = \"g\"\ndata_dir = \"{}\"\n{extra}\n",
            dir.display()
        );
        for u in upstreams {
            text.push_str(&format!(
                "[[upstream]]\nname = \"{u}\"\nurl = \"mqtt://127.0.0.1:1\"\n"
            ));
        }
        Config::parse(&text, "t.toml").unwrap()
    }

    fn open(&self) -> (StoreHandle, std::thread::JoinHandle<()>) {
        StoreHandle::open(&self.config).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn close(store: StoreHandle, join: std::thread::JoinHandle<()>) {
    drop(store);
    join.join().unwrap();
}

fn hello(s: &StoreHandle, device: &str, last_acked: u64) -> u64 {
    s.request_blocking(|reply| WriteOp::Hello {
        device: device.into(),
        firmware: "t".into(),
        port: "p".into(),
        last_acked,
        reply,
    })
    .blocking_recv()
    .unwrap()
    .unwrap()
}

/// Outbox rows owed to `upstream`, in order.
fn pending_rows(r: &Reader, upstream: &str) -> Vec<i64> {
    let rows = r.pending(upstream, 0, 1_000_000).unwrap();
    rows.iter().map(|p| p.row).collect()
}

/// Codes of the scans owed to `upstream`, in outbox order.
fn pending_codes(r: &Reader, upstream: &str) -> Vec<String> {
    let rows = r.pending(upstream, 0, 1_000_000).unwrap();
    rows.iter()
        .map(|p| p.event().unwrap().code.clone())
        .collect()
}

/// Sequence numbers of the scans owed to `upstream`, in outbox order.
fn pending_seqs(r: &Reader, upstream: &str) -> Vec<u64> {
    let rows = r.pending(upstream, 0, 1_000_000).unwrap();
    rows.iter().map(|p| p.event().unwrap().seq).collect()
}

fn framed(s: &StoreHandle, device: &str, seq: u64) -> FramedOutcome {
    s.framed_blocking(device.into(), "p".into(), scan(device, seq))
        .blocking_recv()
        .unwrap()
        .unwrap()
}

fn scan(device: &str, seq: u64) -> FramedScan {
    FramedScan {
        seq,
        step: Step::Pack,
        code: format!("{device}-code-{seq}"),
        symbology: Some("]C1".into()),
        operator: None,
        captured_at_ms: seq.wrapping_add(1000),
        station: None,
        received_at_ms: seq.wrapping_add(2000),
        refused: false,
        client: crate::store::SeqClient::Firmware,
    }
}

fn ascii(s: &StoreHandle, code: &str, received_at_ms: u64) -> u64 {
    let scan = AsciiScan {
        step: Step::Handover,
        code: code.into(),
        symbology: None,
        station: None,
        received_at_ms,
    };
    s.request_blocking(|reply| WriteOp::Ascii {
        device: "g:tty0".into(),
        port: "/dev/tty0".into(),
        scan,
        reply,
    })
    .blocking_recv()
    .unwrap()
    .unwrap()
}

/// Sends a fire-and-forget op, then a Hello as a barrier: the writer applies in order.
fn send_and_settle(s: &StoreHandle, op: WriteOp) {
    s.send_blocking(op).unwrap();
    hello(s, "barrier", 0);
}

#[test]
fn framed_scans_are_taken_in_sequence_only() {
    let f = Fixture::new("framed");
    let (s, j) = f.open();
    assert_eq!(hello(&s, "d1", 0), 0);
    assert_eq!(framed(&s, "d1", 1), FramedOutcome::Stored { acked: 1 });
    assert_eq!(framed(&s, "d1", 1), FramedOutcome::Duplicate { acked: 1 });
    assert_eq!(framed(&s, "d1", 3), FramedOutcome::OutOfOrder { acked: 1 });
    assert_eq!(framed(&s, "d1", 2), FramedOutcome::Stored { acked: 2 });
    // A scanner that already retired up to 10 elsewhere is not asked for them again.
    assert_eq!(hello(&s, "d1", 10), 10);
    assert_eq!(framed(&s, "d1", 11), FramedOutcome::Stored { acked: 11 });
    // …but a scanner that lost its ack state is told what the gateway already has.
    assert_eq!(hello(&s, "d1", 0), 11);
    close(s, j);

    let r = Reader::open(&f.config.db_path()).unwrap();
    let st = r.status().unwrap();
    assert_eq!(st.events, 3);
    let d = st.devices.iter().find(|d| d.device == "d1").unwrap();
    assert_eq!((d.last_seq, d.events, d.duplicates), (11, 3, 1));
    let rows = r.pending("a", 0, 100).unwrap();
    let seqs: Vec<u64> = rows.iter().map(|p| p.event().unwrap().seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 11],
        "outbox order is per-device sequence order"
    );
    assert_eq!(
        rows[0].event().unwrap().event_id,
        darkleg_protocol::EventId::new("d1", 1)
    );
    assert_eq!(rows[0].event().unwrap().code, "d1-code-1");
    assert_eq!(rows[0].event().unwrap().captured_at_ms, 1001);
}

#[test]
fn ascii_scans_are_numbered_by_the_gateway_across_restarts() {
    let f = Fixture::new("ascii");
    let (s, j) = f.open();
    let first = ascii(&s, "A", 1);
    let count = (1u64 << super::devices::OWN_SEQ_BITS) - 1;
    assert_eq!(
        first & count,
        1,
        "a new device starts at 1 in this store's range"
    );
    assert!(first < 1 << 53, "exact as a JSON number");
    assert_eq!(ascii(&s, "B", 2), first + 1);
    close(s, j);
    let (s, j) = f.open();
    assert_eq!(ascii(&s, "C", 3), first + 2, "numbering survives a restart");
    close(s, j);
    let r = Reader::open(&f.config.db_path()).unwrap();
    let codes = pending_codes(&r, "b");
    assert_eq!(codes, ["A", "B", "C"]);
}

#[test]
fn a_wiped_store_never_numbers_a_scan_under_an_id_already_used() {
    // 20 stores lost one after another (new SD card, damaged file moved aside): every scan
    // an ASCII device makes across them has its own event id.
    let mut ids = std::collections::HashSet::new();
    for round in 0..20 {
        let f = Fixture::new("wiped");
        let (s, j) = f.open();
        for k in 0..20 {
            let seq = ascii(&s, &format!("round{round}-{k}"), 1);
            let id = darkleg_protocol::EventId::new("g:tty0", seq);
            assert!(
                ids.insert(id),
                "round {round}: seq {seq} repeats an earlier store's id"
            );
        }
        close(s, j);
    }
    assert_eq!(ids.len(), 400);
}

#[test]
fn a_resend_with_a_different_code_is_a_counted_conflict_never_a_duplicate() {
    let f = Fixture::new("conflict");
    let (s, j) = f.open();
    assert!(matches!(framed(&s, "d1", 1), FramedOutcome::Stored { .. }));
    // The same seq and code: a retransmit.
    assert!(matches!(
        framed(&s, "d1", 1),
        FramedOutcome::Duplicate { .. }
    ));
    // The same seq, another scan (a scanner that lost its flash): refused, loudly.
    let mut other = scan("d1", 1);
    other.code = "a different parcel".into();
    let out = s
        .framed_blocking("d1".into(), "p".into(), other)
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert!(matches!(out, FramedOutcome::Refused { .. }), "{out:?}");
    close(s, j);
    let st = Reader::open(&f.config.db_path()).unwrap().status().unwrap();
    let d = st.devices.iter().find(|d| d.device == "d1").unwrap();
    assert_eq!((d.events, d.duplicates, d.conflicts), (1, 1, 1));
}

/// Offers `scan(device, seq)` (with `code`, if given) from `port` as `client` would.
fn offer(
    s: &StoreHandle,
    device: &str,
    port: &str,
    client: SeqClient,
    seq: u64,
    code: Option<&str>,
) -> FramedOutcome {
    let mut sc = FramedScan {
        client,
        ..scan(device, seq)
    };
    if let Some(c) = code {
        sc.code = c.into();
    }
    s.framed_blocking(device.into(), port.into(), sc)
        .blocking_recv()
        .unwrap()
        .unwrap()
}

#[test]
fn a_hole_is_never_accepted_for_a_source_that_resends_on_refusal() {
    let f = Fixture::new("strict-gap");
    let (s, j) = f.open();
    let app = |seq| offer(&s, "app", APP_PORT, SeqClient::App, seq, None);
    assert_eq!(app(1), FramedOutcome::Stored { acked: 1 });
    // seq 2 never comes; 3 is resent far past the framed scanners' pass limit.
    for _ in 0..3 * super::devices::GAP_PASSES {
        assert_eq!(app(3), FramedOutcome::OutOfOrder { acked: 1 });
    }
    // The hole is still there for 2, which is then stored, not answered "duplicate".
    assert_eq!(app(2), FramedOutcome::Stored { acked: 2 });
    assert_eq!(app(3), FramedOutcome::Stored { acked: 3 });
    close(s, j);
}

#[test]
fn an_app_numbering_afresh_is_refused_where_nothing_is_left_to_compare() {
    let f = Fixture::new("unheld");
    let (s, j) = f.open();
    let app = |seq, code| offer(&s, "app", APP_PORT, SeqClient::App, seq, code);
    for seq in 1..=3 {
        assert_eq!(app(seq, None), FramedOutcome::Stored { acked: seq });
    }
    // A resend of a held scan is a duplicate; a different code under it a refusal.
    assert_eq!(app(2, None), FramedOutcome::Duplicate { acked: 3 });
    assert_eq!(app(2, Some("other")), FramedOutcome::Refused { acked: 3 });
    // The same code at another step under that seq is another scan (a second app under the
    // same device name): refused, not answered "duplicate" and dropped.
    let other_step = FramedScan {
        client: SeqClient::App,
        step: Step::Handover,
        ..scan("app", 2)
    };
    let r = s.framed_blocking("app".into(), APP_PORT.into(), other_step);
    assert_eq!(
        r.blocking_recv().unwrap().unwrap(),
        FramedOutcome::Refused { acked: 3 }
    );
    // The stored scans go (delivered and pruned, as retention does): the app, reinstalled,
    // starts again at 1 with a new scan. "duplicate" would drop it; it is refused instead.
    let conn = rusqlite::Connection::open(f.config.db_path()).unwrap();
    conn.execute("DELETE FROM outbox", []).unwrap();
    conn.execute("DELETE FROM events", []).unwrap();
    let unheld = FramedOutcome::Conflict {
        acked: 3,
        why: Conflict::Unheld,
    };
    assert_eq!(app(1, Some("new-after-reinstall")), unheld);
    // Firmware resends only what it holds unacked: there the same case is a retransmit.
    let fw = |seq| offer(&s, "fw", "/dev/ttyUSB0", SeqClient::Firmware, seq, None);
    assert_eq!(fw(1), FramedOutcome::Stored { acked: 1 });
    conn.execute("DELETE FROM outbox", []).unwrap();
    conn.execute("DELETE FROM events", []).unwrap();
    assert_eq!(fw(1), FramedOutcome::Duplicate { acked: 1 });
    close(s, j);
}

#[test]
fn an_app_goes_on_from_its_own_numbering_on_a_store_that_holds_none_of_its_scans() {
    // The gateway's store was lost: the app, at seq 41, goes on at 42. Asked to start again
    // at 1 it would reuse event ids its earlier scans were delivered under.
    let f = Fixture::new("adopt");
    let (s, j) = f.open();
    let app = |seq, code| offer(&s, "tc52-9", APP_PORT, SeqClient::App, seq, code);
    assert_eq!(app(42, None), FramedOutcome::Stored { acked: 42 });
    assert_eq!(app(43, None), FramedOutcome::Stored { acked: 43 });
    // Adopted once: from here on a gap is a gap, a resend a duplicate.
    assert_eq!(app(45, None), FramedOutcome::OutOfOrder { acked: 43 });
    assert_eq!(app(43, None), FramedOutcome::Duplicate { acked: 43 });
    // Below where it started nothing is held to compare: refused, never stored as new.
    assert_eq!(
        app(7, Some("older")),
        FramedOutcome::Conflict {
            acked: 43,
            why: Conflict::Unheld
        }
    );
    // A framed scanner says where it is in its Hello; without one, only the next seq.
    let fw = offer(&s, "fw-9", "/dev/ttyUSB0", SeqClient::Firmware, 42, None);
    assert_eq!(fw, FramedOutcome::OutOfOrder { acked: 0 });
    close(s, j);
}

#[test]
fn a_gateway_numbered_scanner_cannot_take_an_apps_device_name() {
    // A handheld mapped (devices = {...}) to the name its own app posts under.
    let f = Fixture::new("ascii-app-name");
    let (s, j) = f.open();
    let app = |seq| offer(&s, "tc52-5", APP_PORT, SeqClient::App, seq, None);
    assert_eq!(app(1), FramedOutcome::Stored { acked: 1 });
    let scan = AsciiScan {
        step: Step::Pack,
        code: "WEDGE-1".into(),
        symbology: None,
        station: None,
        received_at_ms: 1,
    };
    let r = s
        .request_blocking(|reply| WriteOp::Ascii {
            device: "tc52-5".into(),
            port: "tcp://0.0.0.0:58627".into(),
            scan,
            reply,
        })
        .blocking_recv()
        .unwrap();
    let err = r.expect_err("refused, not numbered after the app's seq");
    assert!(err.to_string().contains("is an app's"), "{err}");
    // The app goes on undisturbed: its next seq is still its own.
    assert_eq!(app(2), FramedOutcome::Stored { acked: 2 });
    close(s, j);
}

#[test]
fn an_app_cannot_post_as_a_scanner_of_another_source() {
    let f = Fixture::new("other-source");
    let (s, j) = f.open();
    let fw = |seq| offer(&s, "tc-1", "/dev/ttyUSB0", SeqClient::Firmware, seq, None);
    assert_eq!(fw(1), FramedOutcome::Stored { acked: 1 });
    let other = FramedOutcome::Conflict {
        acked: 1,
        why: Conflict::OtherSource,
    };
    // Not stored, nothing consumed: the scanner's next seq is still its own.
    assert_eq!(offer(&s, "tc-1", APP_PORT, SeqClient::App, 2, None), other);
    let hello = s
        .request_blocking(|reply| WriteOp::Hello {
            device: "tc-1".into(),
            firmware: "http".into(),
            port: APP_PORT.into(),
            last_acked: 0,
            reply,
        })
        .blocking_recv()
        .unwrap();
    assert!(hello.is_err(), "an app's hello may not take the name over");
    assert_eq!(fw(2), FramedOutcome::Stored { acked: 2 });
    // An ASCII scanner's name (a DataWedge handheld's) is not an app's either.
    ascii(&s, "code-a", 100);
    let taken = offer(&s, "g:tty0", APP_PORT, SeqClient::App, 1, None);
    assert!(
        matches!(
            taken,
            FramedOutcome::Conflict {
                why: Conflict::OtherSource,
                ..
            }
        ),
        "{taken:?}"
    );
    // And the other way: a scanner under an app's name is not told the app's last seq
    // (it would retire its own unsent scans as acked), nor are its scans taken.
    for seq in 1..=9 {
        offer(&s, "pack-3", APP_PORT, SeqClient::App, seq, None);
    }
    let hello = s
        .request_blocking(|reply| WriteOp::Hello {
            device: "pack-3".into(),
            firmware: "fw".into(),
            port: "/dev/ttyUSB1".into(),
            last_acked: 0,
            reply,
        })
        .blocking_recv()
        .unwrap();
    assert!(hello.is_err(), "{hello:?}");
    let kept = offer(&s, "pack-3", "/dev/ttyUSB1", SeqClient::Firmware, 1, None);
    let other = FramedOutcome::Conflict {
        acked: 9,
        why: Conflict::OtherSource,
    };
    assert_eq!(kept, other);
    close(s, j);
}

#[test]
fn the_outbox_read_is_planned_once_not_at_every_read() {
    let f = Fixture::new("reprepare");
    let (s, j) = f.open();
    for code in ["a1", "a2", "a3"] {
        ascii(&s, code, 100);
    }
    let r = Reader::open(&f.config.db_path()).unwrap();
    // A drain reads with a moving cursor and a limit that follows the window's room.
    for (after, limit) in [(0, 8), (1, 3), (2, 64), (0, 1), (3, 8192)] {
        r.pending("a", after, limit).unwrap();
    }
    assert_eq!(r.pending_reprepares(), 0);
    close(s, j);
}

#[test]
fn each_upstream_has_its_own_outbox_and_pruning_spares_the_undelivered() {
    let f = Fixture::new("outbox");
    let (s, j) = f.open();
    for (i, code) in ["old1", "old2", "new"].iter().enumerate() {
        ascii(&s, code, [100, 200, 10_000][i]);
    }
    let r = Reader::open(&f.config.db_path()).unwrap();
    let rows: Vec<i64> = pending_rows(&r, "a");
    // Upstream a acks the first two; b acks nothing.
    send_and_settle(
        &s,
        WriteOp::Delivered {
            upstream: "a".into(),
            rows: rows[..2].to_vec(),
            at_ms: 5,
        },
    );
    assert_eq!(r.pending("a", 0, 10).unwrap().len(), 1);
    assert_eq!(r.pending("b", 0, 10).unwrap().len(), 3);
    // The cursor skips what is already handed over.
    assert_eq!(r.pending("b", rows[1], 10).unwrap().len(), 1);

    send_and_settle(&s, WriteOp::Prune { before_ms: 1000 });
    assert_eq!(
        r.status().unwrap().events,
        3,
        "b still owes old1 and old2: nothing pruned"
    );
    send_and_settle(
        &s,
        WriteOp::Delivered {
            upstream: "b".into(),
            rows: rows.clone(),
            at_ms: 6,
        },
    );
    send_and_settle(&s, WriteOp::Prune { before_ms: 1000 });
    let st = r.status().unwrap();
    assert_eq!(
        st.events, 1,
        "delivered everywhere and past retention: pruned"
    );
    let b = st.upstreams.iter().find(|u| u.name == "b").unwrap();
    assert_eq!((b.backlog, b.delivered, b.last_sync_at_ms), (0, 3, Some(6)));
    close(s, j);
}

#[test]
fn a_newer_schema_is_refused_not_overwritten() {
    let f = Fixture::new("schema");
    let (s, j) = f.open();
    close(s, j);
    let c = Connection::open(f.config.db_path()).unwrap();
    c.pragma_update(None, "user_version", 999).unwrap();
    drop(c);
    let err = StoreHandle::open(&f.config).err().unwrap().to_string();
    assert!(err.contains("newer release"), "{err}");
}

#[test]
fn scans_made_before_any_upstream_reach_the_first_one_configured() {
    let mut f = Fixture::with_upstreams("late-upstream", &[]);
    let (s, j) = f.open();
    ascii(&s, "early", 1);
    // No upstream: nothing is ever pruned, however old.
    send_and_settle(
        &s,
        WriteOp::Prune {
            before_ms: u64::MAX,
        },
    );
    close(s, j);
    f.config = Fixture::config(&f.dir, &["central"], "");
    let (s, j) = f.open();
    ascii(&s, "later", 2);
    close(s, j);
    let r = Reader::open(&f.config.db_path()).unwrap();
    let codes = pending_codes(&r, "central");
    assert_eq!(codes, ["early", "later"]);
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let f = Fixture::new("lock");
    let (s, j) = f.open();
    let err = StoreHandle::open(&f.config)
        .err()
        .expect("second open refused")
        .to_string();
    assert!(err.contains("another darkleg"), "{err}");
    assert!(
        err.contains(&std::process::id().to_string()),
        "names the holder: {err}"
    );
    close(s, j);
    let (s, j) = f.open();
    close(s, j);
}

#[test]
fn a_refused_code_consumes_its_sequence_without_an_event() {
    let f = Fixture::new("refused");
    let (s, j) = f.open();
    hello(&s, "d", 0);
    assert_eq!(framed(&s, "d", 1), FramedOutcome::Stored { acked: 1 });
    let bad = FramedScan {
        refused: true,
        ..scan("d", 2)
    };
    let out = s
        .framed_blocking("d".into(), "p".into(), bad)
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert_eq!(out, FramedOutcome::Refused { acked: 2 });
    // The scanner retires #2 and goes on with #3: no deadlock on the sequence.
    assert_eq!(framed(&s, "d", 3), FramedOutcome::Stored { acked: 3 });
    close(s, j);
    let st = Reader::open(&f.config.db_path()).unwrap().status().unwrap();
    assert_eq!(st.events, 2);
    let d = st.devices.iter().find(|d| d.device == "d").unwrap();
    assert_eq!((d.last_seq, d.events, d.refused), (3, 2, 1));
}

/// A scan of device `d` with a 400-byte code: a 1 MiB outbox holds a couple of thousand.
fn big(seq: u64) -> FramedScan {
    FramedScan {
        code: format!("{}-{seq}", "X".repeat(400)),
        ..scan("d", seq)
    }
}

fn submit(s: &StoreHandle, seq: u64) -> Result<FramedOutcome, StoreError> {
    s.framed_blocking("d".into(), "p".into(), big(seq))
        .blocking_recv()
        .unwrap()
}

#[test]
fn a_full_outbox_refuses_new_scans_and_keeps_every_stored_one() {
    let mut f = Fixture::with_upstreams("full", &["a"]);
    f.config = Fixture::config(&f.dir, &["a"], "[store]\nmax_db_mb = 1\n");
    let (s, j) = f.open();
    hello(&s, "d", 0);
    let mut stored = 0u64;
    let err = loop {
        match submit(&s, stored + 1) {
            Ok(FramedOutcome::Stored { acked }) => stored = acked,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
        assert!(stored < 10_000, "a 1 MiB ceiling must fill up");
    };
    assert!(err.to_string().contains("full"), "a clear reason: {err}");
    assert!(stored > 100, "the ceiling is not hit early: {stored}");
    // Refused, not consumed: the scanner keeps it and the same number is still expected.
    assert!(submit(&s, stored + 1).is_err());
    assert_eq!(
        framed(&s, "d", stored + 2),
        FramedOutcome::OutOfOrder { acked: stored }
    );
    close(s, j);

    let r = Reader::open(&f.config.db_path()).unwrap();
    let rows = r.pending("a", 0, 100_000).unwrap();
    assert_eq!(rows.len() as u64, stored, "every acked scan is intact");
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, p)| p.event().unwrap().seq == i as u64 + 1
            && p.event().unwrap().code == big(i as u64 + 1).code));
    drop(r);

    // Room returns: the retransmitted scan is taken under its own number.
    f.config = Fixture::config(&f.dir, &["a"], "[store]\nmax_db_mb = 8\n");
    let (s, j) = f.open();
    assert_eq!(
        submit(&s, stored + 1).unwrap(),
        FramedOutcome::Stored { acked: stored + 1 }
    );
    close(s, j);
}

#[test]
fn extreme_sequence_numbers_do_not_overflow() {
    let f = Fixture::new("extreme");
    let (s, j) = f.open();
    assert_eq!(hello(&s, "d", u64::MAX), u64::MAX);
    assert_eq!(
        framed(&s, "d", 1),
        FramedOutcome::Duplicate { acked: u64::MAX }
    );
    assert_eq!(
        framed(&s, "d", u64::MAX),
        FramedOutcome::Duplicate { acked: u64::MAX }
    );
    assert_eq!(
        framed(&s, "e", u64::MAX),
        FramedOutcome::OutOfOrder { acked: 0 }
    );
    close(s, j);
}

/// Device `d` fills the store to its ceiling once; its events count as derived (no deriver
/// runs here; an agent's keeps up, and only what it has read may be evicted). The scans
/// stored.
fn fill_derived(f: &Fixture, s: &StoreHandle) -> u64 {
    hello(s, "d", 0);
    let mut stored = 0u64;
    while submit(s, stored + 1).is_ok() {
        stored += 1;
        assert!(stored < 10_000);
    }
    rusqlite::Connection::open(f.config.db_path())
        .unwrap()
        .execute("UPDATE derive_watermark SET last_row = ?1", [i64::MAX])
        .unwrap();
    stored
}

#[test]
fn a_full_outbox_evicts_delivered_rows_first_and_never_an_undelivered_one() {
    let mut f = Fixture::with_upstreams("evict", &["a"]);
    f.config = Fixture::config(&f.dir, &["a"], "[store]\nmax_db_mb = 1\n");
    let (s, j) = f.open();
    let mut stored = fill_derived(&f, &s);
    let first_fill = stored;
    // The upstream confirms the older half: those rows may go, the rest may not.
    let delivered: Vec<i64> = {
        let r = Reader::open(&f.config.db_path()).unwrap();
        let rows = r.pending("a", 0, 100_000).unwrap();
        rows[..rows.len() / 2].iter().map(|p| p.row).collect()
    };
    s.send_blocking(WriteOp::Delivered {
        upstream: "a".into(),
        rows: delivered.clone(),
        at_ms: crate::clock::now_ms(),
    })
    .unwrap();
    // Capture resumes: the refused scan comes back (as a scanner's retransmit) and fits,
    // and so do more, in the room the delivered rows left.
    let mut resumed = 0;
    let mut refused_last = false;
    loop {
        match submit(&s, stored + 1) {
            Ok(_) => {
                stored += 1;
                resumed += 1;
                refused_last = false;
                assert!(resumed < 10_000);
            }
            // A refusal makes room when delivered rows can go: the scanner's retransmit of
            // the same scan then fits. Refused twice in a row: truly full.
            Err(_) if !refused_last => refused_last = true,
            Err(_) => break,
        }
    }
    close(s, j);
    assert!(
        resumed as usize >= delivered.len() / 2,
        "room came back: {resumed} more after {} delivered",
        delivered.len()
    );
    // Every undelivered scan is there, intact and in order; only delivered ones went.
    let r = Reader::open(&f.config.db_path()).unwrap();
    let pending = r.pending("a", 0, 100_000).unwrap();
    let want: Vec<u64> = (delivered.len() as u64 + 1..=stored).collect();
    let got: Vec<u64> = pending.iter().map(|p| p.event().unwrap().seq).collect();
    assert_eq!(got, want, "first fill {first_fill}, resumed {resumed}");
    assert!(pending
        .iter()
        .all(|p| p.event().unwrap().code == big(p.event().unwrap().seq).code));
    assert!(crate::faults::EVICTED_FOR_ROOM.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn a_gateway_clock_step_neither_reorders_nor_loses_and_device_offsets_are_kept() {
    let f = Fixture::with_upstreams("clock", &["a"]);
    let (s, j) = f.open();
    hello(&s, "d", 0);
    let now = crate::clock::now_ms();
    // Received times as a stepping clock would write them: normal, an hour back (NTP fixes
    // a fast RTC), a day ahead (a bad RTC), then normal again.
    let received = [
        now,
        now + 10,
        now - 3_600_000,
        now - 3_599_990,
        now + 86_400_000,
        now + 20,
    ];
    for (i, &at) in received.iter().enumerate() {
        let seq = i as u64 + 1;
        let sc = FramedScan {
            // The scanner's own clock runs 5 s behind the gateway's.
            captured_at_ms: at - 5_000,
            received_at_ms: at,
            ..scan("d", seq)
        };
        let out = s
            .framed_blocking("d".into(), "p".into(), sc)
            .blocking_recv()
            .unwrap();
        assert_eq!(out.unwrap(), FramedOutcome::Stored { acked: seq });
    }
    // Retention by the (stepped) clock removes nothing undelivered.
    s.send_blocking(WriteOp::Prune {
        before_ms: now + 100 * 86_400_000,
    })
    .unwrap();
    s.send_blocking(WriteOp::Incident {
        kind: "clock_jump",
        detail: "wall clock stepped -3600.0 s".into(),
    })
    .unwrap();
    close(s, j);
    let r = Reader::open(&f.config.db_path()).unwrap();
    let seqs = pending_seqs(&r, "a");
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6],
        "outbox order is capture order, whatever the clock said"
    );
    let d = r
        .status()
        .unwrap()
        .devices
        .into_iter()
        .find(|d| d.device == "d")
        .unwrap();
    assert_eq!(d.clock_offset_ms, Some(5_000));
    let incidents = r.status().unwrap().incidents;
    assert_eq!(
        incidents[0].kind, "clock_jump",
        "the step is on record for status"
    );
}

#[test]
fn a_batch_that_sqlite_rolls_back_answers_nobody_as_durable() {
    // Many scanners at once, each with a burst in flight, against a nearly full outbox:
    // SQLite rolls back the whole batch when one op hits the ceiling, taking the ops before
    // it along. None of them may be answered as stored, nor counted as seen (the device's
    // sequence), or the scanner's retransmit would be taken for a duplicate and lost.
    let mut f = Fixture::with_upstreams("rollback", &["a"]);
    f.config = Fixture::config(&f.dir, &["a"], "[store]\nmax_db_mb = 1\n");
    let (s, j) = f.open();
    let devices = 60u64;
    let mut acked = vec![0u64; devices as usize];
    for _round in 0..60 {
        let rx: Vec<_> = (0..devices)
            .flat_map(|d| {
                let from = acked[d as usize] + 1;
                (from..from + 3).map(move |seq| (d, seq))
            })
            .map(|(d, seq)| {
                let device = format!("d{d}");
                let sc = FramedScan {
                    code: format!("{}-{d}-{seq}", "Y".repeat(300)),
                    ..scan(&device, seq)
                };
                (d, s.framed_blocking(device, "p".into(), sc))
            })
            .collect();
        for (d, rx) in rx {
            if let Ok(out) = rx.blocking_recv().unwrap() {
                acked[d as usize] = acked[d as usize].max(out.acked());
            }
        }
    }
    close(s, j);
    let r = Reader::open(&f.config.db_path()).unwrap();
    let mut stored = vec![Vec::new(); devices as usize];
    for p in r.pending("a", 0, 1_000_000).unwrap() {
        let e = p.event().unwrap();
        stored[e.device[1..].parse::<usize>().unwrap()].push(e.seq);
    }
    let total: usize = stored.iter().map(Vec::len).sum();
    assert!(
        total < 60 * 3 * devices as usize,
        "the ceiling was reached: {total}"
    );
    for (d, seqs) in stored.iter().enumerate() {
        let want: Vec<u64> = (1..=acked[d]).collect();
        assert_eq!(seqs, &want, "d{d}: every acked scan stored, no gap");
    }
}

#[test]
fn a_local_scan_whose_id_a_relayed_scan_holds_is_refused_not_silently_dropped() {
    let f = Fixture::with_upstreams("collide", &["a"]);
    let (s, j) = f.open();
    // Another site's scanner, also called "d", relayed here first.
    let theirs = ScanEvent {
        event_id: EventId::new("d", 1),
        device: "d".into(),
        seq: 1,
        step: Step::Pick,
        code: "THEIR-CODE".into(),
        symbology: None,
        station: None,
        operator: None,
        captured_at_ms: 1_000,
        received_at_ms: 2_000,
    };
    let relayed = darkleg_protocol::relay::Relayed {
        event: theirs,
        site: "far".into(),
        gateway: "gw-9".into(),
        hops: vec!["far/gw-9".into()],
    };
    let stored = s
        .request_blocking(|reply| WriteOp::Relayed {
            port: "relay:far".into(),
            scans: vec![relayed.clone(), relayed],
            reply,
        })
        .blocking_recv()
        .unwrap()
        .unwrap();
    assert_eq!(stored, 1, "the second copy is a duplicate");
    hello(&s, "d", 0);
    assert_eq!(framed(&s, "d", 1), FramedOutcome::Refused { acked: 1 });
    assert_eq!(framed(&s, "d", 2), FramedOutcome::Stored { acked: 2 });
    close(s, j);
    let r = Reader::open(&f.config.db_path()).unwrap();
    let codes = pending_codes(&r, "a");
    assert_eq!(codes, ["THEIR-CODE", "d-code-2"]);
    let d = r
        .status()
        .unwrap()
        .devices
        .into_iter()
        .find(|d| d.device == "d")
        .unwrap();
    assert_eq!(d.refused, 1, "counted where an operator looks");
}

#[test]
fn a_hole_the_scanner_cannot_fill_is_taken_as_lost_after_many_passes_not_forever() {
    let f = Fixture::new("gap");
    let (s, j) = f.open();
    assert!(matches!(framed(&s, "d1", 1), FramedOutcome::Stored { .. }));
    // Seq 2 is gone from the scanner's flash: every go-back pass starts at 3.
    let passes = super::devices::GAP_PASSES;
    // A window of 8: each pass offers 3..=10; only the pass's first frame counts.
    for _ in 1..passes {
        for seq in 3..=10 {
            assert!(matches!(
                framed(&s, "d1", seq),
                FramedOutcome::OutOfOrder { acked: 1 }
            ));
        }
    }
    assert!(matches!(
        framed(&s, "d1", 3),
        FramedOutcome::Stored { acked: 3 }
    ));
    assert!(matches!(
        framed(&s, "d1", 4),
        FramedOutcome::Stored { acked: 4 }
    ));
    close(s, j);
    let st = Reader::open(&f.config.db_path()).unwrap().status().unwrap();
    assert!(
        st.incidents
            .iter()
            .any(|i| i.kind == "scanner_gap" && i.detail.contains("seqs 2..=2")),
        "{:?}",
        st.incidents
    );
}

#[test]
fn an_ordinary_go_back_is_not_mistaken_for_a_hole() {
    let f = Fixture::new("goback");
    let (s, j) = f.open();
    assert!(matches!(framed(&s, "d1", 1), FramedOutcome::Stored { .. }));
    // A window of 3..=9 arrives before 2 (2 was torn on the wire): each is refused once.
    for seq in 3..10 {
        assert!(matches!(
            framed(&s, "d1", seq),
            FramedOutcome::OutOfOrder { acked: 1 }
        ));
    }
    assert!(matches!(
        framed(&s, "d1", 2),
        FramedOutcome::Stored { acked: 2 }
    ));
    close(s, j);
}

#[test]
fn a_delivery_mark_whose_commit_failed_is_applied_once_the_store_takes_writes_again() {
    // The harness found it: a mark lost to a full disk left a delivered row owed for as long
    // as the connection that read past it lasted. Here the write lock is held elsewhere past
    // the busy timeout, which fails the mark's batch as a full disk would.
    let f = Fixture::with_upstreams("mark-retry", &["a"]);
    let (s, j) = f.open();
    hello(&s, "d", 0);
    for seq in 1..=3 {
        assert_eq!(framed(&s, "d", seq), FramedOutcome::Stored { acked: seq });
    }
    let r = Reader::open(&f.config.db_path()).unwrap();
    let rows: Vec<i64> = pending_rows(&r, "a");
    assert_eq!(rows.len(), 3);

    let mut other = rusqlite::Connection::open(f.config.db_path()).unwrap();
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    s.send_blocking(WriteOp::Delivered {
        upstream: "a".into(),
        rows: rows[..2].to_vec(),
        at_ms: crate::clock::now_ms(),
    })
    .unwrap();
    // Past the writer's 5 s busy timeout: the mark's batch has failed by now.
    std::thread::sleep(std::time::Duration::from_millis(5_600));
    assert_eq!(
        r.pending("a", 0, 10).unwrap().len(),
        3,
        "not applied while locked out"
    );
    drop(lock);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let left = loop {
        let left: Vec<i64> = pending_rows(&r, "a");
        if left.len() < 3 || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        left,
        rows[2..],
        "the held-back mark was applied, and only it"
    );
    let st = r.status().unwrap();
    assert_eq!(st.upstreams[0].delivered, 2, "counted once");
    drop(r);
    close(s, j);
}

#[test]
fn bookkeeping_that_does_not_fit_never_refuses_scans_nor_holds_back_delivery_marks() {
    // Review finding: a held port report whose write fails on a full store (a long last
    // reject) was retried at the head of every batch, rolled each back, and kept the marks
    // that make room from ever landing. Counters now commit on their own, after the scans.
    let mut f = Fixture::with_upstreams("held-full", &["a"]);
    f.config = Fixture::config(&f.dir, &["a"], "[store]\nmax_db_mb = 1\n");
    let (s, j) = f.open();
    let stored = fill_derived(&f, &s);
    // A report that cannot fit in a full store, then the upstream confirms everything.
    s.send_blocking(WriteOp::Port {
        port: "p".into(),
        protocol: "framed",
        report: PortReport {
            connected: true,
            frames: 1,
            rejected: 1,
            last_reject: Some("x".repeat(200_000)),
        },
    })
    .unwrap();
    let rows: Vec<i64> = {
        let r = Reader::open(&f.config.db_path()).unwrap();
        pending_rows(&r, "a")
    };
    assert_eq!(rows.len() as u64, stored);
    s.send_blocking(WriteOp::Delivered {
        upstream: "a".into(),
        rows,
        at_ms: crate::clock::now_ms(),
    })
    .unwrap();
    // Capture comes back: the marks landed and eviction made room behind them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let next = loop {
        match submit(&s, stored + 1) {
            Ok(o) => break o,
            Err(e) => {
                assert!(e.full, "only the full store refuses: {e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "capture never resumed"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    assert_eq!(next, FramedOutcome::Stored { acked: stored + 1 });
    close(s, j);
    let r = Reader::open(&f.config.db_path()).unwrap();
    let st = r.status().unwrap();
    assert_eq!(
        st.upstreams[0].delivered, stored as i64,
        "every mark counted once"
    );
    assert_eq!(st.upstreams[0].backlog, 1, "only the new scan is owed");
}

/// A row a sink cannot read stops its delivery (never a wrong event sent): `/healthz` must
/// hear of it while it lasts, and no more once the outbox reads again.
#[test]
fn an_unreadable_outbox_is_a_trouble_until_it_reads_again() {
    use crate::faults::trouble::problems_past;
    use std::time::Duration;
    let f = Fixture::with_upstreams("unreadable", &["unreadable-up"]);
    let (s, j) = f.open();
    ascii(&s, "JJD000111", 1000);
    close(s, j);
    let named = || {
        problems_past(Duration::from_secs(3600), Duration::ZERO)
            .into_iter()
            .filter(|l| l.contains("unreadable-up"))
            .collect::<Vec<_>>()
    };
    let raw = rusqlite::Connection::open(f.config.db_path()).unwrap();
    raw.execute("UPDATE events SET step = 'nonsense'", [])
        .unwrap();
    let r = Reader::open(&f.config.db_path()).unwrap();
    assert!(r.pending("unreadable-up", 0, 10).is_err());
    let lines = named();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("unknown step"), "{lines:?}");
    raw.execute("UPDATE events SET step = 'handover'", [])
        .unwrap();
    assert_eq!(r.pending("unreadable-up", 0, 10).unwrap().len(), 1);
    assert!(named().is_empty());
}

/// A replay moves dead letters back chunk by chunk (none lost or doubled, none left), and
/// the generation moves once, with the last chunk.
#[test]
fn a_replay_moves_every_dead_letter_back_in_short_transactions() {
    let f = Fixture::with_upstreams("replay-chunks", &["a"]);
    let (s, j) = f.open();
    close(s, j);
    let db = f.config.db_path();
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute_batch(
        "INSERT INTO webhooks(name, disabled_at, disabled_reason) VALUES ('merchant', 1, '410 Gone');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
         INSERT INTO messages(row, kind, topic, payload, created_at)
           SELECT 1000000 + i, 'milestone', 't', '{}', 0 FROM n;
         INSERT INTO webhook_dead_letters(webhook, row, status, reason, at)
           SELECT 'merchant', row, 422, 'refused', 0 FROM messages;
         -- one already back in the outbox, one whose message was pruned meanwhile
         INSERT INTO outbox(upstream, row) VALUES ('merchant', 1000007);
         INSERT INTO webhook_dead_letters(webhook, row, status, reason, at)
           VALUES ('merchant', 5000000, 422, 'refused', 0);",
    )
    .unwrap();
    let r = webhooks::replay_in_chunks(&db, "merchant", 1000).unwrap();
    assert_eq!(
        r.requeued, 2499,
        "every letter with a message, the one already back once"
    );
    assert!(r.was_disabled);
    let one = |sql: &str| raw.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(one("SELECT COUNT(*) FROM webhook_dead_letters"), 0);
    assert_eq!(
        one("SELECT COUNT(*) FROM outbox WHERE upstream = 'merchant'"),
        2500
    );
    assert_eq!(
        one("SELECT replays FROM webhooks WHERE name = 'merchant'"),
        1
    );
    assert_eq!(
        one("SELECT disabled_at IS NULL FROM webhooks WHERE name = 'merchant'"),
        1
    );
    assert!(webhooks::replay(&db, "nobody").is_err());
}

#[test]
fn sinks_read_no_further_than_the_durable_watermark() {
    let f = Fixture::new("watermark");
    let (s, j) = f.open();
    hello(&s, "d1", 0);
    for seq in 1..=3 {
        framed(&s, "d1", seq);
    }
    // Answered means synced: the watermark has reached every answered scan's row.
    let durable = *s.committed.borrow();
    let r = Reader::open(&f.config.db_path()).unwrap();
    let all = r.pending("a", 0, 100).unwrap();
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().all(|p| p.row <= durable),
        "answered before its watermark"
    );
    // A row above the watermark (committed, its sync still running) is not handed out.
    let below = r.pending_durable("a", 0, all[1].row, 100).unwrap();
    let rows: Vec<i64> = below.iter().map(|p| p.row).collect();
    assert_eq!(rows, vec![all[0].row, all[1].row]);
    close(s, j);
}
