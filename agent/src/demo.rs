//! `darkleg demo`: a small warehouse on this machine. Two framed scanners (pick, pack) and a
//! plain ASCII scanner (handover) on pseudo-terminals, the real agent, and a broker started
//! for the demo: a private Mosquitto when one is installed, else one inside this process
//! (feature `embedded-broker`) — failing both, the agent runs offline and the demo shows
//! the backlog waiting in the outbox.

mod story;
mod upstream;

use crate::config::Config;
use crate::sim::collector::Collector;
use crate::sim::scanner::{write_ascii_scan, FramedConfig, FramedScanner, Pty, ScannerStats};
use crate::sim::workload::{parcel_scans, PlannedScan};
use darkleg_protocol::Step;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub parcels: u64,
    /// Pause between one operator's scans.
    pub scan_interval: Duration,
    /// Run without a broker even when Mosquitto is installed.
    pub offline: bool,
    /// Use the broker inside this process even when Mosquitto is installed.
    pub embedded_broker: bool,
}

pub fn run(opts: DemoOptions) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("darkleg-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = run_in(&dir, &opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Parcels that have left a station: every scan of theirs there made and acked by the
/// gateway, so they are durable in its store before the next station sees the parcel.
fn parcels_through(s: &ScannerStats, scans_per_parcel: usize) -> usize {
    (s.scanned.saturating_sub(s.pending) as usize) / scans_per_parcel.max(1)
}

fn run_in(dir: &std::path::Path, opts: &DemoOptions) -> Result<(), String> {
    println!(
        "darkleg demo: {} parcels through pick → pack → handover",
        opts.parcels
    );
    let (mut broker, why) = upstream::choose(dir, opts.offline, opts.embedded_broker)?;
    println!("  broker     {why}");
    if broker.is_none() {
        println!("             running OFFLINE: the agent keeps capturing and the backlog waits in the outbox");
    }
    let pick = Pty::open()?;
    let pack = Pty::open()?;
    let mut handover = Pty::open()?;
    // Offline, the upstream points at a port nobody listens on: the agent retries with
    // backoff while the outbox fills, exactly as with a broker that is down.
    let upstream_keys = match &broker {
        Some(b) => b.upstream_keys(),
        None => format!(
            "url = \"mqtt://127.0.0.1:{}\"\n",
            crate::sim::broker::free_port().map_err(|e| e.to_string())?
        ),
    };
    let upstream =
        format!("[[upstream]]\nname = \"central\"\n{upstream_keys}topic_prefix = \"darkleg/v1\"\n");
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
        .map(|b| Collector::start(b.merchant_port(), "darkleg/v1/#", "darkleg-demo-merchant"));
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
    // One parcel at a time moves down the line: the packer scans a parcel only once the
    // gateway holds all its pick scans, the dock only once it holds its pack scans. (All
    // three stations starting at once had the dock scan parcel 1 before it was picked.)
    let per_parcel = |plan: &[PlannedScan]| plan.len() / opts.parcels as usize;
    let (pick_per, pack_per, hand_per) = (
        per_parcel(&pick_plan),
        per_parcel(&pack_plan),
        per_parcel(&hand_plan),
    );
    let pack_released = Arc::new(AtomicUsize::new(0));
    let mut scanners = [
        (
            FramedScanner::start(pick.master, framed("pick-a", 1), pick_plan.clone()),
            pick_plan.len(),
        ),
        (
            FramedScanner::start(
                pack.master,
                FramedConfig {
                    released: Some(pack_released.clone()),
                    ..framed("pack-1", 2)
                },
                pack_plan.clone(),
            ),
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
    let mut story = story::Story::default();
    // A third of the way in, the broker goes away for a few seconds: capture goes on, the
    // backlog waits.
    let mut outage: Option<Instant> = None;
    let mut outage_done = false;
    // Two thirds in, the pick scanner's battery is pulled: its flash keeps what is unacked.
    let mut battery_pulled = false;
    let deadline = started + Duration::from_secs(30) + opts.scan_interval * (expected as u32);
    loop {
        let pick_stats = scanners[0].0.stats();
        let pack_stats = scanners[1].0.stats();
        pack_released.store(
            parcels_through(&pick_stats, pick_per) * pack_per,
            Ordering::Relaxed,
        );
        let hand_released = parcels_through(&pack_stats, pack_per) * hand_per;
        if hand_next < hand_plan.len().min(hand_released)
            && last_hand.elapsed() >= opts.scan_interval * 2
        {
            write_ascii_scan(&mut handover.master, &hand_plan[hand_next])
                .map_err(|e| e.to_string())?;
            hand_next += 1;
            last_hand = Instant::now();
        }
        if let Some(c) = &collector {
            for a in c.messages().into_iter().skip(shown) {
                shown += 1;
                for line in story.arrive(&a) {
                    println!("{line}");
                }
            }
        }
        if !battery_pulled && pick_stats.scanned as usize >= pick_plan.len() * 2 / 3 {
            battery_pulled = true;
            scanners[0].0.pull_battery();
            println!(
                "  ⚡ pick-a battery pulled ({} scans in its flash not yet acked) — it reboots, says Hello, carries on",
                pick_stats.pending
            );
        }
        if let Some(b) = broker.as_mut() {
            if outage.is_none() && !outage_done && story.unique_events() >= expected / 3 {
                let what = b.go_down();
                outage = Some(Instant::now());
                println!("  ✗ {what} — scanners keep scanning, the gateway keeps acking");
            }
            if let Some(t) = outage {
                if t.elapsed() >= Duration::from_secs(3) {
                    let backlog = crate::store::Reader::open(&config.db_path())
                        .and_then(|r| r.status())
                        .map(|s| s.upstreams.iter().map(|u| u.backlog).sum::<i64>())
                        .unwrap_or(-1);
                    let what = b.come_back()?;
                    println!("  ✓ {what} after 3 s — {backlog} messages waited in the outbox, draining now");
                    outage = None;
                    outage_done = true;
                }
            }
        }
        let scanners_done =
            scanners.iter().all(|(s, n)| s.done(*n)) && hand_next == hand_plan.len();
        let upstream_done = collector.is_none()
            || (story.unique_events() >= expected
                && story.parcels_told() >= opts.parcels as usize
                && outage_done);
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
    if collector.is_some() {
        println!(
            "  arrived upstream    {} of {expected} scan events; {} of {} parcels told picked → packed → handed over",
            story.unique_events(),
            story.parcels_told(),
            opts.parcels
        );
        println!(
            "  other messages      {} order picks (before the parcel had a label), {} milestone updates, {} alerts",
            story.order_picks, story.milestone_updates, story.alerts
        );
        for line in story.repeats_explained() {
            println!("{line}");
        }
        let mut latencies = std::mem::take(&mut story.latencies_ms);
        latencies.sort_unstable();
        let p = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "  scan → upstream     p50 {} ms, p95 {} ms (scans made during the outage included)",
            p(0.5),
            p(0.95)
        );
    } else {
        println!(
            "  backlog             {} messages (scan events, milestones) waiting in the outbox for an upstream",
            status.upstreams.iter().map(|u| u.backlog).sum::<i64>()
        );
    }
    print!(
        "{}",
        crate::status::render(&status, crate::clock::now_ms())
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let had_upstream = collector.is_some();
    drop(collector);
    drop(broker);
    if had_upstream && story.unique_events() < expected {
        return Err(format!(
            "only {} of {expected} scans arrived upstream",
            story.unique_events()
        ));
    }
    if had_upstream && story.parcels_told() < opts.parcels as usize {
        return Err(format!(
            "only {} of {} parcels' milestones arrived upstream ({} held for an earlier one)",
            story.parcels_told(),
            opts.parcels,
            story.milestones_held()
        ));
    }
    Ok(())
}
