//! The peers darkleg is measured against, in the same run: the usual edge setup (a local
//! Mosquitto, persistence on, bridged to a central one) and the ThingsBoard IoT Gateway
//! with its SQLite storage, through a peer script given on the command line (it installs the
//! gateway from PyPI into a venv). The tree itself never reaches outside the repository.

use crate::measure::{scratch, Counter};
use darkleg_agent::sim::broker::Mosquitto;
use darkleg_tests::wait_until;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
pub fn baseline(n: u64, kill_n: u64) -> Value {
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
    let first = counter.first_after(t0);
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

/// The ThingsBoard peer script: `--peer-thingsboard PATH`, or `DARKLEG_PEER_THINGSBOARD`.
/// Nothing is looked for outside the repository; `Err` says how to name it.
pub fn find_thingsboard(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let given =
        explicit.or_else(|| std::env::var_os("DARKLEG_PEER_THINGSBOARD").map(PathBuf::from));
    match given {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(format!("--peer-thingsboard {}: no such file", p.display())),
        None => Err("no peer script given (hint: --peer-thingsboard PATH/thingsboard_gateway_peer.py, or DARKLEG_PEER_THINGSBOARD)".into()),
    }
}

/// The ThingsBoard IoT Gateway on the same outage: `n` scans published unpaced (QoS 1) into
/// its local broker while its upstream is down, then the upstream back; started during the
/// outage (`cold`) or after one upstream connect (`warm`), each without a kill (intake into
/// its SQLite, drain) and killed with SIGKILL 0.5 s after the last PUBACK (what survives).
/// The script's whole output goes to `log`.
pub fn thingsboard(script: &Path, n: u64, log: &Path) -> Result<Value, String> {
    let json_out = log.with_extension("json");
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = Command::new("python3")
        .arg(script)
        .arg(n.to_string())
        .args(["--cases", "none,0.5", "--modes", "cold,warm", "--rate", "0"])
        .args(["--quiet", "5", "--json"])
        .arg(&json_out)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("python3 {}: {e}", script.display()))?;
    // Its own limits are generous (3 min for a first arrival); give up on it well after.
    let deadline = Instant::now() + Duration::from_secs(1200);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after 20 min; see {}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        return Err(format!("exited with {status}; see {}", log.display()));
    }
    let text = std::fs::read_to_string(&json_out)
        .map_err(|e| format!("{}: {e} (see {})", json_out.display(), log.display()))?;
    let cases: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let case = |mode: &str, kill: &str| {
        cases
            .as_array()
            .and_then(|a| a.iter().find(|c| c["mode"] == mode && c["kill"] == kill))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (warm, cold_kill, warm_kill) = (
        case("warm", "-"),
        case("cold", "0.5s"),
        case("warm", "0.5s"),
    );
    Ok(json!({
        "events": n,
        // Acked by its local broker: not durable yet.
        "intake_acked_per_s": warm["acked/s"],
        // Until every scan was a row in its SQLite file.
        "durable_per_s": warm["durable/s"],
        "drain_per_s": warm["drain/s"],
        "survived_sigkill_cold": cold_kill["delivered"],
        "survived_sigkill_warm": warm_kill["delivered"],
        "log": log.display().to_string(),
        "cases": cases,
    }))
}
