//! The derivation loop: read events past the watermark, turn them into facts, recompute the
//! parcels they touch, diff milestones and alerts against what is stored, and hand the lot
//! to the store writer as one batch. A timer sweep re-checks parcels whose alerts depend on
//! the clock. Runs on its own thread; a crash resumes from the stored watermark.

use crate::config::Config;
use crate::domain::alerts::{self, Rule};
use crate::domain::facts::{read_scan, Context, Fact, FactKind, Scan};
use crate::domain::order::{order_json, OrderView};
use crate::domain::parcel::{self, ParcelState, MILESTONES, ORDER_KEY};
use crate::store::derived::{AlertChange, Derived, Message};
use crate::store::{Reader, StoreError, StoreHandle, WriteOp};
use crate::supervise::Beat;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 1000;
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often clock-driven alerts (pick→pack window, cut-offs) are re-checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);

pub struct Deriver {
    config: Arc<Config>,
    store: StoreHandle,
    reader: Reader,
    contexts: HashMap<String, Context>,
}

/// Runs until `stop`; logs and retries on store errors. Beats `beat` every round, so a
/// deriver stuck (on a store that never answers, say) shows on `/healthz`.
pub fn run(config: Arc<Config>, store: StoreHandle, stop: Arc<AtomicBool>, beat: Beat) {
    let mut d = match Deriver::new(config, store) {
        Ok(d) => d,
        Err(e) => {
            // Returning early is a death the supervisor reports (and restarts the agent for).
            tracing::error!("derivation cannot start, no milestones or alerts: {e}");
            return;
        }
    };
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        let started = Instant::now();
        let did = match d.step(crate::clock::now_ms()) {
            Ok(n) => {
                if n > 0 {
                    // Test-only (DARKLEG_TEST_PANIC=deriver): dies once it derived something.
                    crate::supervise::fault_point("deriver");
                }
                n
            }
            Err(e) => {
                tracing::error!("derivation: {e}");
                std::thread::sleep(Duration::from_secs(1));
                0
            }
        };
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            if let Err(e) = d.sweep(crate::clock::now_ms()) {
                tracing::error!("alert sweep: {e}");
            }
        }
        if did == 0 {
            std::thread::sleep(IDLE_POLL);
        } else {
            // Acks to scanners come first: during a burst derivation takes at most about half
            // of the store writer and a core, and catches up when the burst is over.
            std::thread::sleep(started.elapsed());
        }
    }
}

impl Deriver {
    pub fn new(config: Arc<Config>, store: StoreHandle) -> Result<Deriver, StoreError> {
        Ok(Deriver {
            reader: Reader::open(&store.path)?,
            config,
            store,
            contexts: HashMap::new(),
        })
    }

    /// The store's read side, for inspection.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Derives from the next batch of events; returns how many it read.
    pub fn step(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        let after = self.reader.derive_watermark()?;
        let events = self.reader.events_after(after, BATCH)?;
        let Some(last) = events.last().map(|e| e.row) else {
            return Ok(0);
        };
        let mut batch = Derived {
            last_row: Some(last),
            ..Derived::default()
        };
        // The batch reads and moves copies of its devices' contexts: they replace the ones in
        // memory only once the store committed the batch. A failed commit (full disk, busy)
        // leaves memory where the store is, so the retry reads the same scans the same way.
        let mut staged: HashMap<String, Context> = HashMap::new();
        let mut touched = BTreeSet::new();
        for e in &events {
            if !staged.contains_key(&e.device) {
                let c = match self.contexts.get(&e.device) {
                    Some(c) => c.clone(),
                    None => self.reader.derive_context(&e.device)?,
                };
                staged.insert(e.device.clone(), c);
            }
            let ctx = staged.get_mut(&e.device).expect("inserted above");
            let before = ctx.clone();
            let scan = Scan {
                row: e.row,
                step: e.step,
                code: &e.code,
                symbology: e.symbology.as_deref(),
                captured_at_ms: e.captured_at_ms,
                station: e.station.as_deref(),
            };
            if let Some(f) = read_scan(ctx, &scan, &self.config.parcels) {
                batch.facts.push(f);
            }
            if *ctx != before {
                touched.insert(e.device.clone());
            }
        }
        batch.contexts = touched
            .into_iter()
            .map(|d| {
                let c = staged[&d].clone();
                (d, c)
            })
            .collect();
        let parcels = self.affected_parcels(&batch.facts)?;
        let facts = std::mem::take(&mut batch.facts);
        for p in parcels {
            self.reconcile(&p, &facts, now_ms, &mut batch)?;
        }
        self.publish_orders(&facts, &mut batch)?;
        batch.facts = facts;
        let n = events.len();
        self.commit(batch)?;
        self.contexts.extend(staged);
        Ok(n)
    }

    /// Re-checks clock-driven alerts of parcels still waiting for a scan.
    pub fn sweep(&mut self, now_ms: u64) -> Result<(), StoreError> {
        let mut batch = Derived::default();
        for state in self.reader.parcels_on_a_timer()? {
            self.diff_alerts(&state, now_ms, &mut batch)?;
        }
        if !batch.alerts.is_empty() {
            self.commit(batch)?;
        }
        Ok(())
    }

    fn commit(&self, batch: Derived) -> Result<(), StoreError> {
        let rx = self.store.request_blocking(|reply| WriteOp::Derived {
            batch: Box::new(batch),
            reply,
        });
        match rx.blocking_recv() {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(StoreError::new("derivation", "store writer stopped")),
        }
    }

    /// Parcels whose state the new facts may change: named ones, and those of picked orders.
    fn affected_parcels(&self, facts: &[Fact]) -> Result<BTreeSet<String>, StoreError> {
        let mut out = BTreeSet::new();
        let mut picked_orders = BTreeSet::new();
        for f in facts {
            match &f.kind {
                FactKind::Packed { parcel, order } => {
                    out.insert(parcel.clone());
                    if let Some(o) = order {
                        out.insert(format!("{ORDER_KEY}{o}"));
                    }
                }
                FactKind::HandedOver { parcel, .. } => {
                    out.insert(parcel.clone());
                }
                FactKind::ReturnReceived {
                    parcel: Some(p), ..
                } => {
                    out.insert(p.clone());
                }
                FactKind::Picked { order, .. } => {
                    picked_orders.insert(order.as_str());
                }
                _ => {}
            }
        }
        // A pick changes the order and every parcel packed for it — stored ones, and those
        // packed in this same batch (already in `out` above). One query per order, not per item.
        for order in picked_orders {
            out.insert(format!("{ORDER_KEY}{order}"));
            out.extend(self.reader.parcels_of_order(order)?);
        }
        Ok(out)
    }

    fn reconcile(
        &self,
        parcel: &str,
        new: &[Fact],
        now_ms: u64,
        batch: &mut Derived,
    ) -> Result<(), StoreError> {
        if let Some(order) = parcel.strip_prefix(ORDER_KEY) {
            return self.reconcile_order(order, new, now_ms, batch);
        }
        let mut facts = self.reader.facts_of_parcel(parcel)?;
        facts.extend(new.iter().filter(|f| names(f, parcel)).cloned());
        let order = facts.iter().find_map(|f| match &f.kind {
            FactKind::Packed { order: Some(o), .. } => Some(o.clone()),
            _ => None,
        });
        let mut picks = match &order {
            Some(o) => self.reader.picks_of_order(o)?,
            None => Vec::new(),
        };
        picks.extend(new.iter().filter(|f| matches!(&f.kind, FactKind::Picked { order: o, .. } if Some(o) == order.as_ref())).cloned());
        let state = parcel::derive(parcel, &facts, &picks, &self.config.merchants);
        self.publish(state, &MILESTONES, now_ms, batch)
    }

    /// An order not packed yet: only its `picked` milestone, and the pick→pack alert.
    fn reconcile_order(
        &self,
        order: &str,
        new: &[Fact],
        now_ms: u64,
        batch: &mut Derived,
    ) -> Result<(), StoreError> {
        let mut picks = self.reader.picks_of_order(order)?;
        picks.extend(
            new.iter()
                .filter(|f| matches!(&f.kind, FactKind::Picked { order: o, .. } if o == order))
                .cloned(),
        );
        let mut packs = self.reader.packs_of_order(order)?;
        packs.extend(
            new.iter()
                .filter(
                    |f| matches!(&f.kind, FactKind::Packed { order: Some(o), .. } if o == order),
                )
                .cloned(),
        );
        let state = parcel::derive_order(order, &picks, &packs, &self.config.merchants);
        self.publish(state, &["picked"], now_ms, batch)
    }

    /// Stores `state` if it changed, with a message per changed milestone and any alert change.
    fn publish(
        &self,
        state: ParcelState,
        milestones: &[&str],
        now_ms: u64,
        batch: &mut Derived,
    ) -> Result<(), StoreError> {
        let old = self.reader.parcel(&state.parcel)?.unwrap_or_default();
        if state == old {
            return Ok(());
        }
        let gw = &self.config.gateway;
        for &m in milestones {
            // Republish whenever what the message says changed — its time, or what became
            // known since (the order and so the merchant, the carrier): a subscriber's last
            // message per milestone is then the converged answer, whatever the arrival order.
            let now = parcel::milestone_json(&state, m, &gw.site, &gw.id);
            if now.is_none() || now == parcel::milestone_json(&old, m, &gw.site, &gw.id) {
                continue;
            }
            if let Some(json) = now {
                batch.messages.push(Message {
                    kind: "milestone",
                    merchant: state.merchant.clone(),
                    topic: state.topic(),
                    payload: json.to_string(),
                });
            }
        }
        self.diff_alerts(&state, now_ms, batch)?;
        batch.parcels.push(state);
        Ok(())
    }

    /// Republishes `darkleg.order.v1` for each order a changed parcel state belongs to, or the
    /// pack station closed — into this same batch, so it is durable exactly when they are.
    fn publish_orders(&self, new: &[Fact], batch: &mut Derived) -> Result<(), StoreError> {
        let mut orders = BTreeSet::new();
        for p in &batch.parcels {
            if let (Some(_), Some(o)) = (p.parcel_id(), &p.order) {
                orders.insert(o.clone());
            }
        }
        // The latest close of `order` in this batch.
        let closes = |order: &str| {
            new.iter()
                .filter(|f| matches!(&f.kind, FactKind::OrderClosed { order: o } if o == order))
                .map(|f| f.at_ms)
                .max()
        };
        for f in new {
            if let FactKind::OrderClosed { order } = &f.kind {
                orders.insert(order.clone());
            }
        }
        for order in orders {
            let mut ids: BTreeSet<String> =
                self.reader.parcels_of_order(&order)?.into_iter().collect();
            ids.extend(
                (batch.parcels.iter())
                    .filter(|p| p.parcel_id().is_some() && p.order.as_deref() == Some(&order))
                    .map(|p| p.parcel.clone()),
            );
            let (mut old, mut now) = (Vec::new(), Vec::new());
            for id in &ids {
                let stored = self.reader.parcel(id)?;
                let fresh = batch.parcels.iter().find(|p| &p.parcel == id).cloned();
                now.extend(fresh.or_else(|| stored.clone()));
                old.extend(stored);
            }
            let was_closed = self.reader.order_closed(&order)?;
            let merchant = parcel::merchant_of("", Some(&order), &self.config.merchants);
            let merchant = merchant.map(str::to_string);
            let before = order_json(&OrderView::new(&order, merchant.clone(), old, was_closed));
            let view = OrderView::new(&order, merchant, now, was_closed.max(closes(&order)));
            let after = order_json(&view);
            if let Some(json) = after.filter(|a| Some(a) != before.as_ref()) {
                batch.messages.push(Message {
                    kind: "order",
                    merchant: view.merchant.clone(),
                    topic: view.topic(),
                    payload: json.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Opens alerts whose rule now holds and resolves open ones that no longer do.
    fn diff_alerts(
        &self,
        state: &ParcelState,
        now_ms: u64,
        batch: &mut Derived,
    ) -> Result<(), StoreError> {
        let c = &self.config;
        let active = alerts::active(state, now_ms, &c.alerts, &c.merchants, &c.gateway.timezone);
        let open = self.reader.open_alerts(&state.parcel)?;
        let mut changes: Vec<(Rule, u64, Option<u64>, String)> = Vec::new();
        for (rule, detail) in &active {
            if !open.iter().any(|(r, _, _)| r == rule) {
                changes.push((*rule, now_ms, None, detail.clone()));
            }
        }
        for (rule, opened_at, detail) in open {
            if !active.iter().any(|(r, _)| *r == rule) {
                changes.push((rule, opened_at, Some(now_ms), detail));
            }
        }
        for (rule, opened_at, resolved_at, detail) in changes {
            let json = alerts::alert_json(
                state,
                rule,
                resolved_at.is_none(),
                opened_at,
                resolved_at,
                &detail,
                &c.gateway.site,
                &c.gateway.id,
            );
            batch.messages.push(Message {
                kind: "alert",
                merchant: state.merchant.clone(),
                topic: format!("merchants/{}/alerts", parcel::merchant_segment(state)),
                payload: json.to_string(),
            });
            batch.alerts.push(AlertChange {
                parcel: state.parcel.clone(),
                rule,
                opened_at,
                resolved_at,
                detail,
            });
        }
        Ok(())
    }
}

fn names(f: &Fact, parcel: &str) -> bool {
    match &f.kind {
        FactKind::Packed { parcel: p, .. } | FactKind::HandedOver { parcel: p, .. } => p == parcel,
        FactKind::ReturnReceived {
            parcel: Some(p), ..
        } => p == parcel,
        _ => false,
    }
}
