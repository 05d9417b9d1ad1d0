//! Sources: serial scanners in, [`WriteOp`](crate::store::WriteOp)s to the store out.
//! Sources never talk to sinks.
//!
//! The supervisor re-expands every scanner's port pattern each second and runs one
//! blocking thread per present port, so a scanner unplugged and plugged back in (or a new
//! one on a matching path) is picked up without a restart.

pub mod glob;
mod port;

use crate::config::Config;
use crate::store::StoreHandle;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs until `stop` is set; port threads notice within one read timeout.
pub async fn supervise(config: Arc<Config>, store: StoreHandle, stop: Arc<AtomicBool>) {
    // path → whether a thread is running for it
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last_error: HashMap<String, String> = HashMap::new();
    let errors: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for (path, err) in errors.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            // Log a failing port once per distinct error, not every half second.
            if last_error.get(&path) != Some(&err) {
                tracing::warn!(port = %path, "{err}");
                last_error.insert(path, err);
            }
        }
        for scanner in &config.scanners {
            for path in glob::expand(&scanner.port) {
                let mut act = active.lock().unwrap_or_else(|e| e.into_inner());
                if act.contains(&path) {
                    continue;
                }
                act.insert(path.clone());
                drop(act);
                let ctx = port::PortContext {
                    path: path.clone(),
                    scanner: scanner.clone(),
                    gateway_id: config.gateway.id.clone(),
                    store: store.clone(),
                    stop: stop.clone(),
                };
                let (act, errs) = (active.clone(), errors.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("port {path}"))
                    .spawn(move || {
                        if let Err(e) = port::run(&ctx) {
                            errs.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((ctx.path.clone(), e));
                        }
                        act.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&ctx.path);
                    });
                if let Err(e) = spawned {
                    tracing::error!(port = %path, "cannot start a port thread: {e}");
                    active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&path);
                }
            }
        }
    }
}
