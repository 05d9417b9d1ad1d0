//! Liveness: a part of the agent that dies takes the agent down with exit code 70 (for
//! systemd to restart it) instead of leaving a process that looks healthy and does
//! nothing; a serial port whose thread died is opened again; `/healthz` names dead parts;
//! the status server holds a bounded number of connections.
//!
//! Faults come from the test-only `DARKLEG_TEST_PANIC=<part>` hook (see
//! `darkleg_agent::supervise::fault_point`): the named part panics once.

use darkleg_agent::config::Config;
use darkleg_agent::sim::broker::free_port;
use darkleg_agent::supervise::{Health, TEST_PANIC_VAR};
use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The agent with a test fault armed; killed when dropped.
struct Faulty(Child);

impl Faulty {
    fn start(rig: &Rig, part: &str) -> Faulty {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rig.log)
            .unwrap();
        let child = Command::new(darkleg_bin())
            .args(["run", "--config"])
            .arg(&rig.config)
            .env("RUST_LOG", "info")
            .env(TEST_PANIC_VAR, part)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Faulty(child)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.0.try_wait().unwrap();
            status.is_some()
        });
        status
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn with_http(rig: &Rig) -> u16 {
    let http = free_port().unwrap();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&rig.config, text).unwrap();
    http
}

fn log(rig: &Rig) -> String {
    std::fs::read_to_string(&rig.log).unwrap_or_default()
}

#[test]
fn a_deriver_panic_exits_70_and_after_the_restart_every_acked_scan_arrives() {
    let mut rig = Rig::new("live-deriver", &[PortKind::Framed]);
    let http = with_http(&rig);
    let mut agent = Faulty::start(&rig, "deriver");
    rig.wait_ports_open();
    let mut plans = Plans::new();
    let plan: Vec<_> = (0..30u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let cfg = FramedConfig {
        scan_interval: Duration::from_millis(20),
        retransmit_after: Duration::from_millis(300),
        ..FramedConfig::new("live-1", 7)
    };
    let pty = rig.take_ptys().remove(0);
    let scanners = vec![start_framed(pty, cfg, plan, &mut plans)];
    let exit = agent.wait_exit(Duration::from_secs(30));
    let acked_before = scanners[0].0.stats().acked;
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(70),
        "the agent exits 70 once its deriver died; log:\n{}",
        log(&rig)
    );
    assert!(
        log(&rig).contains("deriver panicked"),
        "the log names the dead part"
    );
    assert!(http_get(http, "/healthz").is_none(), "nothing answers 200");
    assert!(acked_before > 0, "scans were acked before the death");
    // systemd's restart: every scan, acked before the death or not, arrives once.
    let _agent = rig.start_agent();
    rig.wait_all_arrived(&scanners, &plans, Duration::from_secs(60));
    assert_eq!(status(&rig.config)["events"], 30, "each scan stored once");
    eprintln!("deriver died with {acked_before} scans acked; after the restart all 30 arrived");
}

#[test]
fn a_sink_panic_exits_70_naming_the_sink() {
    let rig = Rig::new("live-sink", &[]);
    let mut agent = Faulty::start(&rig, "sink");
    let exit = agent.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.and_then(|s| s.code()), Some(70), "{}", log(&rig));
    assert!(log(&rig).contains("sink central panicked"), "{}", log(&rig));
}

#[test]
fn a_port_thread_panic_reopens_the_port_and_loses_no_scan() {
    let mut rig = Rig::new("live-port", &[PortKind::Framed]);
    let http = with_http(&rig);
    let mut agent = Faulty::start(&rig, "port");
    rig.wait_ports_open();
    let mut plans = Plans::new();
    let plan: Vec<_> = (0..20u64)
        .flat_map(|n| parcel_scans(n, Step::Pack))
        .collect();
    let cfg = FramedConfig {
        scan_interval: Duration::from_millis(20),
        retransmit_after: Duration::from_millis(300),
        ..FramedConfig::new("live-2", 9)
    };
    let pty = rig.take_ptys().remove(0);
    let scanners = vec![start_framed(pty, cfg, plan, &mut plans)];
    rig.wait_all_arrived(&scanners, &plans, Duration::from_secs(60));
    assert!(
        log(&rig).contains("port thread panicked"),
        "the port's thread did die: {}",
        log(&rig)
    );
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent runs on");
    let health = http_get(http, "/healthz").unwrap_or_default();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert_eq!(status(&rig.config)["events"], 20);
}

#[test]
fn healthz_names_a_dead_part_and_the_status_server_bounds_its_connections() {
    let dir = Scratch::new("live-http");
    let text = format!(
        "[gateway]\nsite = \"e2e\"\nid = \"gw-01\"\ndata_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 16\n",
        dir.0.join("data").display()
    );
    let config = Config::parse(&text, "t.toml").unwrap();
    assert_eq!(config.http_max_connections, 16);
    let (store, writer) = darkleg_agent::store::StoreHandle::open(&config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let health = Health::new();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let port = rt.block_on(async {
        let listener = darkleg_agent::observe::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let _calm = health.spawn("sink central", std::future::pending());
        tokio::spawn(darkleg_agent::observe::serve(
            listener,
            std::sync::Arc::new(config.clone()),
            store.path.clone(),
            stop_rx,
            health.clone(),
        ));
        port
    });
    let healthz = || http_get(port, "/healthz").unwrap_or_default();
    assert!(healthz().starts_with("HTTP/1.1 200"), "{}", healthz());

    rt.block_on(async {
        health.spawn("deriver", async { panic!("test-only fault") });
        health.died().await
    });
    let answer = healthz();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("deriver: dead (panicked: test-only fault)"),
        "{answer}"
    );
    assert!(
        !answer.contains("sink central"),
        "only dead parts are named"
    );

    // Clients that connect and send nothing take every slot; one more is closed at once,
    // and counted (darkleg_http_connections_refused_total reads this counter).
    let refused_before = darkleg_agent::faults::HTTP_REFUSED.load(Ordering::Relaxed);
    let idle: Vec<std::net::TcpStream> = (0..config.http_max_connections)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut extra = String::new();
    assert!(
        wait_until(Duration::from_secs(3), || {
            extra = http_get(port, "/healthz").unwrap_or_default();
            !extra.starts_with("HTTP/1.1")
        }),
        "a connection past the bound is closed unanswered: {extra}"
    );
    assert!(
        darkleg_agent::faults::HTTP_REFUSED.load(Ordering::Relaxed) > refused_before,
        "the refused connection is counted"
    );
    // The idle ones time out and free their slots: the server answers again.
    assert!(
        wait_until(Duration::from_secs(10), || healthz()
            .starts_with("HTTP/1.1 503")),
        "served again once idle connections timed out"
    );
    drop(idle);
    drop(rt);
    drop(store);
    writer.join().unwrap();
}
