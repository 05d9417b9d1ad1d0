//! Checkpoints off the commit path. With SQLite's default (`wal_autocheckpoint = 1000`) the
//! commit that pushes the WAL past 1,000 pages also copies them into the database file and
//! syncs both files — on an SD card, a 50 ms stall every ~2,000 scans that every scanner
//! waiting on that commit sees as ack latency.
//!
//! Here a thread of its own, on its own connection, runs PASSIVE checkpoints (they never block
//! the writer) at most every [`EVERY`] while commits happen, so the bulk copy and its syncs
//! happen beside the writer. The writer keeps SQLite's autocheckpoint at [`WRITER_PAGES`]
//! (1,000, the default): a PASSIVE checkpoint cannot reset the WAL while the writer keeps
//! appending, so the writer's own one, after a commit, copies the few frames this thread has
//! not yet and lets the next commit start the WAL over — the WAL stays as small as before
//! (about 4 MiB). Raised to 4,000 pages the WAL outgrew the room a full-filesystem test leaves
//! and the agent did not resume once space was freed, so it stays at 1,000.
//!
//! Durability is untouched: a commit is acked once its WAL fsync returned, as before; a
//! checkpoint only copies frames that are already durable, and syncs the database file before
//! SQLite may reuse the WAL.

use crate::config::Synchronous;
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often, at most, this thread checkpoints while the writer commits.
pub const EVERY: Duration = Duration::from_millis(500);

/// The writer's own autocheckpoint threshold (pages): what bounds the WAL.
pub const WRITER_PAGES: u32 = 1_000;

/// The writer's side: tells the checkpointer a commit happened (never blocks).
pub struct Nudge {
    tx: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Nudge {
    pub fn committed(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    /// Stops the thread and waits for its connection to close, so the writer's connection
    /// is the last one and, as without this thread, checkpoints the WAL away on close.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the checkpointer's connection and starts its thread; it stops with
/// [`Nudge::stop`] (or once the writer, holding the [`Nudge`], is gone).
pub fn start(path: &Path, sync: Synchronous, hold: Arc<AtomicBool>) -> Result<Nudge, String> {
    let conn = Connection::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    super::configure(&conn, sync, None).map_err(|e| format!("configuring: {e}"))?;
    // This connection only checkpoints; its close must not try one the writer is doing.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(|e| format!("configuring: {e}"))?;
    let (tx, rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || run(&conn, &rx, &hold))
        .map_err(|e| format!("starting the checkpoint thread: {e}"))?;
    Ok(Nudge {
        tx: Some(tx),
        thread: Some(thread),
    })
}

fn run(conn: &Connection, rx: &mpsc::Receiver<()>, hold: &AtomicBool) {
    let mut last = Instant::now();
    while rx.recv().is_ok() {
        let wait = EVERY.saturating_sub(last.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        while rx.try_recv().is_ok() {}
        last = Instant::now();
        // The file was found damaged: it is kept as checked (see the writer).
        if hold.load(Ordering::Relaxed) {
            continue;
        }
        // PASSIVE: copies what no reader still needs, without waiting for anyone. A busy
        // result (the writer's own checkpoint holds the lock) just means next time.
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match r {
            Ok((log, done)) => tracing::trace!(log, done, "store: checkpoint"),
            // A full disk or an I/O error here loses nothing (the WAL keeps every frame);
            // the writer's fallback checkpoint or the next try will say more.
            Err(e) => tracing::warn!("store: background checkpoint failed: {e}"),
        }
    }
    tracing::debug!("store checkpointer: writer gone, stopping");
}
