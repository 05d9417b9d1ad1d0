//! Reply-less bookkeeping — delivery marks, refusal and port counters, incidents — folded
//! until it is durable. Nobody waits for these ops, so a failed commit (a full disk, a locked
//! file) must not drop them: a lost delivery mark leaves a delivered row owed for as long as
//! the sink's connection lasts (it has read past the row), and the harness found exactly that
//! after a full disk. Folding (rows per upstream, counter deltas per port) keeps what waits
//! bounded by the outbox and the number of ports, and applies reports in arrival order, so a
//! retried older report never overwrites a newer one.
//!
//! Marks ride in the batch's own transaction (they free room; one commit for scans and marks);
//! after they once failed there, they get a transaction of their own until they take, so a
//! mark can never hold back the scans of a batch. Counters always get their own, after the
//! batch's answers went out: a counter that does not fit can never refuse a scan.

use super::ops;
use super::writer::{PortReport, WriteOp};
use super::StoreError;
use rusqlite::Connection;
use std::collections::BTreeMap;

/// Incidents kept while they cannot be written; older ones go first, counted in the log.
const MAX_INCIDENTS: usize = 256;

#[derive(Default)]
pub(super) struct Held {
    /// Delivered rows per upstream, with the latest delivery time.
    marks: BTreeMap<String, (Vec<i64>, u64)>,
    /// Webhook dead letters and 410s, in arrival order (idempotent: a dead letter moves a row
    /// only while it is still owed).
    webhook_marks: Vec<super::webhooks::WebhookMark>,
    /// Marks failed inside a batch's transaction: they go in one of their own until they take.
    pub marks_alone: bool,
    /// Refusals per upstream: rows added, the latest reason and time.
    refused: BTreeMap<String, (usize, String, u64)>,
    /// Port counter deltas since the last durable report, the latest state on top.
    ports: BTreeMap<String, (&'static str, PortReport)>,
    incidents: Vec<(u64, &'static str, String)>,
    /// Consecutive failed attempts, to log the first and then now and then.
    failures: u64,
}

impl Held {
    /// Takes a reply-less bookkeeping op into the fold; any other op is handed back.
    pub fn fold(&mut self, op: WriteOp) -> Option<WriteOp> {
        match op {
            WriteOp::Delivered {
                upstream,
                rows,
                at_ms,
            } => {
                let e = self.marks.entry(upstream).or_default();
                e.0.extend(rows);
                e.1 = e.1.max(at_ms);
            }
            WriteOp::Webhook(m) => self.webhook_marks.push(m),
            WriteOp::Refused {
                upstream,
                rows,
                reason,
                at_ms,
            } => {
                let e = self
                    .refused
                    .entry(upstream)
                    .or_insert_with(|| (0, String::new(), 0));
                e.0 += rows;
                e.1 = reason;
                e.2 = e.2.max(at_ms);
            }
            WriteOp::Port {
                port,
                protocol,
                report,
            } => {
                let e = self
                    .ports
                    .entry(port)
                    .or_insert_with(|| (protocol, PortReport::default()));
                e.0 = protocol;
                e.1.connected = report.connected;
                e.1.frames += report.frames;
                e.1.rejected += report.rejected;
                if report.last_reject.is_some() {
                    e.1.last_reject = report.last_reject;
                }
            }
            WriteOp::Incident { kind, detail } => {
                if self.incidents.len() >= MAX_INCIDENTS {
                    self.incidents.remove(0);
                    tracing::error!(
                        "store: an incident that could not be written was dropped to keep the newest {MAX_INCIDENTS}"
                    );
                }
                self.incidents.push((crate::clock::now_ms(), kind, detail));
            }
            other => return Some(other),
        }
        None
    }

    pub fn has_marks(&self) -> bool {
        !self.marks.is_empty() || !self.webhook_marks.is_empty()
    }

    pub fn has_counters(&self) -> bool {
        !(self.refused.is_empty() && self.ports.is_empty() && self.incidents.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        !self.has_marks() && !self.has_counters()
    }

    /// Delivered rows waiting for their mark, across upstreams.
    pub fn mark_rows(&self) -> usize {
        self.marks.values().map(|(rows, _)| rows.len()).sum()
    }

    /// Applies the marks in a savepoint of `conn`'s open transaction (or as their own when
    /// `conn` has none). Kept until [`Held::marks_durable`].
    pub fn apply_marks(&self, conn: &Connection) -> Result<(), StoreError> {
        let r = (|| {
            conn.execute_batch("SAVEPOINT held_marks")?;
            for (upstream, (rows, at_ms)) in &self.marks {
                ops::delivered(conn, upstream, rows, *at_ms)?;
            }
            for m in &self.webhook_marks {
                super::webhooks::apply(conn, m)?;
            }
            conn.execute_batch("RELEASE held_marks")
        })();
        settle(conn, r, "held_marks", "delivery marks")
    }

    pub fn marks_durable(&mut self) {
        self.marks.clear();
        self.webhook_marks.clear();
        self.marks_alone = false;
    }

    /// Applies the counters and incidents (see [`Held::apply_marks`]).
    pub fn apply_counters(&self, conn: &Connection) -> Result<(), StoreError> {
        let r = (|| {
            conn.execute_batch("SAVEPOINT held_counters")?;
            for (upstream, (rows, reason, at_ms)) in &self.refused {
                ops::refused(conn, upstream, *rows, reason, *at_ms)?;
            }
            for (port, (protocol, report)) in &self.ports {
                ops::port_report(conn, port, protocol, report)?;
            }
            for (at_ms, kind, detail) in &self.incidents {
                ops::incident(conn, *at_ms, kind, detail)?;
            }
            conn.execute_batch("RELEASE held_counters")
        })();
        settle(conn, r, "held_counters", "counters")
    }

    pub fn counters_durable(&mut self) {
        self.refused.clear();
        self.ports.clear();
        self.incidents.clear();
    }

    /// Logs a failed attempt: the first of a run, then one in 40 (about every 10 s of retries).
    pub fn failed(&mut self, err: &StoreError) {
        self.failures += 1;
        if self.failures == 1 || self.failures.is_multiple_of(40) {
            tracing::error!(
                attempts = self.failures,
                marks = self.mark_rows(),
                "{err}; kept and tried again (delivered rows stay owed until their mark is written)"
            );
        }
    }

    pub fn succeeded(&mut self) {
        if self.failures > 0 && self.is_empty() {
            tracing::info!(
                attempts = self.failures,
                "store: held-back bookkeeping written"
            );
            self.failures = 0;
        }
    }

    /// What is lost when the writer ends with bookkeeping still held.
    pub fn report_lost(&self) {
        if !self.is_empty() {
            tracing::error!(
                marks = self.mark_rows(),
                "store: stopping with bookkeeping that could not be written; those delivered rows are sent again after the restart (duplicates by event id, never a loss)"
            );
        }
    }
}

/// A failed savepoint is rolled back (unless SQLite already rolled the whole transaction
/// back, which the caller sees in `is_autocommit`).
fn settle(
    conn: &Connection,
    r: rusqlite::Result<()>,
    savepoint: &str,
    what: &'static str,
) -> Result<(), StoreError> {
    r.map_err(|e| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch(&format!("ROLLBACK TO {savepoint}; RELEASE {savepoint}"));
        }
        StoreError::sqlite(format!("held-back {what}"), e)
    })
}
