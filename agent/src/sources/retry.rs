//! Scans the store refused for now (a full outbox, a BEGIN under a busy lock, an I/O error),
//! held in memory and offered again with backoff. A DataWedge handheld or a keyboard cannot
//! be asked to resend, so dropping a refused scan lost a scan already read. Bounded: past
//! [`CAP`] scans each further refusal is dropped, counted and logged as an error.

use super::Throttle;
use crate::store::{AsciiScan, StoreError};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(5);
/// Scans held per listener or device.
pub const CAP: usize = 1000;

pub struct RetryQueue {
    port: String,
    held: VecDeque<(String, AsciiScan)>,
    /// The wait before the next offer after a refusal.
    wait: Duration,
    due: Option<Instant>,
    said: Throttle,
    cap: usize,
}

impl RetryQueue {
    pub fn new(port: &str) -> Self {
        Self::with_cap(port, CAP)
    }

    pub fn with_cap(port: &str, cap: usize) -> Self {
        RetryQueue {
            port: port.to_string(),
            held: VecDeque::new(),
            wait: FIRST,
            due: None,
            said: Throttle::default(),
            cap,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// When the held scans are to be offered again.
    pub fn due(&self) -> Option<Instant> {
        self.due.filter(|_| !self.held.is_empty())
    }

    /// A scan refused with `e` (not a permanent refusal): kept, with its original
    /// received_at, to be offered again — or, the queue full, dropped and logged (`false`).
    pub fn keep(&mut self, device: String, scan: AsciiScan, e: &StoreError) -> bool {
        if self.held.len() >= self.cap {
            tracing::error!(port = %self.port, device, code = %scan.code, held = self.held.len(), "scan NOT stored and DROPPED, rescan it: the store refuses ({e}) and the {} scans held for it already fill the retry queue", self.cap);
            return false;
        }
        if self.said.due(Duration::from_secs(10)) {
            tracing::error!(port = %self.port, held = self.held.len() + 1, "the store refused a scan ({e}): held in memory and offered again with backoff (lost if the agent stops or dies first); check the store's health");
        }
        self.held.push_back((device, scan));
        if self.due.is_none() {
            self.due = Some(Instant::now() + self.wait);
            self.wait = (self.wait * 2).min(MAX);
        }
        true
    }

    /// A scan was stored: the store takes writes, the next refusal starts the backoff over.
    pub fn stored(&mut self) {
        self.wait = FIRST;
    }

    /// The held scans, in order, once due (none before).
    pub fn take_due(&mut self) -> Vec<(String, AsciiScan)> {
        match self.due {
            Some(t) if t <= Instant::now() => {
                self.due = None;
                self.held.drain(..).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The agent stops with scans still held: they are lost; said with their count and
    /// codes. Returns how many.
    pub fn give_up(&mut self, why: &str) -> usize {
        let n = self.held.len();
        if n > 0 {
            let codes: Vec<&str> = self
                .held
                .iter()
                .take(20)
                .map(|(_, s)| s.code.as_str())
                .collect();
            tracing::error!(port = %self.port, unstored = n, first_codes = ?codes, "{why}: {n} scans the store refused were still held and are NOT stored — rescan them");
        }
        self.held.clear();
        self.due = None;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(code: &str) -> AsciiScan {
        AsciiScan {
            step: darkleg_protocol::Step::Pack,
            code: code.into(),
            symbology: None,
            station: None,
            received_at_ms: 7,
        }
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_the_queue_is_bounded() {
        let e = StoreError::new("begin", "database is locked");
        let mut q = RetryQueue::with_cap("p", 3);
        let t = Instant::now();
        assert!(q.keep("d".into(), scan("A"), &e));
        assert!(q.keep("d".into(), scan("B"), &e));
        let due = q.due().unwrap() - t;
        assert!(due >= FIRST && due < FIRST * 2, "{due:?}");
        assert!(q.take_due().is_empty(), "not before it is due");
        std::thread::sleep(FIRST);
        let again: Vec<String> = q.take_due().into_iter().map(|(_, s)| s.code).collect();
        assert_eq!(again, ["A", "B"], "in order");
        // Refused again and again: 200 ms, 400 ms, … up to 5 s.
        let mut waits = Vec::new();
        for _ in 0..8 {
            let t = Instant::now();
            q.keep("d".into(), scan("A"), &e);
            waits.push((q.due().unwrap() - t).as_millis() / 100);
            q.due = Some(Instant::now());
            q.take_due();
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 50, 50, 50]);
        q.stored();
        q.keep("d".into(), scan("A"), &e);
        assert!(
            q.due().unwrap() - Instant::now() <= FIRST,
            "reset once stored"
        );
        // Full: dropped, not held.
        assert!(q.keep("d".into(), scan("B"), &e));
        assert!(q.keep("d".into(), scan("C"), &e));
        assert!(!q.keep("d".into(), scan("D"), &e));
        assert_eq!(q.len(), 3);
        assert_eq!(q.give_up("agent stopping"), 3);
        assert!(q.is_empty() && q.due().is_none());
    }
}
