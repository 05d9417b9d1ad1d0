//! darkleg against the edge setup a user would otherwise pick — a local Mosquitto (persistence
//! on, queue limits lifted) bridged to a central one — on the same machine, in the same run.
//!
//!     cargo run --release -p darkleg-bench [-- --backlog N --out FILE]
//!
//! Phases: durable ingest from firmware scanners on ptys (`synchronous = "full"`); scan →
//! subscriber latency at a steady 1,000 events/s; a backlog of N events built while the
//! upstream is down, the agent killed with SIGKILL during the outage, then the drain with
//! batching and with one event per message, with the agent's peak RSS, CPU and start-up time;
//! and the baseline's ingest, drain and survival of a SIGKILL. Prints a table, writes JSON.

mod growth;
mod intake;
mod relay;
mod storage;

use darkleg_agent::config::Config;
use darkleg_agent::sim::broker::{free_port, Mosquitto};

use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darkleg-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A subscriber that only counts: messages, and scans inside them (batches hold many).
struct Counter {
    events: Arc<AtomicU64>,
    first_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Counter {
    fn start(port: u16, filter: &str, id: &str) -> Counter {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(true);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(1000);
        let (client, mut conn) = Client::new(o, 100_000);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let events = Arc::new(AtomicU64::new(0));
        let first_at = Arc::new(std::sync::Mutex::new(None));
        let (e, f) = (events.clone(), first_at.clone());
        let subscribed = Arc::new(AtomicU64::new(0));
        let s2 = subscribed.clone();
        std::thread::spawn(move || {
            let _keep = client;
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => s2.store(1, Ordering::Relaxed),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let n = p
                            .payload
                            .windows(11)
                            .filter(|w| w == b"\"event_id\":")
                            .count()
                            .max(1);
                        f.lock().unwrap().get_or_insert_with(Instant::now);
                        e.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        assert!(wait_until(Duration::from_secs(10), || subscribed
            .load(Ordering::Relaxed)
            == 1));
        Counter { events, first_at }
    }

    fn n(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

/// The release agent; under `perf record` when DARKLEG_BENCH_PERF names an output file.
fn release_agent(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = match std::env::var("DARKLEG_BENCH_PERF") {
        Ok(out) => {
            let mut c = Command::new("perf");
            c.args(["record", "-F", "499", "-g", "-o", &out, "--"])
                .arg(darkleg_bin());
            c
        }
        Err(_) => Command::new(darkleg_bin()),
    };
    cmd.args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("darkleg run")
}

fn http_ok(port: u16, path: &str) -> Option<String> {
    http_get(port, path).filter(|r| r.starts_with("HTTP/1.1 200"))
}

/// (utime + stime seconds, peak RSS MiB) of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0; // utime, stime; USER_HZ is 100 on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

/// p-quantile of ack latency in ms from the agent's histogram (bucket upper bounds).
fn histogram_quantile(metrics: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("darkleg_ack_latency_seconds_bucket"))
    {
        let le = l.split("le=\"").nth(1)?.split('"').next()?;
        let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
        buckets.push((
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            },
            n,
        ));
    }
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| le * 1000.0)
}

fn config_text(dir: &Path, scanners: &str, upstream: &str, http: u16) -> String {
    format!(
        "[gateway]\nsite = \"bench\"\nid = \"gw-01\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{scanners}\n{upstream}\n",
        dir.join("data").display()
    )
}

/// Phase 1: firmware scanners on ptys → release agent, until every scan is acked. With
/// `upstream_down`, the broker is stopped first, so ingest is measured alone (no publishing,
/// no subscriber on the same two cores).
fn durable_ingest(per_scanner: usize, upstream_down: bool) -> (f64, Option<f64>, Option<f64>) {
    durable_ingest_with(per_scanner, upstream_down, &[])
}

fn durable_ingest_with(
    per_scanner: usize,
    upstream_down: bool,
    env: &[(&str, &str)],
) -> (f64, Option<f64>, Option<f64>) {
    let mut rig = Rig::with_store(
        &format!("bench-ingest-{upstream_down}"),
        &[PortKind::Framed; 4],
        "",
    );
    if upstream_down {
        rig.broker.stop();
    }
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    let _agent = rig.start_agent_with_env(env);
    rig.wait_ports_open();
    let (_, rate) = rig.flood(per_scanner, "ingest", Duration::from_secs(1));
    let m = http_ok(http, "/metrics").unwrap_or_default();
    (
        rate,
        histogram_quantile(&m, 0.5),
        histogram_quantile(&m, 0.99),
    )
}

/// Phase 2: a steady 1,000 scans/s for `secs`; scan → subscriber and ack latency.
fn steady_latency(secs: u64) -> Value {
    let mut rig = Rig::with_store("bench-steady", &[PortKind::Framed; 4], "");
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let per = (250 * secs) as usize;
    let mut sims = Vec::new();
    for (k, pty) in rig.take_ptys().into_iter().enumerate() {
        let plan: Vec<_> = (0..per as u64)
            .flat_map(|n| parcel_scans(2_000_000 * (k as u64 + 1) + n, Step::Pack))
            .collect();
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(4),
            wait_online: true,
            ..FramedConfig::new(&format!("steady-{k}"), k as u64 + 9)
        };
        sims.push(darkleg_tests::scanner::FramedScanner::start(
            pty.master, cfg, plan,
        ));
    }
    assert!(wait_until(Duration::from_secs(secs * 4 + 30), || sims
        .iter()
        .all(|s| s.done(per))));
    assert!(wait_until(Duration::from_secs(30), || unique_ids(
        &rig.collector.messages()
    ) >= 4 * per));
    let mut lat: Vec<f64> = rig
        .collector
        .messages()
        .iter()
        .filter_map(|a| {
            let c = darkleg_protocol::time::parse_rfc3339_ms(a.json["captured_at"].as_str()?)?;
            Some(a.at_ms.saturating_sub(c) as f64)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let m = http_ok(http, "/metrics").unwrap_or_default();
    json!({"events": 4 * per, "rate_per_s": 1000, "scan_to_subscriber_p50_ms": q(0.5), "scan_to_subscriber_p99_ms": q(0.99),
           "ack_p50_ms": histogram_quantile(&m, 0.5), "ack_p99_ms": histogram_quantile(&m, 0.99)})
}

/// Phase 3: darkleg with a backlog: SIGKILL during the outage, start-up, drain.
/// `window: None` leaves the upstream's default (what a user who changed nothing gets).
fn darkleg_drain(n: u64, batch: u64, window: Option<u64>, kill: bool) -> Value {
    let dir = scratch(&format!("drain-b{batch}"));
    let mut broker = Mosquitto::start(&dir.join("broker")).unwrap();
    broker.stop();
    let http = free_port().unwrap();
    let upstream = format!(
        "[[upstream]]\nname = \"central\"\nurl = \"{}\"\ntopic_prefix = \"darkleg/v1\"\n{window}batch = {batch}\n{extra}",
        broker.url(),
        window = window.map(|w| format!("window = {w}\n")).unwrap_or_default(),
        // For experiments: more upstream keys (`mqtt_version = "3.1.1"`, say).
        extra = std::env::var("DARKLEG_BENCH_UPSTREAM").unwrap_or_default(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir, "", &upstream, http)).unwrap();
    let config = Config::load(&path).unwrap();
    let build_rate = fill_outbox(&config, n);
    let n = (n / 4) * 4;
    let mut survived_kill = None;
    if kill {
        // The outage goes on; the agent is killed mid-way through it.
        let mut a = release_agent(&path, &dir.join("agent-killed.log"));
        assert!(wait_until(Duration::from_secs(60), || http_ok(
            http, "/healthz"
        )
        .is_some()));
        std::thread::sleep(Duration::from_secs(2));
        let _ = a.kill();
        let _ = a.wait();
    }
    broker.restart().unwrap();
    let counter = Counter::start(
        broker.port,
        "darkleg/v1/+/+/events",
        &format!("bench-count-{batch}"),
    );
    let t0 = Instant::now();
    let mut agent = release_agent(&path, &dir.join("agent.log"));
    assert!(wait_until(Duration::from_secs(60), || http_ok(
        http, "/healthz"
    )
    .is_some()));
    let startup = t0.elapsed().as_secs_f64();
    let mut peak_rss = 0.0f64;
    let done = wait_until(Duration::from_secs(1800), || {
        peak_rss = peak_rss.max(proc_usage(agent.id()).1);
        counter.n() >= n
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let first = counter
        .first_at
        .lock()
        .unwrap()
        .map(|f| f.duration_since(t0).as_secs_f64())
        .unwrap_or(0.0);
    let (cpu, hwm) = proc_usage(agent.id());
    if kill {
        survived_kill = Some(counter.n().min(n));
    }
    // SIGTERM: a clean stop (and a complete perf file when profiling).
    darkleg_agent::sim::broker::terminate(&mut agent, Duration::from_secs(20));
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "events": n, "batch": batch, "all_arrived": done,
        "backlog_build_per_s": build_rate,
        "startup_s": startup,
        "drain_per_s": n as f64 / (elapsed - first).max(1e-9),
        "drain_incl_startup_per_s": n as f64 / elapsed,
        "peak_rss_mib": hwm.max(peak_rss),
        "cpu_s_per_100k": cpu / n as f64 * 100_000.0,
        "survived_sigkill": survived_kill,
    })
}

fn baseline_publish(port: u16, n: u64, topic: &str) -> f64 {
    let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (client, mut conn) = Client::new(o, 1000);
    let payload = vec![b'x'; 330]; // a darkleg.scan.v1 object's size
    let start = Instant::now();
    let c2 = client.clone();
    let t = topic.to_string();
    let publisher = std::thread::spawn(move || {
        for _ in 0..n {
            if c2
                .publish(t.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .is_err()
            {
                break;
            }
        }
    });
    let mut acked = 0;
    for ev in conn.iter() {
        match ev {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == n {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("baseline publisher: {e}"),
        }
    }
    let _ = publisher.join();
    let _ = client.disconnect();
    n as f64 / start.elapsed().as_secs_f64()
}

/// The baseline: local Mosquitto bridged to a central one; central down while `n` are sent.
fn baseline(n: u64, kill_n: u64) -> Value {
    let dir = scratch("baseline");
    let mut central = Mosquitto::start(&dir.join("central")).unwrap();
    let bridge = |central_port: u16| {
        format!(
            "autosave_interval 1800\nconnection central\naddress 127.0.0.1:{central_port}\ntopic bench/# out 1\ncleansession false\nrestart_timeout 1\n"
        )
    };
    let mut local = Mosquitto::start_with(&dir.join("local"), &bridge(central.port)).unwrap();
    // Plain intake, upstream up.
    let counter = Counter::start(central.port, "bench/#", "base-count-0");
    let ingest = baseline_publish(local.port, 100_000, "bench/ingest");
    drop(counter);
    // The outage: n messages queue in the local broker, then central returns.
    central.stop();
    let queued_rate = baseline_publish(local.port, n, "bench/drain");
    central.restart().unwrap();
    let counter = Counter::start(central.port, "bench/drain", "base-count-1");
    let t0 = Instant::now();
    let done = wait_until(Duration::from_secs(1800), || counter.n() >= n);
    let first = counter
        .first_at
        .lock()
        .unwrap()
        .map(|f| f.duration_since(t0).as_secs_f64())
        .unwrap_or(0.0);
    let drain = counter.n() as f64 / (t0.elapsed().as_secs_f64() - first).max(1e-9);
    drop(counter);
    // SIGKILL of the local broker during an outage.
    central.stop();
    baseline_publish(local.port, kill_n, "bench/kill");
    local.kill9();
    local.restart().unwrap();
    central.restart().unwrap();
    let counter = Counter::start(central.port, "bench/kill", "base-count-2");
    wait_until(Duration::from_secs(15), || counter.n() >= kill_n);
    std::thread::sleep(Duration::from_secs(2));
    let survived = counter.n().min(kill_n);
    local.stop();
    central.stop();
    let _ = std::fs::remove_dir_all(&dir);
    json!({"ingest_per_s": ingest, "outage_intake_per_s": queued_rate, "drain_events": n, "all_arrived": done,
           "drain_per_s": drain, "sigkill_backlog": kill_n, "survived_sigkill": survived})
}

fn main() {
    let backlog = arg("--backlog", 1_000_000);
    let per_scanner = arg("--ingest-per-scanner", 10_000) as usize;
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .unwrap_or_else(|| "bench-results.json".into());
    eprintln!(
        "darkleg-bench: backlog {backlog}, ingest 4 × {per_scanner}; this takes a few minutes"
    );
    // `--only ingest` / `--only drain1` / `--only relay`: one phase alone (for profiling).
    if std::env::args().any(|a| a == "ingest") {
        let (rate, p50, p99) = durable_ingest(per_scanner, true);
        let (up, _, _) = durable_ingest(per_scanner, false);
        println!(
            "{}",
            json!({"events_per_s": rate, "with_upstream_up_per_s": up, "ack_p50_ms": p50, "ack_p99_ms": p99})
        );
        return;
    }
    if std::env::args().any(|a| a == "growth") {
        println!("{}", growth::growth());
        return;
    }
    if std::env::args().any(|a| a == "slowfsync") {
        println!("{}", json!(storage::slow_fsync_ingest(per_scanner, 10)));
        return;
    }
    if std::env::args().any(|a| a == "intake") {
        println!("{}", intake::intake_load(8, 100, 100, 1000, 50, 10));
        println!("{}", intake::datawedge_load(500, 10));
        return;
    }
    if std::env::args().any(|a| a == "relay") {
        println!("{}", relay::relay_throughput(backlog / 10, 100));
        return;
    }
    if std::env::args().any(|a| a == "drain1") {
        println!("{}", darkleg_drain(backlog / 5, 1, None, false));
        return;
    }
    eprintln!("  [1/5] durable ingest from 4 firmware scanners (upstream down, then up)");
    let (ingest, ack_p50, ack_p99) = durable_ingest(per_scanner, true);
    let (ingest_up, _, _) = durable_ingest(per_scanner, false);
    eprintln!("  [1/5] … again on slow storage (10 ms per fsync)");
    let slow = storage::slow_fsync_ingest(per_scanner, 10);
    eprintln!("  [1/5] … and the HTTP intake: batched posts, then 1,000 devices at 1 scan/s");
    let http_intake = intake::intake_load(8, 100, 100, 1000, 50, 10);
    let datawedge = intake::datawedge_load(500, 10);
    eprintln!("  [2/5] steady 1,000 scans/s");
    let steady = steady_latency(10);
    eprintln!("  [3/5] darkleg: {backlog} backlog, SIGKILL in the outage, drain with batch = 100");
    let batched = darkleg_drain(backlog, 100, Some(256), true);
    eprintln!(
        "  [4/5] darkleg: {} backlog, drain one event per message",
        backlog / 5
    );
    let single = darkleg_drain(backlog / 5, 1, None, false);
    eprintln!("  [5/5] baseline: local Mosquitto bridged to central");
    let base = baseline(backlog, 100_000);

    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    // A darkleg-vs-baseline row with its ratio.
    let compare = |what: &str, a: f64, b: f64| {
        let ratio = if b > 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "-".into()
        };
        println!("  {what:<44} {a:>14.0} {b:>14.0} {ratio:>8}");
    };
    println!("darkleg vs local Mosquitto bridge — same machine, same run");
    println!(
        "  {:<44} {:>14} {:>14} {:>8}",
        "", "darkleg", "baseline", "ratio"
    );
    let base_drain = f(&base["drain_per_s"]);
    compare(
        "intake, events/s (darkleg: durable, FULL)",
        ingest,
        f(&base["ingest_per_s"]),
    );
    println!(
        "  {:<44} {:>14.0}",
        "  … while publishing to a live upstream", ingest_up
    );
    compare(
        "drain, events/s (darkleg batch = 100)",
        f(&batched["drain_per_s"]),
        base_drain,
    );
    compare(
        "drain, events/s (default config: one per message)",
        f(&single["drain_per_s"]),
        base_drain,
    );
    println!(
        "  {:<44} {:>14} {:>14}",
        "events surviving SIGKILL during the outage",
        format!("{}/{}", batched["survived_sigkill"], batched["events"]),
        format!("{}/{}", base["survived_sigkill"], base["sigkill_backlog"])
    );
    if let Some(s) = &slow {
        println!(
            "  slow storage, 10 ms per fsync: ingest/s       {:>14.0}   ({} fsyncs for {} scans)",
            f(&s["events_per_s"]),
            s["fsyncs"],
            s["events"]
        );
        println!(
            "  slow storage: ack p50 / p99 (ms)              {:>14}",
            format!("{} / {}", s["ack_p50_ms"], s["ack_p99_ms"])
        );
    }
    println!(
        "  HTTP intake, 100 scans a request: durable/s   {:>14.0}",
        f(&http_intake["batched"]["durable_scans_per_s"])
    );
    println!(
        "  HTTP intake, 1,000 devices × 1/s: ack p50/p99 {:>14}",
        format!(
            "{:.1} / {:.1} ms",
            f(&http_intake["steady"]["ack_p50_ms"]),
            f(&http_intake["steady"]["ack_p99_ms"])
        )
    );
    println!(
        "  DataWedge TCP, 500 handhelds × 1 scan/s       {:>14}",
        format!(
            "{}/{} stored, {:.2} CPU-s",
            datawedge["stored"],
            datawedge["lines_sent"],
            f(&datawedge["agent_cpu_s"])
        )
    );
    println!(
        "  ack latency p50 / p99 at full load (ms)       {:>14}",
        format!(
            "{} / {}",
            ack_p50.unwrap_or(f64::NAN),
            ack_p99.unwrap_or(f64::NAN)
        )
    );
    println!(
        "  at 1,000 scans/s: ack p50 / p99 (ms)          {:>14}",
        format!("{} / {}", steady["ack_p50_ms"], steady["ack_p99_ms"])
    );
    println!(
        "  at 1,000 scans/s: scan → subscriber p50 / p99 {:>14}",
        format!(
            "{} / {} ms",
            steady["scan_to_subscriber_p50_ms"], steady["scan_to_subscriber_p99_ms"]
        )
    );
    println!(
        "  peak RSS with the backlog (MiB)               {:>14.1}",
        f(&batched["peak_rss_mib"])
    );
    println!(
        "  peak RSS, default config drain (MiB)          {:>14.1}",
        f(&single["peak_rss_mib"])
    );
    println!(
        "  CPU seconds per 100k events drained           {:>14.2}",
        f(&batched["cpu_s_per_100k"])
    );
    println!(
        "  start-up with the backlog (s)                 {:>14.2}",
        f(&batched["startup_s"])
    );
    let doc = json!({
        "machine": "see BENCHMARKS.md",
        "durable_ingest": {"events_per_s": ingest, "with_upstream_up_per_s": ingest_up, "ack_p50_ms": ack_p50, "ack_p99_ms": ack_p99, "scanners": 4, "per_scanner": per_scanner},
        "steady_1000": steady,
        "slow_fsync": slow,
        "http_intake": http_intake,
        "datawedge": datawedge,
        "drain_batched": batched,
        "drain_single": single,
        "baseline": base,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("  (JSON: {out})");
}
