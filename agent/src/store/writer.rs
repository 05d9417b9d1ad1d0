//! The one writer. A single thread owns the write connection; sources and sinks send it
//! [`WriteOp`]s. It drains whatever is queued (up to `max_batch`), applies each in its own
//! savepoint, commits once — one fsync for every scanner that scanned meanwhile — and hands
//! the answers to the syncer, which sends them once that fsync returned (see `syncer`). That
//! answer is what a framed scanner's Ack waits for.

use super::derived::Routes;
use super::devices::{Devices, Update};
use super::ops;
use super::syncer::Group;
use super::StoreError;
use crate::faults;
use darkleg_protocol::Step;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, Transaction};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

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
    /// Who numbers this device's scans, which decides the two cases where a scan cannot be
    /// checked against what is stored.
    pub client: SeqClient,
}

/// The kind of sender behind a sequenced scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqClient {
    /// darkleg firmware (go-back-N over a serial link). A hole offered past for
    /// [`GAP_PASSES`](super::devices::GAP_PASSES) passes is taken as lost in its flash; a
    /// resend of a seq no longer held (pruned) is a retransmit, acked as a duplicate.
    Firmware,
    /// An app posting to the HTTP intake, which resends on 409. A hole is never accepted
    /// (its next seqs would be answered "duplicate" and never stored), a seq at or below
    /// the device's last that is no longer held cannot be told from a reinstalled app's new
    /// scan and is refused, and a device name another source already uses is refused.
    App,
}

/// The port recorded for devices that post to the HTTP intake.
pub const APP_PORT: &str = "http";

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
    /// Not stored and nothing consumed: the scan cannot be checked against the device's
    /// record, or the device name is the other kind of source's (an app's, a scanner's).
    Conflict {
        acked: u64,
        why: Conflict,
    },
}

/// Why a scan was answered [`FramedOutcome::Conflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The seq is at or below the device's last, and no stored scan is left to compare.
    Unheld,
    /// The device name is the other kind of source's: a scanner's for an app, an app's for
    /// a scanner (whose record is then kept on the scanner, not retired).
    OtherSource,
}

impl FramedOutcome {
    pub fn acked(self) -> u64 {
        match self {
            FramedOutcome::Stored { acked }
            | FramedOutcome::Duplicate { acked }
            | FramedOutcome::OutOfOrder { acked }
            | FramedOutcome::Refused { acked }
            | FramedOutcome::Conflict { acked, .. } => acked,
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
    /// An upstream's broker refused `rows` publications (a PUBACK reason code, or acks a
    /// 3.1.1 broker took back by closing): they stay owed; status shows `reason`. No reply.
    Refused {
        upstream: String,
        rows: usize,
        reason: String,
        at_ms: u64,
    },
    /// A webhook's dead letter or its 410; no reply.
    Webhook(super::webhooks::WebhookMark),
    /// Something an operator should see in `status` (a clock step); no reply.
    Incident { kind: &'static str, detail: String },
    /// Drop delivered events received before this instant.
    Prune { before_ms: u64 },
    /// Scans another gateway relayed; the reply counts those stored (the rest were
    /// duplicates, or conflicts counted on `port`). All of one message or none.
    Relayed {
        port: String,
        scans: Vec<darkleg_protocol::relay::Relayed>,
        reply: Reply<u64>,
    },
    /// A batch of derivation results (facts, parcel states, alerts, messages), all or none.
    Derived {
        batch: Box<super::derived::Derived>,
        reply: Reply<u64>,
    },
}

pub(super) enum Answer {
    U64(Reply<u64>, Result<u64, StoreError>),
    Framed(Reply<FramedOutcome>, Result<FramedOutcome, StoreError>),
}

pub(super) struct Writer {
    pub conn: Connection,
    /// Which upstreams each new row is owed to.
    pub router: crate::routing::Router,
    /// Last outbox row handed out (see `ops::next_row`).
    pub last_row: std::cell::Cell<i64>,
    pub max_batch: usize,
    /// Makes commits durable and answers them, in order, off this thread (see `syncer`).
    pub syncer: super::syncer::Syncer,
    /// Bookkeeping that arrived while a batch joined ops during a sync: the next batch's.
    pub carry: Vec<WriteOp>,
    /// Held for as long as the writer runs.
    pub _lock: std::fs::File,
    pub devices: Devices,
    /// Delivery marks and counters not yet durable (see `held`).
    pub held: super::held::Held,
    /// Tells the checkpoint thread the WAL grew.
    pub checkpoint: super::checkpoint::Nudge,
    /// Ports of the framed scans in the last batch: on a slow disk, the next batch waits a
    /// moment for them to send again (see `gather`).
    pub expected: Vec<String>,
    /// Set once the start-up check found the file damaged: nothing more is checkpointed
    /// into it, so the copy moved aside at the next start is the file as it was checked.
    pub hold_checkpoints: Arc<AtomicBool>,
    pub checkpoints_held: bool,
}

/// How long the writer waits for new work before trying held-back bookkeeping alone.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A commit this slow is a slow disk (an SD card's fsync): worth gathering a burst for. A
/// fast disk commits in well under this, and never waits.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(4);
const GATHER_GAP: std::time::Duration = std::time::Duration::from_micros(300);
const GATHER_POLL: std::time::Duration = std::time::Duration::from_micros(50);
const GATHER_MAX: std::time::Duration = std::time::Duration::from_millis(5);
/// How often a batch waiting for the last commit's sync looks for new ops to join it.
const JOIN_POLL: std::time::Duration = std::time::Duration::from_micros(250);

fn slow_disk(commit_took: std::time::Duration) -> bool {
    commit_took >= SLOW_COMMIT
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Only to wait for an op with a timeout while bookkeeping is held back.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime for the store writer's timer");
        // How long the last batch took to apply and commit (mostly its fsync).
        let mut commit_took = std::time::Duration::ZERO;
        loop {
            let next = if !self.carry.is_empty() {
                batch.append(&mut self.carry);
                None
            } else if self.held.is_empty() {
                Some(rx.blocking_recv())
            } else {
                // The timeout is made inside the runtime: its timer needs the context.
                timer
                    .block_on(async { tokio::time::timeout(RETRY_EVERY, rx.recv()).await })
                    .ok()
            };
            // The ops taken are refused by their dropped replies.
            if self.stopped_by_failed_sync() {
                break;
            }
            match next {
                Some(Some(op)) => batch.push(op),
                Some(None) => {
                    if !self.held.is_empty() {
                        self.apply_batch(&mut batch, None); // one last try
                        self.held.report_lost();
                    }
                    break;
                }
                None => {} // the retry tick: held-back bookkeeping alone
            }
            self.take_queued(&mut rx, &mut batch);
            // With the sync on its own thread a batch gathers while the last one syncs
            // (see `commit_ops`); here only when SQLite's commit does the syncing.
            if !self.syncer.syncs() {
                if !batch.is_empty() && slow_disk(commit_took) {
                    self.gather(&mut rx, &mut batch, commit_took);
                }
                self.expected.clear();
                for op in &batch {
                    expect(&mut self.expected, op);
                }
            }
            self.hold_if_damaged();
            let started = std::time::Instant::now();
            faults::trouble::writer_busy();
            self.apply_batch(&mut batch, Some(&mut rx));
            faults::trouble::writer_idle();
            commit_took = started.elapsed();
            if self.stopped_by_failed_sync() {
                break;
            }
        }
        tracing::debug!("store writer: all senders gone, stopping");
        // What was committed is synced and answered before the connection closes.
        self.syncer.stop();
        self.checkpoint.stop();
        self.hold_if_damaged();
    }

    /// A sync of the WAL failed (the syncer logged it): the writer ends, which ends the
    /// agent (exit 70), with checkpoints held so the WAL's hole is never copied in.
    fn stopped_by_failed_sync(&self) -> bool {
        let failed = self.syncer.failed();
        if failed {
            tracing::error!("store writer: stopping after a failed sync of the WAL");
        }
        failed
    }

    /// After the check's verdict of damage: no autocheckpoint, none on close; new commits
    /// stay in the WAL, which moves aside with the file.
    fn hold_if_damaged(&mut self) {
        if self.checkpoints_held || !self.hold_checkpoints.load(Relaxed) {
            return;
        }
        self.checkpoints_held = true;
        let held = self
            .conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .and_then(|()| {
                self.conn
                    .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                    .map(|_| ())
            });
        if let Err(e) = held {
            tracing::error!("store: could not stop checkpoints into the damaged file: {e}");
        }
    }

    fn take_queued(&self, rx: &mut mpsc::Receiver<WriteOp>, batch: &mut Vec<WriteOp>) {
        while batch.len() < self.max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    }

    /// On a slow disk, waits a moment for the rest of a burst before committing. Scanners
    /// answered by the last commit refill their windows within about a millisecond; committing
    /// the first of those scans alone would make the rest wait for the fsync after (two
    /// fsyncs for them, a half-empty commit for the disk), and the ports would stay split in
    /// two groups that take turns. So it waits until every port the last commit answered has
    /// sent again — or, with none to wait for, until a quiet [`GATHER_GAP`] — never more than
    /// a quarter of a commit.
    fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<WriteOp>,
        batch: &mut Vec<WriteOp>,
        commit_took: std::time::Duration,
    ) {
        let until = std::time::Instant::now() + (commit_took / 4).min(GATHER_MAX);
        let mut quiet_since = std::time::Instant::now();
        let mut seen = 0;
        while batch.len() < self.max_batch {
            for op in &batch[seen..] {
                if let WriteOp::Framed { port, .. } = op {
                    self.expected.retain(|p| p != port);
                }
            }
            seen = batch.len();
            let now = std::time::Instant::now();
            let quiet = self.expected.is_empty() && now - quiet_since >= GATHER_GAP;
            if now >= until || quiet {
                break;
            }
            std::thread::sleep(GATHER_POLL);
            self.take_queued(rx, batch);
            if batch.len() > seen {
                quiet_since = std::time::Instant::now();
            }
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<WriteOp>, rx: Option<&mut mpsc::Receiver<WriteOp>>) {
        // Bookkeeping joins the fold; what is left needs the transaction.
        let ops: Vec<WriteOp> = batch
            .drain(..)
            .filter_map(|op| self.held.fold(op))
            .collect();
        // A transaction a failed rollback left open would make every BEGIN fail.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let mut held_full = false;
        // Marks that failed inside a batch before try on their own first.
        if self.held.marks_alone && self.held.has_marks() {
            match self.held.apply_marks(&self.conn) {
                Ok(()) => self.held.marks_durable(),
                Err(e) => {
                    held_full |= e.full;
                    self.held.failed(&e);
                }
            }
        }
        let marks_here = !self.held.marks_alone && self.held.has_marks();
        let (mut full, refused) = if ops.is_empty() && !marks_here {
            (held_full, 0)
        } else {
            let (full, refused) = self.commit_ops(ops, marks_here, rx);
            (full || held_full, refused)
        };
        // Counters in a transaction of their own, after the answers: a counter that does not
        // fit must never refuse a scan.
        if self.held.has_counters() {
            match self.held.apply_counters(&self.conn) {
                Ok(()) => self.held.counters_durable(),
                Err(e) => {
                    full |= e.full;
                    self.held.failed(&e);
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                }
            }
        }
        self.held.succeeded();
        self.checkpoint.committed();
        if full {
            self.make_room(refused as u64);
        }
    }

    /// One transaction for the ops that answer (and the held marks when `marks_here`), then
    /// the answers. Returns whether the disk was full and how many ops were refused.
    fn commit_ops(
        &mut self,
        ops: Vec<WriteOp>,
        marks_here: bool,
        rx: Option<&mut mpsc::Receiver<WriteOp>>,
    ) -> (bool, usize) {
        let mut tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let n = ops.len();
                refuse_all(&self.syncer, ops, StoreError::new("begin", e));
                return (false, n);
            }
        };
        let mut full = false;
        // Marks first: deletes make room for the scans behind them.
        let mut marks_in_batch = false;
        if marks_here {
            match self.held.apply_marks(&tx) {
                Ok(()) => marks_in_batch = true,
                Err(e) => {
                    full |= e.full;
                    self.held.failed(&e);
                    self.held.marks_alone = true;
                    if tx.is_autocommit() {
                        // SQLite rolled the transaction back: start the batch afresh.
                        drop(tx);
                        tx = match self
                            .conn
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        {
                            Ok(tx) => tx,
                            Err(e) => {
                                let n = ops.len();
                                refuse_all(&self.syncer, ops, StoreError::new("begin", e));
                                return (full, n);
                            }
                        };
                    }
                }
            }
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(ops.len());
        // Only a stored scan shows the outbox has room again (a counter update, a duplicate
        // or an out-of-order retransmit writes nothing that needs it).
        let mut captures = ops
            .iter()
            .filter(|op| matches!(op, WriteOp::Ascii { .. } | WriteOp::Relayed { .. }))
            .count();
        let routes = Routes {
            router: &self.router,
            last_row: &self.last_row,
        };
        // The ports this commit answers: the next batch waits for them on a slow disk.
        let mut ports = Vec::new();
        for op in ops {
            expect(&mut ports, &op);
            answers.extend(apply_savepointed(&mut tx, &mut self.devices, &routes, op));
        }
        // While the last commit's sync runs, what arrives joins this transaction: it rides
        // the next sync instead of the one after, and the disk sees one commit per sync.
        if let Some(rx) = rx.filter(|_| self.syncer.syncs()) {
            // They have sent again already.
            self.expected.retain(|p| !ports.contains(p));
            let mut join = |tx: &mut Transaction<'_>,
                            answers: &mut Vec<Answer>,
                            expected: &mut Vec<String>| {
                let mut took = false;
                while answers.len() < self.max_batch && !tx.is_autocommit() {
                    let Ok(op) = rx.try_recv() else { break };
                    took = true;
                    if is_bookkeeping(&op) {
                        // The fold belongs to the batch's start (its marks ride there).
                        self.carry.push(op);
                        continue;
                    }
                    if matches!(op, WriteOp::Ascii { .. } | WriteOp::Relayed { .. }) {
                        captures += 1;
                    }
                    if let WriteOp::Framed { port, .. } = &op {
                        expected.retain(|p| p != port);
                    }
                    expect(&mut ports, &op);
                    answers.extend(apply_savepointed(tx, &mut self.devices, &routes, op));
                }
                took
            };
            let mut waited = false;
            while !self.syncer.idle_within(JOIN_POLL) {
                waited = true;
                join(&mut tx, &mut answers, &mut self.expected);
            }
            // The ports the sync just answered send again within about a millisecond on a
            // slow disk: committing without them would leave them for the sync after next,
            // and the ports would split into groups taking turns. So, as `gather` does, wait
            // for them (or a quiet gap) — never more than a quarter of a sync.
            // (Also when the sync ended just before this batch began: its ports are coming.)
            let synced_in = self.syncer.last_sync();
            let recent = waited || self.syncer.since_last_sync() < GATHER_MAX;
            if recent && slow_disk(synced_in) && !self.expected.is_empty() {
                let until = std::time::Instant::now() + (synced_in / 4).min(GATHER_MAX);
                let mut quiet_since = std::time::Instant::now();
                loop {
                    if join(&mut tx, &mut answers, &mut self.expected) {
                        quiet_since = std::time::Instant::now();
                    }
                    let now = std::time::Instant::now();
                    let quiet = self.expected.is_empty() && now - quiet_since >= GATHER_GAP;
                    if now >= until || quiet || answers.len() >= self.max_batch {
                        break;
                    }
                    std::thread::sleep(GATHER_POLL);
                }
            }
        }
        // SQLite rolls the whole transaction back on some errors (SQLITE_FULL among them):
        // then the ops that succeeded before the failing one are gone too, and must not be
        // answered as durable. Committing now would commit nothing (or a stray statement).
        let rolled_back = tx.is_autocommit();
        if rolled_back {
            tracing::warn!(ops = answers.len(), "SQLite rolled the whole batch back: every op in it is refused and retried by its sender");
        }
        let committed = if rolled_back {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the batch was rolled back by SQLite after a failure in it".into()),
            ))
        } else {
            Ok(())
        };
        // A sync that failed meanwhile: this commit could only follow frames that may not be
        // on disk; it is rolled back and refused.
        let committed = committed.and_then(|()| match self.syncer.failed() {
            false => Ok(()),
            true => Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("an earlier sync of the WAL failed".into()),
            )),
        });
        let committed = committed
            .and_then(|_| self.devices.flush(&tx))
            .and_then(|_| {
                let last = self.last_row.get();
                tx.prepare_cached("UPDATE row_seq SET last = ?1 WHERE id = 1 AND last < ?1")?
                    .execute([last])?;
                Ok(last)
            })
            .and_then(|max_row| tx.commit().map(|_| max_row));
        captures += answers
            .iter()
            .filter(|a| matches!(a, Answer::Framed(_, Ok(FramedOutcome::Stored { .. }))))
            .count();
        full = full
            || matches!(&committed, Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull))
            || answers.iter().any(|a| a.error().is_some_and(|e| e.full));
        if marks_in_batch {
            if committed.is_ok() {
                self.held.marks_durable();
            } else {
                // Scans that do not fit must not keep the marks that make room from landing.
                self.held.marks_alone = true;
            }
        }
        // After a failed commit every answer is a refusal; otherwise only the failed ops.
        let refused = match &committed {
            Err(_) => answers.len(),
            Ok(_) => answers.iter().filter(|a| a.error().is_some()).count(),
        };
        match committed {
            Ok(max_row) => {
                if !full && captures > 0 && faults::STORE_FULL.swap(false, Relaxed) {
                    tracing::info!("outbox has room again: capture resumed");
                }
                self.devices.committed();
                if self.syncer.syncs() {
                    // The ports this sync will answer: the next batch waits for them.
                    self.expected = ports;
                }
                // Answered, and shown to the sinks, once the syncer has it on disk.
                self.syncer.hand(Group {
                    answers,
                    max_row: Some(max_row),
                    wrote: true,
                });
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
                    .unwrap_or_else(|| StoreError::sqlite("commit", e));
                self.devices.forget();
                tracing::error!("{err}");
                let answers = answers.into_iter().map(|a| a.failed(err.clone())).collect();
                self.syncer.hand(Group {
                    answers,
                    max_row: None,
                    wrote: false,
                });
            }
        }
        (full, refused)
    }

    /// The outbox hit the disk or `max_db_mb`: scans just got refused (framed scanners keep
    /// them and retry). Delivered rows go first, oldest first, whatever their retention;
    /// undelivered ones are never touched — with none delivered, capture stays refused,
    /// loudly, until an upstream drains.
    fn make_room(&mut self, refused: u64) {
        let refused = faults::REFUSED_FULL.fetch_add(refused, Relaxed) + refused;
        // With no upstream nothing was ever delivered: every row waits for the first one.
        let evicted: rusqlite::Result<usize> = if self.router.upstreams().is_empty() {
            Ok(0)
        } else {
            let evict = |conn: &mut Connection| -> rusqlite::Result<usize> {
                let mut tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let n = ops::evict_delivered(&mut tx, 5_000)?;
                tx.commit()?;
                Ok(n)
            };
            evict(&mut self.conn)
        };
        let evicted = evicted.unwrap_or_else(|e| {
            tracing::error!("store: making room: {e}");
            0
        });
        faults::EVICTED_FOR_ROOM.fetch_add(evicted as u64, Relaxed);
        if evicted > 0 {
            tracing::warn!(
                evicted,
                "outbox full: removed the oldest delivered rows early to make room; refused scans come back as retransmits"
            );
        } else if !faults::STORE_FULL.swap(true, Relaxed) || refused % 1000 < 8 {
            tracing::error!(
                refused,
                "outbox FULL of undelivered scans: new scans are refused (framed scanners keep them, plain scanners signal rescan) until an upstream drains (hint: check the upstreams, raise store.max_db_mb or free disk space)"
            );
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

    pub(super) fn send(self) {
        match self {
            Answer::U64(tx, r) => drop(tx.send(r)),
            Answer::Framed(tx, r) => drop(tx.send(r)),
        }
    }

    pub(super) fn fail(self, err: StoreError) {
        self.failed(err).send()
    }

    /// The same answer turned into a refusal.
    fn failed(self, err: StoreError) -> Answer {
        match self {
            Answer::U64(tx, _) => Answer::U64(tx, Err(err)),
            Answer::Framed(tx, _) => Answer::Framed(tx, Err(err)),
        }
    }
}

fn apply_savepointed(
    tx: &mut Transaction<'_>,
    devices: &mut Devices,
    routes: &Routes<'_>,
    op: WriteOp,
) -> Option<Answer> {
    // After a full disk SQLite may roll the whole transaction back; a savepoint then would
    // start (and commit) a transaction of its own. Refuse the rest.
    if tx.is_autocommit() {
        return fail(
            op,
            StoreError::new("batch", "rolled back by an earlier failure in it"),
        );
    }
    let upstreams = routes.router.upstreams();
    let mut sp = match tx.savepoint() {
        Ok(sp) => sp,
        Err(e) => return fail(op, StoreError::new("savepoint", e)),
    };
    match op {
        // Folded into `held` before a batch's transaction; never applied here.
        WriteOp::Delivered { .. }
        | WriteOp::Webhook(_)
        | WriteOp::Port { .. }
        | WriteOp::Refused { .. }
        | WriteOp::Incident { .. } => {
            tracing::error!("store: bookkeeping reached the batch path");
            None
        }
        WriteOp::Hello {
            device,
            firmware,
            port,
            last_acked,
            reply,
        } => {
            // Apps and scanners keep to their own names (see `ops::name_taken`).
            match ops::name_taken(&sp, devices, &device, port == APP_PORT) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    let why = format!("device name {device} is taken by another kind of source (an app on the HTTP intake, or a scanner): give one of them another name");
                    let e = StoreError::new("hello", why);
                    return Some(Answer::U64(reply, Err(e)));
                }
                Err(e) => return Some(Answer::U64(reply, Err(StoreError::sqlite("hello", e)))),
            }
            let r = ops::hello(&sp, devices, &device, &firmware, last_acked);
            let r = settle(sp, r, "hello", devices, &device, "framed", &port);
            Some(Answer::U64(reply, r))
        }
        WriteOp::Framed {
            device,
            port,
            scan,
            reply,
        } => {
            match ops::name_taken(&sp, devices, &device, scan.client == SeqClient::App) {
                Ok(None) => {}
                Ok(Some(acked)) => {
                    let why = Conflict::OtherSource;
                    let outcome = FramedOutcome::Conflict { acked, why };
                    return Some(Answer::Framed(reply, Ok(outcome)));
                }
                Err(e) => {
                    devices.op_failed(&device);
                    let e = StoreError::sqlite("framed scan", e);
                    return Some(Answer::Framed(reply, Err(e)));
                }
            }
            let r = ops::framed(&sp, devices, routes, &device, &scan);
            let r = settle(sp, r, "framed scan", devices, &device, "framed", &port);
            Some(Answer::Framed(reply, r))
        }
        WriteOp::Ascii {
            device,
            port,
            scan,
            reply,
        } => {
            #[cfg(test)]
            if let Some(e) = super::refuse_ascii::take(&device) {
                return Some(Answer::U64(reply, Err(e)));
            }
            // A name an app on the intake already uses: its seqs and ids are the app's.
            match ops::name_taken(&sp, devices, &device, false) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    let e = StoreError::permanent(
                        "scan",
                        format!("device name {device} is an app's on the HTTP intake: give the scanner (devices map) or the app another name"),
                    );
                    return Some(Answer::U64(reply, Err(e)));
                }
                Err(e) => return Some(Answer::U64(reply, Err(StoreError::sqlite("scan", e)))),
            }
            let r = ops::ascii(&sp, devices, routes, &device, &scan);
            let r = settle(sp, r, "ascii scan", devices, &device, "ascii", &port);
            Some(Answer::U64(reply, r))
        }
        WriteOp::Prune { before_ms } => {
            // With no upstream, nothing was ever delivered: keep everything for the first
            // upstream to be configured.
            let r = if upstreams.is_empty() {
                Ok(0)
            } else {
                ops::prune(&mut sp, before_ms)
            };
            if let Ok(n) = &r {
                if *n > 0 {
                    tracing::info!(events = n, "pruned delivered events past retention");
                }
            }
            log_failure(finish(sp, r, "prune"));
            None
        }
        WriteOp::Relayed { port, scans, reply } => {
            let r = ops::relayed(&sp, routes, &port, &scans);
            Some(Answer::U64(reply, finish(sp, r, "relayed scans")))
        }
        WriteOp::Derived { batch, reply } => {
            let r = super::derived::apply(&sp, routes, &batch).map(|()| 0);
            Some(Answer::U64(reply, finish(sp, r, "derived parcel state")))
        }
    }
}

fn finish<T>(
    sp: rusqlite::Savepoint<'_>,
    r: rusqlite::Result<T>,
    what: &'static str,
) -> Result<T, StoreError> {
    match r {
        Ok(v) => sp
            .commit()
            .map(|_| v)
            .map_err(|e| StoreError::sqlite(what, e)),
        Err(e) => Err(StoreError::sqlite(what, e)), // dropping `sp` rolls it back
    }
}

/// [`finish`] for an op that moves a device on: its effect is recorded only once its
/// savepoint committed.
fn settle<T>(
    sp: rusqlite::Savepoint<'_>,
    r: rusqlite::Result<(T, Update)>,
    what: &'static str,
    devices: &mut Devices,
    device: &str,
    kind: &'static str,
    port: &str,
) -> Result<T, StoreError> {
    let r = finish(sp, r, what).map(|(v, update)| {
        devices.apply(device, kind, port, update);
        v
    });
    if r.is_err() {
        devices.op_failed(device);
    }
    r
}

fn log_failure<T>(r: Result<T, StoreError>) {
    if let Err(e) = r {
        tracing::error!("{e}");
    }
}

/// The batch could not start: every op with a reply is refused (senders retry), in its
/// turn behind the answers still waiting for their sync.
fn refuse_all(syncer: &super::syncer::Syncer, ops: Vec<WriteOp>, err: StoreError) {
    tracing::error!("{err}");
    let answers = ops
        .into_iter()
        .filter_map(|op| fail(op, err.clone()))
        .collect();
    syncer.hand(Group {
        answers,
        max_row: None,
        wrote: false,
    });
}

/// Notes a framed scan's port among those a commit answers.
fn expect(ports: &mut Vec<String>, op: &WriteOp) {
    if let WriteOp::Framed { port, .. } = op {
        if !ports.contains(port) {
            ports.push(port.clone());
        }
    }
}

/// Delivery marks, counters and incidents: folded at a batch's start, never in its middle.
fn is_bookkeeping(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::Delivered { .. }
            | WriteOp::Webhook(_)
            | WriteOp::Port { .. }
            | WriteOp::Refused { .. }
            | WriteOp::Incident { .. }
    )
}

fn fail(op: WriteOp, err: StoreError) -> Option<Answer> {
    match op {
        WriteOp::Hello { reply, .. }
        | WriteOp::Ascii { reply, .. }
        | WriteOp::Relayed { reply, .. }
        | WriteOp::Derived { reply, .. } => Some(Answer::U64(reply, Err(err))),
        WriteOp::Framed { reply, .. } => Some(Answer::Framed(reply, Err(err))),
        _ => {
            tracing::error!("{err}");
            None
        }
    }
}
