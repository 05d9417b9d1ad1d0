//! darkleg's gateway agent: scanners on serial ports in, a durable SQLite outbox in the
//! middle, MQTT upstreams out.
//!
//! The shape is *sources → store → sinks*. [`sources`] turn bytes into store writes and
//! never talk to sinks; the [`store`] (one writer, group commit) is the single source of
//! truth; [`sinks`] read the outbox and mark delivery only on the upstream's PUBACK. A
//! framed scanner's scan is acked only once its commit is durable, so what a scanner has
//! retired is on the gateway's disk.

pub mod clock;
pub mod config;
pub mod demo;
pub mod derive;
pub mod domain;
pub mod epcis;
pub mod faults;
pub mod intake;
pub mod mqtt;
pub mod observe;
pub mod pem;
pub mod report;
pub mod routing;
pub mod sim;
pub mod simulate;
pub mod sinks;
pub mod sources;
pub mod status;
pub mod store;
pub mod supervise;

use config::Config;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often delivered events past retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the agent logs a one-line summary (a journal shows it is alive and draining).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

async fn heartbeat(db: std::path::PathBuf) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.tick().await;
    let mut last_total = None;
    loop {
        tick.tick().await;
        let db = db.clone();
        let status = tokio::task::spawn_blocking(move || store::Reader::open(&db)?.status()).await;
        let Ok(Ok(s)) = status else { continue };
        let backlog: i64 = s.upstreams.iter().map(|u| u.backlog).sum();
        let connected = s
            .ports
            .iter()
            .filter(|p| p.connected && !p.is_relay())
            .count();
        // Device counters only grow (pruning does not touch them).
        let total: i64 = s.devices.iter().map(|d| d.events).sum();
        tracing::info!(
            scans_last_minute = total - last_total.unwrap_or(total),
            backlog,
            ports_connected = connected,
            "heartbeat"
        );
        last_total = Some(total);
    }
}

/// Runs the start-up integrity check of a large database beside serving (see
/// [`store::integrity`]): damage stops the agent, and the next start moves the file aside.
fn check_beside(
    snapshot: rusqlite::Connection,
    store: store::StoreHandle,
    health: supervise::Health,
) {
    const NAME: &str = "start-up integrity check";
    let spawned = std::thread::Builder::new()
        .name("integrity-check".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            match store::integrity::finish(snapshot, &store.path) {
                store::integrity::Found::Intact => tracing::info!(
                    secs = started.elapsed().as_secs_f32(),
                    "{NAME}: the database is intact"
                ),
                store::integrity::Found::Unfinished(e) => tracing::error!(
                    "{NAME} could not finish: {e}; the file's integrity is unknown until the next start checks it"
                ),
                store::integrity::Found::Damaged(why) => {
                    store.hold_checkpoints();
                    health.fail(
                        NAME,
                        format!("found the database damaged ({why}); the next start moves it aside and salvages its undelivered scans"),
                    )
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("{NAME} could not start: {e}; the file's integrity is unknown until the next start checks it");
    }
}

/// Re-reads the intake's tokens and TLS certificate on each SIGHUP; the rest of the config
/// is read at start.
async fn on_sighup(mut hup: tokio::signal::unix::Signal, reread: Option<intake::Reread>) {
    while hup.recv().await.is_some() {
        match &reread {
            Some(r) => r.reload(),
            None => tracing::info!(
                "SIGHUP: nothing to re-read (only [intake] tokens_file and TLS files are; other config changes take a restart)"
            ),
        }
    }
    std::future::pending::<()>().await
}

/// Why [`run`] ended early: it could not start (exit code 1), or a part of it died
/// ([`supervise::EXIT_DIED`]).
#[derive(Debug)]
pub struct AgentError {
    pub message: String,
    pub exit_code: u8,
}

impl From<String> for AgentError {
    fn from(message: String) -> Self {
        AgentError {
            message,
            exit_code: 1,
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long an orderly stop may take after a part died, before the agent exits anyway.
const DEATH_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The deriver beats at least every 1.1 s when healthy (a 1 s back-off on store errors).
const DERIVER_STALL: Duration = Duration::from_secs(120);

/// Runs the agent until `shutdown` turns true, or until one of its parts dies (see
/// [`supervise`]): then it stops what it can and returns an error with exit code 70.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let config = Arc::new(config);
    let health = supervise::Health::new();
    // Watched from the start, with or without an intake: SIGHUP's default is to end the
    // process, and `kill -HUP` (a reload in many service managers) must not stop capture.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("watching SIGHUP: {e}"))?;
    if let Ok(v) = std::env::var(supervise::TEST_PANIC_VAR) {
        tracing::warn!(
            "{}={v} is set: a TEST-ONLY fault will make {v} panic",
            supervise::TEST_PANIC_VAR
        );
    }
    let (store, writer) = store::StoreHandle::open(&config).map_err(|e| e.to_string())?;
    let writer = health.watch_thread("store writer", writer);
    if let Some(snapshot) = store.take_startup_check() {
        check_beside(snapshot, store.clone(), health.clone());
    }
    tracing::info!(
        site = %config.gateway.site,
        gateway = %config.gateway.id,
        db = %store.path.display(),
        scanners = config.scanners.len(),
        upstreams = config.upstreams.len(),
        "darkleg agent running"
    );
    // Parts stop on this: the caller's shutdown, or a part's death.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Bound before anything else starts: a taken port is an error at start, not a dead part.
    let mut network = Vec::new();
    for n in &config.network_scanners {
        network.push((n.clone(), sources::network::bind(n).await?));
    }
    let http = match config.http {
        Some(addr) => {
            let listener = observe::bind(addr).await?;
            let intake = intake::build(&config, store.clone())?;
            tracing::info!(%addr, intake = intake.is_some(), tls = intake.as_ref().is_some_and(|i| i.1.is_some()), "status page, /metrics and /healthz");
            let (extra, tls, tokens) = match intake {
                Some((router, tls, tokens)) => (router, tls, Some(tokens)),
                None => (axum::Router::new(), None, None),
            };
            let serve = observe::serve_with(
                listener,
                config.clone(),
                store.path.clone(),
                stop_rx.clone(),
                health.clone(),
                extra,
                tls,
            );
            (Some(health.spawn("status server", serve)), tokens)
        }
        None => (None, None),
    };
    let (http, tokens) = http;
    health.spawn("SIGHUP watch", on_sighup(hup, tokens));
    let stop = Arc::new(AtomicBool::new(false));
    let sources = health.spawn(
        "port supervisor",
        sources::supervise(config.clone(), store.clone(), stop.clone()),
    );
    let mut links = Vec::new();
    if !config.hid_scanners.is_empty() {
        links.push(health.spawn(
            "keyboard-wedge supervisor",
            sources::hid::supervise(config.clone(), store.clone(), stop.clone()),
        ));
    }
    for u in &config.upstreams {
        let (u, gateway, store, stop) = (
            u.clone(),
            config.gateway.clone(),
            store.clone(),
            stop_rx.clone(),
        );
        links.push(
            health.spawn_on_thread(format!("sink {}", u.name), move || async move {
                supervise::fault_point("sink");
                sinks::mqtt::run(u, gateway, store, stop).await
            }),
        );
    }
    for w in &config.webhooks {
        links.push(health.spawn(
            format!("webhook {}", w.name),
            sinks::webhook::run(w.clone(), store.clone(), stop_rx.clone()),
        ));
    }
    for r in &config.relays {
        links.push(health.spawn(
            format!("relay {}", r.name),
            sources::relay::run(
                r.clone(),
                config.gateway.clone(),
                store.clone(),
                stop_rx.clone(),
            ),
        ));
    }
    for (n, bound) in network {
        links.push(health.spawn(
            format!("network scanner {}", n.port_name()),
            sources::network::run(
                n,
                bound,
                config.gateway.id.clone(),
                store.clone(),
                stop_rx.clone(),
            ),
        ));
    }
    let deriver = {
        let (config, store, stop) = (config.clone(), store.clone(), stop.clone());
        let beat = health.heartbeat("deriver", DERIVER_STALL);
        health
            .spawn_thread("deriver", move || {
                derive::task::run(config, store, stop, beat)
            })
            .map_err(|e| format!("starting derivation: {e}"))?
    };
    let heartbeat = health.spawn("heartbeat log", heartbeat(store.path.clone()));
    let clock = health.spawn("clock watch", clock::watch(store.clone()));
    let pruner = {
        let store = store.clone();
        let retention = config.store.retention;
        health.spawn("pruner", async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tick.tick().await;
                let before_ms = clock::now_ms().saturating_sub(retention.as_millis() as u64);
                if store
                    .send(store::WriteOp::Prune { before_ms })
                    .await
                    .is_err()
                {
                    // The writer is gone: its watcher reports that.
                    std::future::pending::<()>().await;
                }
            }
        })
    };
    let died = tokio::select! {
        _ = async { if !*shutdown.borrow() { let _ = shutdown.changed().await; } } => None,
        why = health.died() => Some(why),
    };
    health.stopping();
    match &died {
        None => tracing::info!("shutting down"),
        Some(why) => tracing::error!("shutting down: {why}"),
    }
    let _ = stop_tx.send(true);
    stop.store(true, Ordering::Relaxed);
    pruner.abort();
    heartbeat.abort();
    clock.abort();
    if let Some(h) = http {
        h.abort();
    }
    let orderly = async move {
        let _ = sources.await;
        for s in links {
            let _ = s.await;
        }
        let _ = tokio::task::spawn_blocking(move || deriver.join()).await;
        // The writer stops once every sender (port threads included) is gone, after
        // committing what it was given.
        drop(store);
        let _ = writer.await;
    };
    match died {
        None => {
            orderly.await;
            Ok(())
        }
        Some(why) => {
            if tokio::time::timeout(DEATH_STOP_TIMEOUT, orderly)
                .await
                .is_err()
            {
                tracing::error!(
                    "parts still running {DEATH_STOP_TIMEOUT:?} after the stop: exiting anyway"
                );
            }
            Err(AgentError {
                message: why,
                exit_code: supervise::EXIT_DIED,
            })
        }
    }
}
