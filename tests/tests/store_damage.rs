//! The start-up integrity check, with the real binary: a database another process holds is
//! not damage — the agent refuses to start, says why, and the file keeps every undelivered
//! scan; a truly damaged file is moved aside and its readable undelivered scans are
//! salvaged into the fresh store and delivered; `darkleg recover` does the same from a
//! damaged copy, once.

use darkleg_agent::config::Config;
use darkleg_protocol::{EventId, Step};
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::PlannedScan;
use darkleg_tests::*;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Scanners = Vec<(scanner::FramedScanner, usize)>;

/// One framed scanner scans `n` labels with `pad`-byte codes while the broker is away;
/// returns once every scan is acked (durable on the gateway, retired by the scanner).
fn scan_offline(rig: &mut Rig, tag: &str, n: u64, pad: usize) -> (Plans, Scanners) {
    let mut plans = Plans::new();
    let pty = rig.take_ptys().remove(0);
    let plan: Vec<PlannedScan> = (0..n)
        .map(|i| PlannedScan {
            step: Step::Pack,
            code: format!("{tag}-{i:05}-{}", "X".repeat(pad)),
            symbology: None,
        })
        .collect();
    let cfg = FramedConfig {
        scan_interval: Duration::from_millis(2),
        ..FramedConfig::new(&format!("{tag}-0"), 7)
    };
    let scanners = vec![start_framed(pty, cfg, plan, &mut plans)];
    assert!(
        wait_until(Duration::from_secs(90), || scanners
            .iter()
            .all(|(s, n)| s.done(*n))),
        "all {n} scans acked; log:\n{}",
        std::fs::read_to_string(&rig.log).unwrap_or_default()
    );
    (plans, scanners)
}

fn db_path(rig: &Rig) -> PathBuf {
    Config::load(&rig.config).unwrap().db_path()
}

/// Garbage over the pages between `from` and `to` (fractions of the file), header kept.
fn garble(path: &Path, from: f64, to: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 20, "a few pages: {}", bytes.len());
    let a = ((pages as f64 * from) as usize).max(1);
    let b = (pages as f64 * to) as usize;
    bytes[4096 * a..4096 * b].fill(0xA5);
    std::fs::write(path, &bytes).unwrap();
}

fn moved_aside(db: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.damaged-", db.file_name().unwrap().to_string_lossy());
    let mut v: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            // The file itself, not its -wal/-shm.
            name.starts_with(&prefix) && name.ends_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    v.sort();
    v
}

/// The number after `word ` in `text`.
fn count_after(text: &str, word: &str) -> u64 {
    let rest = &text[text
        .find(word)
        .unwrap_or_else(|| panic!("{word:?} in {text}"))
        + word.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number after {word:?} in {text}"))
}

/// Arrived scans: each one the scanner made (id from device and seq, planned code), no
/// duplicates counted; returns the distinct event ids.
fn arrived_from_plan(rig: &Rig, plans: &Plans) -> HashSet<String> {
    let mut ids = HashSet::new();
    for a in rig.collector.messages() {
        let j = &a.json;
        let device = j["device"].as_str().unwrap();
        let seq = j["seq"].as_u64().unwrap();
        let plan = &plans[device];
        assert_eq!(
            j["code"].as_str(),
            Some(plan[seq as usize - 1].code.as_str())
        );
        assert_eq!(
            j["event_id"].as_str().unwrap(),
            EventId::new(device, seq).to_string()
        );
        ids.insert(j["event_id"].as_str().unwrap().to_string());
    }
    ids
}

/// `darkleg run` that must refuse to start: its exit status and what it said. Fails if it
/// is still running after 30 s (it started on top of the file).
fn run_refused(rig: &Rig) -> (std::process::ExitStatus, String) {
    let err = rig.dir.0.join("refused.stderr");
    let mut child = Command::new(darkleg_bin())
        .args(["run", "--config"])
        .arg(&rig.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent started instead of refusing:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&err).unwrap_or_default())
}

/// Another process (an sqlite3 shell, a backup) holding `db` with an exclusive lock until
/// dropped. Python's sqlite3 module: CI installs python3 (.ci/run).
struct Holder(std::process::Child);

impl Holder {
    fn lock(db: &Path) -> Holder {
        let script = "import sqlite3, sys\n\
            c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
            c.execute('PRAGMA locking_mode = EXCLUSIVE')\n\
            c.execute('BEGIN EXCLUSIVE')\n\
            c.execute('UPDATE row_seq SET last = last')\n\
            print('held', flush=True)\n\
            sys.stdin.read()\n\
            c.execute('ROLLBACK')\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (CI installs it)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held", "the lock holder is ready");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn a_locked_database_refuses_to_start_and_keeps_every_undelivered_scan() {
    let mut rig = Rig::new("locked-db", &[PortKind::Framed]);
    rig.broker.stop();
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let (plans, scanners) = scan_offline(&mut rig, "LCK", 200, 20);
    agent.stop();
    let db = db_path(&rig);
    let before = std::fs::read(&db).unwrap();

    let holder = Holder::lock(&db);
    let (exit, said) = run_refused(&rig);
    assert!(!exit.success(), "a non-zero exit: {said}");
    assert!(
        said.contains(&db.display().to_string()),
        "names the file: {said}"
    );
    assert!(
        said.contains("database is locked"),
        "SQLite's error: {said}"
    );
    assert!(said.contains("another darkleg"), "a hint: {said}");
    assert!(moved_aside(&db).is_empty(), "nothing moved aside: {said}");
    drop(holder);
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file untouched");

    // Lock gone: the agent starts on the same file and delivers every scan.
    rig.broker.restart().unwrap();
    let _agent = rig.start_agent();
    let duplicates = rig.wait_all_arrived(&scanners, &plans, Duration::from_secs(60));
    let st = status(&rig.config);
    assert_eq!(st["incidents"], serde_json::json!([]), "{st}");
    eprintln!("locked: refused with {said:?}; then all 200 delivered, {duplicates} duplicates");
}

#[test]
fn a_damaged_database_is_moved_aside_and_its_readable_undelivered_scans_delivered() {
    let mut rig = Rig::new("damaged-db", &[PortKind::Framed]);
    rig.broker.stop();
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let n = 600;
    let (plans, _scanners) = scan_offline(&mut rig, "DMG", n, 200);
    agent.stop();
    let db = db_path(&rig);
    garble(&db, 0.4, 0.5);

    rig.broker.restart().unwrap();
    let _agent = rig.start_agent();
    // Until the agent has moved the damaged file aside, status reads it and says so.
    assert!(wait_until(Duration::from_secs(20), || try_status(
        &rig.config
    )
    .is_ok_and(|st| st["incidents"]
        .as_array()
        .is_some_and(|i| !i.is_empty()))));
    let st = status(&rig.config);
    let incident = &st["incidents"][0];
    assert_eq!(incident["kind"], "damaged_db", "{st}");
    let detail = incident["detail"].as_str().unwrap();
    let (salvaged, lost) = (count_after(detail, "salvaged"), count_after(detail, "lost"));
    assert_eq!(salvaged + lost, n, "{detail}");
    assert!(salvaged > n / 2 && lost > 0, "{detail}");
    assert_eq!(moved_aside(&db).len(), 1, "the damaged file kept");

    // The scanner retired all of them: what arrives now comes from the salvage.
    assert!(
        wait_until(
            Duration::from_secs(60),
            || arrived_from_plan(&rig, &plans).len() as u64 >= salvaged
        ),
        "{} of {salvaged} salvaged scans arrived; log:\n{}",
        arrived_from_plan(&rig, &plans).len(),
        std::fs::read_to_string(&rig.log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrived_from_plan(&rig, &plans).len() as u64, salvaged);
    assert!(wait_until(Duration::from_secs(20), || rig.backlog() == Some(0)));
    eprintln!("damaged: {detail}");
}

#[test]
fn recover_puts_a_damaged_copys_undelivered_scans_back_once() {
    let mut rig = Rig::new("recover-db", &[PortKind::Framed]);
    rig.broker.stop();
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let n = 600;
    let (plans, _scanners) = scan_offline(&mut rig, "RCV", n, 200);
    // Not while the agent runs: it holds the data_dir.
    let copy = rig.dir.0.join("copy.db");
    let recover = |file: &Path| {
        Command::new(darkleg_bin())
            .arg("recover")
            .arg(file)
            .arg("--config")
            .arg(&rig.config)
            .output()
            .unwrap()
    };
    agent.stop();
    let db = db_path(&rig);
    std::fs::copy(&db, &copy).unwrap();
    garble(&copy, 0.5, 0.6);
    // The store is lost (the copy is what is left): a fresh one takes the salvage.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let _running = rig.start_agent();
    assert!(wait_until(Duration::from_secs(20), || db.exists()
        && !status(&rig.config).is_null()));
    let out = recover(&copy);
    assert!(!out.status.success(), "refused while the agent runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another darkleg"));
    drop(_running);

    let first = recover(&copy);
    let said = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (salvaged, lost) = (count_after(&said, "salvaged"), count_after(&said, "lost"));
    assert_eq!(salvaged + lost, n, "{said}");
    assert!(salvaged > n / 2 && lost > 0, "{said}");
    let again = recover(&copy);
    let said_again = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success());
    assert_eq!(count_after(&said_again, "salvaged"), 0, "{said_again}");
    assert!(
        said_again.contains(&format!("({salvaged} already in the store)")),
        "{said_again}"
    );

    rig.broker.restart().unwrap();
    let _agent = rig.start_agent();
    assert!(
        wait_until(
            Duration::from_secs(60),
            || arrived_from_plan(&rig, &plans).len() as u64 >= salvaged
        ),
        "recovered scans delivered"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrived_from_plan(&rig, &plans).len() as u64, salvaged);
    let st = status(&rig.config);
    assert!(
        st["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "recovered"),
        "{st}"
    );
    eprintln!("recover: {said}");
}

/// `[store] startup_check = "beside"` (what a file over 32 MiB gets by default): the agent
/// serves at once while the check reads; damage found stops it with exit code 70, and the
/// next start moves the file aside on that verdict and delivers every scan. (Scans acked
/// while the check runs are salvaged too: a store unit test holds a check open for that.)
#[test]
fn damage_found_beside_serving_stops_the_agent_and_the_next_start_salvages_everything() {
    let mut rig = Rig::with_store(
        "damaged-beside",
        &[PortKind::Framed],
        "[store]\nstartup_check = \"beside\"\n",
    );
    rig.broker.stop();
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let n = 300;
    let (plans, _scanners) = scan_offline(&mut rig, "BSD", n, 200);
    agent.stop();
    let db = db_path(&rig);
    // Damage where start-up does not read: a table at the end of the file.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE ballast(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO ballast SELECT randomblob(400) FROM n;",
    )
    .unwrap();
    drop(c);
    garble(&db, 0.85, 0.95);

    let mut agent = rig.start_agent();
    let exit = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = agent.exit_code() {
                break code;
            }
            assert!(
                Instant::now() < deadline,
                "the agent kept running on a damaged file"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let log = std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert_eq!(exit, 70, "{log}");
    assert!(log.contains("found the database damaged"), "{log}");
    assert!(moved_aside(&db).is_empty(), "moved only at the next start");

    rig.broker.restart().unwrap();
    let _agent = rig.start_agent();
    let total = n;
    assert!(
        wait_until(
            Duration::from_secs(60),
            || arrived_from_plan(&rig, &plans).len() as u64 >= total
        ),
        "{} of {total} arrived; log:\n{}",
        arrived_from_plan(&rig, &plans).len(),
        tail(&rig.log, 40)
    );
    assert_eq!(moved_aside(&db).len(), 1, "the damaged file kept");
    let st = status(&rig.config);
    let detail = st["incidents"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("the last run's start-up check"), "{st}");
}
