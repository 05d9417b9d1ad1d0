//! What `darkleg` accepts on its command line. clap turns these definitions into the parser
//! (unknown flags are errors with a "did you mean", exit 2), the help of each subcommand, the
//! shell completions and the man page, so the four cannot drift apart.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Closes the dark leg between 'order paid' and the carrier's first scan.
#[derive(Debug, Parser)]
#[command(
    name = "darkleg",
    version,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = "Logs go to stderr; RUST_LOG=debug for more."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway agent (SIGTERM/Ctrl-C stop it cleanly)
    Run {
        /// The gateway's config (TOML; see configs/gateway.toml)
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// One JSON object per log line, for a log shipper (or DARKLEG_LOG_FORMAT=json)
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a config and print what it means
    CheckConfig {
        /// The config (TOML) to check
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Backlog, last sync, per-scanner counters (of the agent using this config)
    Status {
        /// The config of the agent whose store to read
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The status as one JSON document
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh every second, with a progress bar per draining backlog
        #[arg(long)]
        watch: bool,
    },
    /// A small warehouse on this machine
    Demo {
        /// Parcels to scan through pick, pack and handover
        #[arg(long, value_name = "N", default_value_t = 12,
              value_parser = clap::value_parser!(u64).range(1..))]
        parcels: u64,
        /// Pause between two scans of one scanner
        #[arg(long, value_name = "MS", default_value_t = 150)]
        scan_interval_ms: u64,
        /// Run without a broker even when Mosquitto is installed: the backlog waits in the outbox
        #[arg(long, conflicts_with = "embedded_broker")]
        offline: bool,
        /// Use the broker built into darkleg even when Mosquitto is installed (it is used
        /// anyway when Mosquitto is not)
        #[arg(long)]
        embedded_broker: bool,
    },
    /// GS1 EPCIS 2.0 JSON-LD document of the stored scans (to stdout or --output)
    Export {
        /// The format (the only one so far): GS1 EPCIS 2.0 JSON-LD
        #[arg(long, required = true)]
        epcis: bool,
        /// The config of the agent whose store to read
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Scans at or after T (RFC 3339, e.g. 2026-11-22T00:00:00Z)
        #[arg(long, value_name = "T", value_parser = rfc3339_ms)]
        since: Option<u64>,
        /// Scans before T (RFC 3339, e.g. 2026-11-22T00:00:00Z)
        #[arg(long, value_name = "T", value_parser = rfc3339_ms)]
        until: Option<u64>,
        /// Write the document here instead of stdout
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Parcels per carrier and station: tracking, dwell, on time
    ///
    /// Per carrier and station: parcels, valid tracking rate, pack → handover dwell p50/p95,
    /// on time before cut-off.
    Report {
        /// The config of the agent whose store to read
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The report as JSON
        #[arg(long)]
        json: bool,
    },
    /// What each code is and whether its check digits hold
    ///
    /// What each code is (GS1, SSCC, GTIN, Digital Link, carrier tracking number) and whether
    /// its check digits hold; one JSON object per line.
    #[command(after_help = "A GS separator (FNC1) can be written as the four characters \\x1d.")]
    InspectBarcode {
        /// Codes as scanned (typed tracking numbers may have spaces and any case)
        #[arg(value_name = "CODE", required = true)]
        codes: Vec<String>,
    },
    /// Virtual scanners (the real firmware) against a running agent
    ///
    /// K virtual scanners (the real firmware on a simulated board) against a running agent,
    /// with optional faults; exits non-zero if scans are still held at the timeout.
    Simulate(SimulateArgs),
    /// Salvage the undelivered scans of a damaged store copy
    ///
    /// Put the undelivered scans still readable in FILE (a damaged copy, darkleg.db.damaged-*)
    /// back into the configured store; the agent must be stopped. Safe to repeat: event ids
    /// deduplicate.
    Recover {
        /// The damaged copy to read
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The config of the store to put the scans into
        #[arg(long, value_name = "CONFIG")]
        config: PathBuf,
    },
    /// Webhook endpoints: put dead-lettered messages back (and lift a 410)
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Print a shell completion script to stdout
    #[command(after_help = "e.g. darkleg completions bash > /etc/bash_completion.d/darkleg")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout
    #[command(after_help = "e.g. darkleg man > /usr/local/share/man/man1/darkleg.1")]
    Man {
        /// Instead, write darkleg.1 and a page per subcommand (darkleg-status.1, ...) into DIR
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The running agent's config: its first framed scanner port glob is where they appear
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Virtual scanners (K)
    #[arg(long, value_name = "K", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub scanners: u16,
    /// Parcels (M) to scan through the stations
    #[arg(long, value_name = "M", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub parcels: u64,
    /// Pause between two scans of one scanner
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub scan_interval_ms: u64,
    /// Battery pulls, a mean interval per scanner (0: never); half land inside a flash write
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub power_cut_every_ms: u64,
    /// Walks out of radio range (0.3-2 s each), a mean interval per scanner (0: never)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub link_drop_every_ms: u64,
    /// Probability per frame of garbage on the line, 0 to 1
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = probability)]
    pub garbage: f64,
    /// Give up (and exit non-zero) if scans are still held after this long
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout_secs: u64,
    /// Also write the per-scanner report as JSON here
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl Command {
    /// The daemon and the demo keep running; everything else prints and ends.
    pub fn is_one_shot(&self) -> bool {
        !matches!(self, Command::Run { .. } | Command::Demo { .. })
    }
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Queue a webhook's dead letters again and re-enable it after a 410 Gone; works with the
    /// agent running (it notices within a second) or stopped
    Replay {
        /// The webhook's `name` in its [[webhook]] table
        #[arg(value_name = "NAME")]
        name: String,
        /// The gateway's config
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// `completions SHELL`: the script for that shell, on stdout.
pub fn print_completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut command(), "darkleg", &mut std::io::stdout());
}

/// `man [--dir DIR]`: the top page on stdout, or every page as files in DIR.
pub fn man(dir: Option<&Path>) -> Result<(), String> {
    match dir {
        None => clap_mangen::Man::new(command())
            .render(&mut std::io::stdout())
            .map_err(|e| format!("writing the man page: {e}")),
        Some(d) => clap_mangen::generate_to(command(), d).map_err(|e| {
            format!(
                "writing man pages into {}: {e} (hint: does the directory exist?)",
                d.display()
            )
        }),
    }
}

fn rfc3339_ms(v: &str) -> Result<u64, String> {
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond().max(0) as u64)
        .map_err(|e| format!("{e} (hint: RFC 3339, e.g. 2026-11-22T00:00:00Z)"))
}

fn probability(v: &str) -> Result<f64, String> {
    let p: f64 = v.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err("a probability per frame, 0 to 1".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_definitions_are_consistent() {
        super::command().debug_assert();
    }
}
