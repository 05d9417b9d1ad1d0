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
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for scanner in &config.hid_scanners {
            for path in super::glob::expand(&scanner.device) {
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
                            // Once per distinct error, not every 500 ms.
                            Err(e) if errs.get(&ctx.path) != Some(&e) => {
                                tracing::warn!(device = %ctx.path, "{e}");
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
