//! `darkleg.order.v1`: one view of an order that leaves in several parcels, as a pure function
//! of its parcels' states and whether the pack station closed it. A shop maps it straight to
//! its fulfilments: every tracking number, how many parcels are packed and handed over, and
//! `complete` once no more parcels can come and every one of them went to a carrier.

use super::parcel::{topic_safe, ParcelState};
use darkleg_protocol::barcode::Carrier;
use serde_json::{json, Value};

/// An order's parcels and its close, as the deriver gathered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order: String,
    pub merchant: Option<String>,
    /// Parcels packed for the order, in packing order.
    pub parcels: Vec<ParcelState>,
    /// When the pack station last closed the order, if it did.
    pub closed_at: Option<u64>,
}

impl OrderView {
    /// Builds the view from candidate parcels: only those packed for `order` and, where the
    /// merchant is known both ways, the order's merchant's — a label under another merchant's
    /// prefix means the pack station's order was stale, not that the parcel is this order's.
    pub fn new(
        order: &str,
        merchant: Option<String>,
        candidates: Vec<ParcelState>,
        closed_at: Option<u64>,
    ) -> OrderView {
        let merchant = merchant.or_else(|| candidates.iter().find_map(|p| p.merchant.clone()));
        let mut parcels: Vec<ParcelState> = candidates
            .into_iter()
            .filter(|p| p.parcel_id().is_some() && p.packed_at.is_some())
            .filter(|p| p.order.as_deref() == Some(order))
            .filter(|p| merchant.is_none() || p.merchant.is_none() || p.merchant == merchant)
            .collect();
        parcels.sort_by(|a, b| (a.packed_at, &a.parcel).cmp(&(b.packed_at, &b.parcel)));
        parcels.dedup_by(|a, b| a.parcel == b.parcel);
        OrderView {
            order: order.to_string(),
            merchant,
            parcels,
            closed_at,
        }
    }

    pub fn handed_over(&self) -> usize {
        self.parcels.iter().filter(|p| p.handover.is_some()).count()
    }

    /// Closed after its last pack: a close before a later pack (the packer went back to the
    /// order, a second station packed for it) is not the end of it, so `complete` never says
    /// true to a shop that may fulfil on it while parcels are still coming.
    pub fn closed(&self) -> bool {
        let last_pack = self.parcels.iter().filter_map(|p| p.packed_at).max();
        matches!((self.closed_at, last_pack), (Some(c), Some(p)) if c >= p)
    }

    /// Every packed parcel went to a carrier and the pack station closed the order after its
    /// last pack.
    pub fn complete(&self) -> bool {
        self.closed() && !self.parcels.is_empty() && self.handed_over() == self.parcels.len()
    }

    /// Under the upstream prefix: `merchants/{merchant}/orders/{order}`.
    pub fn topic(&self) -> String {
        format!(
            "merchants/{}/orders/{}",
            topic_safe(self.merchant.as_deref().unwrap_or("_unassigned")),
            topic_safe(&self.order)
        )
    }
}

/// A parcel's latest milestone (a parcel in an order is always packed).
fn latest(p: &ParcelState) -> (&'static str, Option<u64>) {
    ["return_received", "handed_over", "packed"]
        .into_iter()
        .map(|m| (m, p.milestone_at(m)))
        .find(|(_, at)| at.is_some())
        .unwrap_or(("packed", p.packed_at))
}

/// `darkleg.order.v1`, or `None` for an order with no parcel packed yet (its `picked`
/// milestone covers it until then).
pub fn order_json(v: &OrderView) -> Option<Value> {
    if v.parcels.is_empty() {
        return None;
    }
    let parcels: Vec<Value> = v
        .parcels
        .iter()
        .map(|p| {
            let (milestone, at) = latest(p);
            let h = p.handover.as_ref();
            json!({
                "parcel": p.parcel,
                "milestone": milestone,
                "at": at.map(|t| darkleg_protocol::time::Rfc3339(t).to_string()),
                "carrier": h.and_then(|h| h.carrier.map(Carrier::as_str)),
                "tracking_number": h.map(|h| h.tracking.as_str()),
                "tracking_valid": h.map(|h| h.valid),
                "fulfillment_status": if h.is_some() { "carrier_picked_up" } else { "label_printed" },
            })
        })
        .collect();
    let body = json!({
        "order": v.order,
        "merchant": v.merchant,
        "parcels": parcels,
        "counts": {"packed": v.parcels.len(), "handed_over": v.handed_over()},
        "complete": v.complete(),
    });
    // Stable: the same view, derived again after a crash or from late events in another
    // order, gets the same id; a view that says something new gets a new one.
    let digest = ring::digest::digest(&ring::digest::SHA256, body.to_string().as_bytes());
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&digest.as_ref()[..8]);
    let id = darkleg_protocol::EventId::new(&format!("order:{}", v.order), u64::from_be_bytes(seq));
    let mut out = body;
    out["schema"] = "darkleg.order.v1".into();
    out["message_id"] = id.to_string().into();
    Some(out)
}
