//! Start-up check of the database file. A gateway that lost power mid-write under
//! `synchronous = "normal"`, a failing SD card, or a copy gone wrong can leave a damaged
//! file. Writing on into it risks what is still readable; recreating it silently would
//! hide the loss. So: a damaged file is moved aside (with its WAL) under a name that says
//! when and why, the agent starts on a fresh one, and the move is logged and recorded in
//! the new database's `incidents`, where `darkleg status` shows it.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};

/// What was wrong with the file and where it went.
#[derive(Debug, Clone)]
pub struct MovedAside {
    pub to: PathBuf,
    pub why: String,
}

/// Checks `path` (if it exists) with `PRAGMA quick_check`; a damaged file is renamed to
/// `darkleg.db.damaged-<unix ms>` with its `-wal` and `-shm`.
pub fn check(path: &Path) -> Result<Option<MovedAside>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let why = match verdict(path) {
        Ok(()) => return Ok(None),
        Err(why) => why,
    };
    let to = PathBuf::from(format!("{}.damaged-{}", path.display(), crate::now_ms()));
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
    Ok(Some(MovedAside { to, why }))
}

fn verdict(path: &Path) -> Result<(), String> {
    // Read-write (not read-only): a WAL left by a crash must be recovered, not misread.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| e.to_string())?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(lines.join("; "))
    }
}

/// Records the move in the fresh database.
pub fn record(conn: &Connection, moved: &MovedAside) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO incidents(at, kind, detail) VALUES (?1, 'damaged_db', ?2)",
        rusqlite::params![
            crate::now_ms() as i64,
            format!("moved aside to {}: {}", moved.to.display(), moved.why)
        ],
    )
    .map(|_| ())
}
