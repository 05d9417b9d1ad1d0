//! Time: [`now_ms`], and clock sanity. The gateway's wall clock can step (an NTP correction after boot, a bad RTC,
//! an operator). Nothing that orders or deduplicates depends on it — the outbox is ordered by
//! row number, scans by device sequence — so a step cannot reorder or lose events; but the
//! timestamps around it are suspect, and scanners synced to the old time need the new one.
//! [`ClockWatch`] spots a step by comparing the wall clock with the monotonic clock;
//! [`watch`] counts and logs it and bumps [`EPOCH`], which makes every port re-send
//! `TimeSync` at once.

use crate::faults;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Wall-clock Unix milliseconds: what timestamps say, never what orders anything.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bumped on every detected step; port threads re-sync their scanners when it changes.
pub static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Smaller differences are scheduling noise and NTP slewing, not steps.
pub const STEP_THRESHOLD_MS: i64 = 2_000;

/// Wall vs monotonic, sample by sample: no I/O, so it can be tested with made-up clocks.
pub struct ClockWatch {
    last: Option<(u64, Duration)>,
}

impl ClockWatch {
    pub fn new() -> Self {
        ClockWatch { last: None }
    }

    /// Feeds one sample (wall Unix ms, monotonic time since some origin); returns the step
    /// in ms (positive: jumped ahead) when the wall clock moved differently from real time.
    pub fn observe(&mut self, wall_ms: u64, mono: Duration) -> Option<i64> {
        let step = self.last.map(|(w, m)| {
            let wall = wall_ms as i64 - w as i64;
            let real = mono.saturating_sub(m).as_millis() as i64;
            wall - real
        });
        self.last = Some((wall_ms, mono));
        step.filter(|s| s.abs() >= STEP_THRESHOLD_MS)
    }
}

impl Default for ClockWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Samples the clocks every second until the task is dropped; a step is also recorded in the
/// store's incidents, where `darkleg status` shows it.
pub async fn watch(store: crate::store::StoreHandle) {
    let origin = Instant::now();
    let mut w = ClockWatch::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(step) = w.observe(crate::clock::now_ms(), origin.elapsed()) {
            faults::CLOCK_JUMPS.fetch_add(1, Relaxed);
            EPOCH.fetch_add(1, Relaxed);
            tracing::warn!(
                step_ms = step,
                "the gateway's wall clock stepped; ordering is unaffected (outbox rows, device sequences), timestamps around it are suspect; re-syncing scanners"
            );
            let detail = format!(
                "wall clock stepped {:+.1} s against the monotonic clock; timestamps around it are suspect",
                step as f64 / 1000.0
            );
            let _ = store
                .send(crate::store::WriteOp::Incident {
                    kind: "clock_jump",
                    detail,
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_told_from_time_passing() {
        let mut w = ClockWatch::new();
        let s = Duration::from_secs;
        assert_eq!(w.observe(1_000_000, s(10)), None);
        assert_eq!(
            w.observe(1_001_000, s(11)),
            None,
            "one second is one second"
        );
        assert_eq!(
            w.observe(1_002_300, s(12)),
            None,
            "300 ms of jitter is not a step"
        );
        assert_eq!(
            w.observe(4_602_300, s(13)),
            Some(3_599_000),
            "an hour ahead"
        );
        assert_eq!(w.observe(1_003_300, s(14)), Some(-3_600_000), "and back");
        // A suspended machine: the monotonic clock stops, the wall clock does not.
        assert_eq!(w.observe(1_063_300, s(14)), Some(60_000));
    }
}
