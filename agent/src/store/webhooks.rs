//! Webhook bookkeeping beside the outbox: dead letters (messages an endpoint refused for
//! good, kept out of the outbox and out of pruning), the 410 "disabled" state, and the
//! replay that puts dead letters back (`darkleg webhooks replay`).

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;

/// What a webhook sink records; reply-less, applied again if its batch did not commit.
#[derive(Debug, Clone)]
pub enum WebhookMark {
    /// `row` was refused with `status`: out of the outbox, into the dead letters.
    DeadLetter {
        webhook: String,
        row: i64,
        status: u16,
        reason: String,
        at_ms: u64,
    },
    /// The endpoint answered 410 Gone: no more requests until a replay.
    Disabled {
        webhook: String,
        reason: String,
        at_ms: u64,
    },
}

pub(super) fn apply(sp: &Connection, m: &WebhookMark) -> rusqlite::Result<()> {
    match m {
        WebhookMark::DeadLetter {
            webhook,
            row,
            status,
            reason,
            at_ms,
        } => {
            let owed = sp
                .prepare_cached("DELETE FROM outbox WHERE upstream = ?1 AND row = ?2")?
                .execute(params![webhook, row])?;
            if owed == 0 {
                return Ok(()); // delivered meanwhile, or already dead-lettered
            }
            sp.prepare_cached(
                "INSERT OR REPLACE INTO webhook_dead_letters(webhook, row, status, reason, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![webhook, row, status, reason, *at_ms as i64])?;
            sp.prepare_cached(
                "INSERT INTO webhooks(name, dead_lettered, last_dead_at, last_dead) VALUES (?1, 1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET dead_lettered = dead_lettered + 1, last_dead_at = ?2, last_dead = ?3",
            )?
            .execute(params![webhook, *at_ms as i64, reason])?;
        }
        WebhookMark::Disabled {
            webhook,
            reason,
            at_ms,
        } => {
            sp.prepare_cached(
                "INSERT INTO webhooks(name, disabled_at, disabled_reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET disabled_at = ?2, disabled_reason = ?3",
            )?
            .execute(params![webhook, *at_ms as i64, reason])?;
        }
    }
    Ok(())
}

/// Makes sure each configured webhook has its row (status lists it from the start).
pub(super) fn register<'a>(
    conn: &Connection,
    names: impl Iterator<Item = &'a str>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("INSERT OR IGNORE INTO webhooks(name) VALUES (?1)")?;
    for n in names {
        stmt.execute([n])?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookStatus {
    pub name: String,
    /// Dead letters waiting for a replay.
    pub dead_letters: i64,
    /// Messages dead-lettered since the store was created.
    pub dead_lettered: i64,
    pub last_dead: Option<String>,
    pub last_dead_at_ms: Option<i64>,
    /// Set while a 410 Gone keeps the endpoint disabled.
    pub disabled_at_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub replays: i64,
}

pub(super) fn status(conn: &Connection) -> rusqlite::Result<Vec<WebhookStatus>> {
    let mut stmt = conn.prepare(
        "SELECT w.name, (SELECT COUNT(*) FROM webhook_dead_letters d WHERE d.webhook = w.name),
                w.dead_lettered, w.last_dead, w.last_dead_at, w.disabled_at, w.disabled_reason, w.replays
         FROM webhooks w ORDER BY w.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(WebhookStatus {
            name: r.get(0)?,
            dead_letters: r.get(1)?,
            dead_lettered: r.get(2)?,
            last_dead: r.get(3)?,
            last_dead_at_ms: r.get(4)?,
            disabled_at_ms: r.get(5)?,
            disabled_reason: r.get(6)?,
            replays: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// The replay generation and whether a 410 disabled `name` (a running sink polls this).
pub(super) fn state(conn: &Connection, name: &str) -> rusqlite::Result<(i64, Option<String>)> {
    Ok(conn
        .prepare_cached("SELECT replays, disabled_reason FROM webhooks WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, None)))
}

/// What a replay did.
#[derive(Debug, PartialEq, Eq)]
pub struct Replayed {
    pub requeued: usize,
    pub was_disabled: bool,
}

/// Dead letters moved back per transaction: each holds the write lock for tens of
/// milliseconds, never long enough for the agent's writer (5 s busy timeout) to give up on
/// a batch of scans, however many letters wait.
const REPLAY_CHUNK: i64 = 5_000;

/// `darkleg webhooks replay NAME`: dead letters back into `name`'s outbox and a 410 lifted.
/// Works beside a running agent (SQLite serialises the two writers; the sink notices the
/// new generation within seconds) or with it stopped. Letters move in chunks of
/// [`REPLAY_CHUNK`], each chunk one transaction (a letter is in the outbox or still dead,
/// never neither); the generation and the lifted 410 are written with the last chunk, so
/// the sink rereads once everything is back. A replay cut short leaves the rest dead, and
/// the moved ones are sent at the next generation or restart: running it again finishes it.
pub fn replay(db: &Path, name: &str) -> Result<Replayed, StoreError> {
    replay_in_chunks(db, name, REPLAY_CHUNK)
}

pub(super) fn replay_in_chunks(db: &Path, name: &str, chunk: i64) -> Result<Replayed, StoreError> {
    let run = || -> rusqlite::Result<Option<Replayed>> {
        let mut conn =
            Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut requeued = 0;
        loop {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let Some(disabled) = tx
                .query_row(
                    "SELECT disabled_at IS NOT NULL FROM webhooks WHERE name = ?1",
                    [name],
                    |r| r.get::<_, bool>(0),
                )
                .optional()?
            else {
                return Ok(None);
            };
            // The chunk: the oldest letters, by row (the outbox's order).
            let last: Option<i64> = tx.query_row(
                "SELECT MAX(row) FROM (SELECT row FROM webhook_dead_letters
                  WHERE webhook = ?1 ORDER BY row LIMIT ?2)",
                rusqlite::params![name, chunk],
                |r| r.get(0),
            )?;
            if let Some(last) = last {
                requeued += tx.execute(
                    "INSERT OR IGNORE INTO outbox(upstream, row)
                     SELECT d.webhook, d.row FROM webhook_dead_letters d
                     WHERE d.webhook = ?1 AND d.row <= ?2
                       AND EXISTS (SELECT 1 FROM messages m WHERE m.row = d.row)",
                    rusqlite::params![name, last],
                )?;
                tx.execute(
                    "DELETE FROM webhook_dead_letters WHERE webhook = ?1 AND row <= ?2",
                    rusqlite::params![name, last],
                )?;
            }
            let more: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM webhook_dead_letters WHERE webhook = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if !more {
                tx.execute(
                    "UPDATE webhooks SET disabled_at = NULL, disabled_reason = NULL, replays = replays + 1 WHERE name = ?1",
                    [name],
                )?;
                tx.commit()?;
                return Ok(Some(Replayed {
                    requeued,
                    was_disabled: disabled,
                }));
            }
            tx.commit()?;
        }
    };
    match run() {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(StoreError::new(
            format!("replaying webhook {name}"),
            "no such webhook in this store (hint: names come from [[webhook]] tables; has the agent run with it?)",
        )),
        Err(e) => Err(StoreError::sqlite(format!("replaying webhook {name} in {}", db.display()), e)),
    }
}
