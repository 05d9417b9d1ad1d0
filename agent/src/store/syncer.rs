//! Group commit with the fsync off the writer's thread.
//!
//! Under `synchronous = "full"` a scan's ack waits for its commit's fsync. Done inside the
//! commit (SQLite's own FULL), the writer sits idle for the whole sync — on an SD card
//! 10–30 ms in which nothing else is inserted — and every scan that arrives meanwhile waits
//! for the sync after the next commit's inserts as well. So the writer's connection commits
//! at SQLite's NORMAL (the WAL is written, not synced) and hands the commit's answers here;
//! this thread syncs the WAL once for every commit queued behind it and only then sends the
//! answers and moves the sinks' watermark. While it syncs the writer goes on inserting the
//! next batch.
//!
//! Nothing is weaker than SQLite's FULL: an answer goes out only after a sync of the WAL
//! that began after its commit was written; a sink reads only rows at or below the watermark
//! moved here (see `Reader::pending`), so nothing leaves the gateway before it is durable.
//! WAL replay after a power loss keeps a prefix of commits, so an unsynced commit lost there
//! was never answered nor sent. SQLite still syncs what its own safety needs at NORMAL (the
//! WAL before a checkpoint copies it, the database after, the header of a restarted WAL).
//!
//! A failed sync is the end: the kernel may have dropped the pages it could not write and
//! marked them clean, so the committed rows may read back fine and yet not be on disk. Every
//! answer queued here is refused, and the writer stops (the supervisor exits the agent) so
//! the restart reads the store from what the disk really holds.

use super::writer::Answer;
use super::StoreError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use tokio::sync::watch;

/// What one batch leaves to answer once it is durable.
pub(super) struct Group {
    pub answers: Vec<Answer>,
    /// The outbox head after the commit, for the sinks' watermark.
    pub max_row: Option<i64>,
    /// Something was committed (a refused batch's answers need no sync, only their turn).
    pub wrote: bool,
}

/// How a group becomes durable.
pub(super) type SyncFn = Box<dyn FnMut() -> std::io::Result<()> + Send>;

pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Group>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    /// Groups handed and not yet answered; the writer commits again once it is zero.
    pending: Arc<Pending>,
    syncs: bool,
    /// How long the last sync took, and when it ended (µs since `epoch`).
    last_sync_us: Arc<AtomicU64>,
    last_end_us: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

#[derive(Default)]
struct Pending {
    n: Mutex<usize>,
    zero: Condvar,
}

impl Pending {
    fn add(&self, k: usize) {
        *self.n.lock().unwrap_or_else(|e| e.into_inner()) += k;
    }

    fn done(&self, k: usize) {
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(k);
        if *n == 0 {
            self.zero.notify_all();
        }
    }
}

impl Syncer {
    /// `sync` makes everything committed so far durable; `None` when SQLite's commit already
    /// did (`synchronous = "normal"`, or a journal that is not a WAL).
    pub fn start(
        sync: Option<SyncFn>,
        committed: watch::Sender<i64>,
        on_failure: Failure,
    ) -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::channel();
        let syncs = sync.is_some();
        let failed = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(Pending::default());
        let last_sync_us = Arc::new(AtomicU64::new(0));
        let last_end_us = Arc::new(AtomicU64::new(0));
        let epoch = std::time::Instant::now();
        let (flag, count) = (failed.clone(), pending.clone());
        let timing = Timing {
            took: last_sync_us.clone(),
            ended: last_end_us.clone(),
            epoch,
        };
        let thread = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || run(rx, sync, &committed, &flag, &count, &timing, &on_failure))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            failed,
            pending,
            syncs,
            last_sync_us,
            last_end_us,
            epoch,
        })
    }

    /// Queues a batch's answers behind those before it (they go out in commit order).
    pub fn hand(&self, group: Group) {
        if group.answers.is_empty() && group.max_row.is_none() && !group.wrote {
            return;
        }
        if let Some(tx) = &self.tx {
            self.pending.add(1);
            if let Err(mpsc::SendError(g)) = tx.send(group) {
                self.pending.done(1);
                // The thread is gone (it never panics on purpose): nobody may be told
                // their scan is durable.
                let err = StoreError::new("sync", "the sync thread is gone");
                g.answers.into_iter().for_each(|a| a.fail(err.clone()));
            }
        }
    }

    /// Whether every handed group has been answered, waiting up to `wait` for it: a sync is
    /// running meanwhile, and a commit now would only queue behind it. A thread that is gone
    /// (it never panics on purpose) answers nothing more: that is a failure, not a wait.
    pub fn idle_within(&self, wait: std::time::Duration) -> bool {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            self.failed.store(true, Relaxed);
            return true;
        }
        let n = self.pending.n.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            return true;
        }
        let (n, _) = self
            .pending
            .zero
            .wait_timeout(n, wait)
            .unwrap_or_else(|e| e.into_inner());
        *n == 0
    }

    /// Whether this thread does the syncing (else SQLite's commit did).
    pub fn syncs(&self) -> bool {
        self.syncs
    }

    /// How long the last sync took.
    pub fn last_sync(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.last_sync_us.load(Relaxed))
    }

    /// How long ago the last sync ended.
    pub fn since_last_sync(&self) -> std::time::Duration {
        let ended = std::time::Duration::from_micros(self.last_end_us.load(Relaxed));
        self.epoch.elapsed().saturating_sub(ended)
    }

    /// A sync failed: the writer must stop taking scans.
    pub fn failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    /// Answers what is queued (syncing it) and stops the thread.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    rx: mpsc::Receiver<Group>,
    mut sync: Option<SyncFn>,
    committed: &watch::Sender<i64>,
    failed: &AtomicBool,
    pending: &Pending,
    timing: &Timing,
    on_failure: &Failure,
) {
    let mut groups = Vec::new();
    while let Ok(first) = rx.recv() {
        groups.push(first);
        // Every commit queued by now rides on this one sync.
        groups.extend(rx.try_iter());
        let wrote = groups.iter().any(|g| g.wrote);
        let synced = if failed.load(Relaxed) {
            Err(StoreError::new(
                "sync",
                "an earlier sync of the WAL failed; the agent is stopping",
            ))
        } else {
            match (&mut sync, wrote) {
                (Some(sync), true) => timed(sync, timing).map_err(|e| {
                    failed.store(true, Relaxed);
                    // Nothing more may be copied into the database from a WAL with a hole
                    // the page cache hides; the writer must stop even if idle.
                    on_failure.hold_checkpoints.store(true, Relaxed);
                    let err = StoreError::new("syncing the WAL to disk", e);
                    tracing::error!(
                        "{err}: what was committed since the last sync may not be on disk; \
                         its scans are refused and the agent stops so it restarts from what the \
                         disk holds (check the disk: dmesg, SMART, a worn SD card)"
                    );
                    if let Some(tx) = on_failure.wake.upgrade() {
                        let _ = tx.try_send(super::WriteOp::Incident {
                            kind: "wal_sync_failed",
                            detail: err.to_string(),
                        });
                    }
                    err
                }),
                _ => Ok(()),
            }
        };
        let max_row = groups.iter().filter_map(|g| g.max_row).max();
        if let (Ok(()), Some(max_row)) = (&synced, max_row) {
            committed.send_if_modified(|v| {
                let changed = *v < max_row;
                *v = (*v).max(max_row);
                changed
            });
        }
        let answered = groups.len();
        for g in groups.drain(..) {
            match &synced {
                Ok(()) => g.answers.into_iter().for_each(Answer::send),
                Err(e) => g.answers.into_iter().for_each(|a| a.fail(e.clone())),
            }
        }
        pending.done(answered);
    }
}

/// What a failed sync sets off beyond refusing: checkpoints held (the store's flag) and the
/// writer woken (a weak sender: the syncer must not keep the writer's queue open).
pub(super) struct Failure {
    pub hold_checkpoints: Arc<AtomicBool>,
    pub wake: tokio::sync::mpsc::WeakSender<super::WriteOp>,
}

/// The last sync's duration and end, for the writer's gathering.
struct Timing {
    took: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

fn timed(sync: &mut SyncFn, timing: &Timing) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let r = sync();
    timing
        .took
        .store(started.elapsed().as_micros() as u64, Relaxed);
    timing
        .ended
        .store(timing.epoch.elapsed().as_micros() as u64, Relaxed);
    r
}

/// The WAL file SQLite writes beside `db`: beside the file a symlink names, not the link.
fn wal_path(db: &Path) -> PathBuf {
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let mut path = db.into_os_string();
    path.push("-wal");
    PathBuf::from(path)
}

/// Syncs the WAL file beside `db` through a descriptor of its own, reopened whenever the
/// path names a different file than the one open (SQLite deletes the WAL when its last
/// connection closes). Linux flushes a file's dirty pages whichever descriptor wrote them.
/// After a failed sync the kernel may keep the unwritten pages as clean cache, which a
/// restart would read as committed frames: they are dropped, so it reads the disk.
pub(super) fn wal_sync(db: &Path) -> SyncFn {
    let path = wal_path(db);
    let mut open: Option<std::fs::File> = None;
    Box::new(move || {
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::metadata(&path)?;
        let same = match &open {
            Some(f) => {
                let m = f.metadata()?;
                (m.dev(), m.ino()) == (current.dev(), current.ino())
            }
            None => false,
        };
        if !same {
            open = Some(std::fs::File::open(&path)?);
        }
        let file = open.as_ref().expect("opened above");
        file.sync_data().inspect_err(|_| drop_cache(file))
    })
}

fn drop_cache(file: &std::fs::File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    if let Err(e) = posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    ) {
        tracing::error!("store: could not drop the WAL's cached pages after a failed sync: {e}");
    }
}

/// At start-up, under the syncer: what a previous run committed and never synced (it was
/// killed between the two) is synced before any sink may read it. No WAL: nothing to sync.
pub(super) fn sync_leftover(db: &Path) -> std::io::Result<()> {
    if !wal_path(db).exists() {
        return Ok(());
    }
    wal_sync(db)()
}

/// A durable read snapshot for a tool beside the running agent (an export, a report): the
/// snapshot is pinned first, then the WAL synced, so everything the snapshot holds is on
/// disk — under the syncer a reader can see commits whose sync is still running.
pub(super) fn pin_durable(conn: &rusqlite::Connection, db: &Path) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN")
        .and_then(|()| conn.query_row("SELECT count(*) FROM store_info", [], |_| Ok(())))
        .map_err(|e| StoreError::new("pinning a read snapshot", e))?;
    sync_leftover(db).map_err(|e| StoreError::new("syncing the WAL before reading", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    type Gate = Arc<(Mutex<bool>, std::sync::Condvar)>;

    /// A sync that blocks until the gate opens, then succeeds or fails.
    fn gated(gate: &Gate, calls: &Arc<Mutex<u32>>, fail: bool) -> SyncFn {
        let (gate, calls) = (gate.clone(), calls.clone());
        Box::new(move || {
            *calls.lock().unwrap() += 1;
            let (open, cv) = &*gate;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
            if fail {
                Err(std::io::Error::other("EIO"))
            } else {
                Ok(())
            }
        })
    }

    fn failure() -> Failure {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Failure {
            hold_checkpoints: Arc::new(AtomicBool::new(false)),
            wake: tx.downgrade(),
        }
    }

    fn open(gate: &Gate) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    fn group(max_row: i64) -> (Group, oneshot::Receiver<Result<u64, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let g = Group {
            answers: vec![Answer::U64(tx, Ok(max_row as u64))],
            max_row: Some(max_row),
            wrote: true,
        };
        (g, rx)
    }

    fn wait_answer(rx: &mut oneshot::Receiver<Result<u64, StoreError>>) -> Result<u64, StoreError> {
        for _ in 0..500 {
            match rx.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("answer dropped: {e}"),
            }
        }
        panic!("no answer in 5 s");
    }

    #[test]
    fn answers_and_the_watermark_wait_for_the_sync() {
        let gate: Gate = Default::default();
        let calls = Arc::new(Mutex::new(0));
        let (wtx, wrx) = watch::channel(0);
        let s = Syncer::start(Some(gated(&gate, &calls, false)), wtx, failure()).unwrap();
        let (g1, mut r1) = group(5);
        let (g2, mut r2) = group(9);
        s.hand(g1);
        s.hand(g2);
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(
            r1.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(matches!(
            r2.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert_eq!(*wrx.borrow(), 0, "sinks must not see unsynced rows");
        assert!(
            !s.idle_within(Duration::from_millis(10)),
            "a sync is running"
        );
        open(&gate);
        assert_eq!(wait_answer(&mut r1).unwrap(), 5);
        assert_eq!(wait_answer(&mut r2).unwrap(), 9);
        assert!(s.idle_within(Duration::from_secs(1)));
        assert_eq!(*wrx.borrow(), 9);
        // The second group was queued while the first sync waited: at most two syncs.
        assert!(*calls.lock().unwrap() <= 2);
        assert!(!s.failed());
    }

    #[test]
    fn a_failed_sync_refuses_its_answers_and_every_later_one() {
        let gate: Gate = Default::default();
        open(&gate);
        let calls = Arc::new(Mutex::new(0));
        let (wtx, wrx) = watch::channel(3);
        let hold = Arc::new(AtomicBool::new(false));
        let (wake, mut woken) = tokio::sync::mpsc::channel(1);
        let on_failure = Failure {
            hold_checkpoints: hold.clone(),
            wake: wake.downgrade(),
        };
        let s = Syncer::start(Some(gated(&gate, &calls, true)), wtx, on_failure).unwrap();
        let (g1, mut r1) = group(5);
        s.hand(g1);
        let e = wait_answer(&mut r1).unwrap_err();
        assert!(e.to_string().contains("syncing the WAL"), "{e}");
        assert!(s.failed());
        let (g2, mut r2) = group(6);
        s.hand(g2);
        assert!(wait_answer(&mut r2).is_err());
        assert_eq!(*wrx.borrow(), 3, "the watermark stays where the disk is");
        assert_eq!(
            *calls.lock().unwrap(),
            1,
            "no sync is trusted after a failed one"
        );
        // The WAL's hole is never checkpointed, and an idle writer is woken to stop.
        assert!(hold.load(Relaxed));
        assert!(matches!(
            woken.try_recv(),
            Ok(super::super::WriteOp::Incident {
                kind: "wal_sync_failed",
                ..
            })
        ));
        assert!(s.idle_within(Duration::ZERO));
    }

    #[test]
    fn a_gone_sync_thread_is_a_failure_not_a_wait() {
        let (wtx, _wrx) = watch::channel(0);
        let mut s = Syncer::start(None, wtx, failure()).unwrap();
        s.stop();
        assert!(s.idle_within(Duration::from_secs(5)));
        assert!(s.failed(), "a writer waiting on it would spin forever");
    }

    #[test]
    fn a_snapshot_for_tools_is_synced_and_a_missing_wal_is_nothing_to_sync() {
        let dir = std::env::temp_dir().join(format!("darkleg-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("p.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE store_info(id INTEGER)")
            .unwrap();
        assert!(!wal_path(&db).exists());
        sync_leftover(&db).unwrap();
        let reader = rusqlite::Connection::open(&db).unwrap();
        pin_durable(&reader, &db).unwrap();
        assert!(!reader.is_autocommit(), "the snapshot stays pinned");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_sync_answers_go_in_order_at_once() {
        let (wtx, wrx) = watch::channel(0);
        let mut s = Syncer::start(None, wtx, failure()).unwrap();
        let (g, mut r) = group(4);
        s.hand(g);
        assert_eq!(wait_answer(&mut r).unwrap(), 4);
        s.stop();
        assert_eq!(*wrx.borrow(), 4);
    }

    #[test]
    fn the_wal_sync_follows_a_recreated_file() {
        let dir = std::env::temp_dir().join(format!("darkleg-syncer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("s.db");
        let wal = dir.join("s.db-wal");
        let mut sync = wal_sync(&db);
        assert!(sync().is_err(), "no WAL yet: nothing can be said durable");
        std::fs::write(&wal, b"one").unwrap();
        sync().unwrap();
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"two").unwrap();
        sync().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
