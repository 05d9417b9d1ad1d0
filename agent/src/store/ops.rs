//! What each write does in SQL. Every function runs inside the op's savepoint; sequencing
//! decisions use the writer's in-memory [`Devices`], whose update the caller applies only
//! once the savepoint committed.

use super::derived::Routes;
use super::devices::{Devices, Update};
use super::writer::{AsciiScan, Conflict, FramedOutcome, FramedScan, PortReport, SeqClient};
use crate::routing::ScanFacts;
use darkleg_protocol::relay::Relayed;
use darkleg_protocol::{EventId, Step};
use rusqlite::{params, Connection, OptionalExtension};

pub(super) fn hello(
    sp: &Connection,
    devices: &mut Devices,
    device: &str,
    firmware: &str,
    last_acked: u64,
) -> rusqlite::Result<(u64, Update)> {
    let last = devices.get(sp, device)?.last_seq;
    // The scanner may know a higher ack than we do (another gateway, a replaced database):
    // whatever it has retired is not ours to ask for again.
    let acked = last.max(last_acked);
    let update = Update {
        last_seq: acked,
        firmware: Some(firmware.to_string()),
        ..Update::default()
    };
    Ok((acked, update))
}

pub(super) fn framed(
    sp: &Connection,
    devices: &mut Devices,
    routes: &Routes<'_>,
    device: &str,
    s: &FramedScan,
) -> rusqlite::Result<(FramedOutcome, Update)> {
    let last = devices.get(sp, device)?.last_seq;
    let app = s.client == SeqClient::App;
    if s.seq <= last {
        // A retransmit carries the same code. A different one means the scanner reused a
        // sequence number (lost its state): its scan is not the stored event, so acking it
        // as a duplicate would lose it. Refused (the operator hears the error tone), counted
        // and logged loudly.
        let stored: Option<(String, String, Option<String>, Option<String>)> = sp
            .prepare_cached("SELECT code, step, station, operator FROM events WHERE event_id = ?1")?
            .query_row([&EventId::new(device, s.seq).0[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        // An app's resend carries the whole scan again: a different step, station or
        // operator under the same seq and code is another scan (two apps sharing a device
        // name), not the stored one. Firmware resends its frame as it was; its code decides.
        let differs =
            |(code, step, station, operator): &(String, String, Option<String>, Option<String>)| {
                *code != s.code
                    || (app
                        && (step != s.step.as_str()
                            || *station != s.station
                            || *operator != s.operator))
            };
        let stored_code = stored.as_ref().map(|st| st.0.clone());
        if stored.as_ref().is_some_and(differs) {
            let stored = stored_code;
            tracing::error!(
                device, seq = s.seq, acked = last, stored = ?stored, sent = %s.code,
                "CONFLICT: the scanner sent a different scan under a sequence number that already names a stored one (it lost its state?); refused, not stored — it must continue after {last}"
            );
            let update = Update {
                last_seq: last,
                conflicts: 1,
                refused: 1,
                ..Update::default()
            };
            return Ok((FramedOutcome::Refused { acked: last }, update));
        }
        // Nothing left to compare (delivered and pruned, or a seq whose code was refused):
        // firmware only resends what it holds unacked, so it is a retransmit. An app may
        // have been reinstalled and numbered afresh: "duplicate" would drop its new scan.
        if stored.is_none() && app && !s.refused {
            tracing::warn!(device, seq = s.seq, acked = last,
                "an app sent a seq at or below its device's last with no stored scan left to compare (reinstalled?); refused — it must number new scans after {last}");
            let update = Update {
                last_seq: last,
                conflicts: 1,
                ..Update::default()
            };
            let why = Conflict::Unheld;
            return Ok((FramedOutcome::Conflict { acked: last, why }, update));
        }
        let update = Update {
            last_seq: last,
            duplicates: 1,
            ..Update::default()
        };
        return Ok((FramedOutcome::Duplicate { acked: last }, update));
    }
    // An app this store holds no scan for (new, or the store was lost) goes on from its own
    // numbering: "expected 1" would have an app whose gateway lost its store renumber from 1,
    // and its new scans would take the event ids of ones delivered before — dropped upstream
    // as duplicates. (A framed scanner says where it is in its Hello instead.)
    // Not past a scan of the same batch that failed: its resend would find itself below.
    let adopt = app && last == 0 && s.seq > 1 && !devices.failed_in_batch(device);
    if adopt {
        tracing::info!(
            device,
            seq = s.seq,
            "an app's first scan this store sees: its numbering is taken from it"
        );
    }
    if s.seq != last.saturating_add(1) && !adopt {
        // Go-back-N has one way in: the next seq. A scanner whose flash lost a record
        // offers the one after it on every pass, for ever; after enough passes the hole is
        // taken as lost there — loudly, on record — rather than wedging every later scan.
        if app || !devices.hole_is_permanent(device, last, s.seq) {
            let update = Update {
                last_seq: last,
                ..Update::default()
            };
            return Ok((FramedOutcome::OutOfOrder { acked: last }, update));
        }
        let detail = format!(
            "device {device}: seqs {}..={} never arrived after {} go-back passes (lost in the scanner's flash?); continuing from {}",
            last + 1,
            s.seq - 1,
            super::devices::GAP_PASSES,
            s.seq
        );
        tracing::error!("LOST AT THE SCANNER: {detail}");
        sp.execute(
            "INSERT INTO incidents(at, kind, detail) VALUES (?1, 'scanner_gap', ?2)",
            params![crate::clock::now_ms() as i64, detail],
        )?;
    }
    if s.refused {
        let update = Update {
            last_seq: s.seq,
            refused: 1,
            ..Update::default()
        };
        return Ok((FramedOutcome::Refused { acked: s.seq }, update));
    }
    let inserted = insert_event(
        sp,
        routes,
        device,
        s.seq,
        s.step,
        &s.code,
        s.symbology.as_deref(),
        s.station.as_deref(),
        s.operator.as_deref(),
        s.captured_at_ms,
        s.received_at_ms,
        None,
    )?;
    if !inserted && id_collision(sp, device, s.seq, &s.code)? {
        // Refused rather than acked as stored: the operator hears the error tone.
        let update = Update {
            last_seq: s.seq,
            refused: 1,
            ..Update::default()
        };
        return Ok((FramedOutcome::Refused { acked: s.seq }, update));
    }
    let update = Update {
        last_seq: s.seq,
        events: inserted as i64,
        clock_offset_ms: Some(s.received_at_ms as i64 - s.captured_at_ms as i64),
        ..Update::default()
    };
    Ok((FramedOutcome::Stored { acked: s.seq }, update))
}

/// For a sequenced op on `device` from an app (`app`) or a scanner: `Some(last_seq)` when
/// the name belongs to the other kind. Checked before the op, which then is not applied
/// at all: an app's op would record a scanner's device as the app's, and a scanner told the
/// app's last seq in its Hello would retire its own unsent scans as acked.
pub(super) fn name_taken(
    sp: &Connection,
    devices: &mut Devices,
    device: &str,
    app: bool,
) -> rusqlite::Result<Option<u64>> {
    let d = devices.get(sp, device)?;
    if d.app == Some(!app) {
        if app {
            tracing::error!(device,
                "CONFLICT: an app posted as a device another source (a serial or network scanner) already uses; refused, not stored — give the app a device name of its own");
        } else {
            tracing::error!(device,
                "CONFLICT: a scanner uses the device name of an app on the HTTP intake; its scans are NOT taken (a framed scanner keeps them; a plain, network or keyboard one's are refused and logged for a rescan) — give one of them another name");
        }
        return Ok(Some(d.last_seq));
    }
    Ok(None)
}

pub(super) fn ascii(
    sp: &Connection,
    devices: &mut Devices,
    routes: &Routes<'_>,
    device: &str,
    s: &AsciiScan,
) -> rusqlite::Result<(u64, Update)> {
    let mut seq = devices.next_own_seq(sp, device)?;
    // This store picks these numbers, so a taken id (a relayed scan from a device of the
    // same name elsewhere) is skipped rather than the scan dropped under it.
    for _ in 0..64 {
        let inserted = insert_event(
            sp,
            routes,
            device,
            seq,
            s.step,
            &s.code,
            s.symbology.as_deref(),
            s.station.as_deref(),
            None,
            s.received_at_ms,
            s.received_at_ms,
            None,
        )?;
        if inserted {
            let update = Update {
                last_seq: seq,
                events: 1,
                ..Update::default()
            };
            return Ok((seq, update));
        }
        tracing::error!(
            device,
            seq,
            "event id already taken (a relayed scan from another site's device of this name?); numbering this scan past it — give every scanner a name unique across sites"
        );
        seq += 1;
    }
    Err(rusqlite::Error::ToSqlConversionFailure(
        format!("no free event id for device {device} near seq {seq}").into(),
    ))
}

/// The next outbox row: events and derived messages share one counter that never goes back.
/// Kept in the writer's memory and written to `row_seq` once per commit; a rolled-back
/// savepoint leaves a gap, which is harmless.
pub(super) fn next_row(routes: &Routes<'_>) -> i64 {
    let r = routes.last_row.get() + 1;
    routes.last_row.set(r);
    r
}

/// A new scan whose event id is already taken. With relaying, a device id used at two sites
/// names two scanners: their events share ids and one side's scans are dropped as
/// duplicates. Nothing can be stored under another id (ids are derived, so every hop agrees);
/// say so loudly, so the device is renamed. True when the id belongs to another scan.
fn id_collision(sp: &Connection, device: &str, seq: u64, code: &str) -> rusqlite::Result<bool> {
    let held: Option<(String, Option<String>, Option<String>)> = sp
        .prepare_cached("SELECT code, origin_site, origin_gateway FROM events WHERE event_id = ?1")?
        .query_row([&EventId::new(device, seq).0[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    match held {
        Some((held_code, site, gateway)) if held_code != code || site.is_some() => {
            tracing::error!(
                device, seq, from_site = ?site, from_gateway = ?gateway,
                "event id collision: this device id is also used elsewhere (a relayed scan holds its id); this scan is NOT stored — give every scanner a device id unique across all sites"
            );
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Other gateways' scans, as a relay took them: stored under their own event ids (a
/// duplicate — resent by the sender or arriving by a second path — is counted, not stored).
/// The sender sequenced them; this gateway does not own their devices.
pub(super) fn relayed(
    sp: &Connection,
    routes: &Routes<'_>,
    port: &str,
    scans: &[Relayed],
) -> rusqlite::Result<u64> {
    let (mut stored, mut conflicts) = (0, 0i64);
    for r in scans {
        let e = &r.event;
        let hops = serde_json::to_string(&r.hops).unwrap_or_default();
        let inserted = insert_event(
            sp,
            routes,
            &e.device,
            e.seq,
            e.step,
            &e.code,
            e.symbology.as_deref(),
            e.station.as_deref(),
            e.operator.as_deref(),
            e.captured_at_ms,
            e.received_at_ms,
            Some((&r.site, &r.gateway, &hops)),
        )?;
        if inserted {
            stored += 1;
        } else if relay_conflict(sp, port, r)? {
            conflicts += 1;
        }
    }
    if conflicts > 0 {
        // In the same savepoint as the scans: counted once per message taken.
        sp.prepare_cached(
            "INSERT INTO ports(port, protocol, conflicts) VALUES (?1, 'relay', ?2)
             ON CONFLICT(port) DO UPDATE SET conflicts = conflicts + ?2",
        )?
        .execute(params![port, conflicts])?;
    }
    Ok(stored)
}

/// A relayed scan whose event id is held by a different scan: a device id used by two
/// scanners (or a sender that reused a sequence number). Only one can be stored under the
/// id every hop derives; the other is lost here unless someone acts, so it is an error,
/// never a silent duplicate. True when the held scan differs; a resend is no conflict.
fn relay_conflict(sp: &Connection, port: &str, r: &Relayed) -> rusqlite::Result<bool> {
    type Held = (
        String,
        i64,
        String,
        String,
        i64,
        Option<String>,
        Option<String>,
    );
    let e = &r.event;
    let held: Option<Held> = sp
        .prepare_cached(
            "SELECT device, seq, step, code, captured_at, origin_site, origin_gateway
             FROM events WHERE event_id = ?1",
        )?
        .query_row([&e.event_id.0[..]], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    let Some((device, seq, step, code, captured_at, site, gateway)) = held else {
        return Ok(false);
    };
    let same = device == e.device
        && seq == e.seq as i64
        && step == e.step.as_str()
        && code == e.code
        && captured_at == e.captured_at_ms as i64;
    if !same {
        let held_from = match (site, gateway) {
            (Some(s), Some(g)) => format!("{s}/{g}"),
            _ => "captured here".into(),
        };
        tracing::error!(
            relay = port, event_id = %e.event_id, device = %e.device, seq = e.seq,
            held_code = %code, relayed_code = %e.code, held_from = %held_from,
            relayed_from = %format!("{}/{}", r.site, r.gateway),
            "relayed scan NOT stored: a different scan holds its event id (device id used by two scanners?) — give every scanner a device id unique across all sites"
        );
    }
    Ok(!same)
}

/// `origin`: (site, gateway, hops JSON) of a relayed scan; `None` for one captured here.
#[allow(clippy::too_many_arguments)]
fn insert_event(
    sp: &Connection,
    routes: &Routes<'_>,
    device: &str,
    seq: u64,
    step: Step,
    code: &str,
    symbology: Option<&str>,
    station: Option<&str>,
    operator: Option<&str>,
    captured_at_ms: u64,
    received_at_ms: u64,
    origin: Option<(&str, &str, &str)>,
) -> rusqlite::Result<bool> {
    let id = EventId::new(device, seq);
    let row = next_row(routes);
    let inserted = sp.prepare_cached("INSERT INTO events(row, event_id, device, seq, step, code, symbology, station, operator, captured_at, received_at, origin_site, origin_gateway, hops)
         VALUES (?11, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12, ?13, ?14) ON CONFLICT(event_id) DO NOTHING")?.execute(
        params![
            &id.0[..],
            device,
            seq as i64,
            step.as_str(),
            code,
            symbology,
            station,
            operator,
            captured_at_ms as i64,
            received_at_ms as i64,
            row,
            origin.map(|o| o.0),
            origin.map(|o| o.1),
            origin.map(|o| o.2),
        ],
    )? == 1;
    if inserted {
        let scan = ScanFacts {
            step,
            site: origin.map_or(routes.router.site.as_str(), |o| o.0),
            code,
            symbology,
        };
        let mut stmt = sp.prepare_cached("INSERT INTO outbox(upstream, row) VALUES (?1, ?2)")?;
        for u in routes.router.for_scan(&scan) {
            stmt.execute(params![u, row])?;
        }
    }
    Ok(inserted)
}

pub(super) fn delivered(
    sp: &Connection,
    upstream: &str,
    rows: &[i64],
    at_ms: u64,
) -> rusqlite::Result<()> {
    let mut del = sp.prepare_cached("DELETE FROM outbox WHERE upstream = ?1 AND row = ?2")?;
    let mut n = 0i64;
    for row in rows {
        n += del.execute(params![upstream, row])? as i64;
    }
    sp.prepare_cached(
        "INSERT INTO upstreams(name, delivered, last_sync_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET delivered = delivered + ?2, last_sync_at = ?3",
    )?
    .execute(params![upstream, n, at_ms as i64])?;
    Ok(())
}

pub(super) fn refused(
    sp: &Connection,
    upstream: &str,
    rows: usize,
    reason: &str,
    at_ms: u64,
) -> rusqlite::Result<()> {
    sp.prepare_cached(
        "INSERT INTO upstreams(name, refused, last_refusal, last_refusal_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET refused = refused + ?2, last_refusal = ?3, last_refusal_at = ?4",
    )?
    .execute(params![upstream, rows as i64, reason, at_ms as i64])?;
    Ok(())
}

pub(super) fn incident(
    sp: &Connection,
    at_ms: u64,
    kind: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    sp.prepare_cached("INSERT INTO incidents(at, kind, detail) VALUES (?1, ?2, ?3)")?
        .execute(params![at_ms as i64, kind, detail])?;
    Ok(())
}

pub(super) fn port_report(
    sp: &Connection,
    port: &str,
    protocol: &str,
    r: &PortReport,
) -> rusqlite::Result<()> {
    sp.prepare_cached(
        "INSERT INTO ports(port, protocol, connected, frames, rejected, last_reject, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(port) DO UPDATE SET protocol = ?2, connected = ?3,
             frames = frames + ?4, rejected = rejected + ?5,
             last_reject = IFNULL(?6, last_reject), last_seen = ?7",
    )?
    .execute(params![
        port,
        protocol,
        r.connected,
        r.frames as i64,
        r.rejected as i64,
        r.last_reject,
        crate::clock::now_ms() as i64
    ])?;
    Ok(())
}

pub(super) fn prune(sp: &mut rusqlite::Savepoint<'_>, before_ms: u64) -> rusqlite::Result<usize> {
    // Never an event some upstream still waits for; bounded so one prune stays one short commit.
    sp.prepare_cached(
        "DELETE FROM events WHERE row IN (
             SELECT row FROM events e WHERE received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.row = e.row)
             LIMIT 20000)",
    )?
    .execute([before_ms as i64])
    .and_then(|n| {
        // Derived messages every upstream has (and no webhook keeps as a dead letter).
        sp.prepare_cached(
            "DELETE FROM messages WHERE row IN (
                 SELECT row FROM messages m WHERE created_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.row = m.row)
                   AND NOT EXISTS (SELECT 1 FROM webhook_dead_letters d WHERE d.row = m.row)
                 LIMIT 20000)",
        )?
        .execute([before_ms as i64])?;
        Ok(n)
    })
}

/// Removes up to `limit` rows every upstream already has, oldest first — events and derived
/// messages alike — regardless of retention: what goes when the outbox is full. Never an
/// event the deriver has not read yet (above its watermark): its facts, milestones and
/// alerts would be lost with it.
pub(super) fn evict_delivered(
    sp: &mut rusqlite::Transaction<'_>,
    limit: usize,
) -> rusqlite::Result<usize> {
    let events = sp
        .prepare_cached(
            "DELETE FROM events WHERE row IN (
                 SELECT row FROM events e
                 WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.row = e.row)
                   AND e.row <= (SELECT last_row FROM derive_watermark WHERE id = 1)
                 ORDER BY row LIMIT (?1 + 0))",
        )?
        .execute([limit as i64])?;
    let messages = sp
        .prepare_cached(
            "DELETE FROM messages WHERE row IN (
                 SELECT row FROM messages m
                 WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.row = m.row)
                   AND NOT EXISTS (SELECT 1 FROM webhook_dead_letters d WHERE d.row = m.row)
                 ORDER BY row LIMIT (?1 + 0))",
        )?
        .execute([limit as i64])?;
    Ok(events + messages)
}
