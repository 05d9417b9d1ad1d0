//! The store: SQLite in WAL mode, the single source of truth between sources and sinks.
//!
//! Writes go through one writer thread ([`writer`]) with group commit; reads (sinks, status)
//! use their own connections, which WAL lets run beside the writer.

mod checkpoint;
pub mod derived;
mod devices;
mod held;
pub mod integrity;
mod ops;
pub mod salvage;
mod schema;
mod syncer;
#[cfg(test)]
mod tests;
pub mod webhooks;
pub mod writer;

use crate::config::{Config, Synchronous};
use darkleg_protocol::{EventId, ScanEvent, Step};
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
pub use webhooks::{WebhookMark, WebhookStatus};
pub use writer::{
    AsciiScan, Conflict, FramedOutcome, FramedScan, PortReport, SeqClient, WriteOp, APP_PORT,
};

/// A store failure with what was being done; cheap to clone into many replies.
#[derive(Debug, Clone)]
pub struct StoreError {
    pub context: String,
    pub message: String,
    /// SQLITE_FULL: the disk, or the page limit `max_db_mb` sets.
    pub full: bool,
    /// The same op would be refused again (a name conflict; the writer gone): a source
    /// holding the scan gives up rather than retry it.
    pub permanent: bool,
}

impl StoreError {
    pub fn new(context: impl Into<String>, e: impl fmt::Display) -> Self {
        StoreError {
            context: context.into(),
            message: e.to_string(),
            full: false,
            permanent: false,
        }
    }

    /// A refusal that retrying cannot change.
    pub fn permanent(context: impl Into<String>, e: impl fmt::Display) -> Self {
        StoreError {
            permanent: true,
            ..StoreError::new(context, e)
        }
    }

    /// From a SQLite error, keeping whether it means "full".
    pub fn sqlite(context: impl Into<String>, e: rusqlite::Error) -> Self {
        let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
        StoreError {
            full,
            ..StoreError::new(context, e)
        }
    }
}

/// Test-only fault: the next `n` ascii scans of a device are refused as a full outbox
/// refuses them (per device, so tests running beside each other are not touched).
#[cfg(test)]
pub mod refuse_ascii {
    use std::collections::HashMap;
    use std::sync::Mutex;

    static NEXT: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

    pub fn next(device: &str, n: u32) {
        let mut m = NEXT.lock().unwrap_or_else(|e| e.into_inner());
        m.get_or_insert_with(HashMap::new).insert(device.into(), n);
    }

    pub(crate) fn take(device: &str) -> Option<super::StoreError> {
        let mut m = NEXT.lock().unwrap_or_else(|e| e.into_inner());
        let left = m.as_mut()?.get_mut(device).filter(|n| **n > 0)?;
        *left -= 1;
        Some(super::StoreError {
            full: true,
            ..super::StoreError::new("ascii scan", "database or disk is full (test fault)")
        })
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}: {}", self.context, self.message)
    }
}

impl std::error::Error for StoreError {}

/// Cheap to clone; every source and sink holds one.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<WriteOp>,
    /// Highest outbox row durably committed (synced, under `synchronous = "full"`); sinks
    /// wake on changes and read no further.
    pub committed: watch::Receiver<i64>,
    pub path: PathBuf,
    /// The start-up check's snapshot when it runs beside serving, for the agent to run.
    startup_check: Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
    /// Set when that check found damage: no more checkpoints into the file.
    hold_checkpoints: Arc<std::sync::atomic::AtomicBool>,
}

/// Files up to this size (with the WAL) are checked before serving under `startup_check =
/// "auto"`: about a second of `quick_check` here. Larger ones are checked beside serving.
pub const INLINE_CHECK_BYTES: u64 = 32 << 20;

fn configure(conn: &Connection, sync: Synchronous, max_db_mb: Option<u64>) -> rusqlite::Result<()> {
    if let Some(mb) = max_db_mb {
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (mb as i64 * 1024 * 1024 / page).max(1);
        // Returns the limit in force; SQLite never sets it below the current size.
        let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// Under `synchronous = "full"` on a WAL, the writer's connection commits at NORMAL and the
/// syncer syncs the WAL before anything is answered or sent (see `syncer`): the same
/// guarantee with the fsync off the writer's path. Otherwise SQLite's own commit decides.
fn pipelined_sync(
    conn: &Connection,
    config: &Config,
) -> Result<Option<syncer::SyncFn>, StoreError> {
    if config.store.synchronous != Synchronous::Full {
        return Ok(None);
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| StoreError::new("configuring SQLite", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "store: not in WAL mode; every commit syncs in place");
        return Ok(None);
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| StoreError::new("configuring SQLite", e))?;
    Ok(Some(syncer::wal_sync(&config.db_path())))
}

impl StoreHandle {
    /// Opens (creating and migrating) the database and starts the writer thread.
    pub fn open(config: &Config) -> Result<(StoreHandle, std::thread::JoinHandle<()>), StoreError> {
        if !check_beside(config) {
            return StoreHandle::open_checked(config, false);
        }
        StoreHandle::open_checked(config, true).or_else(|e| {
            // A file to be checked beside serving that fails while opening (damage where
            // start-up reads) is checked at once instead: damage then moves it aside, any
            // other failure is reported as it would have been.
            tracing::warn!("{e}: checking the database before serving instead");
            StoreHandle::open_checked(config, false)
        })
    }

    fn open_checked(
        config: &Config,
        beside: bool,
    ) -> Result<(StoreHandle, std::thread::JoinHandle<()>), StoreError> {
        let path = config.db_path();
        let (mut conn, lock, startup_check) = prepare(config, beside)?;
        let router = crate::routing::Router::new(config);
        register_upstreams(&mut conn, &router)
            .map_err(|e| StoreError::new("registering upstreams", e))?;
        webhooks::register(&conn, config.webhooks.iter().map(|w| w.name.as_str()))
            .map_err(|e| StoreError::new("registering webhooks", e))?;
        // Ports are re-discovered at start; a crash must not leave them shown as connected.
        conn.execute("UPDATE ports SET connected = 0", [])
            .map_err(|e| StoreError::new("resetting port state", e))?;
        let max_row: i64 = conn
            .query_row("SELECT last FROM row_seq WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| StoreError::new("reading outbox head", e))?;
        let incarnation: i64 = conn
            .query_row("SELECT incarnation FROM store_info WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(|e| StoreError::new("reading the store's incarnation", e))?;
        // The bulk of checkpointing moves to its own thread; the writer's autocheckpoint
        // only copies what that thread has not yet and bounds the WAL (see `checkpoint`).
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::WRITER_PAGES)
            .map_err(|e| StoreError::new("configuring SQLite", e))?;
        let hold_checkpoints = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpoint =
            checkpoint::start(&path, config.store.synchronous, hold_checkpoints.clone())
                .map_err(|e| StoreError::new("starting the checkpointer", e))?;
        let sync = pipelined_sync(&conn, config)?;
        if sync.is_some() {
            // A previous run killed between a commit and its sync: synced before any sink
            // reads up to the head.
            syncer::sync_leftover(&path)
                .map_err(|e| StoreError::new("syncing the WAL left by the last run", e))?;
        }
        let (committed_tx, committed) = watch::channel(max_row);
        let (tx, rx) = mpsc::channel(16_384);
        let failure = syncer::Failure {
            hold_checkpoints: hold_checkpoints.clone(),
            wake: tx.downgrade(),
        };
        let syncer = syncer::Syncer::start(sync, committed_tx, failure)
            .map_err(|e| StoreError::new("starting the sync thread", e))?;
        let w = writer::Writer {
            conn,
            router,
            last_row: std::cell::Cell::new(max_row),
            max_batch: config.store.max_batch,
            syncer,
            carry: Vec::new(),
            _lock: lock,
            devices: devices::Devices::new(incarnation as u64),
            held: held::Held::default(),
            checkpoint,
            expected: Vec::new(),
            hold_checkpoints: hold_checkpoints.clone(),
            checkpoints_held: false,
        };
        let join = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::new("starting the writer thread", e))?;
        Ok((
            StoreHandle {
                tx,
                committed,
                path,
                startup_check: Arc::new(std::sync::Mutex::new(startup_check)),
                hold_checkpoints,
            },
            join,
        ))
    }

    /// The start-up check's snapshot, once, when the check runs beside serving: the caller
    /// runs [`integrity::finish`] on it and stops the agent on damage.
    pub fn take_startup_check(&self) -> Option<rusqlite::Connection> {
        self.startup_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The start-up check found the file damaged: from the writer's next batch on, nothing
    /// is checkpointed into it (commits stay in the WAL, which moves aside with it).
    pub fn hold_checkpoints(&self) {
        self.hold_checkpoints
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends an op from a blocking thread (serial sources).
    pub fn send_blocking(&self, op: WriteOp) -> Result<(), StoreError> {
        self.tx
            .blocking_send(op)
            .map_err(|_| StoreError::permanent("writer", "stopped"))
    }

    pub async fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        self.tx
            .send(op)
            .await
            .map_err(|_| StoreError::permanent("writer", "stopped"))
    }

    /// Sends an op that answers, from a blocking thread; the receiver yields the writer's
    /// answer once the op's batch committed (or why it did not). `op` builds the op around
    /// its reply channel.
    pub fn request_blocking<T>(
        &self,
        op: impl FnOnce(writer::Reply<T>) -> WriteOp,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.send_blocking(op(reply)) {
            // The op (and its reply channel) is gone with the writer: answer here instead.
            let (reply, rx) = oneshot::channel();
            let _ = reply.send(Err(e));
            return rx;
        }
        rx
    }

    /// [`Self::request_blocking`] from async code: waits for room in the writer's queue.
    pub async fn request<T>(
        &self,
        op: impl FnOnce(writer::Reply<T>) -> WriteOp,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.send(op(reply)).await {
            let (reply, rx) = oneshot::channel();
            let _ = reply.send(Err(e));
            return rx;
        }
        rx
    }

    /// Ops queued together: room for all of them is taken at once, then they go in back
    /// to back, so the writer's next drain takes them into one commit instead of splitting
    /// a request across two fsyncs. Their replies are the callers' own; if the writer has
    /// stopped, the ops (and so their reply senders) are dropped. More than the queue holds
    /// go in queue-sized runs.
    pub async fn send_many(&self, ops: Vec<WriteOp>) {
        let mut ops = ops.into_iter();
        while ops.len() > 0 {
            let n = ops.len().min(self.tx.max_capacity());
            let Ok(permits) = self.tx.reserve_many(n).await else {
                return;
            };
            for (permit, op) in permits.zip(ops.by_ref()) {
                permit.send(op);
            }
        }
    }

    /// Framed scan, blocking until durable (or refused).
    pub fn framed_blocking(
        &self,
        device: String,
        port: String,
        scan: FramedScan,
    ) -> oneshot::Receiver<Result<FramedOutcome, StoreError>> {
        self.request_blocking(|reply| WriteOp::Framed {
            device,
            port,
            scan,
            reply,
        })
    }
}

/// Locks data_dir, checks the file (a damaged one is moved aside and its undelivered scans
/// salvaged into the fresh one; any other failure refuses to start), opens, configures and
/// migrates it. The lock is held as long as the returned file lives. A large file's check
/// is only prepared (its snapshot taken), to run beside serving.
/// Whether the start-up check of `config`'s database runs beside serving.
fn check_beside(config: &Config) -> bool {
    let path = config.db_path();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let bytes = size(&path) + size(&PathBuf::from(format!("{}-wal", path.display())));
    match config.store.startup_check {
        crate::config::StartupCheck::Before => false,
        crate::config::StartupCheck::Beside => true,
        crate::config::StartupCheck::Auto => bytes > INLINE_CHECK_BYTES,
    }
}

fn prepare(
    config: &Config,
    beside: bool,
) -> Result<(Connection, std::fs::File, Option<Connection>), StoreError> {
    let dir = &config.gateway.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        StoreError::new(
            format!("creating data_dir {}", dir.display()),
            format!("{e} (hint: the agent needs write access to gateway.data_dir)"),
        )
    })?;
    let path = config.db_path();
    let lock = lock_data_dir(dir)?;
    // Checked before anything writes to it; only this process can (it holds the lock).
    let snapshot = if beside {
        integrity::snapshot(&path)
    } else {
        None
    };
    let moved = match &snapshot {
        Some(_) => {
            tracing::info!(db = %path.display(),
                "the integrity check runs beside serving, on the file as it is now (store.startup_check)");
            None
        }
        None => integrity::check(&path).map_err(|e| StoreError::new("integrity check", e))?,
    };
    if let Some(m) = &moved {
        tracing::error!(
            damaged = %m.to.display(), reason = %m.why,
            "the database was damaged: moved aside and starting on a fresh one, salvaging its readable undelivered scans; the old file is kept"
        );
    }
    let mut conn = Connection::open(&path)
        .map_err(|e| StoreError::new(format!("opening {}", path.display()), e))?;
    configure(&conn, config.store.synchronous, config.store.max_db_mb)
        .map_err(|e| StoreError::new("configuring SQLite", e))?;
    schema::migrate(&mut conn)
        .map_err(|e| StoreError::new(format!("migrating {}", path.display()), e))?;
    if let Some(m) = &moved {
        let outcome = match salvage::salvage(&m.to, &mut conn) {
            Ok(s) => {
                tracing::warn!(from = %m.to.display(), salvaged = s.scans, lost = s.lost, "{s}");
                s.to_string()
            }
            Err(e) => {
                tracing::error!(from = %m.to.display(), "salvage failed: {e}; try `darkleg recover` on the copy");
                format!("salvage failed: {e}")
            }
        };
        integrity::record(&conn, m, &outcome)
            .map_err(|e| StoreError::new("recording the incident", e))?;
    }
    Ok((conn, lock, snapshot))
}

/// Takes `data_dir/darkleg.lock` for this process: two agents on one outbox would fight
/// over it (and over the scanners). The lock goes with the process, even on SIGKILL.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("darkleg.lock");
    let ctx = || format!("locking {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::new(ctx(), e))?;
    if f.try_lock().is_err() {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(StoreError::new(
            ctx(),
            format!(
                "another darkleg (pid {}) is using this data_dir; stop it first or give this one its own data_dir",
                holder.trim()
            ),
        ));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(f)
}

/// Records configured upstreams. One seen for the first time is owed what the gateway
/// still holds that its routes give it — every stored scan when it takes all scans (scans
/// captured before it was configured reach it too; receivers deduplicate by event id), and
/// the stored milestones and alerts its routes match. An upstream whose routes filter scans
/// starts with the scans captured from now on.
fn register_upstreams(
    conn: &mut Connection,
    router: &crate::routing::Router,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut messages: Option<Vec<(i64, String, Option<String>)>> = None;
    for u in router.upstreams() {
        if tx.execute("INSERT OR IGNORE INTO upstreams(name) VALUES (?1)", [u])? == 0 {
            continue;
        }
        let mut n = 0;
        if router.takes_every_scan(u) {
            n += tx.execute(
                "INSERT INTO outbox(upstream, row) SELECT ?1, row FROM events",
                [u],
            )?;
        }
        if messages.is_none() {
            let mut stmt = tx.prepare("SELECT row, kind, merchant FROM messages ORDER BY row")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            messages = Some(rows.collect::<rusqlite::Result<_>>()?);
        }
        let mut insert = tx.prepare("INSERT INTO outbox(upstream, row) VALUES (?1, ?2)")?;
        for (row, kind, merchant) in messages.iter().flatten() {
            if router
                .for_message(kind, merchant.as_deref())
                .any(|x| x == u)
            {
                n += insert.execute(params![u, row])?;
            }
        }
        if n > 0 {
            tracing::info!(upstream = %u, rows = n, "new upstream: queued the stored scans and messages its routes give it");
        }
    }
    // Only upstreams no longer configured are looked at, and only for a first row: counting
    // every upstream's outbox walked the whole backlog at each start (seconds at 10M rows).
    let names: Vec<String> = tx
        .prepare("SELECT name FROM upstreams")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in names.iter().filter(|n| !router.upstreams().contains(n)) {
        let waiting: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE upstream = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if waiting {
            tracing::warn!(upstream = %name, "upstream is no longer configured; its undelivered events are kept (`darkleg status` counts them)");
        }
    }
    tx.commit()
}

/// The outbox read. `LIMIT (?3 + 0)`, not `LIMIT ?3`: SQLite plans a bare parameter in
/// LIMIT by its bound value and then re-prepares the statement at every new binding — a full
/// parse and plan on every read of the drain.
const PENDING_SQL: &str = "SELECT * FROM (
                   SELECT e.row, e.event_id, e.device, e.seq, e.step, e.code, e.symbology, e.station,
                          e.operator, e.captured_at, e.received_at, NULL AS topic, NULL AS payload,
                          e.origin_site, e.origin_gateway, e.hops
                   FROM outbox o JOIN events e ON e.row = o.row
                   WHERE o.upstream = ?1 AND o.row > ?2 AND o.row <= ?4 ORDER BY o.row LIMIT (?3 + 0))
                 UNION ALL
                 SELECT * FROM (
                   -- Walk the (small) messages table, not the whole outbox: a backlog of a
                   -- million scans must not be scanned on every read for the few messages.
                   SELECT m.row, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, m.topic, m.payload,
                          NULL, NULL, NULL
                   FROM messages m CROSS JOIN outbox o ON o.upstream = ?1 AND o.row = m.row
                   WHERE m.row > ?2 AND m.row <= ?4 ORDER BY m.row LIMIT (?3 + 0))
                 ORDER BY 1 LIMIT (?3 + 0)";

/// A read connection: sinks fetch pending rows, `status` reads counters.
pub struct Reader {
    conn: Connection,
}

/// One row owed to an upstream: a scan, or a derived message (milestone, alert).
pub struct Pending {
    pub row: i64,
    pub item: Item,
}

pub enum Item {
    /// A scan, with where it came from when another gateway relayed it.
    Event(ScanEvent, Option<Box<Provenance>>),
    /// `topic` goes after the upstream's prefix.
    Message { topic: String, payload: String },
}

/// A relayed scan's origin: captured at `site`/`gateway`, stored by `hops` (sender last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub site: String,
    pub gateway: String,
    pub hops: Vec<String>,
}

impl Pending {
    /// The scan, if this row is one.
    pub fn event(&self) -> Option<&ScanEvent> {
        match &self.item {
            Item::Event(e, _) => Some(e),
            Item::Message { .. } => None,
        }
    }
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::new(format!("opening {} read-only", path.display()), e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| StoreError::new("busy_timeout", e))?;
        Ok(Reader { conn })
    }

    /// A reader on one snapshot that is all on disk, for what leaves the gateway outside the
    /// sinks (an EPCIS export, a report): the running agent's commits are visible to readers
    /// before their sync returns (see `syncer`). Holds its snapshot until dropped.
    pub fn open_durable(path: &Path) -> Result<Reader, StoreError> {
        let r = Reader::open(path)?;
        syncer::pin_durable(&r.conn, path)?;
        Ok(r)
    }

    /// Up to `limit` events owed to `upstream` after `after_row`, in outbox order.
    /// How many times the outbox read was re-prepared on this connection (a regression
    /// guard: it should be planned once).
    #[cfg(test)]
    pub fn pending_reprepares(&self) -> i32 {
        self.conn
            .prepare_cached(PENDING_SQL)
            .map(|s| s.get_status(rusqlite::StatementStatus::RePrepare))
            .unwrap_or(-1)
    }

    /// Every row owed to `upstream` after `after_row` (tools and tests: a running agent's
    /// sinks read with [`Reader::pending_durable`]).
    pub fn pending(
        &self,
        upstream: &str,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        self.pending_durable(upstream, after_row, i64::MAX, limit)
    }

    /// Rows owed to `upstream` after `after_row` up to `durable` — the writer's watermark
    /// ([`StoreHandle::committed`]), which moves only once a commit is on disk: a row
    /// committed but not yet synced must not leave the gateway.
    pub fn pending_durable(
        &self,
        upstream: &str,
        after_row: i64,
        durable: i64,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let run = || -> rusqlite::Result<Vec<Pending>> {
            let mut stmt = self.conn.prepare_cached(PENDING_SQL)?;
            let rows =
                stmt.query_map(params![upstream, after_row, limit as i64, durable], |r| {
                    // Rows this agent wrote; a value that does not parse means a damaged file,
                    // which must stop delivery rather than send a wrong event.
                    let bad = |col: usize, what: &str| {
                        rusqlite::Error::FromSqlConversionFailure(
                            col,
                            rusqlite::types::Type::Text,
                            what.into(),
                        )
                    };
                    let row = r.get(0)?;
                    if let Some(topic) = r.get::<_, Option<String>>(11)? {
                        return Ok(Pending {
                            row,
                            item: Item::Message {
                                topic,
                                payload: r.get(12)?,
                            },
                        });
                    }
                    let id: Vec<u8> = r.get(1)?;
                    let step: String = r.get(4)?;
                    let origin = match r.get::<_, Option<String>>(13)? {
                        None => None,
                        Some(site) => Some(Box::new(Provenance {
                            site,
                            gateway: r.get(14)?,
                            hops: serde_json::from_str(&r.get::<_, String>(15)?)
                                .map_err(|_| bad(15, "hops is not a JSON list"))?,
                        })),
                    };
                    Ok(Pending {
                        row,
                        item: Item::Event(
                            ScanEvent {
                                event_id: EventId(
                                    id.try_into()
                                        .map_err(|_| bad(1, "event_id is not 16 bytes"))?,
                                ),
                                device: r.get(2)?,
                                seq: r.get::<_, i64>(3)? as u64,
                                step: step.parse::<Step>().map_err(|_| bad(4, "unknown step"))?,
                                code: r.get(5)?,
                                symbology: r.get(6)?,
                                station: r.get(7)?,
                                operator: r.get(8)?,
                                captured_at_ms: r.get::<_, i64>(9)? as u64,
                                received_at_ms: r.get::<_, i64>(10)? as u64,
                            },
                            origin,
                        ),
                    })
                })?;
            rows.collect()
        };
        let read = run().map_err(|e| StoreError::new(format!("reading outbox for {upstream}"), e));
        match &read {
            Ok(_) => crate::faults::trouble::outbox_read(upstream, Ok(())),
            Err(e) => crate::faults::trouble::outbox_read(upstream, Err(&e.to_string())),
        }
        read
    }

    /// A webhook's replay generation and, while a 410 disabled it, why.
    pub fn webhook_state(&self, name: &str) -> Result<(i64, Option<String>), StoreError> {
        webhooks::state(&self.conn, name)
            .map_err(|e| StoreError::new(format!("reading webhook {name}"), e))
    }

    /// One cheap read of the file (the outbox head), for `/healthz`: the store can be read.
    /// `status` counts every stored scan and backlog row, which at ten million rows is
    /// seconds of work no liveness probe should cost.
    pub fn probe(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT last FROM row_seq WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| StoreError::new("reading the outbox head", e))
    }

    pub fn status(&self) -> Result<Status, StoreError> {
        let run = || -> rusqlite::Result<Status> {
            let events: i64 = self
                .conn
                .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
            let mut stmt = self.conn.prepare(
                "SELECT u.name, u.delivered, u.last_sync_at,
                        (SELECT COUNT(*) FROM outbox o WHERE o.upstream = u.name),
                        (SELECT e.received_at FROM outbox o JOIN events e ON e.row = o.row
                          WHERE o.upstream = u.name ORDER BY o.row LIMIT 1),
                        u.refused, u.last_refusal, u.last_refusal_at
                 FROM upstreams u ORDER BY u.name",
            )?;
            let upstreams = stmt
                .query_map([], |r| {
                    Ok(UpstreamStatus {
                        name: r.get(0)?,
                        delivered: r.get(1)?,
                        last_sync_at_ms: r.get(2)?,
                        backlog: r.get(3)?,
                        oldest_undelivered_ms: r.get(4)?,
                        refused: r.get(5)?,
                        last_refusal: r.get(6)?,
                        last_refusal_at_ms: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = self.conn.prepare(
                "SELECT port, protocol, connected, frames, rejected, last_reject, last_seen, conflicts FROM ports ORDER BY port",
            )?;
            let ports = stmt
                .query_map([], |r| {
                    Ok(PortStatus {
                        port: r.get(0)?,
                        protocol: r.get(1)?,
                        connected: r.get(2)?,
                        frames: r.get(3)?,
                        rejected: r.get(4)?,
                        last_reject: r.get(5)?,
                        last_seen_ms: r.get(6)?,
                        conflicts: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = self.conn.prepare(
                "SELECT device, kind, last_seq, firmware, port, last_seen, events, duplicates, refused, clock_offset_ms, conflicts FROM devices ORDER BY device",
            )?;
            let devices = stmt
                .query_map([], |r| {
                    Ok(DeviceStatus {
                        device: r.get(0)?,
                        kind: r.get(1)?,
                        last_seq: r.get(2)?,
                        firmware: r.get(3)?,
                        port: r.get(4)?,
                        last_seen_ms: r.get(5)?,
                        events: r.get(6)?,
                        duplicates: r.get(7)?,
                        refused: r.get(8)?,
                        clock_offset_ms: r.get(9)?,
                        conflicts: r.get(10)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = self
                .conn
                .prepare("SELECT at, kind, detail FROM incidents ORDER BY at DESC LIMIT 20")?;
            let incidents = stmt
                .query_map([], |r| {
                    Ok(Incident {
                        at_ms: r.get(0)?,
                        kind: r.get(1)?,
                        detail: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Status {
                webhooks: webhooks::status(&self.conn)?,
                incidents,
                events,
                upstreams,
                ports,
                devices,
            })
        };
        run().map_err(|e| StoreError::new("reading status", e))
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub events: i64,
    pub upstreams: Vec<UpstreamStatus>,
    pub ports: Vec<PortStatus>,
    pub devices: Vec<DeviceStatus>,
    /// What the store had to do to itself (a damaged file moved aside), newest first.
    pub incidents: Vec<Incident>,
    /// Dead letters and the disabled state per webhook (their backlog is in `upstreams`).
    pub webhooks: Vec<WebhookStatus>,
}

#[derive(Debug, Serialize)]
pub struct Incident {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub backlog: i64,
    pub delivered: i64,
    pub last_sync_at_ms: Option<i64>,
    /// When the oldest event still owed to this upstream reached the gateway.
    pub oldest_undelivered_ms: Option<i64>,
    /// Publications the broker refused (each stays owed and is retried).
    pub refused: i64,
    /// What the broker said the last time, by name ("not authorized", "quota exceeded").
    pub last_refusal: Option<String>,
    pub last_refusal_at_ms: Option<i64>,
}

impl UpstreamStatus {
    /// The broker's last word was a refusal: nothing delivered since.
    pub fn refusing(&self) -> bool {
        match (self.last_refusal_at_ms, self.last_sync_at_ms) {
            (Some(r), Some(d)) => r >= d,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

impl PortStatus {
    /// A relay source (`relay:{name}`), not a scanner port: `frames` counts messages taken.
    pub fn is_relay(&self) -> bool {
        self.protocol == "relay"
    }
}

#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub port: String,
    pub protocol: String,
    pub connected: bool,
    pub frames: i64,
    pub rejected: i64,
    pub last_reject: Option<String>,
    pub last_seen_ms: Option<i64>,
    /// Relay sources: scans not stored because a different scan holds their event id.
    pub conflicts: i64,
}

#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    pub device: String,
    pub kind: String,
    pub last_seq: i64,
    pub firmware: Option<String>,
    pub port: Option<String>,
    pub last_seen_ms: Option<i64>,
    pub events: i64,
    pub duplicates: i64,
    /// Scans consumed but refused (bad code), each answered with Nack(Rejected).
    pub refused: i64,
    /// Gateway clock minus the device's, from its latest scan (includes transit, a few ms).
    pub clock_offset_ms: Option<i64>,
    /// Scans sent under a sequence number that already names a different stored scan (the
    /// scanner lost its state): refused with the error tone, never acked as duplicates.
    pub conflicts: i64,
}
