//! Intake counters for `/metrics`, in memory (they restart at zero with the agent, as
//! Prometheus counters may): requests by HTTP status, scans by result.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The statuses the intake answers with.
pub const STATUSES: [u16; 9] = [200, 400, 401, 408, 409, 413, 500, 503, 507];
/// The results a posted scan can have.
pub const RESULTS: [&str; 6] = [
    "stored",
    "duplicate",
    "rejected",
    "conflict",
    "gap",
    "not_stored",
];

static REQUESTS: [AtomicU64; STATUSES.len()] = [const { AtomicU64::new(0) }; STATUSES.len()];
static SCANS: [AtomicU64; RESULTS.len()] = [const { AtomicU64::new(0) }; RESULTS.len()];

pub fn request(status: u16) {
    let i = STATUSES.iter().position(|&s| s == status).unwrap_or(6); // 500: anything else
    REQUESTS[i].fetch_add(1, Relaxed);
}

pub fn scan(result: &str) {
    if let Some(i) = RESULTS.iter().position(|&r| r == result) {
        SCANS[i].fetch_add(1, Relaxed);
    }
}

/// `(status, requests)` for every status.
pub fn requests() -> impl Iterator<Item = (u16, u64)> {
    STATUSES
        .iter()
        .zip(&REQUESTS)
        .map(|(s, n)| (*s, n.load(Relaxed)))
}

/// `(result, scans)` for every result.
pub fn scans() -> impl Iterator<Item = (&'static str, u64)> {
    RESULTS
        .iter()
        .zip(&SCANS)
        .map(|(r, n)| (*r, n.load(Relaxed)))
}
