//! Versioned schema migrations, tracked in `PRAGMA user_version`. All pending steps run in
//! one transaction, so a crash mid-migration leaves the previous version intact.

use rusqlite::Connection;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only; never edit one
/// that has shipped.
const MIGRATIONS: &[&str] = &[
    // v1: events, the per-upstream outbox, devices and ports.
    r#"
    CREATE TABLE events (
        row          INTEGER PRIMARY KEY,          -- outbox order
        event_id     BLOB NOT NULL UNIQUE,         -- 16 bytes, derived from device + seq
        device       TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        step         TEXT NOT NULL,
        code         TEXT NOT NULL,
        symbology    TEXT,
        station      TEXT,
        operator     TEXT,
        captured_at  INTEGER NOT NULL,             -- Unix ms
        received_at  INTEGER NOT NULL              -- Unix ms
    );
    CREATE INDEX events_received ON events(received_at);
    -- One row per (upstream, event) not yet PUBACKed by that upstream.
    CREATE TABLE outbox (
        upstream TEXT NOT NULL,
        row      INTEGER NOT NULL REFERENCES events(row),
        PRIMARY KEY (upstream, row)
    ) WITHOUT ROWID;
    CREATE INDEX outbox_row ON outbox(row);   -- pruning asks 'is this row still owed?'
    CREATE TABLE upstreams (
        name         TEXT PRIMARY KEY,
        delivered    INTEGER NOT NULL DEFAULT 0,
        last_sync_at INTEGER
    );
    CREATE TABLE devices (
        device     TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,                  -- 'framed' | 'ascii'
        last_seq   INTEGER NOT NULL DEFAULT 0,     -- framed: highest durable seq; ascii: last assigned
        firmware   TEXT,
        port       TEXT,
        last_seen  INTEGER,
        events     INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE ports (
        port        TEXT PRIMARY KEY,
        protocol    TEXT NOT NULL,
        connected   INTEGER NOT NULL DEFAULT 0,
        frames      INTEGER NOT NULL DEFAULT 0,
        rejected    INTEGER NOT NULL DEFAULT 0,
        last_reject TEXT,
        last_seen   INTEGER
    );
    "#,
    // v2: framed scans the gateway consumed but refused (bad code), per device.
    r#"
    ALTER TABLE devices ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
    "#,
    // v3: derived messages (milestones, alerts) share the outbox with events, so both draw
    // rows from one counter that never goes back (pruning the newest rows must not let a
    // row number be reused under a sink's cursor). Plus what derivation keeps.
    r#"
    CREATE TABLE outbox_v3 (
        upstream TEXT NOT NULL,
        row      INTEGER NOT NULL,                 -- events.row or messages.row
        PRIMARY KEY (upstream, row)
    ) WITHOUT ROWID;
    INSERT INTO outbox_v3 SELECT upstream, row FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;
    CREATE INDEX outbox_row ON outbox(row);
    CREATE TABLE row_seq (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
    INSERT INTO row_seq(id, last) SELECT 1, IFNULL(MAX(row), 0) FROM events;
    CREATE TABLE messages (
        row        INTEGER PRIMARY KEY,            -- from row_seq, like events.row
        kind       TEXT NOT NULL,                  -- 'milestone' | 'alert'
        merchant   TEXT,                           -- NULL: no merchant claims the parcel
        topic      TEXT NOT NULL,                  -- after the upstream's topic_prefix
        payload    TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE facts (
        event_row      INTEGER NOT NULL,
        kind           TEXT NOT NULL,              -- picked | packed | handed_over | handover_no_parcel | return_received
        parcel         TEXT,
        order_no       TEXT,
        item           TEXT,
        carrier        TEXT,
        tracking       TEXT,
        tracking_valid INTEGER,                    -- NULL: no check digit / unrecognised
        at             INTEGER NOT NULL,           -- capture time, Unix ms
        station        TEXT
    );
    CREATE INDEX facts_parcel ON facts(parcel);
    CREATE INDEX facts_order ON facts(order_no);
    CREATE TABLE parcels (
        parcel           TEXT PRIMARY KEY,
        order_no         TEXT,
        merchant         TEXT,
        picked_at        INTEGER,
        packed_at        INTEGER,
        pack_station     TEXT,
        handed_over_at   INTEGER,
        carrier          TEXT,
        tracking         TEXT,
        tracking_valid   INTEGER,
        handover_station TEXT,
        carriers         TEXT NOT NULL DEFAULT '',  -- comma-separated
        returned_at      INTEGER
    );
    CREATE INDEX parcels_order ON parcels(order_no);
    CREATE TABLE alerts (
        parcel      TEXT NOT NULL,
        rule        TEXT NOT NULL,
        opened_at   INTEGER NOT NULL,
        resolved_at INTEGER,
        detail      TEXT NOT NULL,
        PRIMARY KEY (parcel, rule, opened_at)
    );
    CREATE INDEX alerts_open ON alerts(parcel) WHERE resolved_at IS NULL;
    CREATE TABLE derive_context (device TEXT PRIMARY KEY, order_no TEXT, parcel TEXT, at INTEGER NOT NULL);
    CREATE TABLE derive_watermark (id INTEGER PRIMARY KEY CHECK (id = 1), last_row INTEGER NOT NULL);
    INSERT INTO derive_watermark(id, last_row) VALUES (1, 0);
    "#,
    // v4: relayed events keep where they were captured and the gateways they passed
    // (NULL: captured here); device clock offsets; what the store had to do to itself.
    r#"
    ALTER TABLE events ADD COLUMN origin_site TEXT;
    ALTER TABLE events ADD COLUMN origin_gateway TEXT;
    ALTER TABLE events ADD COLUMN hops TEXT;          -- JSON array as received, sender last
    ALTER TABLE devices ADD COLUMN clock_offset_ms INTEGER; -- gateway clock minus device clock
    CREATE TABLE incidents (
        at     INTEGER NOT NULL,
        kind   TEXT NOT NULL,                        -- damaged_db | clock_jump | store_full
        detail TEXT NOT NULL
    );
    "#,
    // v5: the store's incarnation — a random number drawn when the store is created, so the
    // scans this store numbers itself (ASCII devices) never take the ids of scans a lost
    // earlier store numbered; what each upstream's broker refused.
    r#"
    CREATE TABLE store_info (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        incarnation INTEGER NOT NULL,                -- 1 ..= 2^25 - 1
        created_at  INTEGER NOT NULL
    );
    INSERT INTO store_info(id, incarnation, created_at)
        VALUES (1, abs(random() % 33554431) + 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    ALTER TABLE upstreams ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE upstreams ADD COLUMN last_refusal TEXT;
    ALTER TABLE upstreams ADD COLUMN last_refusal_at INTEGER;
    ALTER TABLE devices ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
    -- relayed scans not stored because a different scan holds their event id
    ALTER TABLE ports ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
    "#,
    // v6: webhooks. A message an endpoint refused for good (a 4xx other than 408/429/410)
    // leaves its outbox and waits here, kept from pruning, until `darkleg webhooks replay`;
    // per webhook: how many so far, whether a 410 disabled it, and a replay generation a
    // running sink watches.
    r#"
    CREATE TABLE webhook_dead_letters (
        webhook TEXT NOT NULL,
        row     INTEGER NOT NULL,                    -- messages.row
        status  INTEGER NOT NULL,                    -- the HTTP status that refused it
        reason  TEXT NOT NULL,
        at      INTEGER NOT NULL,
        PRIMARY KEY (webhook, row)
    ) WITHOUT ROWID;
    CREATE INDEX webhook_dead_letters_row ON webhook_dead_letters(row);
    CREATE TABLE webhooks (
        name            TEXT PRIMARY KEY,
        dead_lettered   INTEGER NOT NULL DEFAULT 0,  -- all time
        last_dead_at    INTEGER,
        last_dead       TEXT,
        disabled_at     INTEGER,                     -- a 410 Gone: no requests until a replay
        disabled_reason TEXT,
        replays         INTEGER NOT NULL DEFAULT 0
    );
    "#,
];

pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`VERSION`]; refuses one written by a newer darkleg.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if current > VERSION {
        return Err(format!(
            "database schema is version {current}, this darkleg knows up to {VERSION}: \
             it was written by a newer release; upgrade darkleg or point data_dir elsewhere"
        ));
    }
    // All pending steps in one transaction: a reader (`darkleg status`) sees the old schema
    // or the newest, never one half-way.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)
            .and_then(|_| tx.pragma_update(None, "user_version", i as i64 + 1))
            .map_err(|e| format!("migration to schema v{} failed: {e}", i + 1))?;
    }
    tx.commit()
        .map_err(|e| format!("committing the schema migration: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrates_fresh_and_is_idempotent_and_refuses_newer() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        super::migrate(&mut c).unwrap();
        super::migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, super::VERSION);
        c.pragma_update(None, "user_version", 99).unwrap();
        assert!(super::migrate(&mut c)
            .unwrap_err()
            .contains("newer release"));
    }
}
