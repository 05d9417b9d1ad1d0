//! The start-up check and salvage on real files: only damage moves a file aside (anything
//! else refuses to start and leaves the file and its scans alone), and a file moved aside
//! gives back its readable undelivered scans, at start and with `darkleg recover`.

use super::*;

/// `n` framed scans of `device` (seq 1..=n), pipelined, each stored.
fn fill(s: &StoreHandle, device: &str, n: u64) {
    hello(s, device, 0);
    let replies: Vec<_> = (1..=n)
        .map(|seq| s.framed_blocking(device.into(), "p".into(), scan(device, seq)))
        .collect();
    for (seq, r) in (1..=n).zip(replies) {
        assert_eq!(
            r.blocking_recv().unwrap().unwrap(),
            FramedOutcome::Stored { acked: seq }
        );
    }
}

/// Garbage over the pages between `from` and `to` (fractions of the file), the header
/// page kept: a failing card, a torn copy. Returns the new bytes.
fn garble(path: &Path, from: f64, to: f64) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 20, "a few pages: {}", bytes.len());
    let (a, b) = (
        ((pages as f64 * from) as usize).max(1),
        (pages as f64 * to) as usize,
    );
    for byte in &mut bytes[4096 * a..4096 * b] {
        *byte = 0xA5;
    }
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn aside(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("darkleg.db.damaged-")
        })
        .collect();
    v.sort();
    v
}

/// Every pending scan is the one the scanner made: same id, code and times.
fn assert_intact(r: &Reader, upstream: &str) {
    for p in r.pending(upstream, 0, 1_000_000).unwrap() {
        let e = p.event().unwrap();
        let want = scan(&e.device, e.seq);
        assert_eq!(e.event_id, darkleg_protocol::EventId::new(&e.device, e.seq));
        assert_eq!(
            (&e.code, e.captured_at_ms, e.received_at_ms),
            (&want.code, want.captured_at_ms, want.received_at_ms)
        );
    }
}

#[test]
fn a_database_locked_by_another_process_is_refused_and_left_untouched() {
    let f = Fixture::with_upstreams("locked", &["a"]);
    let (s, j) = f.open();
    fill(&s, "d", 50);
    close(s, j);
    let path = f.config.db_path();
    let before = std::fs::read(&path).unwrap();
    // An sqlite3 shell or a backup holding the file, not another darkleg (that one would
    // hold data_dir's lock).
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE row_seq SET last = last;",
        )
        .unwrap();
    let err = StoreHandle::open(&f.config)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "names the file: {err}"
    );
    assert!(
        err.contains("database is locked"),
        "SQLite's error and the hint: {err}"
    );
    assert!(err.contains("left untouched"), "{err}");
    assert!(aside(&f.dir).is_empty(), "nothing moved aside: {err}");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let (s, j) = f.open();
    close(s, j);
    let r = Reader::open(&path).unwrap();
    assert_eq!(pending_seqs(&r, "a"), (1..=50).collect::<Vec<_>>());
    assert!(r.status().unwrap().incidents.is_empty());
}

#[test]
fn a_database_path_that_cannot_be_opened_is_refused_not_moved() {
    let f = Fixture::with_upstreams("cantopen", &["a"]);
    // darkleg.db is a directory (a bad restore, say): SQLITE_CANTOPEN, not damage.
    std::fs::create_dir_all(f.config.db_path().join("x")).unwrap();
    let err = StoreHandle::open(&f.config)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    assert!(f.config.db_path().join("x").is_dir(), "left alone");
    assert!(aside(&f.dir).is_empty());
}

#[test]
fn a_damaged_database_is_moved_aside_and_its_undelivered_scans_salvaged() {
    let f = Fixture::with_upstreams("damaged", &["a"]);
    let (s, j) = f.open();
    fill(&s, "d", 3000);
    close(s, j);
    let path = f.config.db_path();
    let bytes = garble(&path, 0.4, 0.5);

    let (s, j) = f.open();
    // Sequencing continues above the salvaged scans: 3000 is known, not asked again.
    assert_eq!(hello(&s, "d", 0), 3000);
    assert_eq!(framed(&s, "d", 3001), FramedOutcome::Stored { acked: 3001 });
    close(s, j);
    let moved = aside(&f.dir);
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        bytes,
        "moved, not modified"
    );
    let r = Reader::open(&path).unwrap();
    let st = r.status().unwrap();
    assert_eq!(st.incidents.len(), 1);
    assert_eq!(st.incidents[0].kind, "damaged_db");
    let detail = &st.incidents[0].detail;
    assert!(detail.contains("damaged-"), "{detail}");
    let pending = pending_seqs(&r, "a");
    let salvaged = pending.len() as u64 - 1;
    assert!(
        detail.contains(&format!("salvaged {salvaged} undelivered scans")),
        "{detail}"
    );
    let lost = 3000 - salvaged;
    assert!(detail.contains(&format!("lost {lost} ")), "{detail}");
    assert!(lost > 0 && salvaged > 2000, "{detail}");
    assert_eq!(st.events as u64, salvaged + 1);
    assert!(pending.windows(2).all(|w| w[0] < w[1]), "old order kept");
    assert_intact(&r, "a");
}

#[test]
fn recover_salvages_a_damaged_copy_into_the_store_once() {
    let src = Fixture::with_upstreams("recover-src", &["a", "b"]);
    let (s, j) = src.open();
    fill(&s, "d", 2000);
    // `a` has the first half; `b` nothing.
    send_and_settle(
        &s,
        WriteOp::Delivered {
            upstream: "a".into(),
            rows: (1..=1000).collect(),
            at_ms: 1,
        },
    );
    close(s, j);
    let copy = src.dir.join("copy.db");
    std::fs::copy(src.config.db_path(), &copy).unwrap();
    garble(&copy, 0.6, 0.7);

    let dst = Fixture::with_upstreams("recover-dst", &["a", "b"]);
    let (s, j) = dst.open();
    fill(&s, "e", 10);
    close(s, j);
    let first = salvage::recover(&dst.config, &copy).unwrap();
    assert!(first.scans > 1000 && first.lost > 0, "{first}");
    let again = salvage::recover(&dst.config, &copy).unwrap();
    assert_eq!((again.scans, again.present), (0, first.scans), "{again}");

    let r = Reader::open(&dst.config.db_path()).unwrap();
    let of = |u: &str, d: &str| -> Vec<u64> {
        r.pending(u, 0, 1_000_000)
            .unwrap()
            .iter()
            .filter_map(|p| p.event())
            .filter(|e| e.device == d)
            .map(|e| e.seq)
            .collect()
    };
    assert!(
        of("a", "d").iter().all(|&q| q > 1000),
        "a had the first half"
    );
    assert!(of("b", "d").len() > of("a", "d").len());
    assert_eq!(of("a", "e").len(), 10, "the store's own scans untouched");
    // Every row was owed to `b`: each one salvaged or counted lost.
    assert_eq!(first.scans + first.lost, 2000, "{first}");
    assert_eq!(of("b", "d").len() as u64, first.scans, "{first}");
    assert_intact(&r, "b");
    let st = r.status().unwrap();
    assert!(
        st.incidents.iter().any(|i| i.kind == "recovered"),
        "{:?}",
        st.incidents
    );
    assert!(salvage::recover(&dst.config, &dst.config.db_path())
        .unwrap_err()
        .to_string()
        .contains("live database"));
}

/// A fixture whose start-up check runs beside serving, however small the file.
fn beside(name: &str) -> Fixture {
    let mut f = Fixture::with_upstreams(name, &["a"]);
    f.config = Fixture::config(&f.dir, &["a"], "[store]\nstartup_check = \"beside\"\n");
    f
}

#[test]
fn a_check_beside_serving_passes_an_intact_file_and_leaves_no_verdict() {
    let f = beside("beside-intact");
    let (s, j) = f.open();
    assert!(
        s.take_startup_check().is_none(),
        "no file yet: nothing to check"
    );
    fill(&s, "d", 500);
    close(s, j);
    let (s, j) = f.open();
    let snapshot = s
        .take_startup_check()
        .expect("an existing file is checked beside");
    // Serving goes on while the check holds its snapshot.
    assert_eq!(hello(&s, "d", 0), 500);
    assert_eq!(framed(&s, "d", 501), FramedOutcome::Stored { acked: 501 });
    let path = f.config.db_path();
    assert_eq!(integrity::finish(snapshot, &path), integrity::Found::Intact);
    assert!(!integrity::marker(&path).exists());
    close(s, j);
    assert!(aside(&f.dir).is_empty());
}

#[test]
fn damage_found_beside_serving_is_acted_on_at_the_next_start_with_what_was_acked_meanwhile() {
    let f = beside("beside-damaged");
    let (s, j) = f.open();
    fill(&s, "d", 3000);
    close(s, j);
    let path = f.config.db_path();
    // Damage where start-up does not read (a table at the end of the file): only the check
    // can find it.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE ballast(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO ballast SELECT randomblob(400) FROM n;",
    )
    .unwrap();
    drop(c);
    let bytes = garble(&path, 0.8, 0.95);

    // The damaged file is served while it is checked: scans acked meanwhile go to the WAL.
    let (s, j) = f.open();
    assert!(
        aside(&f.dir).is_empty(),
        "not moved before the check has spoken"
    );
    let snapshot = s.take_startup_check().expect("checked beside");
    let acked: Vec<u64> = (1..=20)
        .filter(|&seq| {
            let r = s.framed_blocking("e".into(), "p".into(), scan("e", seq));
            matches!(r.blocking_recv(), Ok(Ok(FramedOutcome::Stored { .. })))
        })
        .collect();
    let found = integrity::finish(snapshot, &path);
    assert!(matches!(found, integrity::Found::Damaged(_)), "{found:?}");
    // As the agent does on that verdict, before it stops.
    s.hold_checkpoints();
    assert_eq!(framed(&s, "e", 21), FramedOutcome::Stored { acked: 21 });
    let acked: Vec<u64> = acked.into_iter().chain([21]).collect();
    assert!(
        integrity::marker(&path).exists(),
        "the verdict is left for the next start"
    );
    close(s, j);

    // The next start acts on the verdict: moved aside, salvaged, the verdict consumed.
    let (s, j) = f.open();
    assert!(
        s.take_startup_check().is_none(),
        "the fresh file needs no check"
    );
    close(s, j);
    let moved = aside(&f.dir);
    assert!(!moved.is_empty());
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        bytes,
        "the main file was not written while it was checked"
    );
    assert!(!integrity::marker(&path).exists());
    let r = Reader::open(&path).unwrap();
    let st = r.status().unwrap();
    assert_eq!(st.incidents.len(), 1);
    let detail = &st.incidents[0].detail;
    assert!(detail.contains("the last run's start-up check"), "{detail}");
    let salvaged: Vec<u64> = r
        .pending("a", 0, 1_000_000)
        .unwrap()
        .iter()
        .filter_map(|p| p.event().filter(|e| e.device == "e").map(|e| e.seq))
        .collect();
    assert_eq!(
        salvaged, acked,
        "every scan acked during the check was salvaged"
    );
    assert_eq!(salvaged.len(), 21, "all were acked: {salvaged:?}");
    assert_eq!(
        pending_seqs(&r, "a").len(),
        3021,
        "and the 3000 from before"
    );
}

#[test]
fn damage_where_start_up_reads_is_checked_before_serving_even_beside() {
    let f = beside("beside-fallback");
    let (s, j) = f.open();
    fill(&s, "d", 3000);
    close(s, j);
    let path = f.config.db_path();
    // The ports table: start-up resets every port's state, so opening reads that page.
    let root: usize = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'ports'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 * (root - 1)..4096 * root].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();
    // Opening reads the damaged page: the check runs at once and the file moves aside.
    let (s, j) = f.open();
    assert!(s.take_startup_check().is_none());
    assert_eq!(hello(&s, "d", 0), 3000);
    close(s, j);
    assert!(!aside(&f.dir).is_empty(), "moved aside at once");
}
