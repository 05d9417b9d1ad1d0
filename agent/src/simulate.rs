//! `darkleg simulate`: a fleet of virtual scanners — each the real firmware on a simulated
//! board — against a running agent, with a pick → pack → handover workload and optional
//! faults. Reports what every scanner stored, what the gateway acked, what it still holds.
//!
//! The scanners appear where the agent's config looks for framed scanners: for a
//! `[[scanner]]` whose `port` is a glob such as `/run/darkleg/scanners/scan-*`, scanner `i`
//! is a symlink `/run/darkleg/scanners/scan-sim-ii` to its pseudo-terminal.

use crate::config::{Config, ScannerProtocol};
use crate::sim::scanner::{Faults, FramedConfig, FramedScanner, Pty, ScannerStats};
use crate::sim::workload::{parcel_scans, PlannedScan};
use darkleg_protocol::Step;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub scanners: usize,
    pub parcels: u64,
    pub scan_interval: Duration,
    pub faults: Faults,
    /// Chance per frame of line noise before it.
    pub garbage: f64,
    pub seed: u64,
    /// Device ids are `{prefix}-{i}`; a fresh prefix per run keeps sequence numbers apart
    /// from earlier runs' scanners (each run's scanners have blank flash).
    pub device_prefix: String,
}

/// One scanner's part in the run, as printed and written with `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct ScannerReport {
    pub device: String,
    pub port: String,
    pub station: &'static str,
    pub planned: usize,
    /// Scans stored in the scanner's flash (sent, or still to send).
    pub stored: u64,
    /// Highest sequence the gateway acked.
    pub acked: u64,
    /// Stored and not acked: what the scanner still holds.
    pub holding: u64,
    pub error_tones: u64,
    pub stored_offline: u64,
    pub power_cuts: u64,
    pub cuts_mid_write: u64,
    pub link_drops: u64,
    pub garbage_bytes: u64,
    pub frames_sent: u64,
    pub retransmits: u64,
    /// `[seq, code]` of every stored scan, for checking what arrived upstream.
    pub scans: Vec<(u64, String)>,
}

/// The scanners of one run and the links the agent finds them by.
pub struct Fleet {
    members: Vec<Member>,
}

struct Member {
    scanner: FramedScanner,
    plan_len: usize,
    link: PathBuf,
    station: Step,
    device: String,
}

/// Plans for `k` scanners: with three or more, each works one station (pick, pack,
/// handover in turn) and parcels spread over the scanners of a station; with fewer, each
/// takes every step for its share of the parcels.
pub fn plans(k: usize, parcels: u64) -> Vec<(Step, Vec<PlannedScan>)> {
    const STATIONS: [Step; 3] = [Step::Pick, Step::Pack, Step::Handover];
    if k < 3 {
        return (0..k)
            .map(|i| {
                let plan = (1..=parcels)
                    .filter(|n| (*n as usize) % k == i)
                    .flat_map(|n| STATIONS.iter().flat_map(move |&st| parcel_scans(n, st)))
                    .collect();
                (Step::Pick, plan)
            })
            .collect();
    }
    (0..k)
        .map(|i| {
            let station = STATIONS[i % 3];
            let at_station = (0..k).filter(|j| j % 3 == i % 3).count();
            let rank = i / 3;
            let plan = (1..=parcels)
                .filter(|n| (*n as usize) % at_station == rank)
                .flat_map(|n| parcel_scans(n, station))
                .collect();
            (station, plan)
        })
        .collect()
}

/// Where the fleet's scanners go: the first framed `[[scanner]]` whose port is a glob.
pub fn port_pattern(config: &Config) -> Result<String, String> {
    config
        .scanners
        .iter()
        .find(|s| s.protocol == ScannerProtocol::Framed && s.port.contains('*'))
        .map(|s| s.port.clone())
        .ok_or_else(|| {
            "the config has no framed [[scanner]] with a glob port (hint: add one such as \
             port = \"/tmp/darkleg-sim/scan-*\" with protocol = \"framed\"; the simulator \
             puts its scanners there)"
                .to_string()
        })
}

impl Fleet {
    /// Creates the pseudo-terminals and links, and starts every scanner.
    pub fn start(pattern: &str, opts: &FleetOptions) -> Result<Fleet, String> {
        let mut members = Vec::new();
        for (i, (station, plan)) in plans(opts.scanners, opts.parcels).into_iter().enumerate() {
            let link = PathBuf::from(pattern.replacen('*', &format!("sim-{i:02}"), 1));
            if let Some(dir) = link.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            // A link left by an earlier run that was interrupted.
            let _ = std::fs::remove_file(&link);
            let pty = Pty::open()?;
            std::os::unix::fs::symlink(&pty.slave_path, &link)
                .map_err(|e| format!("linking {}: {e}", link.display()))?;
            let device = format!("{}-{i:02}", opts.device_prefix);
            let cfg = FramedConfig {
                scan_interval: opts.scan_interval,
                garbage: opts.garbage,
                faults: opts.faults.clone(),
                retransmit_after: Duration::from_millis(500),
                ..FramedConfig::new(&device, opts.seed.wrapping_add(i as u64 * 7919))
            };
            let plan_len = plan.len();
            members.push(Member {
                scanner: FramedScanner::start(pty.master, cfg, plan),
                plan_len,
                link,
                station,
                device,
            });
        }
        Ok(Fleet { members })
    }

    /// Every planned scan stored and acked.
    pub fn done(&self) -> bool {
        self.members.iter().all(|m| m.scanner.done(m.plan_len))
    }

    pub fn report(&self) -> Vec<ScannerReport> {
        self.members
            .iter()
            .map(|m| {
                let s: ScannerStats = m.scanner.stats();
                ScannerReport {
                    device: m.device.clone(),
                    port: m.link.display().to_string(),
                    station: m.station.as_str(),
                    planned: m.plan_len,
                    stored: s.stored.len() as u64,
                    acked: s.acked,
                    holding: s.pending,
                    error_tones: s.error_tones,
                    stored_offline: s.stored_offline,
                    power_cuts: s.power_cuts,
                    cuts_mid_write: s.cuts_mid_write,
                    link_drops: s.link_drops,
                    garbage_bytes: s.garbage_bytes,
                    frames_sent: s.frames_sent,
                    retransmits: s.retransmits,
                    scans: s.stored,
                }
            })
            .collect()
    }

    /// Stops every scanner (their flash keeps what they hold) and removes the links.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.scanner.stop();
            let _ = std::fs::remove_file(&m.link);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct SimulateOptions {
    pub config: PathBuf,
    pub fleet: FleetOptions,
    pub timeout: Duration,
    /// Write the report as JSON here too.
    pub report: Option<PathBuf>,
}

/// Runs the fleet until every scan is acked or the timeout passes; prints the report.
/// `Err` if scans are still held at the end.
pub fn run(opts: SimulateOptions) -> Result<(), String> {
    let config = Config::load(&opts.config).map_err(|e| e.to_string())?;
    let pattern = port_pattern(&config)?;
    let f = &opts.fleet;
    println!(
        "darkleg simulate: {} scanners, {} parcels, on {pattern} (agent config {})",
        f.scanners,
        f.parcels,
        opts.config.display()
    );
    let mut fleet = Fleet::start(&pattern, f)?;
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last_line = Instant::now();
    while !fleet.done() && started.elapsed() < opts.timeout {
        std::thread::sleep(Duration::from_millis(200));
        let every = if tty { 0 } else { 5 };
        if last_line.elapsed() >= Duration::from_secs(every) {
            last_line = Instant::now();
            let r = fleet.report();
            let planned: usize = r.iter().map(|s| s.planned).sum();
            let stored: u64 = r.iter().map(|s| s.stored).sum();
            let holding: u64 = r.iter().map(|s| s.holding).sum();
            let cuts: u64 = r.iter().map(|s| s.power_cuts).sum();
            let holders: Vec<String> = r
                .iter()
                .filter(|s| s.holding > 0)
                .map(|s| format!("{} {}", s.device, s.holding))
                .collect();
            let line = format!(
                "  {:>5.1} s  stored {stored}/{planned}  held by scanners {holding}{}  power cuts {cuts}",
                started.elapsed().as_secs_f64(),
                if holders.is_empty() { String::new() } else { format!(" ({})", holders.join(", ")) }
            );
            if tty {
                print!("\r{line}   ");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            } else {
                println!("{line}");
            }
        }
    }
    if tty {
        println!();
    }
    fleet.stop();
    let report = fleet.report();
    print_report(&report, started.elapsed());
    if let Some(path) = &opts.report {
        write_report(path, &report)?;
    }
    let holding: u64 = report.iter().map(|r| r.holding).sum();
    let unscanned: usize = report.iter().map(|r| r.planned - r.stored as usize).sum();
    if holding > 0 || unscanned > 0 {
        return Err(format!(
            "after {:.0} s the scanners still hold {holding} unacked scans and {unscanned} were \
             not scanned (hint: is `darkleg run` up with this config? Scanners need only the \
             agent's acks, not an upstream)",
            opts.timeout.as_secs_f64()
        ));
    }
    Ok(())
}

fn write_report(path: &Path, report: &[ScannerReport]) -> Result<(), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn print_report(report: &[ScannerReport], elapsed: Duration) {
    println!("after {:.1} s:", elapsed.as_secs_f64());
    println!(
        "  {:<14} {:<9} {:>7} {:>7} {:>7} {:>7} {:>6} {:>10} {:>6} {:>8}",
        "scanner",
        "station",
        "planned",
        "stored",
        "acked",
        "holding",
        "errors",
        "power cuts",
        "drops",
        "resent"
    );
    for r in report {
        println!(
            "  {:<14} {:<9} {:>7} {:>7} {:>7} {:>7} {:>6} {:>10} {:>6} {:>8}",
            r.device,
            r.station,
            r.planned,
            r.stored,
            r.acked,
            r.holding,
            r.error_tones,
            format!("{} ({} mid-write)", r.power_cuts, r.cuts_mid_write),
            r.link_drops,
            r.retransmits
        );
    }
    let sum = |f: fn(&ScannerReport) -> u64| report.iter().map(f).sum::<u64>();
    println!(
        "  total: {} stored, {} still held, {} error tones (rescanned), {} power cuts, {} link drops",
        sum(|r| r.stored),
        sum(|r| r.holding),
        sum(|r| r.error_tones),
        sum(|r| r.power_cuts),
        sum(|r| r.link_drops)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_parcel_once_per_step() {
        for k in [1, 2, 3, 8] {
            let p = plans(k, 20);
            assert_eq!(p.len(), k);
            let mut codes: Vec<String> = p
                .iter()
                .flat_map(|(_, plan)| plan.iter().map(|s| s.code.clone()))
                .collect();
            let total = codes.len();
            codes.sort();
            codes.dedup();
            assert_eq!(codes.len(), total, "k={k}: no code planned twice");
            // Two picks, a pack and a handover per parcel.
            assert_eq!(total, 20 * 4, "k={k}");
        }
    }
}
