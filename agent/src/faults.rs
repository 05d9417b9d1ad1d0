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
