//! Per-device sequencing state, held in the writer's memory so that a scan costs the writer
//! two inserts (event, outbox) instead of five statements. The `devices` rows are written
//! once per batch, in the same transaction, just before the commit.
//!
//! Only the writer thread changes devices, so its memory and the database agree as long as
//! every commit succeeds; after a failed one the memory is dropped and re-read.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// What the writer needs to decide about a device's next scan.
#[derive(Debug, Clone)]
pub(super) struct Device {
    /// Framed: the highest durable sequence. Ascii: the last one the gateway assigned.
    pub last_seq: u64,
    /// Whether an app on the HTTP intake is this device (`None`: never seen).
    pub app: Option<bool>,
}

/// One op's effect on a device, recorded only once the op's savepoint committed.
#[derive(Debug, Default)]
pub(super) struct Update {
    pub last_seq: u64,
    pub events: i64,
    pub duplicates: i64,
    pub refused: i64,
    /// A resend under a stored sequence that carried a different scan.
    pub conflicts: i64,
    pub firmware: Option<String>,
    /// Gateway time minus device time for a scan just received (transit included: ms).
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug)]
struct Dirty {
    kind: &'static str,
    port: String,
    last_seq: u64,
    firmware: Option<String>,
    events: i64,
    duplicates: i64,
    refused: i64,
    conflicts: i64,
    last_seen: i64,
    clock_offset_ms: Option<i64>,
}

pub(super) struct Devices {
    known: HashMap<String, Device>,
    dirty: HashMap<String, Dirty>,
    /// Where a device this store numbers itself (ASCII) starts: the store's incarnation
    /// (25 random bits) above 28 bits of count. A store lost and started afresh draws
    /// another, so its scans never take the event ids of scans the lost one numbered and
    /// delivered; seqs stay below 2^53, exact as a JSON number in every consumer.
    first_seq_base: u64,
    /// Per device: (acked, offered seq, times) — the same out-of-order seq offered again and
    /// again after go-back means the scanner no longer holds the ones before it.
    gaps: HashMap<String, (u64, u64, u32)>,
    /// Devices with an op that failed in the batch being written (its savepoint rolled back,
    /// the rest of the batch going on): an app's later seqs there must not be adopted past it.
    failed: std::collections::HashSet<String>,
}

/// A device that posts to the HTTP intake (by the port recorded for it).
fn is_app(kind: &str, port: &str) -> bool {
    kind == "framed" && port == super::writer::APP_PORT
}

/// Bits of a gateway-numbered device's seq that count scans within one store (268M).
pub(super) const OWN_SEQ_BITS: u32 = 28;

/// Passes of go-back-N offering the same seq past a hole before the hole is accepted as
/// lost at the scanner. High: a frame merely corrupted on the wire comes through long before.
pub(super) const GAP_PASSES: u32 = 16;

impl Devices {
    pub fn new(incarnation: u64) -> Self {
        Devices {
            known: HashMap::new(),
            dirty: HashMap::new(),
            first_seq_base: incarnation << OWN_SEQ_BITS,
            gaps: HashMap::new(),
            failed: Default::default(),
        }
    }

    /// Counts go-back passes that start past a hole while `acked` + 1 is awaited; true once it
    /// is clear the scanner cannot send what lies between. A pass is recognised by its first
    /// frame, the lowest seq the scanner still holds: a window offers `first..first + w` on
    /// every pass, and only `first` counts.
    pub fn hole_is_permanent(&mut self, device: &str, acked: u64, seq: u64) -> bool {
        let e = self
            .gaps
            .entry(device.to_string())
            .or_insert((acked, seq, 0));
        if e.0 != acked || seq < e.1 {
            *e = (acked, seq, 0);
        }
        if seq == e.1 {
            e.2 += 1;
        }
        e.2 >= GAP_PASSES
    }

    /// The sequence a gateway-numbered device's next scan takes.
    pub fn next_own_seq(&mut self, conn: &Connection, device: &str) -> rusqlite::Result<u64> {
        let last = self.get(conn, device)?.last_seq;
        // A device this store has not numbered yet starts in this incarnation's range; one it
        // has goes on from where it is (also below the range, for stores older than it).
        Ok(if last == 0 {
            self.first_seq_base + 1
        } else {
            last + 1
        })
    }

    /// The device's state, read from the database the first time the writer meets it.
    pub fn get(&mut self, conn: &Connection, device: &str) -> rusqlite::Result<Device> {
        if let Some(d) = self.known.get(device) {
            return Ok(d.clone());
        }
        let row = conn
            .prepare_cached("SELECT last_seq, kind, port FROM devices WHERE device = ?1")?
            .query_row([device], |r| {
                // Salvaged rows may lack kind and port (NULL).
                let kind: Option<String> = r.get(1)?;
                let port: Option<String> = r.get(2)?;
                Ok((r.get::<_, i64>(0)?, kind, port))
            })
            .optional()?;
        let d = match row {
            Some((last, kind, port)) => Device {
                last_seq: last as u64,
                app: match (kind, port) {
                    (Some(kind), Some(port)) => Some(is_app(&kind, &port)),
                    _ => None,
                },
            },
            None => Device {
                last_seq: 0,
                app: None,
            },
        };
        self.known.insert(device.to_string(), d.clone());
        Ok(d)
    }

    /// Records a committed op's effect, to be written with the batch.
    pub fn apply(&mut self, device: &str, kind: &'static str, port: &str, u: Update) {
        let now = crate::clock::now_ms() as i64;
        self.known.insert(
            device.to_string(),
            Device {
                last_seq: u.last_seq,
                app: Some(is_app(kind, port)),
            },
        );
        let d = self
            .dirty
            .entry(device.to_string())
            .or_insert_with(|| Dirty {
                kind,
                port: port.to_string(),
                last_seq: u.last_seq,
                firmware: None,
                events: 0,
                duplicates: 0,
                refused: 0,
                conflicts: 0,
                last_seen: now,
                clock_offset_ms: None,
            });
        d.port = port.to_string();
        d.last_seq = u.last_seq;
        d.firmware = u.firmware.or(d.firmware.take());
        d.events += u.events;
        d.duplicates += u.duplicates;
        d.refused += u.refused;
        d.conflicts += u.conflicts;
        d.last_seen = now;
        d.clock_offset_ms = u.clock_offset_ms.or(d.clock_offset_ms);
    }

    /// Writes this batch's device changes; call inside the batch's transaction.
    pub fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO devices(device, kind, port, last_seq, firmware, last_seen, events, duplicates, refused, clock_offset_ms, conflicts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(device) DO UPDATE SET port = excluded.port, last_seq = excluded.last_seq,
                 firmware = IFNULL(excluded.firmware, firmware), last_seen = excluded.last_seen,
                 events = events + excluded.events, duplicates = duplicates + excluded.duplicates,
                 refused = refused + excluded.refused, conflicts = conflicts + excluded.conflicts,
                 clock_offset_ms = IFNULL(excluded.clock_offset_ms, clock_offset_ms)",
        )?;
        for (device, d) in &self.dirty {
            stmt.execute(params![
                device,
                d.kind,
                d.port,
                d.last_seq as i64,
                d.firmware,
                d.last_seen,
                d.events,
                d.duplicates,
                d.refused,
                d.clock_offset_ms,
                d.conflicts
            ])?;
        }
        Ok(())
    }

    /// The batch committed: its changes are in the database.
    pub fn committed(&mut self) {
        self.dirty.clear();
        self.failed.clear();
    }

    /// One of `device`'s ops failed in this batch.
    pub fn op_failed(&mut self, device: &str) {
        self.failed.insert(device.to_string());
    }

    pub fn failed_in_batch(&self, device: &str) -> bool {
        self.failed.contains(device)
    }

    /// The batch did not commit: memory may be ahead of the database, so forget it.
    pub fn forget(&mut self) {
        self.known.clear();
        self.dirty.clear();
        self.failed.clear();
    }
}
