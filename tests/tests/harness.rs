//! A seeded, randomized, model-based test of the whole gateway: each round draws a config
//! (upstreams with batch and window, merchant upstreams and routes, `synchronous`, maybe a
//! relay hop), a pick/pack workload for several merchants on framed and plain scanners and
//! apps posting to the HTTP intake (1, 3 or 10 scans a request, resent until answered) and a
//! DataWedge handheld on a `[[network_scanner]]` (TCP, reconnecting after restarts), and
//! a fault schedule (SIGKILL, broker stop and freeze, a proxy that stalls, delays and tears,
//! junk on the site broker, a full disk, a wiped store) from one seed — then runs it against
//! the real `darkleg` binary, a private Mosquitto and pty scanners, and checks what every
//! upstream ended with against the model (`darkleg_tests::model`).
//!
//! `DARKLEG_SEED=<seed>` replays one round; otherwise the master seed comes from the clock
//! and is printed first. `DARKLEG_SOAK_MINUTES=N` keeps drawing rounds for N minutes
//! (default: about 3 minutes in all). `DARKLEG_FAULTS=kill,broker,...` (or `none`) limits
//! the fault kinds; `DARKLEG_KEEP_GOING=1` runs every round and lists the failing seeds.

use darkleg_agent::sim::broker::Mosquitto;
use darkleg_agent::sim::collector::Collector;
use darkleg_tests::model::{
    self, BrokerAt, Enabled, Fault, Observed, Plan, ScannerKind, Target, UpKind, UpstreamPlan,
};
use darkleg_tests::proxy::Proxy;
use darkleg_tests::scanner::{write_ascii_scan, FramedConfig, FramedScanner, Pty};
use darkleg_tests::workload::PlannedScan;
use darkleg_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn seeded_rounds_of_config_workload_and_faults_match_the_model() {
    let replay = env_u64("DARKLEG_SEED");
    let master = replay.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        model::Rng::new(t.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64()
    });
    println!("harness master seed {master} (replay a round: DARKLEG_SEED=<its seed> cargo test -p darkleg-tests --test harness, with the same DARKLEG_FAULTS)");
    eprintln!("harness master seed {master}");
    let enabled = Enabled::from_env();
    // The plan a seed draws depends on the enabled kinds: a replay needs the same list.
    let faults = match std::env::var("DARKLEG_FAULTS") {
        Ok(v) if !v.trim().is_empty() => format!("DARKLEG_FAULTS={} ", v.trim()),
        _ => String::new(),
    };
    let budget = match env_u64("DARKLEG_SOAK_MINUTES") {
        Some(m) => Duration::from_secs(60 * m),
        None => Duration::from_secs(150),
    };
    // A replayed seed runs that round alone (unless a soak is asked for too).
    let max_rounds = env_u64("DARKLEG_ROUNDS").unwrap_or(
        if replay.is_some() && std::env::var_os("DARKLEG_SOAK_MINUTES").is_none() {
            1
        } else {
            u64::MAX
        },
    );
    let keep_going = std::env::var_os("DARKLEG_KEEP_GOING").is_some();
    let can_mount = !not_root();
    let start = Instant::now();
    let mut failed = Vec::new();
    let mut round = 0;
    // Start another round only if a typical one (~45 s) still fits.
    while round < max_rounds && (round == 0 || start.elapsed() + Duration::from_secs(45) < budget) {
        let seed = model::round_seed(master, round);
        let plan = Plan::generate(seed, &enabled, can_mount);
        eprintln!(
            "--- round {round}, seed {seed} ({:.0} s into the run)\n{plan}",
            start.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        match run_round(&plan) {
            Ok(summary) => eprintln!(
                "round {round} seed {seed} ok in {:.1} s: {summary}",
                t.elapsed().as_secs_f64()
            ),
            Err(report) => {
                let text = format!(
                    "HARNESS FAILURE, round {round}, seed {seed} (master seed {master})\n{plan}\n{report}\n\
                     replay: {faults}DARKLEG_SEED={seed} cargo test -p darkleg-tests --test harness -- --nocapture"
                );
                if !keep_going {
                    panic!("{text}");
                }
                eprintln!("{text}");
                failed.push(seed);
            }
        }
        round += 1;
    }
    assert!(
        failed.is_empty(),
        "{} of {round} rounds failed (master seed {master}); failing seeds: {failed:?}",
        failed.len()
    );
}

/// `darkleg status --json`, or `None` when it cannot answer (no database yet, a full disk).
fn try_status(config: &Path) -> Option<Value> {
    let out = Command::new(darkleg_bin())
        .arg("status")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .output()
        .ok()?;
    if !out.status.success() {
        // Kept for the failure report: "None" alone says nothing about why.
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        LAST_STATUS_ERROR.with(|e| *e.borrow_mut() = Some(why));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

thread_local! {
    static LAST_STATUS_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn device_events(config: &Path, device: &str) -> Option<u64> {
    let st = try_status(config)?;
    Some(
        st["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == device)
            .and_then(|d| d["events"].as_u64())
            .unwrap_or(0),
    )
}

/// Whether the store holds more than `before` events of `device` within 5 s: how a scan
/// that gets no ack (plain serial, DataWedge) is known durable.
fn one_more_stored(config: &Path, device: &str, before: u64) -> bool {
    wait_until(Duration::from_secs(5), || {
        device_events(config, device).is_some_and(|n| n > before)
    })
}

/// Sum of every upstream's backlog, and the upstreams' status lines.
fn backlogs(config: &Path) -> Option<(u64, String)> {
    let st = try_status(config)?;
    let ups = st["upstreams"].as_array()?;
    let sum = ups.iter().filter_map(|u| u["backlog"].as_u64()).sum();
    let text = ups
        .iter()
        .map(|u| {
            format!(
                "{}: backlog {} delivered {}",
                u["name"], u["backlog"], u["delivered"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some((sum, text))
}

fn ports_open(config: &Path, n: usize) -> bool {
    try_status(config).is_some_and(|st| {
        st["ports"].as_array().is_some_and(|p| {
            p.iter()
                .filter(|p| p["port"].as_str().is_some_and(|s| !s.starts_with("relay:")))
                .filter(|p| p["connected"] == true)
                .count()
                >= n
        })
    })
}

/// The relay's `relay:site` port in its status (`Null` if none).
fn relay_port(config: &Path) -> Value {
    try_status(config)
        .and_then(|st| {
            st["ports"]
                .as_array()?
                .iter()
                .find(|p| p["port"] == "relay:site")
                .cloned()
        })
        .unwrap_or_default()
}

/// "scanner port opened" lines in an agent log so far.
fn opened_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("scanner port opened")
        .count()
}

/// Waits until an agent started after the log had `before` "opened" lines has opened all
/// `n` ports itself (the status page still shows the killed agent's ports as connected for
/// a while).
fn wait_reopened(config: &Path, log: &Path, before: usize, n: usize) -> bool {
    wait_until(Duration::from_secs(20), || {
        opened_lines(log) >= before + n && ports_open(config, n)
    })
}

fn relay_connected(config: &Path) -> bool {
    try_status(config).is_some_and(|st| {
        st["ports"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["port"] == "relay:site" && p["connected"] == true)
        })
    })
}

fn signal(pid: Option<u32>, sig: &str) {
    if let Some(pid) = pid {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }
}

fn upstream_toml(u: &UpstreamPlan, url: &str) -> String {
    let mut t = format!(
        "[[upstream]]\nname = \"{}\"\nurl = \"{url}\"\ntopic_prefix = \"{}\"\nkeep_alive_secs = 5\nwindow = {}\nbatch = {}\n",
        u.name, u.prefix, u.window, u.batch
    );
    if let UpKind::Merchant(m) = u.kind {
        t.push_str(&format!("merchant = \"{m}\"\n"));
    }
    t.push('\n');
    t
}

/// The `[[upstream]]` and `[[route]]` tables of the plan's upstreams, all at `url`.
fn upstreams_toml(plan: &Plan, url: &str) -> String {
    let mut t: String = plan
        .upstreams
        .iter()
        .map(|u| upstream_toml(u, url))
        .collect();
    for u in &plan.upstreams {
        if let UpKind::Route(m) = u.kind {
            t.push_str(&format!(
                "[[route]]\nto = [\"{}\"]\nmerchant = \"{m}\"\ncarries = [\"events\", \"milestones\"]\n\n",
                u.name
            ));
        }
    }
    t
}

fn log_tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Fills `dir` with a ballast file until the filesystem says it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast.bin");
    if let Ok(mut f) = std::fs::File::create(&path) {
        let chunk = vec![b'.'; 256 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    path
}

/// Writes plain-scanner scans one by one, each only while the agent is up (the gate), and
/// counts a scan acked once the agent's store holds one more event of this device. The pty
/// is handed back with the results: a scanner done with its plan stays plugged in (dropping
/// the master would remove the port, and a restart later in the round would miss it).
fn ascii_writer(
    mut pty: Pty,
    scans: Vec<PlannedScan>,
    interval: Duration,
    garbage: bool,
    gate: Arc<RwLock<()>>,
    config: PathBuf,
    seed: u64,
) -> std::thread::JoinHandle<(Vec<(PlannedScan, bool)>, Pty)> {
    std::thread::spawn(move || {
        let device = ascii_device(&pty.slave_path);
        let mut rng = model::Rng::new(seed);
        let mut out = Vec::new();
        for scan in scans {
            std::thread::sleep(interval);
            let _up = gate.read().unwrap_or_else(|e| e.into_inner());
            let Some(before) = device_events(&config, &device) else {
                out.push((scan, false));
                continue;
            };
            if garbage && rng.chance(0.3) {
                let mut line = vec![0x02];
                for _ in 0..rng.range(1, 20) {
                    line.push(rng.pick(&[0x01u8, 0x07, 0x1B, 0x7F, b'A', b'9']));
                }
                line.extend_from_slice(b"\r\n");
                let _ = pty.master.write_all(&line);
            }
            if write_ascii_scan(&mut pty.master, &scan).is_err() {
                out.push((scan, false));
                continue;
            }
            let acked = one_more_stored(&config, &device, before);
            out.push((scan, acked));
        }
        (out, pty)
    })
}

/// A handheld's DataWedge IP output: one TCP connection, a scan line every `interval`, each
/// only while the agent is up (the gate) and counted acked once the store holds one more
/// event of the device, as [`ascii_writer`] does. DataWedge reconnects when its connection
/// died: here after every restart of the dock (`restarts`), before the next scan. Each
/// result: (scan, sent, acked) — a line that could not be written at all was not sent.
fn wedge_writer(
    port: u16,
    scans: Vec<PlannedScan>,
    interval: Duration,
    gate: Arc<RwLock<()>>,
    restarts: Arc<AtomicU64>,
    config: PathBuf,
) -> std::thread::JoinHandle<Vec<(PlannedScan, bool, bool)>> {
    std::thread::spawn(move || {
        let device = "gw-01:127.0.0.1";
        let connect = || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    return Some(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        };
        let mut conn: Option<(u64, std::net::TcpStream)> = None;
        let mut out = Vec::new();
        for scan in scans {
            std::thread::sleep(interval);
            let _up = gate.read().unwrap_or_else(|e| e.into_inner());
            let generation = restarts.load(Ordering::SeqCst);
            if conn.as_ref().is_none_or(|(g, _)| *g != generation) {
                conn = connect().map(|s| (generation, s));
            }
            let Some(before) = device_events(&config, device) else {
                out.push((scan, false, false));
                continue;
            };
            // With its AIM identifier, as DataWedge sends it when told to (GS1 routing needs it).
            let line = format!("{}{}\n", scan.symbology.as_deref().unwrap_or(""), scan.code);
            let sent = conn
                .as_mut()
                .is_some_and(|(_, s)| s.write_all(line.as_bytes()).is_ok());
            if !sent {
                conn = None;
                out.push((scan, false, false));
                continue;
            }
            let acked = one_more_stored(&config, device, before);
            out.push((scan, true, acked));
        }
        out
    })
}

/// What an app was answered durable (by seq), and what went wrong.
type AppOutcome = (Vec<(u64, PlannedScan)>, Vec<String>);

/// An app on the HTTP intake: its scans numbered from 1, `batch` a request, one request
/// every `every`, each resent until answered 200 (through kills, full disks, a wiped store).
/// Returns what was answered `stored` or `duplicate`, by seq, and every answer no app should
/// ever get (a 409 or 400, a scan rejected, none within 60 s).
fn http_app(
    port: u16,
    device: String,
    scans: Vec<PlannedScan>,
    batch: u64,
    every: Duration,
    wipe_gate: Arc<RwLock<()>>,
) -> std::thread::JoinHandle<AppOutcome> {
    std::thread::spawn(move || {
        let (mut answered, mut trouble) = (Vec::new(), Vec::new());
        let numbered: Vec<(u64, PlannedScan)> = scans
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i as u64 + 1, s))
            .collect();
        for chunk in numbered.chunks(batch as usize) {
            std::thread::sleep(every);
            let body: Vec<Value> = chunk
                .iter()
                .map(|(seq, s)| {
                    let mut j = serde_json::json!({"device": device, "seq": seq, "code": s.code, "step": s.step.as_str()});
                    if let Some(sym) = &s.symbology {
                        j["symbology"] = sym.as_str().into();
                    }
                    j
                })
                .collect();
            let body = serde_json::json!({ "scans": body }).to_string();
            let _up = wipe_gate.read().unwrap_or_else(|e| e.into_inner());
            let t0 = Instant::now();
            let mut last = String::from("none");
            let outcome = loop {
                if t0.elapsed() > Duration::from_secs(60) {
                    break Err(format!(
                        "app {device}: seqs from {} not answered 200 within 60 s; the last answer: {last}",
                        chunk[0].0
                    ));
                }
                let answer = post_scans(port, None, &body);
                if let Some((code, _, body)) = &answer {
                    last = format!("{code} {body}");
                }
                match answer {
                    // Down, full or busy: resend, as an app would.
                    None => {}
                    Some((200, _, answer)) => {
                        let results = answer["results"].as_array().cloned().unwrap_or_default();
                        let st: Vec<&str> = results
                            .iter()
                            .map(|r| r["status"].as_str().unwrap_or("?"))
                            .collect();
                        if st.len() == chunk.len()
                            && st.iter().all(|s| *s == "stored" || *s == "duplicate")
                        {
                            break Ok(());
                        }
                        if st
                            .iter()
                            .any(|s| !matches!(*s, "stored" | "duplicate" | "not_stored"))
                        {
                            break Err(format!("app {device}: seqs from {}: {answer}", chunk[0].0));
                        }
                    }
                    Some((code @ (400 | 409), _, answer)) => {
                        break Err(format!(
                            "app {device}: seqs from {} answered {code}: {answer}",
                            chunk[0].0
                        ));
                    }
                    Some(_) => {}
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            match outcome {
                Ok(()) => answered.extend(chunk.iter().cloned()),
                Err(e) => {
                    trouble.push(e);
                    break;
                }
            }
        }
        (answered, trouble)
    })
}

/// A framed scanner of the plan, with what it needs to be put down and picked up again.
struct Framed {
    device: String,
    scanner: FramedScanner,
    plan: Vec<PlannedScan>,
    cfg: FramedConfig,
    master: serialport::TTYPort,
    /// (seq, code) stored in earlier sessions.
    earlier: Vec<(u64, String)>,
}

impl Framed {
    /// The operator puts the scanner down: the firmware stops, its flash keeps what it holds.
    fn pause(&mut self) {
        self.scanner.stop();
    }

    /// Picked up again: the same flash, continuing the plan where it stopped.
    fn resume(&mut self) {
        let st = self.scanner.stats();
        self.earlier.extend(st.stored.iter().cloned());
        let cfg = FramedConfig {
            flash: Some(self.scanner.flash()),
            resume_after: st.scanned,
            ..self.cfg.clone()
        };
        let master = self.master.try_clone_native().expect("pty clone");
        self.scanner = FramedScanner::start(master, cfg, self.plan.clone());
    }
}

/// Waits until the backlog is 0 and stays 0 with nothing more delivered for a second and a
/// half (the deriver runs behind ingest: its milestones join the backlog a moment later).
fn wait_drained(config: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut quiet_since: Option<(Instant, String)> = None;
    while Instant::now() < deadline {
        match backlogs(config) {
            Some((0, text)) => match &quiet_since {
                Some((t, before)) if *before == text => {
                    if t.elapsed() > Duration::from_millis(1_500) {
                        return true;
                    }
                }
                _ => quiet_since = Some((Instant::now(), text)),
            },
            _ => quiet_since = None,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

struct Relay {
    site: Mosquitto,
    site_proxy: Arc<Proxy>,
    config: PathBuf,
    log: PathBuf,
    agent: Option<Agent>,
}

/// Runs one round; `Ok` with a summary line, or `Err` with what went wrong (and the logs).
fn run_round(plan: &Plan) -> Result<String, String> {
    let dir = Scratch::new(&format!("harness-{}", plan.seed));
    let mut failures: Vec<String> = Vec::new();
    let mut up_broker = Mosquitto::start(&dir.0.join("up-broker")).map_err(|e| e.to_string())?;
    let up_proxy = Proxy::start(up_broker.port);
    let collectors: Vec<Collector> = plan
        .upstreams
        .iter()
        .map(|u| {
            Collector::start(
                up_broker.port,
                &format!("{}/#", u.prefix),
                &format!("h-{}-{}", plan.seed, u.name),
            )
        })
        .collect();
    for c in &collectors {
        assert!(c.wait_subscribed(Duration::from_secs(10)), "subscriber up");
    }
    let data = dir.0.join("data");
    let tmpfs = if plan.tmpfs {
        Some(Tmpfs::mount(&data, "24m").map_err(|e| format!("tmpfs: {e}"))?)
    } else {
        None
    };

    // The dock: its scanners' ports, and where it publishes.
    // (Apps on the HTTP intake have none.)
    let ptys: Vec<Option<Pty>> = plan
        .scanners
        .iter()
        .map(|s| {
            (!matches!(s.kind, ScannerKind::Http { .. } | ScannerKind::Wedge))
                .then(|| Pty::open().expect("pty"))
        })
        .collect();
    let entries: Vec<ScannerEntry<'_>> = ptys
        .iter()
        .zip(&plan.scanners)
        .filter_map(|(p, s)| {
            let protocol = match s.kind {
                ScannerKind::Framed { .. } => "framed",
                ScannerKind::Ascii { .. } => "ascii",
                ScannerKind::Http { .. } | ScannerKind::Wedge => return None,
            };
            let station = match s.kind {
                ScannerKind::Framed { at_station: false } => None,
                _ => Some(s.step.as_str()),
            };
            Some(ScannerEntry {
                port: &p.as_ref()?.slave_path,
                protocol,
                station,
            })
        })
        .collect();
    let intake = plan
        .scanners
        .iter()
        .any(|s| matches!(s.kind, ScannerKind::Http { .. }))
        .then(|| darkleg_agent::sim::broker::free_port().expect("a port for the intake"));
    let mut common = format!("[store]\nsynchronous = \"{}\"\n\n", plan.synchronous);
    if plan.merchants {
        common.push_str(model::MERCHANTS);
        common.push('\n');
    }
    let mut relay = None;
    let dock_extra = match &plan.relay {
        None => format!("{common}{}", upstreams_toml(plan, &up_proxy.url())),
        Some(r) => {
            let site = Mosquitto::start(&dir.0.join("site-broker")).map_err(|e| e.to_string())?;
            let site_proxy = Arc::new(Proxy::start(site.port));
            let relay_dir = dir.0.join("relay");
            std::fs::create_dir_all(&relay_dir).unwrap();
            let config = relay_dir.join("gateway.toml");
            std::fs::write(
                &config,
                format!(
                    "[gateway]\nsite = \"3pl\"\nid = \"relay\"\ndata_dir = \"{}\"\n\n{common}[[relay]]\nname = \"site\"\nurl = \"{}\"\ntopics = [\"darkleg/v1/+/+/events\"]\nkeep_alive_secs = 5\n\n{}",
                    relay_dir.join("data").display(),
                    site_proxy.url(),
                    upstreams_toml(plan, &up_proxy.url())
                ),
            )
            .unwrap();
            let dock_up = UpstreamPlan {
                name: "site".into(),
                prefix: "darkleg/v1".into(),
                batch: r.dock_batch,
                window: r.dock_window,
                kind: UpKind::Everything,
            };
            let extra = format!("{common}{}", upstream_toml(&dock_up, &site.url()));
            relay = Some(Relay {
                site,
                site_proxy,
                log: relay_dir.join("agent.log"),
                config,
                agent: None,
            });
            extra
        }
    };
    let dock_extra = match intake {
        Some(port) => format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[intake]\nallow_unauthenticated = true\n\n{dock_extra}"
        ),
        None => dock_extra,
    };
    let wedge = plan.scanners.iter().find(|s| s.kind == ScannerKind::Wedge);
    let wedge_port = wedge.map(|_| darkleg_agent::sim::broker::free_port().expect("a port"));
    let dock_extra = match (wedge, wedge_port) {
        (Some(w), Some(port)) => format!(
            "{dock_extra}\n[[network_scanner]]\nlisten = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\nstation = \"{}\"\n",
            w.step.as_str()
        ),
        _ => dock_extra,
    };
    let config = write_config_with(&dir.0, &entries, None, &dock_extra);
    let log = dir.0.join("agent.log");
    let check_config = Command::new(darkleg_bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    if !check_config.status.success() {
        return Err(format!(
            "the generated config does not check: {}",
            String::from_utf8_lossy(&check_config.stderr)
        ));
    }

    // The relay first (its session must exist before the dock publishes), over a slow link
    // if the plan says so.
    let started = Instant::now();
    if let (Some(rl), Some(r)) = (relay.as_mut(), plan.relay.as_ref()) {
        if let Some(ms) = r.slow_chunk_ms {
            rl.site_proxy.delay(Duration::from_millis(ms));
        }
        rl.agent = Some(Agent::start(&rl.config, &rl.log));
        // A slow link is still a link: the relay must connect over it (the delay stays on
        // until then), within the same bound as over a fast one.
        if !wait_until(Duration::from_secs(20), || relay_connected(&rl.config)) {
            return Err(format!(
                "the relay did not connect to the site broker within 20 s{}; relay log:\n{}",
                match r.slow_chunk_ms {
                    Some(ms) => format!(" (over a slow link: {ms} ms per chunk)"),
                    None => String::new(),
                },
                log_tail(&rl.log, 30)
            ));
        }
        // "Connected" is reported on CONNACK; the subscription is in place only once the
        // relay sees what is published — wait for a probe to be rejected, or the dock's
        // first events could reach the site broker before the relay's first session
        // subscribed.
        let probed = wait_until(Duration::from_secs(20), || {
            let _ = publish_as(rl.site.port, None, "darkleg/v1/e2e/probe/events", b"probe");
            std::thread::sleep(Duration::from_millis(300));
            relay_port(&rl.config)["rejected"].as_u64() > Some(0)
        });
        if !probed {
            return Err(format!(
                "the relay took no message from the site broker within 20 s of connecting; relay log:\n{}",
                log_tail(&rl.log, 30)
            ));
        }
        if r.slow_chunk_ms.is_some() {
            let p = rl.site_proxy.clone();
            let until = r.slow_for_ms;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(until));
                p.delay(Duration::ZERO);
            });
        }
    }
    let mut dock = Some(Agent::start(&config, &log));
    let n_ports = entries.len();
    if !wait_until(Duration::from_secs(20), || ports_open(&config, n_ports)) {
        return Err(format!(
            "the dock did not open its {n_ports} ports; log:\n{}",
            log_tail(&log, 30)
        ));
    }

    // The workload.
    let gate = Arc::new(RwLock::new(()));
    // Apps post through kills and full disks (resending until answered); only a wipe,
    // which must find everything delivered, waits for their requests in flight.
    let wipe_gate = Arc::new(RwLock::new(()));
    let mut framed: Vec<Framed> = Vec::new();
    let mut ascii = Vec::new();
    let mut apps = Vec::new();
    let mut wedges = Vec::new();
    // Bumped each time the dock is started again: a handheld's connection is then dead.
    let restarts = Arc::new(AtomicU64::new(0));
    let mut written: BTreeSet<(String, String)> = BTreeSet::new();
    for (i, (s, pty)) in plan.scanners.iter().zip(ptys).enumerate() {
        match s.kind {
            ScannerKind::Http { batch } => {
                let device = format!("{}-{}", s.name, plan.seed % 10_000);
                for scan in &s.scans {
                    written.insert((device.clone(), scan.code.clone()));
                }
                let port = intake.expect("an intake for the apps");
                let every = Duration::from_millis(s.interval_ms * batch);
                let h = http_app(
                    port,
                    device.clone(),
                    s.scans.clone(),
                    batch,
                    every,
                    wipe_gate.clone(),
                );
                apps.push((device, h));
            }
            ScannerKind::Wedge => {
                let device = "gw-01:127.0.0.1".to_string();
                for scan in &s.scans {
                    written.insert((device.clone(), scan.code.clone()));
                }
                let h = wedge_writer(
                    wedge_port.expect("a listener for the handheld"),
                    s.scans.clone(),
                    Duration::from_millis(s.interval_ms),
                    gate.clone(),
                    restarts.clone(),
                    config.clone(),
                );
                wedges.push((device, h));
            }
            ScannerKind::Framed { .. } => {
                let pty = pty.expect("a framed scanner's pty");
                let device = format!("{}-{}", s.name, plan.seed % 10_000);
                for scan in &s.scans {
                    written.insert((device.clone(), scan.code.clone()));
                }
                let cfg = FramedConfig {
                    window: s.window,
                    retransmit_after: Duration::from_millis(500),
                    scan_interval: Duration::from_millis(s.interval_ms),
                    garbage: s.noise,
                    ..FramedConfig::new(&device, plan.seed ^ i as u64)
                };
                let master = pty.master.try_clone_native().expect("pty clone");
                let scanner = FramedScanner::start(pty.master, cfg.clone(), s.scans.clone());
                framed.push(Framed {
                    device,
                    scanner,
                    plan: s.scans.clone(),
                    cfg,
                    master,
                    earlier: Vec::new(),
                });
            }
            ScannerKind::Ascii { garbage } => {
                let pty = pty.expect("a plain scanner's pty");
                let device = ascii_device(&pty.slave_path);
                for scan in &s.scans {
                    written.insert((device.clone(), scan.code.clone()));
                }
                let h = ascii_writer(
                    pty,
                    s.scans.clone(),
                    Duration::from_millis(s.interval_ms),
                    garbage,
                    gate.clone(),
                    config.clone(),
                    plan.seed ^ (i as u64) << 8,
                );
                ascii.push((device, h));
            }
        }
    }

    // The faults, one after another.
    let t0 = Instant::now();
    for (at, fault) in &plan.faults {
        let due = t0 + Duration::from_millis(*at);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let t = t0.elapsed().as_millis();
        eprintln!("  [{t:>6} ms] {fault:?}");
        match fault {
            Fault::Kill {
                target: Target::Dock,
                down_ms,
            } => {
                let _g = gate.write().unwrap_or_else(|e| e.into_inner());
                if let Some(mut a) = dock.take() {
                    a.kill9();
                }
                std::thread::sleep(Duration::from_millis(*down_ms));
                let before = opened_lines(&log);
                dock = Some(Agent::start(&config, &log));
                restarts.fetch_add(1, Ordering::SeqCst);
                if !wait_reopened(&config, &log, before, n_ports) {
                    failures.push(format!(
                        "after a SIGKILL at {t} ms the dock did not reopen its ports within 20 s"
                    ));
                }
            }
            Fault::Kill {
                target: Target::Relay,
                down_ms,
            } => {
                let rl = relay.as_mut().expect("a relay in this plan");
                if let Some(mut a) = rl.agent.take() {
                    a.kill9();
                }
                std::thread::sleep(Duration::from_millis(*down_ms));
                rl.agent = Some(Agent::start(&rl.config, &rl.log));
                if !wait_until(Duration::from_secs(30), || relay_connected(&rl.config)) {
                    failures.push(format!(
                        "after a SIGKILL at {t} ms the relay did not reconnect to the site broker within 30 s"
                    ));
                }
            }
            Fault::BrokerStop { at, down_ms } => {
                let b = match at {
                    BrokerAt::Upstream => &mut up_broker,
                    BrokerAt::Site => &mut relay.as_mut().expect("relay").site,
                };
                b.stop();
                std::thread::sleep(Duration::from_millis(*down_ms));
                if let Err(e) = b.restart() {
                    return Err(format!("mosquitto did not come back on its port: {e}"));
                }
            }
            Fault::BrokerFreeze { at, ms } => {
                let b = match at {
                    BrokerAt::Upstream => &up_broker,
                    BrokerAt::Site => &relay.as_ref().expect("relay").site,
                };
                signal(b.pid(), "STOP");
                std::thread::sleep(Duration::from_millis(*ms));
                signal(b.pid(), "CONT");
            }
            Fault::Stall { ms } => {
                up_proxy.stall();
                std::thread::sleep(Duration::from_millis(*ms));
                up_proxy.resume();
            }
            Fault::Delay { per_chunk_ms, ms } => {
                up_proxy.delay(Duration::from_millis(*per_chunk_ms));
                std::thread::sleep(Duration::from_millis(*ms));
                up_proxy.delay(Duration::ZERO);
            }
            Fault::Cut => {
                wait_until(Duration::from_secs(3), || up_proxy.connections() > 0);
                up_proxy.cut();
            }
            Fault::Junk { oversized } => {
                let rl = relay.as_ref().expect("relay");
                let payload = if *oversized {
                    vec![b'x'; 300 * 1024]
                } else {
                    b"{\"schema\":\"darkleg.scan.v1\",".to_vec()
                };
                if let Err(e) =
                    publish_as(rl.site.port, None, "darkleg/v1/e2e/gw-99/events", &payload)
                {
                    eprintln!("  junk publish failed: {e}");
                }
            }
            Fault::DiskFull { ms } => {
                // Plain scanners pause: a line refused now and stored later would make the
                // next line look durable before it is.
                let _g = gate.write().unwrap_or_else(|e| e.into_inner());
                let b = fill(&data);
                std::thread::sleep(Duration::from_millis(*ms));
                let _ = std::fs::remove_file(&b);
            }
            Fault::Wipe => {
                let _g = gate.write().unwrap_or_else(|e| e.into_inner());
                let _apps = wipe_gate.write().unwrap_or_else(|e| e.into_inner());
                // An operator's wipe: scanners put down, and only once everything stored —
                // scans and the milestones derived from them — was delivered.
                for f in &mut framed {
                    f.pause();
                }
                let drained = wait_drained(&config, Duration::from_secs(30));
                if !drained {
                    failures.push(format!(
                        "before the wipe at {t} ms the dock's backlog did not drain within 30 s: {:?}",
                        backlogs(&config).map(|b| b.1)
                    ));
                    for f in &mut framed {
                        f.resume();
                    }
                    continue;
                }
                if let Some(mut a) = dock.take() {
                    a.stop();
                }
                if let Ok(entries) = std::fs::read_dir(&data) {
                    for e in entries.flatten() {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
                let before = opened_lines(&log);
                dock = Some(Agent::start(&config, &log));
                restarts.fetch_add(1, Ordering::SeqCst);
                if !wait_reopened(&config, &log, before, n_ports) {
                    failures.push(format!(
                        "after the wipe at {t} ms the dock did not reopen its ports within 20 s"
                    ));
                }
                for f in &mut framed {
                    f.resume();
                }
            }
        }
    }
    up_proxy.resume();
    up_proxy.delay(Duration::ZERO);
    if let Some(rl) = &relay {
        rl.site_proxy.delay(Duration::ZERO);
    }
    let faults_over = started.elapsed();

    // Everything healed: the scanners finish, the backlogs drain, the model's state arrives.
    let done = wait_until(Duration::from_secs(90), || {
        framed.iter().all(|f| f.scanner.done(f.plan.len()))
    });
    if !done {
        for Framed {
            device,
            scanner: s,
            plan: p,
            ..
        } in &framed
        {
            let st = s.stats();
            if !s.done(p.len()) {
                failures.push(format!(
                    "framed scanner {device}: {} of {} scanned, acked up to {}, {} still held 90 s after the faults",
                    st.scanned,
                    p.len(),
                    st.acked,
                    st.pending
                ));
            }
        }
    }
    let mut acked: Vec<(String, Option<u64>, PlannedScan)> = Vec::new();
    for f in &framed {
        let st = f.scanner.stats();
        let (device, p) = (&f.device, &f.plan);
        let stored = f.earlier.iter().chain(&st.stored);
        for (i, (seq, code)) in stored.enumerate() {
            if *seq <= st.acked {
                debug_assert_eq!(&p[i].code, code);
                acked.push((device.clone(), Some(*seq), p[i].clone()));
            }
        }
    }
    let mut http_acked = 0;
    for (device, h) in apps {
        let (answered, trouble) = h.join().expect("app thread");
        failures.extend(trouble);
        http_acked += answered.len();
        for (seq, scan) in answered {
            acked.push((device.clone(), Some(seq), scan));
        }
    }
    let mut ascii_acked = 0;
    let mut ascii_total = 0;
    let mut ascii_unacked = Vec::new();
    let mut plugged = Vec::new();
    // Plain scanners' and the handheld's scans: (device, scan, sent, acked); a plain
    // scanner's write to its pty always goes out.
    let mut unacked_kinds: Vec<(String, PlannedScan, bool, bool)> = Vec::new();
    for (device, h) in wedges {
        for (scan, sent, ok) in h.join().expect("handheld thread") {
            unacked_kinds.push((device.clone(), scan, sent, ok));
        }
    }
    for (device, h) in ascii {
        let (results, pty) = h.join().expect("plain scanner thread");
        plugged.push(pty);
        for (scan, ok) in results {
            unacked_kinds.push((device.clone(), scan, true, ok));
        }
    }
    for (device, scan, sent, ok) in unacked_kinds {
        ascii_total += 1;
        if ok {
            ascii_acked += 1;
            acked.push((device, None, scan));
        } else if sent {
            ascii_unacked.push((device, scan.code));
        }
    }
    let drain_bound = Duration::from_secs(60);
    let drain_start = Instant::now();
    let mut configs = vec![("dock", config.clone())];
    if let Some(rl) = &relay {
        configs.push(("relay", rl.config.clone()));
    }
    for (name, c) in &configs {
        let rest = drain_bound.saturating_sub(drain_start.elapsed());
        if !wait_until(rest, || backlogs(c).is_some_and(|(n, _)| n == 0)) {
            failures.push(format!(
                "the {name}'s backlog did not reach 0 within {} s after the faults stopped: {:?}",
                drain_bound.as_secs(),
                backlogs(c).map(|b| b.1)
            ));
        }
    }
    let observe = |collectors: &[Collector]| -> Vec<_> {
        collectors.iter().map(Collector::messages).collect()
    };
    let mut findings = model::check(
        plan,
        &Observed {
            arrivals: observe(&collectors),
            acked: &acked,
            written: &written,
        },
    );
    let arrive_deadline = Instant::now() + Duration::from_secs(20);
    while !findings.failures.is_empty() && Instant::now() < arrive_deadline {
        std::thread::sleep(Duration::from_millis(500));
        findings = model::check(
            plan,
            &Observed {
                arrivals: observe(&collectors),
                acked: &acked,
                written: &written,
            },
        );
    }
    // A little longer, for late strays a check could still catch (a second id, say).
    std::thread::sleep(Duration::from_millis(500));
    let findings = model::check(
        plan,
        &Observed {
            arrivals: observe(&collectors),
            acked: &acked,
            written: &written,
        },
    );
    failures.extend(findings.failures.iter().cloned());
    // A plain scan is written only while the agent runs: one the store did not take within
    // 5 s, with no full disk to explain it, was dropped — unless it turns up later.
    if let Some(i) = plan
        .upstreams
        .iter()
        .position(|u| u.kind == UpKind::Everything)
    {
        if plan.fault_count("disk") == 0 && !ascii_unacked.is_empty() {
            let got: BTreeSet<(String, String)> = expand_batches(&collectors[i].messages())
                .iter()
                .map(|a| {
                    (
                        a.json["device"].as_str().unwrap_or("").to_string(),
                        a.json["code"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let (late, lost): (Vec<_>, Vec<_>) =
                ascii_unacked.iter().partition(|k| got.contains(*k));
            if !lost.is_empty() {
                failures.push(format!(
                    "{} plain scans written while the agent ran never reached its store nor upstream ({} more were just slow): {lost:?}",
                    lost.len(),
                    late.len()
                ));
            }
        }
    }

    // Junk on the site broker is rejected and counted (the probe was the first).
    if let Some(rl) = &relay {
        let junk = plan.fault_count("junk") as u64;
        let rejected = relay_port(&rl.config)["rejected"].as_u64().unwrap_or(0);
        if rejected < 1 + junk {
            failures.push(format!(
                "the relay counted {rejected} rejected messages; the probe and {junk} junk messages were published"
            ));
        }
    }

    // Liveness: no reconnect storm, no panic.
    let disruptive = plan
        .faults
        .iter()
        .filter(|(_, f)| f.kind() != "junk")
        .count();
    let mut logs = vec![(
        "dock",
        log.clone(),
        if relay.is_some() {
            1
        } else {
            plan.upstreams.len()
        },
    )];
    if let Some(rl) = &relay {
        logs.push(("relay", rl.log.clone(), plan.upstreams.len()));
    }
    let mut connects = Vec::new();
    for (name, path, ups) in &logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let n = text.matches("upstream connected").count();
        let bound = ups * (3 + 3 * disruptive);
        connects.push(format!("{name} {n}"));
        if n > bound {
            failures.push(format!(
                "reconnect storm: {n} \"upstream connected\" lines in the {name}'s log (bound {bound} for {ups} upstreams and {disruptive} faults)"
            ));
        }
        if *name == "relay" {
            // Only what cuts the relay's own link to the site broker may make it reconnect;
            // junk on that broker must be rejected, not end the session.
            let n = text.matches("relay source connected").count();
            let cutting = plan
                .faults
                .iter()
                .filter(|(_, f)| {
                    matches!(
                        f,
                        Fault::Kill {
                            target: Target::Relay,
                            ..
                        } | Fault::BrokerStop {
                            at: BrokerAt::Site,
                            ..
                        } | Fault::BrokerFreeze {
                            at: BrokerAt::Site,
                            ..
                        }
                    )
                })
                .count();
            let bound = 2 + 2 * cutting;
            connects.push(format!("relay source {n}"));
            if n > bound {
                failures.push(format!(
                    "reconnect storm: {n} \"relay source connected\" lines in the relay's log (bound {bound} for {cutting} faults that cut its site link)"
                ));
            }
        }
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            failures.push(format!("the {name} panicked: {line}"));
        }
    }

    // Teardown: processes before the filesystem they write to.
    let framed_n = framed.len();
    for f in &mut framed {
        f.scanner.stop();
    }
    drop(dock);
    if let Some(rl) = relay.as_mut() {
        rl.agent = None;
    }
    if tmpfs.is_some() && !failures.is_empty() {
        // The tmpfs goes with its mount: keep what the store held for the post-mortem.
        let keep = dir.0.join("data-at-failure");
        let _ = std::fs::create_dir_all(&keep);
        for e in std::fs::read_dir(&data).into_iter().flatten().flatten() {
            let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
        }
    }
    drop(tmpfs);
    let summary = format!(
        "{} framed scans on {framed_n} scanners + {ascii_acked}/{ascii_total} plain ones + {http_acked} from apps acked; \
         {} deliveries at {} upstreams ({} duplicates by id); {} faults over {:.1} s; connects {}",
        acked.len() - ascii_acked - http_acked,
        findings.delivered,
        plan.upstreams.len(),
        findings.duplicates,
        plan.faults.len(),
        faults_over.as_secs_f64(),
        connects.join(", ")
    );
    if failures.is_empty() {
        return Ok(summary);
    }
    let mut report = format!("{summary}\nfailures:\n");
    for f in &failures {
        report.push_str(&format!("  - {f}\n"));
    }
    report.push_str(&format!("dock log, last lines:\n{}\n", log_tail(&log, 25)));
    if let Some(rl) = &relay {
        report.push_str(&format!(
            "relay log, last lines:\n{}\n",
            log_tail(&rl.log, 25)
        ));
    }
    if let Some(e) = LAST_STATUS_ERROR.with(|e| e.borrow_mut().take()) {
        report.push_str(&format!("last `darkleg status` error: {e}\n"));
    }
    let listing: Vec<String> = std::fs::read_dir(&dir.0)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    report.push_str(&format!(
        "scratch kept at {} (holds {listing:?})\n",
        dir.0.display()
    ));
    std::mem::forget(dir);
    Err(report)
}

/// Not a test: prints the one-line shape of the plans of seeds 1..=N (`DARKLEG_PLANS=N`,
/// default 200) under the enabled fault kinds, to find a seed with a given config or fault:
/// `cargo test -p darkleg-tests --test harness -- --ignored --nocapture list_plans | grep ...`
#[test]
#[ignore]
fn list_plans() {
    let enabled = Enabled::from_env();
    for seed in 1..=env_u64("DARKLEG_PLANS").unwrap_or(200) {
        let p = Plan::generate(seed, &enabled, !not_root());
        let ups: Vec<String> = p
            .upstreams
            .iter()
            .map(|u| format!("{:?}:b{}w{}", u.kind, u.batch, u.window))
            .collect();
        let scanners: Vec<&str> = p.scanners.iter().map(|s| s.name.as_str()).collect();
        let faults: Vec<String> = p.faults.iter().map(|(_, f)| format!("{f:?}")).collect();
        println!(
            "seed {seed}: merchants {} relay {:?} ups {ups:?} scanners {scanners:?} faults {faults:?}",
            p.merchants, p.relay
        );
    }
}
