//! `darkleg`: the gateway agent's command line.

use darkleg_agent::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
darkleg — closes the dark leg between 'order paid' and the carrier's first scan

USAGE:
    darkleg run --config FILE [--log-json]
                                        run the gateway agent (JSON logs: --log-json or
                                        DARKLEG_LOG_FORMAT=json)
    darkleg check-config FILE           validate a config and print what it means
    darkleg status --config FILE [--json | --watch]
                                        backlog, last sync, per-scanner counters
    darkleg demo [--parcels N] [--scan-interval-ms MS] [--offline]
                                        a small warehouse on this machine
    darkleg export --epcis --config FILE [--since T] [--until T] [--output PATH]
                                        GS1 EPCIS 2.0 JSON-LD document of the stored scans
                                        (T: RFC 3339, e.g. 2026-11-22T00:00:00Z)
    darkleg report --config FILE [--json]
                                        per carrier and station: parcels, valid tracking rate,
                                        pack → handover dwell p50/p95, on time before cut-off
    darkleg inspect-barcode CODE...     what each code is (GS1, SSCC, GTIN, Digital Link, carrier
                                        tracking number) and whether its check digits hold;
                                        one JSON object per line. GS separators as \x1d
    darkleg simulate --config FILE [--scanners K] [--parcels M] [--scan-interval-ms MS]
                     [--power-cut-every-ms MS] [--link-drop-every-ms MS] [--garbage P]
                     [--timeout-secs S] [--report FILE]
                                        K virtual scanners (the real firmware) against a
                                        running agent, with optional faults
    darkleg recover FILE --config FILE  put the undelivered scans still readable in FILE (a
                                        damaged copy, darkleg.db.damaged-*) back into the
                                        configured store; the agent must be stopped. Safe to
                                        repeat: event ids deduplicate
    darkleg --version | --help

Logs go to stderr; RUST_LOG=debug for more.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a != "run" && a != "demo") {
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
    let result = match args.first().map(String::as_str) {
        Some("run") => flag_value(&args[1..], "--config")
            .and_then(|p| cmd_run(PathBuf::from(p), args.iter().any(|a| a == "--log-json"))),
        Some("check-config") => args
            .get(1)
            .ok_or_else(|| "check-config needs a FILE".to_string())
            .and_then(|p| cmd_check(PathBuf::from(p))),
        Some("status") => flag_value(&args[1..], "--config").and_then(|p| {
            if args.iter().any(|a| a == "--watch") {
                cmd_status_watch(PathBuf::from(p))
            } else {
                cmd_status(PathBuf::from(p), args.iter().any(|a| a == "--json"))
            }
        }),
        Some("demo") => cmd_demo(&args[1..]),
        Some("simulate") => cmd_simulate(&args[1..]),
        Some("inspect-barcode") => cmd_inspect(&args[1..]),
        Some("export") => cmd_export(&args[1..]),
        Some("report") => flag_value(&args[1..], "--config").and_then(|p| {
            let c = Config::load(&PathBuf::from(p)).map_err(|e| e.to_string())?;
            if !c.db_path().exists() {
                return Err(format!(
                    "no database at {} (hint: has `darkleg run` started with this config?)",
                    c.db_path().display()
                ));
            }
            print!(
                "{}",
                darkleg_agent::report::run(&c, args.iter().any(|a| a == "--json"))?
            );
            Ok(())
        }),
        Some("recover") => cmd_recover(&args[1..]),
        Some("webhooks") => cmd_webhooks(&args[1..]),
        Some("--version") | Some("-V") => {
            println!("darkleg {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help") | Some("-h") | Some("help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("darkleg: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag_value(args: &[String], flag: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {flag} FILE\n\n{USAGE}"))
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
    let c = Config::load(&path).map_err(|e| e.to_string())?;
    let db = c.db_path();
    if !db.exists() {
        return Err(format!(
            "no database at {} (hint: has `darkleg run` started with this config?)",
            db.display()
        ));
    }
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

fn cmd_demo(args: &[String]) -> Result<(), String> {
    let num = |flag: &str, default: u64| num_flag(args, flag, default);
    if std::env::var_os("RUST_LOG").is_some() {
        init_logs();
    }
    darkleg_agent::demo::run(darkleg_agent::demo::DemoOptions {
        parcels: num("--parcels", 12)?.max(1),
        scan_interval: Duration::from_millis(num("--scan-interval-ms", 150)?),
        offline: args.iter().any(|a| a == "--offline"),
    })
}

/// `--flag N` as a number, `default` when absent.
fn num_flag<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == flag) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number")),
    }
}

fn cmd_simulate(args: &[String]) -> Result<(), String> {
    use darkleg_agent::sim::scanner::Faults;
    use darkleg_agent::simulate::{FleetOptions, SimulateOptions};
    if std::env::var_os("RUST_LOG").is_some() {
        init_logs();
    }
    let every = |flag: &str| -> Result<Option<Duration>, String> {
        let ms: u64 = num_flag(args, flag, 0)?;
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    };
    let garbage: f64 = num_flag(args, "--garbage", 0.0)?;
    if !(0.0..=1.0).contains(&garbage) {
        return Err("--garbage is a probability per frame, 0 to 1".into());
    }
    let run_id = darkleg_agent::clock::now_ms() / 1000 % 1_000_000;
    darkleg_agent::simulate::run(SimulateOptions {
        config: PathBuf::from(flag_value(args, "--config")?),
        fleet: FleetOptions {
            scanners: num_flag(args, "--scanners", 4usize)?.clamp(1, 64),
            parcels: num_flag(args, "--parcels", 50u64)?.max(1),
            scan_interval: Duration::from_millis(num_flag(args, "--scan-interval-ms", 50)?),
            faults: Faults {
                power_cut_every: every("--power-cut-every-ms")?,
                link_drop_every: every("--link-drop-every-ms")?,
            },
            garbage,
            seed: run_id,
            device_prefix: format!("sim{run_id}"),
        },
        timeout: Duration::from_secs(num_flag(args, "--timeout-secs", 120)?),
        report: args
            .iter()
            .position(|a| a == "--report")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from),
    })
}

fn cmd_inspect(codes: &[String]) -> Result<(), String> {
    use darkleg_protocol::barcode::{self, json::inspection_json, Kind};
    if codes.is_empty() {
        return Err("inspect-barcode needs at least one CODE".into());
    }
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

fn cmd_export(args: &[String]) -> Result<(), String> {
    if !args.iter().any(|a| a == "--epcis") {
        return Err("export needs a format: --epcis (GS1 EPCIS 2.0 JSON-LD)".into());
    }
    let c =
        Config::load(&PathBuf::from(flag_value(args, "--config")?)).map_err(|e| e.to_string())?;
    if !c.db_path().exists() {
        return Err(format!(
            "no database at {} (hint: has `darkleg run` started with this config?)",
            c.db_path().display()
        ));
    }
    let time = |flag: &str| -> Result<Option<u64>, String> {
        let Some(i) = args.iter().position(|a| a == flag) else {
            return Ok(None);
        };
        let v = args
            .get(i + 1)
            .ok_or_else(|| format!("{flag} needs a time"))?;
        v.parse::<jiff::Timestamp>()
            .map(|t| Some(t.as_millisecond().max(0) as u64))
            .map_err(|e| format!("{flag} {v:?}: {e} (hint: RFC 3339, e.g. 2026-11-22T00:00:00Z)"))
    };
    let opts = darkleg_agent::epcis::export::ExportOptions {
        since_ms: time("--since")?,
        until_ms: time("--until")?,
        output: args
            .iter()
            .position(|a| a == "--output")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from),
    };
    let n = darkleg_agent::epcis::export::export(&c, &opts)?;
    if let Some(p) = &opts.output {
        eprintln!("{n} events written to {}", p.display());
    }
    Ok(())
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
fn cmd_recover(args: &[String]) -> Result<(), String> {
    let file = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .ok_or_else(|| format!("recover needs a FILE (a damaged copy)\n\n{USAGE}"))?;
    let c =
        Config::load(&PathBuf::from(flag_value(args, "--config")?)).map_err(|e| e.to_string())?;
    let s = darkleg_agent::store::salvage::recover(&c, &PathBuf::from(file))
        .map_err(|e| e.to_string())?;
    println!("{file} → {}: {s}", c.db_path().display());
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
fn cmd_webhooks(args: &[String]) -> Result<(), String> {
    const USE: &str = "usage: darkleg webhooks replay NAME --config FILE";
    let (Some("replay"), Some(name)) = (args.first().map(String::as_str), args.get(1)) else {
        return Err(USE.into());
    };
    let config = flag_value(args, "--config").map_err(|_| USE.to_string())?;
    let c = Config::load(&PathBuf::from(config)).map_err(|e| e.to_string())?;
    if !c.webhooks.iter().any(|w| &w.name == name) {
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
