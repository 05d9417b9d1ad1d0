//! The one writer. A single thread owns the write connection; sources and sinks send it
//! [`WriteOp`]s. It drains whatever is queued (up to `max_batch`), applies each in its own
//! savepoint, commits once — one fsync for every scanner that scanned meanwhile — and only
//! then answers. That answer is what a framed scanner's Ack waits for.

use super::StoreError;
use darkleg_protocol::{EventId, Step};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot, watch};

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A scan from a framed scanner, owned so it can cross to the writer thread.
#[derive(Debug, Clone)]
pub struct FramedScan {
    pub seq: u64,
    pub step: Step,
    pub code: String,
    pub symbology: Option<String>,
    pub operator: Option<String>,
    pub captured_at_ms: u64,
    pub station: Option<String>,
    pub received_at_ms: u64,
    /// The source found the code unacceptable: consume the sequence number, store nothing.
    pub refused: bool,
}

/// A scan from a plain ASCII scanner: the gateway assigns the sequence.
#[derive(Debug, Clone)]
pub struct AsciiScan {
    pub step: Step,
    pub code: String,
    pub symbology: Option<String>,
    pub station: Option<String>,
    pub received_at_ms: u64,
}

/// What happened to a framed scan; `acked` is the device's highest durable sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramedOutcome {
    Stored {
        acked: u64,
    },
    Duplicate {
        acked: u64,
    },
    /// Not the next sequence: the scanner must go back to `acked + 1` (keeps per-device order).
    OutOfOrder {
        acked: u64,
    },
    /// The next sequence, consumed but not stored (its code was refused): the scanner
    /// retires it and tells the operator with the error tone.
    Refused {
        acked: u64,
    },
}

impl FramedOutcome {
    pub fn acked(self) -> u64 {
        match self {
            FramedOutcome::Stored { acked }
            | FramedOutcome::Duplicate { acked }
            | FramedOutcome::OutOfOrder { acked }
            | FramedOutcome::Refused { acked } => acked,
        }
    }
}

/// Counter deltas from one serial port since its last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortReport {
    pub connected: bool,
    pub frames: u64,
    pub rejected: u64,
    pub last_reject: Option<String>,
}

pub enum WriteOp {
    Hello {
        device: String,
        firmware: String,
        port: String,
        last_acked: u64,
        reply: Reply<u64>,
    },
    Framed {
        device: String,
        port: String,
        scan: FramedScan,
        reply: Reply<FramedOutcome>,
    },
    Ascii {
        device: String,
        port: String,
        scan: AsciiScan,
        reply: Reply<u64>,
    },
    /// Rows PUBACKed by an upstream. No reply: losing this on a crash only means a resend.
    Delivered {
        upstream: String,
        rows: Vec<i64>,
        at_ms: u64,
    },
    Port {
        port: String,
        protocol: &'static str,
        report: PortReport,
    },
    /// Drop delivered events received before this instant.
    Prune { before_ms: u64 },
}

enum Answer {
    U64(Reply<u64>, Result<u64, StoreError>),
    Framed(Reply<FramedOutcome>, Result<FramedOutcome, StoreError>),
}

pub(super) struct Writer {
    pub conn: Connection,
    pub upstreams: Vec<String>,
    pub max_batch: usize,
    pub committed: watch::Sender<i64>,
    /// Held for as long as the writer runs.
    pub _lock: std::fs::File,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
        tracing::debug!("store writer: all senders gone, stopping");
    }

    fn apply_batch(&mut self, batch: &mut Vec<WriteOp>) {
        let mut tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let err = StoreError::new("begin", e);
                tracing::error!("{err}");
                for op in batch.drain(..) {
                    if let Some(a) = fail(op, err.clone()) {
                        a.send();
                    }
                }
                return;
            }
        };
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        for op in batch.drain(..) {
            // After a full disk SQLite may roll the whole transaction back; a savepoint
            // then would start (and commit) a transaction of its own. Refuse the rest.
            let answer = if tx.is_autocommit() {
                fail(
                    op,
                    StoreError::new("batch", "rolled back by an earlier failure in it"),
                )
            } else {
                apply_savepointed(&mut tx, &self.upstreams, op)
            };
            answers.extend(answer);
        }
        let committed = tx
            .query_row("SELECT IFNULL(MAX(row), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .and_then(|max_row| tx.commit().map(|_| max_row));
        match committed {
            Ok(max_row) => {
                self.committed.send_if_modified(|v| {
                    let changed = *v != max_row;
                    *v = max_row;
                    changed
                });
                answers.into_iter().for_each(Answer::send);
            }
            Err(e) => {
                // The commit itself failed (disk full, I/O error), or SQLite had already
                // rolled the whole transaction back after an op hit a full disk: nothing in
                // the batch is durable, so nobody gets a positive answer and scanners keep
                // their scans. Report the op's error: it names the cause.
                let err = answers
                    .iter()
                    .find_map(Answer::error)
                    .cloned()
                    .unwrap_or_else(|| StoreError::new("commit", e));
                tracing::error!("{err}");
                for a in answers {
                    a.fail(err.clone());
                }
            }
        }
    }
}

impl Answer {
    fn error(&self) -> Option<&StoreError> {
        match self {
            Answer::U64(_, r) => r.as_ref().err(),
            Answer::Framed(_, r) => r.as_ref().err(),
        }
    }

    fn send(self) {
        match self {
            Answer::U64(tx, r) => drop(tx.send(r)),
            Answer::Framed(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Answer::U64(tx, _) => drop(tx.send(Err(err))),
            Answer::Framed(tx, _) => drop(tx.send(Err(err))),
        }
    }
}

fn apply_savepointed(
    tx: &mut Transaction<'_>,
    upstreams: &[String],
    op: WriteOp,
) -> Option<Answer> {
    let mut sp = match tx.savepoint() {
        Ok(sp) => sp,
        Err(e) => return fail(op, StoreError::new("savepoint", e)),
    };
    match op {
        WriteOp::Hello {
            device,
            firmware,
            port,
            last_acked,
            reply,
        } => {
            let r = hello(&sp, &device, &firmware, &port, last_acked);
            Some(Answer::U64(reply, finish(sp, r, "hello")))
        }
        WriteOp::Framed {
            device,
            port,
            scan,
            reply,
        } => {
            let r = framed(&sp, upstreams, &device, &port, &scan);
            Some(Answer::Framed(reply, finish(sp, r, "framed scan")))
        }
        WriteOp::Ascii {
            device,
            port,
            scan,
            reply,
        } => {
            let r = ascii(&sp, upstreams, &device, &port, &scan);
            Some(Answer::U64(reply, finish(sp, r, "ascii scan")))
        }
        WriteOp::Delivered {
            upstream,
            rows,
            at_ms,
        } => {
            let r = delivered(&sp, &upstream, &rows, at_ms);
            log_failure(finish(sp, r, "delivery marks"));
            None
        }
        WriteOp::Port {
            port,
            protocol,
            report,
        } => {
            let r = port_report(&sp, &port, protocol, &report);
            log_failure(finish(sp, r, "port counters"));
            None
        }
        WriteOp::Prune { before_ms } => {
            // With no upstream, nothing was ever delivered: keep everything for the first
            // upstream to be configured.
            let r = if upstreams.is_empty() {
                Ok(0)
            } else {
                prune(&mut sp, before_ms)
            };
            if let Ok(n) = &r {
                if *n > 0 {
                    tracing::info!(events = n, "pruned delivered events past retention");
                }
            }
            log_failure(finish(sp, r, "prune"));
            None
        }
    }
}

fn finish<T>(
    sp: rusqlite::Savepoint<'_>,
    r: rusqlite::Result<T>,
    what: &'static str,
) -> Result<T, StoreError> {
    match r {
        Ok(v) => sp.commit().map(|_| v).map_err(|e| StoreError::new(what, e)),
        Err(e) => Err(StoreError::new(what, e)), // dropping `sp` rolls it back
    }
}

fn log_failure<T>(r: Result<T, StoreError>) {
    if let Err(e) = r {
        tracing::error!("{e}");
    }
}

fn fail(op: WriteOp, err: StoreError) -> Option<Answer> {
    match op {
        WriteOp::Hello { reply, .. } | WriteOp::Ascii { reply, .. } => {
            Some(Answer::U64(reply, Err(err)))
        }
        WriteOp::Framed { reply, .. } => Some(Answer::Framed(reply, Err(err))),
        _ => {
            tracing::error!("{err}");
            None
        }
    }
}

fn ensure_device(sp: &Connection, device: &str, kind: &str, port: &str) -> rusqlite::Result<u64> {
    sp.prepare_cached(
        "INSERT INTO devices(device, kind, port) VALUES (?1, ?2, ?3)
         ON CONFLICT(device) DO UPDATE SET port = excluded.port",
    )?
    .execute(params![device, kind, port])?;
    sp.prepare_cached("SELECT last_seq FROM devices WHERE device = ?1")?
        .query_row([device], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

fn hello(
    sp: &Connection,
    device: &str,
    firmware: &str,
    port: &str,
    last_acked: u64,
) -> rusqlite::Result<u64> {
    let last = ensure_device(sp, device, "framed", port)?;
    // The scanner may know a higher ack than we do (another gateway, a replaced database):
    // whatever it has retired is not ours to ask for again.
    let acked = last.max(last_acked);
    sp.prepare_cached(
        "UPDATE devices SET last_seq = ?2, firmware = ?3, last_seen = ?4 WHERE device = ?1",
    )?
    .execute(params![
        device,
        acked as i64,
        firmware,
        crate::now_ms() as i64
    ])?;
    Ok(acked)
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    sp: &Connection,
    upstreams: &[String],
    device: &str,
    seq: u64,
    step: Step,
    code: &str,
    symbology: Option<&str>,
    station: Option<&str>,
    operator: Option<&str>,
    captured_at_ms: u64,
    received_at_ms: u64,
) -> rusqlite::Result<bool> {
    let id = EventId::new(device, seq);
    let inserted = sp.prepare_cached("INSERT INTO events(event_id, device, seq, step, code, symbology, station, operator, captured_at, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(event_id) DO NOTHING")?.execute(
        params![
            &id.0[..],
            device,
            seq as i64,
            step.as_str(),
            code,
            symbology,
            station,
            operator,
            captured_at_ms as i64,
            received_at_ms as i64
        ],
    )? == 1;
    if inserted {
        let row = sp.last_insert_rowid();
        let mut stmt = sp.prepare_cached("INSERT INTO outbox(upstream, row) VALUES (?1, ?2)")?;
        for u in upstreams {
            stmt.execute(params![u, row])?;
        }
    }
    Ok(inserted)
}

fn framed(
    sp: &Connection,
    upstreams: &[String],
    device: &str,
    port: &str,
    s: &FramedScan,
) -> rusqlite::Result<FramedOutcome> {
    let last = ensure_device(sp, device, "framed", port)?;
    let now = crate::now_ms() as i64;
    if s.seq <= last {
        sp.prepare_cached(
            "UPDATE devices SET duplicates = duplicates + 1, last_seen = ?2 WHERE device = ?1",
        )?
        .execute(params![device, now])?;
        // A retransmit carries the same code. A different one means the scanner reused a
        // sequence number (lost its state): its scan is not this event. Say so loudly.
        let stored: Option<String> = sp
            .prepare_cached("SELECT code FROM events WHERE event_id = ?1")?
            .query_row([&EventId::new(device, s.seq).0[..]], |r| r.get(0))
            .optional()?;
        if stored.is_some_and(|code| code != s.code) {
            tracing::error!(
                device, seq = s.seq, acked = last,
                "scanner reused a sequence number for a different scan; it must continue after {last}"
            );
        }
        return Ok(FramedOutcome::Duplicate { acked: last });
    }
    if s.seq != last.saturating_add(1) {
        return Ok(FramedOutcome::OutOfOrder { acked: last });
    }
    if s.refused {
        sp.prepare_cached("UPDATE devices SET last_seq = ?2, refused = refused + 1, last_seen = ?3 WHERE device = ?1")?.execute(
            params![device, s.seq as i64, now],
        )?;
        return Ok(FramedOutcome::Refused { acked: s.seq });
    }
    let inserted = insert_event(
        sp,
        upstreams,
        device,
        s.seq,
        s.step,
        &s.code,
        s.symbology.as_deref(),
        s.station.as_deref(),
        s.operator.as_deref(),
        s.captured_at_ms,
        s.received_at_ms,
    )?;
    sp.prepare_cached(
        "UPDATE devices SET last_seq = ?2, events = events + ?3, last_seen = ?4 WHERE device = ?1",
    )?
    .execute(params![device, s.seq as i64, inserted as i64, now])?;
    Ok(FramedOutcome::Stored { acked: s.seq })
}

fn ascii(
    sp: &Connection,
    upstreams: &[String],
    device: &str,
    port: &str,
    s: &AsciiScan,
) -> rusqlite::Result<u64> {
    let seq = ensure_device(sp, device, "ascii", port)?.saturating_add(1);
    insert_event(
        sp,
        upstreams,
        device,
        seq,
        s.step,
        &s.code,
        s.symbology.as_deref(),
        s.station.as_deref(),
        None,
        s.received_at_ms,
        s.received_at_ms,
    )?;
    sp.prepare_cached(
        "UPDATE devices SET last_seq = ?2, events = events + 1, last_seen = ?3 WHERE device = ?1",
    )?
    .execute(params![device, seq as i64, s.received_at_ms as i64])?;
    Ok(seq)
}

fn delivered(sp: &Connection, upstream: &str, rows: &[i64], at_ms: u64) -> rusqlite::Result<()> {
    let mut del = sp.prepare_cached("DELETE FROM outbox WHERE upstream = ?1 AND row = ?2")?;
    let mut n = 0i64;
    for row in rows {
        n += del.execute(params![upstream, row])? as i64;
    }
    sp.prepare_cached(
        "INSERT INTO upstreams(name, delivered, last_sync_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET delivered = delivered + ?2, last_sync_at = ?3",
    )?
    .execute(params![upstream, n, at_ms as i64])?;
    Ok(())
}

fn port_report(
    sp: &Connection,
    port: &str,
    protocol: &str,
    r: &PortReport,
) -> rusqlite::Result<()> {
    sp.prepare_cached(
        "INSERT INTO ports(port, protocol, connected, frames, rejected, last_reject, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(port) DO UPDATE SET protocol = ?2, connected = ?3,
             frames = frames + ?4, rejected = rejected + ?5,
             last_reject = IFNULL(?6, last_reject), last_seen = ?7",
    )?
    .execute(params![
        port,
        protocol,
        r.connected,
        r.frames as i64,
        r.rejected as i64,
        r.last_reject,
        crate::now_ms() as i64
    ])?;
    Ok(())
}

fn prune(sp: &mut rusqlite::Savepoint<'_>, before_ms: u64) -> rusqlite::Result<usize> {
    // Never an event some upstream still waits for; bounded so one prune stays one short commit.
    sp.prepare_cached(
        "DELETE FROM events WHERE row IN (
             SELECT row FROM events e WHERE received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.row = e.row)
             LIMIT 20000)",
    )?
    .execute([before_ms as i64])
}
