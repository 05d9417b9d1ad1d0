//! `darkleg demo`: a small warehouse on this machine. Two framed scanners (pick, pack) and a
//! plain ASCII scanner (handover) on pseudo-terminals, the real agent, and a real Mosquitto
//! on a free port when one is installed — otherwise the agent runs offline and the demo
//! shows the backlog waiting in the outbox.

use crate::config::Config;
use crate::sim::broker::Mosquitto;
use crate::sim::collector::Collector;
use crate::sim::scanner::{write_ascii_scan, FramedConfig, FramedScanner, Pty};
use crate::sim::workload::{parcel_scans, PlannedScan};
use darkleg_protocol::time::parse_rfc3339_ms;
use darkleg_protocol::Step;
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub parcels: u64,
    /// Pause between one operator's scans.
    pub scan_interval: Duration,
    /// Run without a broker even when Mosquitto is installed.
    pub offline: bool,
}

pub fn run(opts: DemoOptions) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("darkleg-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = run_in(&dir, &opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &std::path::Path, opts: &DemoOptions) -> Result<(), String> {
    println!(
        "darkleg demo: {} parcels through pick → pack → handover",
        opts.parcels
    );
    let mut broker = match if opts.offline {
        Err("--offline given".to_string())
    } else {
        Mosquitto::start(&dir.join("broker"))
    } {
        Ok(b) => {
            println!("  broker     Mosquitto on 127.0.0.1:{} (started for this demo, stopped at the end)", b.port);
            Some(b)
        }
        Err(e) => {
            println!("  broker     none: {e}");
            println!("             running OFFLINE: the agent keeps capturing and the backlog waits in the outbox");
            None
        }
    };
    let pick = Pty::open()?;
    let pack = Pty::open()?;
    let mut handover = Pty::open()?;
    // Offline, the upstream points at a port nobody listens on: the agent retries with
    // backoff while the outbox fills, exactly as with a broker that is down.
    let upstream_url = match &broker {
        Some(b) => b.url(),
        None => format!(
            "mqtt://127.0.0.1:{}",
            crate::sim::broker::free_port().map_err(|e| e.to_string())?
        ),
    };
    let upstream = format!("[[upstream]]\nname = \"central\"\nurl = \"{upstream_url}\"\ntopic_prefix = \"darkleg/v1\"\n");
    let config_text = format!(
        "[gateway]\nsite = \"demo1\"\nid = \"gw-01\"\ndata_dir = \"{data}\"\n\n\
         [[scanner]]\nport = \"{pick}\"\nprotocol = \"framed\"\nname = \"pick-a\"\n\n\
         [[scanner]]\nport = \"{pack}\"\nprotocol = \"framed\"\nname = \"pack-1\"\n\n\
         [[scanner]]\nport = \"{hand}\"\nprotocol = \"ascii\"\nstation = \"handover\"\nname = \"dock-2\"\n\n\
         [[merchant]]\nid = \"acme\"\norder_prefixes = [\"ACME-\"]\n\n{upstream}",
        data = dir.join("data").display(),
        pick = pick.slave_path,
        pack = pack.slave_path,
        hand = handover.slave_path,
    );
    let config = Config::parse(&config_text, "demo.toml").map_err(|e| e.to_string())?;
    println!(
        "  scanners   pick-a (framed) {}   pack-1 (framed) {}   dock-2 (ascii) {}",
        pick.slave_path, pack.slave_path, handover.slave_path
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent = rt.spawn(crate::run(config.clone(), stop_rx));

    let collector = broker
        .as_ref()
        .map(|b| Collector::start(b.port, "darkleg/v1/#", "darkleg-demo-merchant"));
    if let Some(c) = &collector {
        if !c.wait_subscribed(Duration::from_secs(5)) {
            return Err("demo subscriber could not subscribe".into());
        }
    }

    // A parcel's day: the picker scans its order, then its items; the packer the order, then
    // the parcel's SSCC label; the dock the label, then the carrier's waybill.
    let order = |n: u64| PlannedScan {
        step: Step::Pick,
        code: format!("400ACME-{n}"),
        symbology: Some("]C1".into()),
    };
    let with_step = |mut s: PlannedScan, step: Step| {
        s.step = step;
        s
    };
    let plan = |step: Step| -> Vec<PlannedScan> {
        (1..=opts.parcels)
            .flat_map(|n| match step {
                Step::Pick => std::iter::once(order(n))
                    .chain(parcel_scans(n, Step::Pick))
                    .collect::<Vec<_>>(),
                Step::Pack => std::iter::once(with_step(order(n), Step::Pack))
                    .chain(parcel_scans(n, Step::Pack))
                    .collect(),
                _ => parcel_scans(n, Step::Pack)
                    .into_iter()
                    .map(|s| with_step(s, Step::Handover))
                    .chain(parcel_scans(n, Step::Handover))
                    .collect(),
            })
            .collect()
    };
    let (pick_plan, pack_plan, hand_plan) =
        (plan(Step::Pick), plan(Step::Pack), plan(Step::Handover));
    let framed = |device: &str, seed: u64| FramedConfig {
        retransmit_after: Duration::from_millis(800),
        scan_interval: opts.scan_interval,
        ..FramedConfig::new(device, seed)
    };
    let mut scanners = [
        (
            FramedScanner::start(pick.master, framed("pick-a", 1), pick_plan.clone()),
            pick_plan.len(),
        ),
        (
            FramedScanner::start(pack.master, framed("pack-1", 2), pack_plan.clone()),
            pack_plan.len(),
        ),
    ];
    let expected = pick_plan.len() + pack_plan.len() + hand_plan.len();
    println!(
        "  upstream   {}",
        if collector.is_some() {
            "darkleg/v1/demo1/gw-01/events"
        } else {
            "(offline)"
        }
    );
    println!();

    let started = Instant::now();
    let mut hand_next = 0usize;
    let mut last_hand = Instant::now();
    let mut shown = 0usize;
    let mut seen = HashSet::new();
    let mut latencies = Vec::new();
    // Halfway, the broker goes away for a few seconds: capture goes on, the backlog waits.
    let mut outage: Option<Instant> = None;
    let mut outage_done = false;
    // Two thirds in, the pick scanner's battery is pulled: its flash keeps what is unacked.
    let mut battery_pulled = false;
    let deadline = started + Duration::from_secs(30) + opts.scan_interval * (expected as u32);
    loop {
        if hand_next < hand_plan.len() && last_hand.elapsed() >= opts.scan_interval * 2 {
            write_ascii_scan(&mut handover.master, &hand_plan[hand_next])
                .map_err(|e| e.to_string())?;
            hand_next += 1;
            last_hand = Instant::now();
        }
        if let Some(c) = &collector {
            for a in c.messages().into_iter().skip(shown) {
                shown += 1;
                let j = &a.json;
                if j["schema"] == "darkleg.milestone.v1" {
                    println!(
                        "  ★ {:<12} parcel {} (order {}, merchant {}){}",
                        j["milestone"].as_str().unwrap_or("?"),
                        j["parcel"].as_str().unwrap_or("-"),
                        j["order"].as_str().unwrap_or("-"),
                        j["merchant"].as_str().unwrap_or("-"),
                        match (j["carrier"].as_str(), j["tracking_number"].as_str()) {
                            (Some(c), Some(t)) => format!(" → {c} {t}"),
                            _ => String::new(),
                        }
                    );
                    continue;
                }
                if j["schema"] != "darkleg.scan.v1" {
                    continue;
                }
                let id = j["event_id"].as_str().unwrap_or("").to_string();
                let dup = !seen.insert(id.clone());
                let captured = j["captured_at"].as_str().unwrap_or("");
                let lat = latency_ms(captured, a.at_ms);
                if !dup {
                    latencies.extend(lat);
                }
                println!(
                    "  ↑ {:<9} {:<16} #{:<4} {:<22} {}{}",
                    j["step"].as_str().unwrap_or("?"),
                    j["device"].as_str().unwrap_or("?"),
                    j["seq"].as_u64().unwrap_or(0),
                    j["code"].as_str().unwrap_or("?"),
                    lat.map(|l| format!("{l} ms after the scan"))
                        .unwrap_or_default(),
                    if dup {
                        "  (duplicate, dropped by event id)"
                    } else {
                        ""
                    }
                );
            }
        }
        let pick_stats = scanners[0].0.stats();
        if !battery_pulled && pick_stats.scanned as usize >= pick_plan.len() * 2 / 3 {
            battery_pulled = true;
            scanners[0].0.pull_battery();
            println!(
                "  ⚡ pick-a battery pulled ({} scans in its flash not yet acked) — it reboots, says Hello, carries on",
                pick_stats.pending
            );
        }
        if let Some(b) = broker.as_mut() {
            if outage.is_none() && !outage_done && seen.len() >= expected / 3 {
                b.stop();
                outage = Some(Instant::now());
                println!("  ✗ broker stopped — scanners keep scanning, the gateway keeps acking");
            }
            if let Some(t) = outage {
                if t.elapsed() >= Duration::from_secs(3) {
                    let backlog = crate::store::Reader::open(&config.db_path())
                        .and_then(|r| r.status())
                        .map(|s| s.upstreams.iter().map(|u| u.backlog).sum::<i64>())
                        .unwrap_or(-1);
                    println!("  ✓ broker back after 3 s — {backlog} events waited in the outbox, draining now");
                    b.restart()?;
                    outage = None;
                    outage_done = true;
                }
            }
        }
        let scanners_done =
            scanners.iter().all(|(s, n)| s.done(*n)) && hand_next == hand_plan.len();
        let upstream_done = collector.is_none() || (seen.len() >= expected && outage_done);
        if (scanners_done && upstream_done) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    for (s, _) in scanners.iter_mut() {
        s.stop();
    }
    let _ = stop_tx.send(true);
    let _ = rt.block_on(agent);
    let status = crate::store::Reader::open(&config.db_path())
        .and_then(|r| r.status())
        .map_err(|e| e.to_string())?;

    println!();
    println!("summary after {:.1} s", elapsed.as_secs_f64());
    println!("  scans made          {expected}");
    println!("  stored on gateway   {}", status.events);
    match &collector {
        Some(c) => {
            latencies.sort_unstable();
            let p = |q: f64| {
                latencies
                    .get(((latencies.len() as f64 - 1.0) * q) as usize)
                    .copied()
                    .unwrap_or(0)
            };
            println!(
                "  arrived upstream    {} unique, {} duplicate deliveries",
                seen.len(),
                c.len() - seen.len()
            );
            println!(
                "  scan → upstream     p50 {} ms, p95 {} ms (scans made during the outage included)",
                p(0.5),
                p(0.95)
            );
        }
        None => println!(
            "  backlog             {} events waiting in the outbox for an upstream",
            status.upstreams.iter().map(|u| u.backlog).sum::<i64>()
        ),
    }
    print!(
        "{}",
        crate::status::render(&status, crate::clock::now_ms())
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    drop(broker);
    if collector.is_some() && seen.len() < expected {
        return Err(format!(
            "only {} of {expected} scans arrived upstream",
            seen.len()
        ));
    }
    Ok(())
}

/// Milliseconds from an RFC 3339 `captured_at` (as we render it) to `at_ms`.
fn latency_ms(captured: &str, at_ms: u64) -> Option<u64> {
    Some(at_ms.saturating_sub(parse_rfc3339_ms(captured)?))
}
