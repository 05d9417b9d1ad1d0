//! Sources: serial scanners and relayed gateways in, [`WriteOp`](crate::store::WriteOp)s to
//! the store out. Sources never talk to sinks. [`relay`] takes other gateways' events from a
//! site broker; [`network`] handhelds' scans over TCP or UDP (DataWedge IP output).
//!
//! The supervisor re-expands every scanner's port pattern each second and runs one
//! blocking thread per present port, so a scanner unplugged and plugged back in (or a new
//! one on a matching path) is picked up without a restart.

pub mod glob;
pub mod hid;
pub mod network;
mod port;
pub mod relay;
pub mod retry;

use crate::config::Config;
use crate::store::StoreHandle;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Device id for a plain scanner, which has none of its own: the gateway names it after
/// its port (`gw-01:ttyUSB0`, `gw-01:serial_by-id_usb-…`).
pub fn ascii_device(gateway: &str, path: &str) -> String {
    let short = path.strip_prefix("/dev/").unwrap_or(path).replace('/', "_");
    format!("{gateway}:{short}")
}

/// An SSCC label's element string (AI 00, 18 digits, a valid check digit) that came without
/// the AIM identifier that says it is GS1: stored as plain text, no parcel or merchant route
/// sees it. A handheld set to send no Code ID does this to every label.
pub fn bare_sscc(code: &str, symbology: Option<&str>) -> bool {
    symbology.is_none()
        && code.len() == 20
        && code.starts_with("00")
        && darkleg_protocol::barcode::gs1::check_digit_ok(&code[2..])
}

/// At most one log line per period for one kind of trouble, from any thread: a floor of
/// misconfigured handhelds must not flood the log, nor be said only once ever.
#[derive(Default)]
pub struct Throttle(std::sync::atomic::AtomicU64);

impl Throttle {
    /// True at the first call and then once `every` has passed since the last true.
    pub fn due(&self, every: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        // +1: 0 means never.
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.0.load(Relaxed);
        (last == 0 || now - last.min(now) >= every.as_millis() as u64)
            && self.0.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }
}

/// Says that `code` from `device` looks like an SSCC label sent without its AIM identifier,
/// and `fix`: how to make this source send it. Callers say it once per device or listener.
pub fn warn_bare_sscc(port: &str, device: &str, code: &str, fix: &str) {
    tracing::warn!(port, device, code, "a scan that looks like an SSCC label came without its AIM identifier: it is stored as plain text, so no parcel, milestone or merchant route sees it — {fix}");
}

/// A port thread's end: its path, and why it could not be opened (`None`: it had opened).
type PortOutcome = (String, Option<String>);

/// Runs until `stop` is set; port threads notice within one read timeout.
pub async fn supervise(config: Arc<Config>, store: StoreHandle, stop: Arc<AtomicBool>) {
    // Paths with a running port thread.
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Ports that could not be opened, and why; `None` once a port opened again.
    let mut last_error: HashMap<String, String> = HashMap::new();
    let outcomes: Arc<Mutex<Vec<PortOutcome>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for (path, outcome) in outcomes.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            match outcome {
                // Log a port that cannot be opened once per distinct error, not every 500 ms.
                Some(err) if last_error.get(&path) != Some(&err) => {
                    tracing::warn!(port = %path, "{err}");
                    last_error.insert(path, err);
                }
                Some(_) => {}
                None => {
                    last_error.remove(&path);
                }
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
                let (act, outs) = (active.clone(), outcomes.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("port {path}"))
                    .spawn(move || {
                        let outcome = port::run(&ctx).err();
                        outs.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((ctx.path.clone(), outcome));
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

#[cfg(test)]
mod bare_sscc_tests {
    #[test]
    fn an_sscc_without_its_aim_id_is_noticed() {
        // 00 + 18-digit SSCC whose check digit is right.
        let sscc = "00106141411234567897";
        assert!(super::bare_sscc(sscc, None));
        assert!(
            !super::bare_sscc(sscc, Some("]C1")),
            "with its AIM id it is GS1"
        );
        assert!(
            !super::bare_sscc("00106141411234567890", None),
            "a wrong check digit"
        );
        assert!(
            !super::bare_sscc("1Z999AA10123456784", None),
            "a tracking number"
        );
        assert!(!super::bare_sscc("0010614141123456789x", None));
    }
}
