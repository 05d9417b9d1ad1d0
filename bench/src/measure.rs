//! What every phase measures with: scratch dirs, the release agent, a counting subscriber,
//! the agent's CPU and peak RSS from /proc, and quantiles of its ack-latency histogram.

use darkleg_tests::{darkleg_bin, http_get, wait_until};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darkleg-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A subscriber that only counts: messages, and scans inside them (batches hold many).
pub struct Counter {
    pub events: Arc<AtomicU64>,
    pub first_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Counter {
    pub fn start(port: u16, filter: &str, id: &str) -> Counter {
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

    pub fn n(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Seconds from `t0` to the first arrival (0 if none yet): drain rates count from there.
    pub fn first_after(&self, t0: Instant) -> f64 {
        self.first_at
            .lock()
            .unwrap()
            .map(|f| f.duration_since(t0).as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// The release agent; under `perf record` when DARKLEG_BENCH_PERF names an output file.
pub fn release_agent(config: &Path, log: &Path) -> Child {
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

pub fn http_ok(port: u16, path: &str) -> Option<String> {
    http_get(port, path).filter(|r| r.starts_with("HTTP/1.1 200"))
}

/// (utime + stime seconds, peak RSS MiB) of a process.
pub fn proc_usage(pid: u32) -> (f64, f64) {
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
pub fn histogram_quantile(metrics: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    // Framed scanners' acks only: the family also holds the HTTP intake's series, whose
    // empty buckets, mixed in, made every quantile the first bucket.
    for l in metrics.lines().filter(|l| {
        l.starts_with("darkleg_ack_latency_seconds_bucket") && l.contains("source=\"framed\"")
    }) {
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
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| le * 1000.0)
}

pub fn config_text(dir: &Path, scanners: &str, upstream: &str, http: u16) -> String {
    format!(
        "[gateway]\nsite = \"bench\"\nid = \"gw-01\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{scanners}\n{upstream}\n",
        dir.join("data").display()
    )
}

#[cfg(test)]
mod tests {
    /// The framed series alone decides, whatever the HTTP series beside it holds.
    #[test]
    fn quantiles_come_from_the_framed_series() {
        let text = "\
darkleg_ack_latency_seconds_bucket{source=\"framed\",le=\"0.0005\"} 10
darkleg_ack_latency_seconds_bucket{source=\"framed\",le=\"0.005\"} 90
darkleg_ack_latency_seconds_bucket{source=\"framed\",le=\"0.02\"} 100
darkleg_ack_latency_seconds_bucket{source=\"framed\",le=\"+Inf\"} 100
darkleg_ack_latency_seconds_bucket{source=\"http\",le=\"0.0005\"} 0
darkleg_ack_latency_seconds_bucket{source=\"http\",le=\"+Inf\"} 0
";
        assert_eq!(super::histogram_quantile(text, 0.5), Some(5.0));
        assert_eq!(super::histogram_quantile(text, 0.99), Some(20.0));
        assert_eq!(super::histogram_quantile("", 0.99), None);
    }
}
