//! Start-up check of the database file. A gateway that lost power mid-write under
//! `synchronous = "normal"`, a failing SD card, or a copy gone wrong can leave a damaged
//! file. Writing on into it risks what is still readable; recreating it silently would
//! hide the loss. So: a damaged file is moved aside (with its WAL) under a name that says
//! when and why, the agent starts on a fresh one, salvages what is still readable
//! ([`super::salvage`]), and the move is logged and recorded in the new database's
//! `incidents`, where `darkleg status` shows it.
//!
//! Only damage moves a file: SQLite saying SQLITE_CORRUPT or SQLITE_NOTADB, or
//! `quick_check` finding something. Any other failure — permission denied, the file locked
//! by another process, an I/O error, a full disk during WAL recovery — says nothing about
//! the file, so the agent refuses to start and leaves it as it is ([`classify`]).
//!
//! `quick_check` reads the whole file: 40 s for 1.6 GB (a 10M backlog) here. A large file is
//! therefore checked *beside* serving ([`snapshot`], [`finish`]), and what that guarantees:
//! the check reads a snapshot taken before anything was written, on its own connection,
//! and SQLite never checkpoints past an open reader's snapshot, so no page of the content
//! being verified is overwritten in the file while it is checked — new commits go to the
//! WAL. If the check finds damage it leaves its verdict beside the file ([`marker`]) and the
//! agent stops (exit 70); the next start moves the file and its WAL aside on that verdict,
//! without checking again, and salvages the undelivered scans — those acked during the
//! check too, which are in the WAL. What is weaker than checking first: for the length of
//! the check, new scans are written (to the WAL) over a file not yet known good.

use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::{Path, PathBuf};

/// What was wrong with the file and where it went.
#[derive(Debug, Clone)]
pub struct MovedAside {
    pub to: PathBuf,
    pub why: String,
}

/// What an error met while checking the file says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The file is damaged: move it aside and salvage it.
    Corrupt,
    /// Not the file's fault: refuse to start and leave it alone; the hint says what to check.
    Refuse(&'static str),
}

/// Classifies a SQLite error code met while opening or checking the file (`None`: not a
/// SQLite failure at all). Pure, so every class has its unit test.
pub fn classify(code: Option<ErrorCode>) -> Fault {
    use ErrorCode::*;
    match code {
        Some(DatabaseCorrupt | NotADatabase) => Fault::Corrupt,
        Some(DatabaseBusy | DatabaseLocked) => Fault::Refuse(
            "database is locked: is another darkleg, an sqlite3 shell or a backup using this data_dir?",
        ),
        Some(PermissionDenied | ReadOnly | CannotOpen | AuthorizationForStatementDenied) => {
            Fault::Refuse(
                "permission denied: check the owner and mode of data_dir and its darkleg.db* files \
                 (the agent needs to read and write them) and that the filesystem is not read-only",
            )
        }
        Some(DiskFull) => Fault::Refuse(
            "disk full: free space on data_dir's filesystem (opening the database recovers its WAL, which needs room)",
        ),
        Some(SystemIoFailure) => Fault::Refuse(
            "I/O error: the disk or SD card may be failing; copy data_dir off before anything else",
        ),
        Some(FileLockingProtocolFailed) => Fault::Refuse(
            "file locking failed: data_dir must be on a local filesystem (not NFS/SMB)",
        ),
        Some(OutOfMemory) => Fault::Refuse("out of memory: free memory and start again"),
        _ => Fault::Refuse("unexpected error: the file was left as it is; keep a copy and report this"),
    }
}

/// Checks `path` (if it exists) with `PRAGMA quick_check`; a damaged file is renamed to
/// `darkleg.db.damaged-<unix ms>` with its `-wal` and `-shm`. Any other failure is an
/// error naming the file, SQLite's error and a hint; the file is not touched.
pub fn check(path: &Path) -> Result<Option<MovedAside>, String> {
    let marker = marker(path);
    if !path.exists() {
        let _ = std::fs::remove_file(&marker);
        return Ok(None);
    }
    let why = match std::fs::read_to_string(&marker) {
        Ok(found) => format!(
            "the last run's start-up check found it damaged: {}",
            found.trim()
        ),
        Err(_) => match verdict(path) {
            Ok(()) => return Ok(None),
            Err(Problem::Damaged(why)) => why,
            Err(Problem::Refused(sqlite, hint)) => {
                return Err(format!(
                    "cannot check {}: {sqlite}; not starting, the file is left untouched (hint: {hint})",
                    path.display()
                ))
            }
        },
    };
    let to = PathBuf::from(format!(
        "{}.damaged-{}",
        path.display(),
        crate::clock::now_ms()
    ));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let dest = PathBuf::from(format!("{}{suffix}", to.display()));
            std::fs::rename(&from, &dest).map_err(|e| {
                format!(
                    "{} is damaged ({why}) and could not be moved aside to {}: {e}; \
                     not starting on top of it (hint: move it away by hand and keep it for recovery)",
                    from.display(),
                    dest.display()
                )
            })?;
        }
    }
    // The verdict was acted on (a failed removal is harmless: the file it names is gone).
    let _ = std::fs::remove_file(&marker);
    Ok(Some(MovedAside { to, why }))
}

/// Where a check that ran beside serving leaves its verdict of damage for the next start.
pub fn marker(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.check-failed", path.display()))
}

/// Opens `path` for a check beside serving and takes its read snapshot now, before the
/// writer opens it. `None` when there is no file, or when it cannot even be opened and
/// read: then [`check`] should run at once (it classifies what is wrong).
pub fn snapshot(path: &Path) -> Option<Connection> {
    if !path.exists() || marker(path).exists() {
        return None;
    }
    let open = || -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.execute_batch("BEGIN")?;
        // The first read takes the snapshot; it lasts until the transaction ends.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(conn)
    };
    open().ok()
}

/// What a check beside serving found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Intact,
    /// Damage, whose description is now in the [`marker`].
    Damaged(String),
    /// The check could not finish (an I/O error, say): nothing is known either way.
    Unfinished(String),
}

/// Runs `quick_check` on a [`snapshot`] of `path`. Damage is written to the [`marker`].
pub fn finish(conn: Connection, path: &Path) -> Found {
    let lines = conn.prepare("PRAGMA quick_check(5)").and_then(|mut stmt| {
        stmt.query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
    });
    let _ = conn.execute_batch("COMMIT");
    let why = match lines {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => return Found::Intact,
        Ok(lines) => lines.join("; ").replace('\n', "; "),
        Err(e) => match classify(e.sqlite_error_code()) {
            Fault::Corrupt => e.to_string(),
            Fault::Refuse(hint) => return Found::Unfinished(format!("{e} ({hint})")),
        },
    };
    if let Err(e) = std::fs::write(marker(path), &why) {
        // Without the marker the next start checks again (and finds it again).
        tracing::error!(marker = %marker(path).display(), "cannot record the check's verdict: {e}");
    }
    Found::Damaged(why)
}

enum Problem {
    /// What SQLite found wrong.
    Damaged(String),
    /// SQLite's error and a hint.
    Refused(String, &'static str),
}

fn sorted(e: rusqlite::Error) -> Problem {
    match classify(e.sqlite_error_code()) {
        Fault::Corrupt => Problem::Damaged(e.to_string()),
        Fault::Refuse(hint) => Problem::Refused(e.to_string(), hint),
    }
}

fn verdict(path: &Path) -> Result<(), Problem> {
    // Read-write (not read-only): a WAL left by a crash must be recovered, not misread.
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(sorted)?;
    // Nothing written into a file that may be damaged: no checkpoint when this closes.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(sorted)?;
    // A backup reading the file briefly is not a reason to refuse; one holding it is.
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(sorted)?;
    let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(sorted)?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(sorted)?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(Problem::Damaged(lines.join("; ").replace('\n', "; ")))
    }
}

/// Records the move (and what salvage got back, if it ran) in the fresh database.
pub fn record(conn: &Connection, moved: &MovedAside, salvage: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO incidents(at, kind, detail) VALUES (?1, 'damaged_db', ?2)",
        rusqlite::params![
            crate::clock::now_ms() as i64,
            format!(
                "moved aside to {}: {}; {salvage}",
                moved.to.display(),
                moved.why
            )
        ],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::{classify, Fault};
    use rusqlite::ErrorCode::*;

    fn hint(code: rusqlite::ErrorCode) -> &'static str {
        match classify(Some(code)) {
            Fault::Refuse(h) => h,
            Fault::Corrupt => panic!("{code:?} is not damage"),
        }
    }

    #[test]
    fn only_corrupt_and_not_a_database_are_damage() {
        assert_eq!(classify(Some(DatabaseCorrupt)), Fault::Corrupt);
        assert_eq!(classify(Some(NotADatabase)), Fault::Corrupt);
    }

    #[test]
    fn a_locked_file_is_refused_with_who_might_hold_it() {
        assert!(hint(DatabaseBusy).contains("database is locked"));
        assert!(hint(DatabaseLocked).contains("another darkleg"));
    }

    #[test]
    fn permissions_and_read_only_are_refused_with_the_owner_to_check() {
        for code in [PermissionDenied, ReadOnly, CannotOpen] {
            assert!(hint(code).starts_with("permission denied"), "{code:?}");
        }
    }

    #[test]
    fn full_disk_io_error_locking_and_memory_are_refused_each_with_its_hint() {
        assert!(hint(DiskFull).starts_with("disk full"));
        assert!(hint(SystemIoFailure).starts_with("I/O error"));
        assert!(hint(FileLockingProtocolFailed).contains("local filesystem"));
        assert!(hint(OutOfMemory).starts_with("out of memory"));
    }

    #[test]
    fn anything_else_is_refused_never_taken_for_damage() {
        for code in [
            Some(InternalMalfunction),
            Some(ApiMisuse),
            Some(Unknown),
            None,
        ] {
            assert!(
                matches!(classify(code), Fault::Refuse(h) if h.starts_with("unexpected")),
                "{code:?}"
            );
        }
    }
}
