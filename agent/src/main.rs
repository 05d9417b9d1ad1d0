//! `darkleg`: the gateway agent's command line. What it accepts is defined in `cli.rs`; this
//! file runs each subcommand.

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use darkleg_agent::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    // Help, version and usage errors (exit 2, with a "did you mean") are clap's to print.
    let cli = Cli::parse();
    if cli.command.is_one_shot() {
        // A one-shot command piped into `head` should end quietly, as other Unix tools do.
        // Not for the daemon: a closed socket must be an error it handles, not a signal.
        // SAFETY: called before any other thread exists; SIG_DFL is async-signal-safe.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    let result = match cli.command {
        Command::Run { config, log_json } => cmd_run(config, log_json),
        Command::CheckConfig { file } => cmd_check(file),
        Command::Status {
            config,
            watch: true,
            ..
        } => cmd_status_watch(config),
        Command::Status { config, json, .. } => cmd_status(config, json),
        Command::Demo {
            parcels,
            scan_interval_ms,
            offline,
            embedded_broker,
        } => cmd_demo(darkleg_agent::demo::DemoOptions {
            parcels,
            scan_interval: Duration::from_millis(scan_interval_ms),
            offline,
            embedded_broker,
        }),
        Command::Simulate(args) => cmd_simulate(args),
        Command::InspectBarcode { codes } => cmd_inspect(&codes),
        Command::Export {
            epcis: _,
            config,
            since,
            until,
            output,
        } => cmd_export(
            config,
            darkleg_agent::epcis::export::ExportOptions {
                since_ms: since,
                until_ms: until,
                output,
            },
        ),
        Command::Report { config, json } => cmd_report(config, json),
        Command::Recover { file, config } => cmd_recover(file, config),
        Command::Webhooks(cli::WebhooksCommand::Replay { name, config }) => {
            cmd_webhooks_replay(&name, config)
        }
        Command::Completions { shell } => {
            cli::print_completions(shell);
            Ok(())
        }
        Command::Man { dir } => cli::man(dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("darkleg: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Human-readable logs by default (colours on a terminal only); one JSON object per line with
/// `--log-json` or `DARKLEG_LOG_FORMAT=json`, for a log shipper. Warnings and errors are also
/// kept for the status page.
fn init_logs_with(json: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = json || std::env::var("DARKLEG_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(darkleg_agent::observe::errors::RecentErrors)
        .init();
}

fn init_logs() {
    init_logs_with(false);
}

fn cmd_run(path: PathBuf, log_json: bool) -> Result<(), String> {
    init_logs_with(log_json);
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            let _ = tx.send(true);
        });
        darkleg_agent::run(config, rx).await
    });
    match result {
        Ok(()) => Ok(()),
        // A part died (see `supervise`): exit now with its code, without waiting for a
        // stuck thread in the runtime's drop. The store is durable; systemd restarts us.
        Err(e) if e.exit_code != 1 => {
            eprintln!("darkleg: {e}");
            std::process::exit(e.exit_code.into());
        }
        Err(e) => Err(e.message),
    }
}

fn cmd_check(path: PathBuf) -> Result<(), String> {
    let c = Config::load(&path).map_err(|e| e.to_string())?;
    println!("{}: ok", path.display());
    println!(
        "  gateway {} at site {}, data in {}",
        c.gateway.id,
        c.gateway.site,
        c.db_path().display()
    );
    println!(
        "  store: synchronous = {}, group commit up to {} writes",
        format!("{:?}", c.store.synchronous).to_lowercase(),
        c.store.max_batch
    );
    for s in &c.scanners {
        println!(
            "  scanner {} ({}, {} baud){}",
            s.port,
            format!("{:?}", s.protocol).to_lowercase(),
            s.baud,
            s.step
                .map(|st| format!(", scans mean {st}"))
                .unwrap_or_default()
        );
    }
    for n in &c.network_scanners {
        println!(
            "  network scanner {} ({:?}), scans mean {}",
            n.listen, n.transport, n.step
        );
    }
    for h in &c.hid_scanners {
        println!(
            "  keyboard-wedge scanner {} ({:?} layout), scans mean {}",
            h.device, h.layout, h.step
        );
    }
    for u in &c.upstreams {
        println!(
            "  upstream {}: {} → {}",
            u.name,
            u.link.url(),
            match &u.merchant {
                Some(m) => format!(
                    "{}/merchants/{m}/… (merchant {m}: its milestones and alerts only)",
                    u.topic_prefix
                ),
                None => u.events_topic(&c.gateway),
            }
        );
        describe_link(&u.link);
    }
    for r in &c.relays {
        println!(
            "  relay {}: takes {} from {} (≤ {} KiB, ≤ {} hops)",
            r.name,
            r.topics.join(", "),
            r.link.url(),
            r.max_payload_bytes / 1024,
            r.max_hops
        );
        describe_link(&r.link);
    }
    for r in &c.routes {
        let list = |v: Option<Vec<String>>| v.map(|v| v.join("|")).unwrap_or_else(|| "any".into());
        println!(
            "  route → {}: {:?} of merchant {}, steps {}, sites {}",
            r.to.join(", "),
            r.carries,
            r.merchant.as_deref().unwrap_or("any"),
            list(
                r.steps
                    .as_ref()
                    .map(|s| s.iter().map(|s| s.as_str().to_string()).collect())
            ),
            list(r.sites.clone()),
        );
    }
    for m in &c.merchants {
        println!(
            "  merchant {}: orders {:?}, GS1 prefixes {:?}, client codes {:?}{}",
            m.id,
            m.order_prefixes,
            m.gs1_prefixes,
            m.client_codes,
            m.carrier
                .map(|c| format!(", usually {}", c.as_str()))
                .unwrap_or_default()
        );
    }
    if let Some(d) = c.alerts.pick_to_pack {
        println!(
            "  alert: picked, not packed within {} min",
            d.as_secs() / 60
        );
    }
    for cut in &c.alerts.cutoffs {
        println!(
            "  alert: {} cut-off {} ({})",
            cut.carrier.map_or("any carrier", |c| c.as_str()),
            cut.time,
            c.gateway.timezone.iana_name().unwrap_or("UTC")
        );
    }
    if c.upstreams.is_empty() {
        println!("  no upstreams: scans are kept in the outbox until one is configured");
    }
    Ok(())
}

fn cmd_status(path: PathBuf, json: bool) -> Result<(), String> {
    let c = load_with_db(&path)?;
    let db = c.db_path();
    let status = darkleg_agent::store::Reader::open(&db)
        .and_then(|r| r.status())
        .map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "darkleg status — site {}, gateway {}, {}",
            c.gateway.site,
            c.gateway.id,
            db.display()
        );
        print!(
            "{}",
            darkleg_agent::status::render(&status, darkleg_agent::clock::now_ms())
        );
    }
    Ok(())
}

fn cmd_demo(opts: darkleg_agent::demo::DemoOptions) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        init_logs();
    }
    darkleg_agent::demo::run(opts)
}

fn cmd_simulate(args: cli::SimulateArgs) -> Result<(), String> {
    use darkleg_agent::sim::scanner::Faults;
    use darkleg_agent::simulate::{FleetOptions, SimulateOptions};
    let cli::SimulateArgs {
        config,
        scanners,
        parcels,
        scan_interval_ms,
        power_cut_every_ms,
        link_drop_every_ms,
        garbage,
        timeout_secs,
        report,
    } = args;
    if std::env::var_os("RUST_LOG").is_some() {
        init_logs();
    }
    let every = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let run_id = darkleg_agent::clock::now_ms() / 1000 % 1_000_000;
    darkleg_agent::simulate::run(SimulateOptions {
        config,
        fleet: FleetOptions {
            scanners: scanners.into(),
            parcels,
            scan_interval: Duration::from_millis(scan_interval_ms),
            faults: Faults {
                power_cut_every: every(power_cut_every_ms),
                link_drop_every: every(link_drop_every_ms),
            },
            garbage,
            seed: run_id,
            device_prefix: format!("sim{run_id}"),
        },
        timeout: Duration::from_secs(timeout_secs),
        report,
    })
}

fn cmd_inspect(codes: &[String]) -> Result<(), String> {
    use darkleg_protocol::barcode::{self, json::inspection_json, Kind};
    for code in codes {
        // A shell cannot easily pass GS (0x1D): accept it written as \x1d.
        let raw = code.replace("\\x1d", "\u{1d}").replace("\\x1D", "\u{1d}");
        let mut found = barcode::inspect(&raw);
        // Typed tracking numbers come with spaces and in any case; scanners send neither.
        let normalized: String = raw
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        if found.kind == Kind::Unknown {
            let again = barcode::inspect(&normalized);
            if again.kind != Kind::Unknown {
                println!("{}", inspection_json(code, &again));
                continue;
            }
        }
        found.data = found.data.trim();
        println!("{}", inspection_json(code, &found));
    }
    Ok(())
}

fn cmd_export(
    config: PathBuf,
    opts: darkleg_agent::epcis::export::ExportOptions,
) -> Result<(), String> {
    let c = load_with_db(&config)?;
    let n = darkleg_agent::epcis::export::export(&c, &opts)?;
    if let Some(p) = &opts.output {
        eprintln!("{n} events written to {}", p.display());
    }
    Ok(())
}

fn cmd_report(config: PathBuf, json: bool) -> Result<(), String> {
    let c = load_with_db(&config)?;
    print!("{}", darkleg_agent::report::run(&c, json)?);
    Ok(())
}

/// The config, for a command that reads the store the agent has written.
fn load_with_db(path: &std::path::Path) -> Result<Config, String> {
    let c = Config::load(path).map_err(|e| e.to_string())?;
    if !c.db_path().exists() {
        return Err(format!(
            "no database at {} (hint: has `darkleg run` started with this config?)",
            c.db_path().display()
        ));
    }
    Ok(c)
}

/// `status --watch`: the status every second, with a progress bar per draining backlog.
fn cmd_status_watch(path: PathBuf) -> Result<(), String> {
    let c = Config::load(&path).map_err(|e| e.to_string())?;
    let db = c.db_path();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut peaks: std::collections::HashMap<String, i64> = Default::default();
    let mut last: std::collections::HashMap<String, (i64, std::time::Instant)> = Default::default();
    loop {
        let status = darkleg_agent::store::Reader::open(&db)
            .and_then(|r| r.status())
            .map_err(|e| format!("{e} (hint: has `darkleg run` started with this config?)"))?;
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "darkleg status — site {}, gateway {} (every 1 s; Ctrl-C to stop)\n",
            c.gateway.site, c.gateway.id
        ));
        out.push_str(&darkleg_agent::status::render(
            &status,
            darkleg_agent::clock::now_ms(),
        ));
        for u in &status.upstreams {
            let peak = peaks.entry(u.name.clone()).or_insert(0);
            *peak = if u.backlog == 0 {
                0
            } else {
                (*peak).max(u.backlog)
            };
            let now = std::time::Instant::now();
            let (prev, at) = last
                .insert(u.name.clone(), (u.delivered, now))
                .unwrap_or((u.delivered, now));
            let secs = now.duration_since(at).as_secs_f64();
            let rate = if secs > 0.0 {
                (u.delivered - prev) as f64 / secs
            } else {
                0.0
            };
            if *peak > 0 {
                out.push_str(&format!(
                    "  {:<16} {}\n",
                    u.name,
                    darkleg_agent::status::drain_bar(u.backlog, *peak, rate)
                ));
            }
        }
        print!("{out}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `recover FILE --config CFG`: salvage into the configured store, then say what came back.
fn cmd_recover(file: PathBuf, config: PathBuf) -> Result<(), String> {
    let c = Config::load(&config).map_err(|e| e.to_string())?;
    let s = darkleg_agent::store::salvage::recover(&c, &file).map_err(|e| e.to_string())?;
    println!("{} → {}: {s}", file.display(), c.db_path().display());
    Ok(())
}

/// Where a connection's secrets come from, and whether they are there — never their values.
fn describe_link(link: &darkleg_agent::config::BrokerLink) {
    if let Some(secret) = &link.password {
        let state = match secret.reveal() {
            Ok(_) => "readable".to_string(),
            Err(e) => format!("NOT usable: {e}"),
        };
        println!("    password {secret} ({state})");
    }
    if let Some(ca) = &link.ca_file {
        println!("    trusts CA {}", ca.display());
    }
    if let Some(cert) = &link.client_cert {
        println!("    client certificate {} (mTLS)", cert.display());
    }
}

/// `darkleg webhooks replay NAME --config FILE`: a webhook's dead letters back into its
/// outbox, and a 410's disabling lifted. Safe beside a running agent, which picks them up
/// within a second or two.
/// `webhooks replay NAME --config FILE`.
fn cmd_webhooks_replay(name: &str, config: PathBuf) -> Result<(), String> {
    let c = Config::load(&config).map_err(|e| e.to_string())?;
    if !c.webhooks.iter().any(|w| w.name == name) {
        return Err(format!(
            "{name:?} is not a [[webhook]] in this config (hint: names come from its [[webhook]] tables)"
        ));
    }
    let r =
        darkleg_agent::store::webhooks::replay(&c.db_path(), name).map_err(|e| e.to_string())?;
    println!(
        "webhook {name}: {} dead letter(s) queued again{}",
        r.requeued,
        if r.was_disabled {
            "; re-enabled after its 410"
        } else {
            ""
        }
    );
    Ok(())
}
