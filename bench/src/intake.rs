//! The HTTP intake under load (`--only intake`): batched posts for throughput, and many
//! devices at a steady rate for the answer latency — an answer is the durable ack, so its
//! latency is the app's. A real HTTP/1.1 client (hyper) with keep-alive connections.

use super::{config_text, http_ok, release_agent, scratch};
use bytes::Bytes;
use darkleg_agent::sim::broker::{free_port, Mosquitto};
use darkleg_tests::wait_until;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16) -> Sender {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the intake");
    stream.set_nodelay(true).unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

/// Posts `body`; the answer's status and the time to it.
async fn post(sender: &mut Sender, body: String) -> (u16, Duration) {
    let req = hyper::Request::post("/v1/scans")
        .header("content-type", "application/json")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let t = Instant::now();
    sender.ready().await.expect("connection ready");
    let resp = sender.send_request(req).await.expect("intake answer");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (status, t.elapsed())
}

/// A release agent with `sources` and an upstream whose broker is down (the durable intake
/// alone is measured), `extra` appended to the upstream's config; its scratch dir, process
/// and status port, once `/healthz` answers.
fn offline_agent(
    name: &str,
    sources: &str,
    extra: &str,
) -> (std::path::PathBuf, std::process::Child, u16) {
    let dir = scratch(name);
    let mut broker = Mosquitto::start(&dir.join("broker")).unwrap();
    broker.stop();
    let http = free_port().unwrap();
    let upstream = format!(
        "[[upstream]]\nname = \"central\"\nurl = \"{}\"\n{extra}",
        broker.url()
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir, sources, &upstream, http)).unwrap();
    let agent = release_agent(&path, &dir.join("agent.log"));
    assert!(wait_until(Duration::from_secs(60), || http_ok(
        http, "/healthz"
    )
    .is_some()));
    (dir, agent, http)
}

/// The load generators' runtime: one worker, beside the agent's on the same two cores.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// One scan's JSON, written out directly: the load generator shares the two cores with
/// the agent, so it must not spend them building `Value` trees.
fn scan(device: &str, seq: u64) -> String {
    format!(
        r#"{{"device":"{device}","seq":{seq},"code":"00{:018}","step":"pack"}}"#,
        87_123_450_000_000_000 + seq
    )
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `clients` connections each posting `batches` requests of `per_request` scans for its own
/// device; then `devices` devices at one scan a second each for `secs`, over `conns`
/// connections. The upstream broker is down: the durable intake alone is measured.
pub fn intake_load(
    clients: usize,
    batches: u64,
    per_request: u64,
    devices: usize,
    conns: usize,
    secs: u64,
) -> Value {
    let (dir, mut agent, http) =
        offline_agent("intake", "", "[intake]\nallow_unauthenticated = true\n");
    let rt = client_runtime();

    // Throughput: batched posts.
    let (batched_per_s, batch_p99_ms, refused) = rt.block_on(async {
        let t = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                tokio::spawn(async move {
                    let mut s = connect(http).await;
                    let device = format!("bench-batch-{c}");
                    let mut lat = Vec::new();
                    let mut bad = 0u64;
                    for b in 0..batches {
                        let scans: Vec<String> = (0..per_request)
                            .map(|i| scan(&device, b * per_request + i + 1))
                            .collect();
                        let body = format!(r#"{{"scans":[{}]}}"#, scans.join(","));
                        let (status, d) = post(&mut s, body).await;
                        bad += u64::from(status != 200);
                        lat.push(d.as_secs_f64() * 1e3);
                    }
                    (lat, bad)
                })
            })
            .collect();
        let mut lat = Vec::new();
        let mut bad = 0;
        for t in tasks {
            let (l, b) = t.await.unwrap();
            lat.extend(l);
            bad += b;
        }
        let secs = t.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let total = clients as u64 * batches * per_request;
        (total as f64 / secs, quantile(&lat, 0.99), bad)
    });

    // Latency: many devices at 1 scan/s each. Devices scan independently, so their phases
    // are spread over the second; the same load with every device in step is the worst case.
    let (steady_p50, steady_p99, steady_n) = rt.block_on(steady(http, devices, conns, secs, true));
    let (step_p50, step_p99, _) = rt.block_on(steady(http, devices, conns, secs, false));
    let (cpu, rss) = super::proc_usage(agent.id());
    darkleg_agent::sim::broker::terminate(&mut agent, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "batched": {"clients": clients, "scans_per_request": per_request,
                    "durable_scans_per_s": batched_per_s, "request_p99_ms": batch_p99_ms,
                    "not_200": refused},
        "steady": {"devices": devices, "connections": conns, "per_device_per_s": 1,
                   "answers": steady_n, "ack_p50_ms": steady_p50, "ack_p99_ms": steady_p99,
                   "in_step": {"ack_p50_ms": step_p50, "ack_p99_ms": step_p99}},
        "agent_cpu_s": cpu, "agent_peak_rss_mib": rss,
    })
}

/// `devices` devices at one scan a second each for `secs`, over `conns` keep-alive
/// connections, the devices of a connection taking turns. `spread`: each connection starts
/// at its own offset within the first tick, as independent devices would; otherwise all
/// start at once and every tick is a burst of `conns` requests. Answer p50, p99 (ms), count.
async fn steady(
    http: u16,
    devices: usize,
    conns: usize,
    secs: u64,
    spread: bool,
) -> (f64, f64, usize) {
    let per_conn = devices.div_ceil(conns);
    let period = Duration::from_secs(1) / per_conn as u32;
    // Every connection open before the first tick: a late one would start with a burst.
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(http).await);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(c, mut s)| {
            let offset = if spread {
                period * c as u32 / conns as u32
            } else {
                Duration::ZERO
            };
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut tick = tokio::time::interval_at(start + offset, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for round in 0..secs * per_conn as u64 {
                    tick.tick().await;
                    let d = (round % per_conn as u64) as usize;
                    let seq = round / per_conn as u64 + 1;
                    // Device names differ per run: a second run starts its devices at seq 1.
                    let device = format!("bench-steady-{}-{c}-{d}", u8::from(spread));
                    let (status, t) = post(&mut s, scan(&device, seq)).await;
                    assert_eq!(status, 200, "a steady scan was refused");
                    lat.push(t.as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_by(f64::total_cmp);
    (quantile(&lat, 0.5), quantile(&lat, 0.99), lat.len())
}

/// DataWedge IP output at scale: `conns` TCP connections, each one handheld sending a scan
/// line a second for `secs`. DataWedge waits for no answer, so the figures are whether all
/// were stored, how long after the last line, and what it cost the agent.
pub fn datawedge_load(conns: usize, secs: u64) -> Value {
    let port = free_port().unwrap();
    // The default max_connections (1,024), as a floor would run it: the bench must not
    // raise the bound to fit.
    assert!(conns <= darkleg_agent::config::NETWORK_MAX_CONNECTIONS);
    let sources = format!(
        "[[network_scanner]]\nlisten = \"127.0.0.1:{port}\"\ntransport = \"tcp\"\nstation = \"pack\"\n"
    );
    let (dir, mut agent, http) = offline_agent("datawedge", &sources, "");
    let rt = client_runtime();
    let sent = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .expect("connect to the DataWedge listener");
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    // Spread the connections over the second, as real handhelds are.
                    tokio::time::sleep(Duration::from_millis((c as u64 * 1000) / conns as u64))
                        .await;
                    for i in 0..secs {
                        tick.tick().await;
                        let line =
                            format!("00{:018}\n", 87_123_450_000_000_000 + c as u64 * 1_000 + i);
                        s.write_all(line.as_bytes())
                            .await
                            .expect("write a scan line");
                    }
                    // Keep the connection until the agent has read it all.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    secs
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        n
    });
    let last_line = Instant::now();
    let captured = || -> u64 {
        http_ok(http, "/metrics")
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("darkleg_events_captured_total "))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0, |v| v as u64)
    };
    let all = wait_until(Duration::from_secs(60), || captured() >= sent);
    let lag = last_line.elapsed().as_secs_f64();
    let stored = captured();
    let (cpu, rss) = super::proc_usage(agent.id());
    darkleg_agent::sim::broker::terminate(&mut agent, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    json!({"connections": conns, "seconds": secs, "lines_sent": sent, "stored": stored,
           "all_stored": all, "stored_within_s_of_the_wait": lag,
           "agent_cpu_s": cpu, "agent_peak_rss_mib": rss})
}
