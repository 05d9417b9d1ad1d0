//! What each TCP listener carries right now, for `/metrics`: its open connections against
//! `max_connections`, and how long a handheld has been waiting for a slot. In memory: it
//! describes this process's sockets, which end with it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct Load {
    pub open: usize,
    /// Since when an accepted connection has been waiting for a slot.
    pub waiting_since: Option<Instant>,
}

static LISTENERS: Mutex<BTreeMap<String, Load>> = Mutex::new(BTreeMap::new());

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<String, Load>> {
    LISTENERS.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn set(port: &str, load: Load) {
    lock().insert(port.to_string(), load);
}

/// The listener closed: nothing of it is shown any more.
pub(super) fn remove(port: &str) {
    lock().remove(port);
}

/// Every TCP listener of this process, by its port name.
pub fn listeners() -> Vec<(String, Load)> {
    lock().iter().map(|(p, l)| (p.clone(), l.clone())).collect()
}
