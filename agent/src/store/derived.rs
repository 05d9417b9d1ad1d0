//! The store side of derivation: what the derive task reads (new events, facts, parcel
//! states, open alerts) and the one write that records a batch of its results — facts,
//! device contexts, states, alerts, outbox messages and the watermark — atomically, so a
//! crash never leaves a milestone published without the state that produced it.

use super::{Reader, StoreError};
use crate::domain::alerts::Rule;
use crate::domain::facts::{Context, Fact, FactKind};
use crate::domain::parcel::{Handover, ParcelState};
use darkleg_protocol::barcode::Carrier;
use darkleg_protocol::Step;
use rusqlite::{params, Connection, OptionalExtension};

/// A message for the outbox; `merchant` decides which merchant upstreams get it.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: &'static str,
    pub merchant: Option<String>,
    pub topic: String,
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertChange {
    pub parcel: String,
    pub rule: Rule,
    pub opened_at: u64,
    /// `None`: opened; `Some(t)`: resolved at `t`.
    pub resolved_at: Option<u64>,
    pub detail: String,
}

/// One batch of derivation results.
#[derive(Debug, Default)]
pub struct Derived {
    /// Events up to this row are done (`None`: a timer sweep, no new events).
    pub last_row: Option<i64>,
    pub contexts: Vec<(String, Context)>,
    pub facts: Vec<Fact>,
    pub parcels: Vec<ParcelState>,
    pub alerts: Vec<AlertChange>,
    pub messages: Vec<Message>,
}

/// What the writer needs to put a new row in the outbox: who gets it, and its number.
pub struct Routes<'a> {
    pub router: &'a crate::routing::Router,
    /// The writer's outbox row counter (persisted in `row_seq` at each commit).
    pub last_row: &'a std::cell::Cell<i64>,
}

pub(super) fn apply(sp: &Connection, routes: &Routes<'_>, d: &Derived) -> rusqlite::Result<()> {
    if let Some(row) = d.last_row {
        sp.prepare_cached("UPDATE derive_watermark SET last_row = ?1 WHERE id = 1")?
            .execute([row])?;
    }
    let mut ctx = sp.prepare_cached(
        "INSERT OR REPLACE INTO derive_context(device, order_no, parcel, at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (device, c) in &d.contexts {
        ctx.execute(params![device, c.order, c.parcel, c.at_ms as i64])?;
    }
    let mut fact = sp.prepare_cached(
        "INSERT INTO facts(event_row, kind, parcel, order_no, item, carrier, tracking, tracking_valid, at, station)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for f in &d.facts {
        let (kind, parcel, order, item, carrier, tracking, valid) = fact_columns(&f.kind);
        fact.execute(params![
            f.event_row,
            kind,
            parcel,
            order,
            item,
            carrier.map(Carrier::as_str),
            tracking,
            valid,
            f.at_ms as i64,
            f.station
        ])?;
    }
    let mut parcel = sp.prepare_cached(
        "INSERT OR REPLACE INTO parcels(parcel, order_no, merchant, picked_at, packed_at, pack_station,
             handed_over_at, carrier, tracking, tracking_valid, handover_station, carriers, returned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for p in &d.parcels {
        let h = p.handover.as_ref();
        let carriers: Vec<&str> = p.carriers.iter().copied().collect();
        parcel.execute(params![
            p.parcel,
            p.order,
            p.merchant,
            p.picked_at.map(|t| t as i64),
            p.packed_at.map(|t| t as i64),
            p.pack_station,
            h.map(|h| h.at_ms as i64),
            h.and_then(|h| h.carrier.map(Carrier::as_str)),
            h.map(|h| h.tracking.as_str()),
            h.and_then(|h| h.valid),
            h.and_then(|h| h.station.as_deref()),
            carriers.join(","),
            p.returned_at.map(|t| t as i64),
        ])?;
    }
    for a in &d.alerts {
        match a.resolved_at {
            None => sp
                .prepare_cached(
                    "INSERT OR IGNORE INTO alerts(parcel, rule, opened_at, detail) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![a.parcel, a.rule.as_str(), a.opened_at as i64, a.detail])?,
            Some(t) => sp
                .prepare_cached(
                    "UPDATE alerts SET resolved_at = ?4 WHERE parcel = ?1 AND rule = ?2 AND opened_at = ?3",
                )?
                .execute(params![a.parcel, a.rule.as_str(), a.opened_at as i64, t as i64])?,
        };
    }
    let now = crate::clock::now_ms() as i64;
    for m in &d.messages {
        let row = super::ops::next_row(routes);
        sp.prepare_cached(
            "INSERT INTO messages(row, kind, merchant, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![row, m.kind, m.merchant, m.topic, m.payload, now])?;
        let mut outbox = sp.prepare_cached("INSERT INTO outbox(upstream, row) VALUES (?1, ?2)")?;
        for u in routes.router.for_message(m.kind, m.merchant.as_deref()) {
            outbox.execute(params![u, row])?;
        }
    }
    Ok(())
}

type FactColumns<'a> = (
    &'static str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<Carrier>,
    Option<&'a str>,
    Option<bool>,
);

fn fact_columns(k: &FactKind) -> FactColumns<'_> {
    match k {
        FactKind::Picked { order, item } => {
            ("picked", None, Some(order), Some(item), None, None, None)
        }
        FactKind::Packed { parcel, order } => (
            "packed",
            Some(parcel),
            order.as_deref(),
            None,
            None,
            None,
            None,
        ),
        FactKind::HandedOver {
            parcel,
            carrier,
            tracking,
            valid,
        } => (
            "handed_over",
            Some(parcel),
            None,
            None,
            *carrier,
            Some(tracking),
            *valid,
        ),
        FactKind::HandoverWithoutParcel { tracking } => (
            "handover_no_parcel",
            None,
            None,
            None,
            None,
            Some(tracking),
            None,
        ),
        FactKind::ReturnReceived { parcel, order } => (
            "return_received",
            parcel.as_deref(),
            order.as_deref(),
            None,
            None,
            None,
            None,
        ),
        FactKind::OrderClosed { order } => {
            ("order_closed", None, Some(order), None, None, None, None)
        }
    }
}

fn fact_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Fact>> {
    let kind: String = r.get(1)?;
    let s = |i| r.get::<_, Option<String>>(i);
    let k = match kind.as_str() {
        "picked" => FactKind::Picked {
            order: s(3)?.unwrap_or_default(),
            item: s(4)?.unwrap_or_default(),
        },
        "packed" => FactKind::Packed {
            parcel: s(2)?.unwrap_or_default(),
            order: s(3)?,
        },
        "handed_over" => FactKind::HandedOver {
            parcel: s(2)?.unwrap_or_default(),
            carrier: s(5)?.and_then(|c| Carrier::parse(&c)),
            tracking: s(6)?.unwrap_or_default(),
            valid: r.get(7)?,
        },
        "return_received" => FactKind::ReturnReceived {
            parcel: s(2)?,
            order: s(3)?,
        },
        "order_closed" => FactKind::OrderClosed {
            order: s(3)?.unwrap_or_default(),
        },
        _ => return Ok(None),
    };
    Ok(Some(Fact {
        event_row: r.get(0)?,
        at_ms: r.get::<_, i64>(8)? as u64,
        station: s(9)?,
        kind: k,
    }))
}

const FACT_COLS: &str =
    "event_row, kind, parcel, order_no, item, carrier, tracking, tracking_valid, at, station";

/// A stored event as derivation reads it.
pub struct EventRow {
    pub row: i64,
    pub device: String,
    pub step: Step,
    pub code: String,
    pub symbology: Option<String>,
    pub captured_at_ms: u64,
    pub station: Option<String>,
}

impl Reader {
    pub fn derive_watermark(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT last_row FROM derive_watermark WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::new("reading the derivation watermark", e))
    }

    /// Events after `after_row`, in row order (per device, sequence order).
    /// (`LIMIT (?2 + 0)`: a bare parameter there re-prepares the statement at every call.)
    pub fn events_after(&self, after_row: i64, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let run = || -> rusqlite::Result<Vec<EventRow>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT row, device, step, code, symbology, captured_at, station FROM events
                 WHERE row > ?1 ORDER BY row LIMIT (?2 + 0)",
            )?;
            let rows = stmt.query_map(params![after_row, limit as i64], |r| {
                let step: String = r.get(2)?;
                Ok(EventRow {
                    row: r.get(0)?,
                    device: r.get(1)?,
                    step: step.parse().unwrap_or(Step::Exception),
                    code: r.get(3)?,
                    symbology: r.get(4)?,
                    captured_at_ms: r.get::<_, i64>(5)? as u64,
                    station: r.get(6)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| StoreError::new("reading events to derive", e))
    }

    pub fn derive_context(&self, device: &str) -> Result<Context, StoreError> {
        self.conn
            .query_row(
                "SELECT order_no, parcel, at FROM derive_context WHERE device = ?1",
                [device],
                |r| {
                    Ok(Context {
                        order: r.get(0)?,
                        parcel: r.get(1)?,
                        at_ms: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| StoreError::new("reading a device's context", e))
    }

    fn facts_where(&self, clause: &str, key: &str) -> Result<Vec<Fact>, StoreError> {
        let run = || -> rusqlite::Result<Vec<Fact>> {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("SELECT {FACT_COLS} FROM facts WHERE {clause}"))?;
            let rows = stmt.query_map([key], fact_from_row)?;
            rows.filter_map(|r| r.transpose()).collect()
        };
        run().map_err(|e| StoreError::new("reading facts", e))
    }

    pub fn facts_of_parcel(&self, parcel: &str) -> Result<Vec<Fact>, StoreError> {
        self.facts_where("parcel = ?1", parcel)
    }

    pub fn picks_of_order(&self, order: &str) -> Result<Vec<Fact>, StoreError> {
        self.facts_where("order_no = ?1 AND kind = 'picked'", order)
    }

    pub fn packs_of_order(&self, order: &str) -> Result<Vec<Fact>, StoreError> {
        self.facts_where("order_no = ?1 AND kind = 'packed'", order)
    }

    /// When the pack station last closed the order (scanned another, or the close code).
    pub fn order_closed(&self, order: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .facts_where("order_no = ?1 AND kind = 'order_closed'", order)?
            .iter()
            .map(|f| f.at_ms)
            .max())
    }

    pub fn parcels_of_order(&self, order: &str) -> Result<Vec<String>, StoreError> {
        let run = || -> rusqlite::Result<Vec<String>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT parcel FROM facts WHERE order_no = ?1 AND parcel IS NOT NULL",
            )?;
            let rows = stmt.query_map([order], |r| r.get(0))?;
            rows.collect()
        };
        run().map_err(|e| StoreError::new("reading parcels of an order", e))
    }

    pub fn parcel(&self, parcel: &str) -> Result<Option<ParcelState>, StoreError> {
        self.parcels_where("parcel = ?1", Some(parcel))
            .map(|mut v| v.pop())
    }

    /// Parcels an alert timer can still fire for (picked not packed, packed not handed over).
    pub fn parcels_on_a_timer(&self) -> Result<Vec<ParcelState>, StoreError> {
        self.parcels_where(
            "(picked_at IS NOT NULL AND packed_at IS NULL) OR (packed_at IS NOT NULL AND handed_over_at IS NULL)",
            None,
        )
    }

    pub fn all_parcels(&self) -> Result<Vec<ParcelState>, StoreError> {
        self.parcels_where("1", None)
    }

    fn parcels_where(
        &self,
        clause: &str,
        key: Option<&str>,
    ) -> Result<Vec<ParcelState>, StoreError> {
        let run = || -> rusqlite::Result<Vec<ParcelState>> {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT parcel, order_no, merchant, picked_at, packed_at, pack_station, handed_over_at,
                        carrier, tracking, tracking_valid, handover_station, carriers, returned_at
                 FROM parcels WHERE {clause}"
            ))?;
            let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<ParcelState> {
                let t = |i| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v as u64));
                let carriers: String = r.get(11)?;
                Ok(ParcelState {
                    parcel: r.get(0)?,
                    order: r.get(1)?,
                    merchant: r.get(2)?,
                    picked_at: t(3)?,
                    packed_at: t(4)?,
                    pack_station: r.get(5)?,
                    handover: match t(6)? {
                        Some(at_ms) => Some(Handover {
                            at_ms,
                            carrier: r
                                .get::<_, Option<String>>(7)?
                                .and_then(|c| Carrier::parse(&c)),
                            tracking: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                            valid: r.get(9)?,
                            station: r.get(10)?,
                        }),
                        None => None,
                    },
                    carriers: carriers
                        .split(',')
                        .filter_map(Carrier::parse)
                        .map(Carrier::as_str)
                        .collect(),
                    returned_at: t(12)?,
                })
            };
            match key {
                Some(k) => stmt.query_map([k], map)?.collect(),
                None => stmt.query_map([], map)?.collect(),
            }
        };
        run().map_err(|e| StoreError::new("reading parcels", e))
    }

    /// Open alerts of a parcel: (rule, opened_at).
    pub fn open_alerts(&self, parcel: &str) -> Result<Vec<(Rule, u64, String)>, StoreError> {
        let run = || -> rusqlite::Result<Vec<(Rule, u64, String)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT rule, opened_at, detail FROM alerts WHERE parcel = ?1 AND resolved_at IS NULL",
            )?;
            let rows = stmt.query_map([parcel], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                ))
            })?;
            Ok(rows
                .filter_map(|r| r.ok())
                .filter_map(|(rule, at, d)| Rule::parse(&rule).map(|r| (r, at, d)))
                .collect())
        };
        run().map_err(|e| StoreError::new("reading open alerts", e))
    }

    /// Every open alert: (parcel, rule, opened_at, detail).
    pub fn all_open_alerts(&self) -> Result<Vec<(String, String, u64, String)>, StoreError> {
        let run = || -> rusqlite::Result<Vec<(String, String, u64, String)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT parcel, rule, opened_at, detail FROM alerts WHERE resolved_at IS NULL ORDER BY opened_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
            })?;
            rows.collect()
        };
        run().map_err(|e| StoreError::new("reading open alerts", e))
    }
}

/// A stored event with what derivation learnt of it, for the EPCIS export.
pub struct ExportRow {
    pub row: i64,
    pub device: String,
    pub step: Step,
    pub code: String,
    pub symbology: Option<String>,
    pub station: Option<String>,
    pub captured_at_ms: u64,
    pub fact_kind: Option<String>,
    pub parcel: Option<String>,
    pub order: Option<String>,
    pub carrier: Option<String>,
    pub tracking: Option<String>,
}

impl Reader {
    /// Events captured in `[since, until)`.
    pub fn export_count(&self, since_ms: u64, until_ms: u64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE captured_at >= ?1 AND captured_at < ?2",
                params![since_ms as i64, until_ms as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| StoreError::new("counting events to export", e))
    }

    /// A page of events captured in `[since, until)` after `after_row`, with their facts.
    pub fn export_rows(
        &self,
        after_row: i64,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<ExportRow>, StoreError> {
        let run = || -> rusqlite::Result<Vec<ExportRow>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT e.row, e.device, e.step, e.code, e.symbology, e.station, e.captured_at,
                        f.kind, f.parcel, COALESCE(f.order_no, p.order_no), f.carrier, f.tracking
                 FROM events e
                 LEFT JOIN facts f ON f.event_row = e.row AND f.kind != 'order_closed'
                 LEFT JOIN parcels p ON p.parcel = f.parcel
                 WHERE e.row > ?1 AND e.captured_at >= ?2 AND e.captured_at < ?3
                 ORDER BY e.row LIMIT (?4 + 0)",
            )?;
            let rows = stmt.query_map(
                params![after_row, since_ms as i64, until_ms as i64, limit as i64],
                |r| {
                    let step: String = r.get(2)?;
                    Ok(ExportRow {
                        row: r.get(0)?,
                        device: r.get(1)?,
                        step: step.parse().unwrap_or(Step::Exception),
                        code: r.get(3)?,
                        symbology: r.get(4)?,
                        station: r.get(5)?,
                        captured_at_ms: r.get::<_, i64>(6)? as u64,
                        fact_kind: r.get(7)?,
                        parcel: r.get(8)?,
                        order: r.get(9)?,
                        carrier: r.get(10)?,
                        tracking: r.get(11)?,
                    })
                },
            )?;
            rows.collect()
        };
        run().map_err(|e| StoreError::new("reading events to export", e))
    }
}

#[cfg(test)]
mod tests;
