//! Salvage: the undelivered scans still readable in a damaged copy of the database, put
//! back into a store. Run at start on a file [`super::integrity`] moved aside, and by
//! `darkleg recover FILE`.
//!
//! Best effort, row by row: a read that meets a damaged page fails, so after a failure the
//! walk probes the following keys one at a time until one reads again, then scans on. What
//! is owed comes from both copies SQLite keeps of the outbox (its table, keyed by
//! upstream, and its `outbox_row` index, keyed by row); a row whose delivery state neither
//! copy could give is resent (receivers deduplicate by event id). Each scan keeps its
//! event id and every field; it gets a new outbox row number (in the old order) and an
//! outbox entry for each upstream that had not delivered it. Devices' `last_seq` is raised
//! to the highest known, so sequencing continues above what was salvaged (a gateway-
//! numbered scanner must never reuse an event id a receiver already has). Derived messages
//! are not salvaged; derivation runs over the salvaged scans again.
//!
//! Idempotent: a scan whose event id the store already has is left alone.

use super::StoreError;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// What a salvage got back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// Undelivered scans put into the store, with their outbox entries.
    pub scans: u64,
    /// Undelivered scans the store already had (same event id).
    pub present: u64,
    /// Rows some upstream was owed whose scan could not be read: lost with the damage
    /// (the scanners had retired them).
    pub lost: u64,
    /// Rows whose delivery state could not be read: resent if their scan was readable.
    pub unknown: u64,
    /// Devices whose `last_seq` was carried over or raised.
    pub devices: u64,
}

impl fmt::Display for Salvaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "salvaged {} undelivered scans ({} already in the store), lost {} unreadable undelivered scans",
            self.scans, self.present, self.lost
        )?;
        if self.unknown > 0 {
            write!(
                f,
                ", {} rows of unreadable delivery state resent where readable",
                self.unknown
            )?;
        }
        write!(f, ", sequencing of {} devices carried over", self.devices)
    }
}

/// Keys read and keys that could not be, from one walk over an integer-keyed b-tree.
struct Walk<T> {
    found: Vec<(i64, T)>,
    unreadable: HashSet<i64>,
}

/// Walks keys `> 0` in order. `range(after, out)` pushes rows with keys `> after` as it
/// reads them (so what came before a damaged page is kept); after it fails, `point(k, out)`
/// probes `k = last + 1, …` one at a time until one succeeds (or `upto` is passed), and the
/// range scan resumes from there.
fn walk<T>(
    upto: i64,
    mut range: impl FnMut(i64, &mut Vec<(i64, T)>) -> rusqlite::Result<()>,
    mut point: impl FnMut(i64, &mut Vec<(i64, T)>) -> rusqlite::Result<()>,
) -> Walk<T> {
    let mut w = Walk {
        found: Vec::new(),
        unreadable: HashSet::new(),
    };
    let mut cursor = 0i64;
    loop {
        let before = w.found.len();
        let res = range(cursor, &mut w.found);
        if w.found.len() > before {
            cursor = cursor.max(w.found.last().map_or(cursor, |(k, _)| *k));
        }
        if res.is_ok() {
            return w;
        }
        loop {
            cursor += 1;
            if cursor > upto {
                return w;
            }
            let before = w.found.len();
            if point(cursor, &mut w.found).is_ok() {
                break;
            }
            w.found.truncate(before);
            w.unreadable.insert(cursor);
        }
    }
}

/// Runs `sql` (parameters `(key, extra...)`) pushing `map`ped rows until done or an error.
fn push_rows<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    out: &mut Vec<(i64, T)>,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<(i64, T)>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(p)?;
    while let Some(r) = rows.next()? {
        out.push(map(r)?);
    }
    Ok(())
}

/// Reads rows of a small table in whatever order SQLite gives them, keeping those before
/// the first error.
fn best_effort<T>(
    conn: &Connection,
    sql: &str,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let Ok(mut stmt) = conn.prepare(sql) else {
        return out;
    };
    let Ok(mut rows) = stmt.query([]) else {
        return out;
    };
    while let Ok(Some(r)) = rows.next() {
        match map(r) {
            Ok(v) => out.push(v),
            Err(_) => continue,
        }
    }
    out
}

/// One scan as the damaged file holds it.
struct OldEvent {
    event_id: Vec<u8>,
    device: String,
    seq: i64,
    step: String,
    code: String,
    symbology: Option<String>,
    station: Option<String>,
    operator: Option<String>,
    captured_at: i64,
    received_at: i64,
    origin_site: Option<String>,
    origin_gateway: Option<String>,
    hops: Option<String>,
}

fn old_event(r: &Row<'_>) -> rusqlite::Result<OldEvent> {
    let e = OldEvent {
        event_id: r.get(0)?,
        device: r.get(1)?,
        seq: r.get(2)?,
        step: r.get(3)?,
        code: r.get(4)?,
        symbology: r.get(5)?,
        station: r.get(6)?,
        operator: r.get(7)?,
        captured_at: r.get(8)?,
        received_at: r.get(9)?,
        origin_site: r.get(10)?,
        origin_gateway: r.get(11)?,
        hops: r.get(12)?,
    };
    // A row from a garbled page can read without error; one that could not have been
    // written by this agent is not sent.
    let sane = e.event_id.len() == 16
        && e.step.parse::<darkleg_protocol::Step>().is_ok()
        && e.event_id[..] == darkleg_protocol::EventId::new(&e.device, e.seq as u64).0[..]
        && (e.origin_site.is_none() || e.origin_gateway.is_some());
    if !sane {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(e)
}

/// Salvages the undelivered scans readable in `from` (opened read-only, never written)
/// into `into`, an open, migrated store, in one transaction.
pub fn salvage(from: &Path, into: &mut Connection) -> Result<Salvaged, String> {
    let old = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {} read-only: {e}", from.display()))?;
    let one = |sql: &str| -> Option<i64> {
        old.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
    };
    let upto = [
        one("SELECT last FROM row_seq WHERE id = 1"),
        one("SELECT MAX(row) FROM events"),
        one("SELECT MAX(row) FROM outbox INDEXED BY outbox_row"),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);

    // Who is owed what: the outbox index (by row), then the outbox table (by upstream).
    let idx_sql =
        "SELECT row, upstream FROM outbox INDEXED BY outbox_row WHERE row > ?1 ORDER BY row";
    let idx_point = "SELECT row, upstream FROM outbox INDEXED BY outbox_row WHERE row = ?1";
    let pair = |r: &Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?));
    let by_row = walk(
        upto,
        |after, out| push_rows(&old, idx_sql, [after], out, pair),
        |k, out| push_rows(&old, idx_point, [k], out, pair),
    );
    let mut names: BTreeSet<String> = best_effort(&old, "SELECT name FROM upstreams", |r| r.get(0))
        .into_iter()
        .collect();
    names.extend(by_row.found.iter().map(|(_, u)| u.clone()));
    let mut owed: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for (row, u) in &by_row.found {
        owed.entry(*row).or_default().insert(u.clone());
    }
    let mut unknown = BTreeSet::new();
    let tbl_sql = "SELECT row, upstream FROM outbox WHERE upstream = ?2 AND row > ?1 ORDER BY row";
    let tbl_point = "SELECT row, upstream FROM outbox WHERE upstream = ?2 AND row = ?1";
    for u in &names {
        let by_upstream = walk(
            upto,
            |after, out| push_rows(&old, tbl_sql, params![after, u], out, pair),
            |k, out| push_rows(&old, tbl_point, params![k, u], out, pair),
        );
        for (row, _) in by_upstream.found {
            owed.entry(row).or_default().insert(u.clone());
        }
        // Neither copy could say whether `u` had this row: resend it.
        for row in by_upstream.unreadable.intersection(&by_row.unreadable) {
            unknown.insert(*row);
            owed.entry(*row).or_default().insert(u.clone());
        }
    }

    // The scans themselves, one point read each: an unreadable one is lost.
    let ev_sql = "SELECT event_id, device, seq, step, code, symbology, station, operator,
                         captured_at, received_at, origin_site, origin_gateway, hops
                  FROM events WHERE row = ?1";
    let mut s = Salvaged {
        unknown: unknown.len() as u64,
        ..Salvaged::default()
    };
    let mut scans = Vec::new();
    for (row, upstreams) in &owed {
        match old.query_row(ev_sql, [row], old_event).optional() {
            Ok(Some(e)) => scans.push((e, upstreams)),
            // Delivered and pruned (a resent unknown row), or never written (a gap).
            Ok(None) if unknown.contains(row) => {}
            Ok(None) | Err(_) => s.lost += 1,
        }
    }
    let devices: Vec<(String, String, i64)> =
        best_effort(&old, "SELECT device, kind, last_seq FROM devices", |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        });
    drop_quietly(old);

    let tx = into
        .transaction()
        .map_err(|e| format!("salvage transaction: {e}"))?;
    let mut write = || -> rusqlite::Result<()> {
        let mut last: i64 =
            tx.query_row("SELECT last FROM row_seq WHERE id = 1", [], |r| r.get(0))?;
        let mut ins = tx.prepare(
            "INSERT INTO events(row, event_id, device, seq, step, code, symbology, station, operator,
                                captured_at, received_at, origin_site, origin_gateway, hops)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT(event_id) DO NOTHING",
        )?;
        let mut outbox =
            tx.prepare("INSERT OR IGNORE INTO outbox(upstream, row) VALUES (?1, ?2)")?;
        let mut upstream = tx.prepare("INSERT OR IGNORE INTO upstreams(name) VALUES (?1)")?;
        // Only framed devices' sequencing carries over (the scanner numbers them; its Hello
        // would tell us anyway). Devices this gateway numbered (ASCII) start afresh in the new
        // store's incarnation: continuing from the highest *readable* seq could reuse the id
        // of a delivered scan on an unreadable page.
        let mut top: HashMap<String, (String, i64)> = devices
            .iter()
            .filter(|(_, k, _)| k == "framed")
            .map(|(d, k, seq)| (d.clone(), (k.clone(), *seq)))
            .collect();
        for (e, upstreams) in &scans {
            if e.origin_site.is_none() {
                if let Some(t) = top.get_mut(&e.device) {
                    t.1 = t.1.max(e.seq);
                }
            }
            let row = last + 1;
            let n = ins.execute(params![
                row,
                e.event_id,
                e.device,
                e.seq,
                e.step,
                e.code,
                e.symbology,
                e.station,
                e.operator,
                e.captured_at,
                e.received_at,
                e.origin_site,
                e.origin_gateway,
                e.hops
            ])?;
            if n == 0 {
                s.present += 1;
                continue;
            }
            last = row;
            s.scans += 1;
            for u in *upstreams {
                upstream.execute([u])?;
                outbox.execute(params![u, row])?;
            }
        }
        tx.execute("UPDATE row_seq SET last = ?1 WHERE id = 1", [last])?;
        let mut dev = tx.prepare(
            "INSERT INTO devices(device, kind, last_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT(device) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
        )?;
        for (device, (kind, seq)) in &top {
            dev.execute(params![device, kind, seq])?;
            s.devices += 1;
        }
        Ok(())
    };
    write().map_err(|e| format!("writing salvaged scans: {e}"))?;
    tx.commit()
        .map_err(|e| format!("committing salvaged scans: {e}"))?;
    Ok(s)
}

/// A read-only connection on a damaged file may fail to close cleanly; that is no error.
fn drop_quietly(c: Connection) {
    let _ = c.close();
}

/// `darkleg recover FILE`: salvages `from` into the store `config` names (the agent must
/// not be running: this takes the data_dir lock), records it in `incidents`.
pub fn recover(config: &crate::config::Config, from: &Path) -> Result<Salvaged, StoreError> {
    if !from.is_file() {
        return Err(StoreError::new(
            format!("recovering from {}", from.display()),
            "no such file",
        ));
    }
    let live = config.db_path();
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(from, &live) {
        return Err(StoreError::new(
            format!("recovering from {}", from.display()),
            "that is the live database of this config (hint: give the damaged copy, darkleg.db.damaged-*)",
        ));
    }
    // Checked before anything is salvaged into it, however large.
    let (mut conn, _lock, _) = super::prepare(config, false)?;
    let router = crate::routing::Router::new(config);
    let s = salvage(from, &mut conn)
        .map_err(|e| StoreError::new(format!("recovering from {}", from.display()), e))?;
    super::register_upstreams(&mut conn, &router)
        .map_err(|e| StoreError::new("registering upstreams", e))?;
    conn.execute(
        "INSERT INTO incidents(at, kind, detail) VALUES (?1, 'recovered', ?2)",
        params![
            crate::clock::now_ms() as i64,
            format!("darkleg recover {}: {s}", from.display())
        ],
    )
    .map_err(|e| StoreError::new("recording the recovery", e))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::walk;

    /// Keys 1..=100 with 30..=39 on a damaged page: a range read stops there with an
    /// error, a point read there fails; 50 and 51 never existed.
    fn read(k: i64) -> Result<Option<i64>, ()> {
        match k {
            30..=39 => Err(()),
            50 | 51 => Ok(None),
            1..=100 => Ok(Some(k)),
            _ => Ok(None),
        }
    }

    #[test]
    fn the_walk_skips_the_damaged_keys_one_by_one_and_reads_on() {
        let mut ranges = 0;
        let w = walk(
            100,
            |after, out: &mut Vec<(i64, ())>| {
                ranges += 1;
                for k in after + 1..=100 {
                    match read(k) {
                        Err(()) => return Err(rusqlite::Error::InvalidQuery),
                        Ok(Some(k)) => out.push((k, ())),
                        Ok(None) => {}
                    }
                }
                Ok(())
            },
            |k, out| match read(k) {
                Err(()) => Err(rusqlite::Error::InvalidQuery),
                Ok(v) => {
                    out.extend(v.map(|k| (k, ())));
                    Ok(())
                }
            },
        );
        let keys: Vec<i64> = w.found.iter().map(|(k, _)| *k).collect();
        let want: Vec<i64> = (1..=100)
            .filter(|k| !(30..=39).contains(k) && *k != 50 && *k != 51)
            .collect();
        assert_eq!(keys, want);
        let mut lost: Vec<i64> = w.unreadable.into_iter().collect();
        lost.sort();
        assert_eq!(lost, (30..=39).collect::<Vec<_>>());
        assert_eq!(ranges, 2, "one range read before the damage, one after");
    }

    #[test]
    fn the_walk_stops_at_the_last_known_key_when_everything_after_is_damaged() {
        let w = walk(
            20,
            |_, _: &mut Vec<(i64, ())>| Err(rusqlite::Error::InvalidQuery),
            |_, _| Err(rusqlite::Error::InvalidQuery),
        );
        assert!(w.found.is_empty());
        assert_eq!(w.unreadable.len(), 20);
    }
}
