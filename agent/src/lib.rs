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
pub mod epcis;
pub mod mqtt;
pub mod observe;
pub mod report;
pub mod routing;
pub mod sim;
pub mod simulate;
pub mod sinks;
pub mod sources;
pub mod status;
pub mod store;

use config::Config;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

/// Runs the agent until `shutdown` turns true.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let config = Arc::new(config);
    let (store, writer) = store::StoreHandle::open(&config).map_err(|e| e.to_string())?;
    tracing::info!(
        site = %config.gateway.site,
        gateway = %config.gateway.id,
        db = %store.path.display(),
        scanners = config.scanners.len(),
        upstreams = config.upstreams.len(),
        "darkleg agent running"
    );
    let http = match config.http {
        Some(addr) => {
            let listener = observe::bind(addr).await?;
            tracing::info!(%addr, "status page, /metrics and /healthz");
            Some(tokio::spawn(observe::serve(
                listener,
                config.clone(),
                store.path.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sources = tokio::spawn(sources::supervise(
        config.clone(),
        store.clone(),
        stop.clone(),
    ));
    let mut links = Vec::new();
    for u in &config.upstreams {
        links.push(tokio::spawn(sinks::mqtt::run(
            u.clone(),
            config.gateway.clone(),
            store.clone(),
            shutdown.clone(),
        )));
    }
    for r in &config.relays {
        links.push(tokio::spawn(sources::relay::run(
            r.clone(),
            config.gateway.clone(),
            store.clone(),
            shutdown.clone(),
        )));
    }
    let deriver = {
        let (config, store, stop) = (config.clone(), store.clone(), stop.clone());
        std::thread::Builder::new()
            .name("derive".into())
            .spawn(move || derive::task::run(config, store, stop))
            .map_err(|e| format!("starting derivation: {e}"))?
    };
    let heartbeat = tokio::spawn(heartbeat(store.path.clone()));
    let clock = tokio::spawn(clock::watch(store.clone()));
    let pruner = {
        let store = store.clone();
        let retention = config.store.retention;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tick.tick().await;
                let before_ms = now_ms().saturating_sub(retention.as_millis() as u64);
                if store
                    .send(store::WriteOp::Prune { before_ms })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    if !*shutdown.borrow() {
        let _ = shutdown.changed().await;
    }
    tracing::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    pruner.abort();
    heartbeat.abort();
    clock.abort();
    if let Some(h) = http {
        h.abort();
    }
    let _ = sources.await;
    for s in links {
        let _ = s.await;
    }
    let _ = tokio::task::spawn_blocking(move || deriver.join()).await;
    // The writer stops once every sender (port threads included) is gone, after
    // committing what it was given.
    drop(store);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(())
}
