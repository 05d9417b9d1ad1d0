//! USB barcode scanners in keyboard mode ("keyboard wedge") on Linux, read through evdev.
//!
//! Each `[[hid_scanner]]` names a device by a `/dev/input/by-id/…` path or glob. The
//! supervisor re-expands it every 500 ms and runs one thread per present device: it opens the
//! device, grabs it exclusively (scans must not also land in whatever window has the focus),
//! and turns key events into scans by the configured layout ([`keymap`]); Enter ends a scan.
//! Unplugged, the thread ends and the device is opened again when it reappears.
//!
//! Only the device loop ([`device`]) touches evdev; it is kept thin and has no test of its
//! own (a machine without /dev/uinput cannot fake a keyboard). What it feeds — [`keymap`] and
//! [`intake`] — is tested on recorded key streams, the intake against the real store writer.

mod device;
pub mod intake;
pub mod keymap;

use crate::config::Config;
use crate::store::StoreHandle;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs until `stop` is set; device threads notice within one poll timeout.
pub async fn supervise(config: Arc<Config>, store: StoreHandle, stop: Arc<AtomicBool>) {
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let errors: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Per configured device: whether its path or glob matched anything last time, so that
    // "nothing there" is said once when it starts (and again after every unplug), not never.
    let mut present: Vec<Option<bool>> = vec![None; config.hid_scanners.len()];
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for (i, scanner) in config.hid_scanners.iter().enumerate() {
            let paths = super::glob::expand(&scanner.device);
            let now = !paths.is_empty();
            if present[i] != Some(now) {
                if now {
                    tracing::info!(device = %scanner.device, found = paths.len(), "keyboard-wedge scanner present");
                } else {
                    tracing::warn!(device = %scanner.device,
                        "keyboard-wedge scanner: nothing matches this path (not plugged in, or the by-id name is different: see ls /dev/input/by-id/); waiting for it");
                }
                present[i] = Some(now);
            }
            for path in paths {
                if !active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path.clone())
                {
                    continue;
                }
                let ctx = device::DeviceContext {
                    device: super::ascii_device(&config.gateway.id, &path),
                    path: path.clone(),
                    scanner: scanner.clone(),
                    store: store.clone(),
                    stop: stop.clone(),
                };
                let (act, errs) = (active.clone(), errors.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("hid {path}"))
                    .spawn(move || {
                        let outcome = device::run(&ctx);
                        let mut errs = errs.lock().unwrap_or_else(|e| e.into_inner());
                        match outcome {
                            // Once per distinct error, not every 500 ms; and on the status
                            // page: a scanner that cannot be read takes no scans.
                            Err(e) if errs.get(&ctx.path) != Some(&e) => {
                                tracing::error!(device = %ctx.path, "keyboard-wedge scanner NOT read: {e}");
                                let report = crate::store::PortReport {
                                    connected: false,
                                    frames: 0,
                                    rejected: 0,
                                    last_reject: Some(e.clone()),
                                };
                                let _ = ctx.store.send_blocking(crate::store::WriteOp::Port {
                                    port: ctx.path.clone(),
                                    protocol: "hid",
                                    report,
                                });
                                errs.insert(ctx.path.clone(), e);
                            }
                            Err(_) => {}
                            Ok(()) => {
                                errs.remove(&ctx.path);
                            }
                        }
                        act.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&ctx.path);
                    });
                if let Err(e) = spawned {
                    tracing::error!(device = %path, "cannot start a thread for it: {e}");
                    active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&path);
                }
            }
        }
    }
}
