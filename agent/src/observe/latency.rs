//! Scan → durable-ack latency: how long a scanner waits between sending a scan and hearing it
//! is on disk — a framed scanner's ack, an HTTP intake request's answer. Lock-free histograms
//! the port threads and the intake feed and `/metrics` reads, one family with a `source` label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in seconds (Prometheus `le`). Fine between 10 and 50 ms, where a
/// gateway on an SD card (5–30 ms an fsync) answers: its p99 in fsyncs must be readable.
pub const BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1,
    0.25, 1.0,
];

pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|&b| s <= b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last one is +Inf), and the sum in seconds.
    pub fn read(&self) -> ([u64; BOUNDS.len() + 1], f64) {
        let mut out = [0u64; BOUNDS.len() + 1];
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            out[i] = acc;
        }
        (out, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// Framed scanners: scan frame read to its ack written.
pub static ACK_LATENCY: Histogram = Histogram::new();
/// HTTP intake: request received to the answer built, for requests the store answered (one
/// observation per request, however many scans it carried).
pub static HTTP_ACK_LATENCY: Histogram = Histogram::new();

/// `(source label, histogram)` for `/metrics`.
pub fn by_source() -> [(&'static str, &'static Histogram); 2] {
    [("framed", &ACK_LATENCY), ("http", &HTTP_ACK_LATENCY)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let (c, sum) = h.read();
        assert_eq!(c[0], 1); // ≤ 0.5 ms
        assert_eq!(c[3], 2); // ≤ 3 ms
        assert_eq!(c[BOUNDS.len() - 1], 2); // ≤ 1 s
        assert_eq!(c[BOUNDS.len()], 3); // +Inf
        assert!((sum - 2.0033).abs() < 1e-6);
    }
}
