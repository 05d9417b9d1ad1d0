//! Fault counters the store and the clock watch feed and `/metrics` and the status page read
//! (below all three, so the store does not import the observer):
//! things that happen when the database cannot be written, so they live in memory.

use std::sync::atomic::{AtomicBool, AtomicU64};

/// Scans refused (Nack / "rescan") because the outbox was full.
pub static REFUSED_FULL: AtomicU64 = AtomicU64::new(0);
/// Delivered rows removed before their retention was up, to make room for new scans.
pub static EVICTED_FOR_ROOM: AtomicU64 = AtomicU64::new(0);
/// The outbox is full of undelivered rows: new scans are being refused right now.
pub static STORE_FULL: AtomicBool = AtomicBool::new(false);
/// Connections the `[http]` listener closed at accept: `max_connections` were open.
pub static HTTP_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Connections a `[[network_scanner]]` TCP listener accepted with every slot taken: each
/// waits, unread, until a slot frees (others behind it wait in the kernel's backlog).
pub static NETWORK_FULL: AtomicU64 = AtomicU64::new(0);
/// Silent connections a `[[network_scanner]]` TCP listener closed to make room for a
/// waiting one (`evict_idle_secs`).
pub static NETWORK_EVICTED: AtomicU64 = AtomicU64::new(0);
/// TLS handshakes the `[http]` listener failed (an expired certificate, a plain-HTTP
/// client, a client that does not trust ours).
pub static TLS_FAILED: AtomicU64 = AtomicU64::new(0);
/// When a failed handshake was last logged at warn (ms since the epoch): at most one a minute.
pub static TLS_FAILED_LOGGED_MS: AtomicU64 = AtomicU64::new(0);
/// Steps of the gateway's wall clock against its monotonic clock (NTP step, bad RTC).
pub static CLOCK_JUMPS: AtomicU64 = AtomicU64::new(0);

/// Troubles of the store that only show while they last — a writer stuck in one commit, an
/// outbox a sink cannot read — for `/healthz`, which otherwise proves only that one row
/// of the file reads.
pub mod trouble {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    /// A commit this long is a stalled disk, not a slow one (an SD card's worst fsync is
    /// tens of milliseconds; the writer's BEGIN waits at most its 5 s busy timeout).
    pub const WRITER_STALL: Duration = Duration::from_secs(30);
    /// A sink retries a failed read; one failing this long is no hiccup.
    pub const READ_FAILING: Duration = Duration::from_secs(5);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// When a writer began its current batch (ms since [`epoch`], plus one); 0: idle.
    pub(crate) struct Busy(AtomicU64);

    impl Busy {
        fn start(&self) {
            self.0
                .store(epoch().elapsed().as_millis() as u64 + 1, Relaxed);
        }

        fn end(&self) {
            self.0.store(0, Relaxed);
        }

        /// The line for `/healthz` once the batch has run `stall` or longer.
        fn stalled(&self, stall: Duration) -> Option<String> {
            let busy = self.0.load(Relaxed);
            if busy == 0 {
                return None;
            }
            let took = epoch()
                .elapsed()
                .saturating_sub(Duration::from_millis(busy - 1));
            (took >= stall).then(|| {
                format!(
                    "store writer: stalled (one commit running for {}s: a stuck disk? scans wait for their acks)",
                    took.as_secs()
                )
            })
        }
    }

    /// The agent's one store writer.
    static WRITER_BUSY: Busy = Busy(AtomicU64::new(0));

    /// The writer starts applying a batch.
    pub fn writer_busy() {
        WRITER_BUSY.start();
    }

    /// The writer answered its batch and waits for more.
    pub fn writer_idle() {
        WRITER_BUSY.end();
    }

    /// Outbox readers whose last read failed: since when, and the error.
    static READS: Mutex<BTreeMap<String, (Instant, String)>> = Mutex::new(BTreeMap::new());

    fn reads() -> std::sync::MutexGuard<'static, BTreeMap<String, (Instant, String)>> {
        READS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read of `upstream`'s outbox ended: `Err` keeps the time of the first failure in a row.
    pub fn outbox_read(upstream: &str, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                let mut r = reads();
                if !r.is_empty() {
                    r.remove(upstream);
                }
            }
            Err(e) => {
                let mut r = reads();
                let entry = r
                    .entry(upstream.to_string())
                    .or_insert_with(|| (Instant::now(), String::new()));
                entry.1 = e.to_string();
            }
        }
    }

    /// One line per trouble lasting past its limit; empty when there is none.
    pub fn problems() -> Vec<String> {
        problems_past(WRITER_STALL, READ_FAILING)
    }

    pub(crate) fn problems_past(stall: Duration, failing: Duration) -> Vec<String> {
        let mut out: Vec<String> = WRITER_BUSY.stalled(stall).into_iter().collect();
        for (upstream, (since, why)) in reads().iter() {
            if since.elapsed() >= failing {
                out.push(format!(
                    "outbox of {upstream}: unreadable for {}s, nothing is delivered to it ({why})",
                    since.elapsed().as_secs()
                ));
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn troubles_show_once_they_last_and_clear_when_they_end() {
            // Names no other test uses: the statics are shared across the test binary.
            outbox_read("trouble-a", Err("malformed row"));
            outbox_read("trouble-b", Ok(()));
            let lines = problems_past(Duration::from_secs(3600), Duration::ZERO);
            let mine: Vec<_> = lines.iter().filter(|l| l.contains("trouble-")).collect();
            assert_eq!(mine.len(), 1, "{lines:?}");
            assert!(mine[0].contains("trouble-a") && mine[0].contains("malformed row"));
            assert!(
                !problems_past(Duration::from_secs(3600), Duration::from_secs(3600))
                    .iter()
                    .any(|l| l.contains("trouble-"))
            );
            outbox_read("trouble-a", Ok(()));
            assert!(!problems_past(Duration::from_secs(3600), Duration::ZERO)
                .iter()
                .any(|l| l.contains("trouble-")));
        }

        #[test]
        fn a_writer_is_stalled_while_its_batch_runs_past_the_limit() {
            // Its own, not the agent's: the store tests run real writers beside this one.
            let busy = Busy(AtomicU64::new(0));
            assert_eq!(busy.stalled(Duration::ZERO), None, "idle");
            busy.start();
            let line = busy
                .stalled(Duration::ZERO)
                .expect("stalled at a zero limit");
            assert!(line.starts_with("store writer: stalled"), "{line}");
            assert_eq!(
                busy.stalled(Duration::from_secs(3600)),
                None,
                "not yet an hour"
            );
            busy.end();
            assert_eq!(
                busy.stalled(Duration::ZERO),
                None,
                "cleared when the batch ends"
            );
        }
    }
}
