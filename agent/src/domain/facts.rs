//! From scans to facts about parcels. A scan alone is often not enough: a picker scans the
//! order, then its items; a packer scans the order, then the parcel label; at the dock the
//! parcel, then the carrier's label. So each device keeps a small context (the order or parcel
//! it scanned last), and each scan yields at most one fact.
//!
//! Per device, scans arrive in sequence order (the gateway takes them only in order), which
//! is capture order — so this step is deterministic whatever the interleaving of devices.

use crate::config::ParcelRules;
use darkleg_protocol::barcode::{self, tracking, Carrier, Kind};
use darkleg_protocol::Step;

/// How long a scanned order or parcel stays the context for the next scans on a device.
pub const CONTEXT_TTL_MS: u64 = 30 * 60 * 1000;

/// What one code means to the dark leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// A parcel label: an SSCC, or a configured parcel id. A combined pack label may carry
    /// the order too (AI 400); a carrier's SSCC names its carrier.
    Parcel {
        id: String,
        order: Option<String>,
        carrier: Option<Carrier>,
    },
    Order(String),
    Item(String),
    /// A carrier label: a tracking number (with its verdict), or a code nobody recognised
    /// scanned where a carrier label belongs.
    Tracking {
        number: String,
        carrier: Option<Carrier>,
        valid: Option<bool>,
    },
    Other,
}

/// Reads a scanned code.
pub fn meaning(code: &str, symbology: Option<&str>, rules: &ParcelRules) -> Meaning {
    let raw = match symbology {
        Some(s) => format!("{s}{code}"),
        None => code.to_string(),
    };
    let i = barcode::inspect(&raw);
    if let Some(e) = &i.gs1 {
        if let Some(sscc) = e.get("00") {
            return Meaning::Parcel {
                id: sscc.to_string(),
                order: e.get("400").map(str::to_string),
                carrier: tracking::sscc_carrier(sscc),
            };
        }
        if let Some(order) = e.get("400") {
            return Meaning::Order(order.to_string());
        }
        if let Some(gtin) = e.get("01") {
            return Meaning::Item(gtin.to_string());
        }
    }
    if let Some(dl) = &i.link {
        if let Some(sscc) = dl.get("00") {
            return Meaning::Parcel {
                id: sscc.to_string(),
                order: None,
                carrier: tracking::sscc_carrier(sscc),
            };
        }
        if let Some(gtin) = dl.get("01") {
            return Meaning::Item(gtin.to_string());
        }
    }
    if rules.id_patterns.iter().any(|p| p.matches(code)) {
        return Meaning::Parcel {
            id: code.to_string(),
            order: None,
            carrier: None,
        };
    }
    if rules.order_patterns.iter().any(|p| p.matches(code)) {
        return Meaning::Order(code.to_string());
    }
    match i.kind {
        Kind::Gtin => Meaning::Item(code.to_string()),
        Kind::Tracking => Meaning::Tracking {
            number: i.data.to_string(),
            carrier: i.carrier,
            valid: i.valid,
        },
        _ => Meaning::Other,
    }
}

/// What a device scanned last that later scans refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub order: Option<String>,
    pub parcel: Option<String>,
    pub at_ms: u64,
}

/// One thing learnt about a parcel or order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactKind {
    /// An item of an order was picked.
    Picked { order: String, item: String },
    /// The parcel was closed (its label scanned at pack), for this order if known.
    Packed {
        parcel: String,
        order: Option<String>,
    },
    /// The parcel went to a carrier under this tracking number.
    HandedOver {
        parcel: String,
        carrier: Option<Carrier>,
        tracking: String,
        valid: Option<bool>,
    },
    /// A carrier label scanned at the dock with no parcel scanned before it.
    HandoverWithoutParcel { tracking: String },
    ReturnReceived {
        parcel: Option<String>,
        order: Option<String>,
    },
    /// The pack station is done with this order: it scanned another order, or the close code.
    OrderClosed { order: String },
}

/// A fact with when it happened (capture time) and the event it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub event_row: i64,
    pub at_ms: u64,
    /// The station label of the scan (for per-station reports).
    pub station: Option<String>,
    pub kind: FactKind,
}

/// The scan being read.
pub struct Scan<'a> {
    pub row: i64,
    pub step: Step,
    pub code: &'a str,
    pub symbology: Option<&'a str>,
    pub captured_at_ms: u64,
    pub station: Option<&'a str>,
}

/// Updates the device's context with one scan and returns the fact it establishes, if any.
pub fn read_scan(ctx: &mut Context, scan: &Scan<'_>, rules: &ParcelRules) -> Option<Fact> {
    let at = scan.captured_at_ms;
    // Taken before the context expires: a packer back from a long break who scans the next
    // order has still finished the last one.
    let packing = ctx.order.clone().filter(|_| scan.step == Step::Pack);
    if at.saturating_sub(ctx.at_ms) > CONTEXT_TTL_MS {
        *ctx = Context::default();
    }
    let fact = |kind| {
        Some(Fact {
            event_row: scan.row,
            at_ms: at,
            station: scan.station.map(str::to_string),
            kind,
        })
    };
    if scan.step == Step::Pack && rules.order_close_code.as_deref() == Some(scan.code) {
        ctx.order = None;
        ctx.parcel = None;
        ctx.at_ms = at;
        return packing.and_then(|order| fact(FactKind::OrderClosed { order }));
    }
    let m = meaning(scan.code, scan.symbology, rules);
    let out = match (scan.step, m) {
        (_, Meaning::Order(o)) => {
            let closed = packing.filter(|p| *p != o);
            ctx.order = Some(o);
            ctx.parcel = None;
            closed.and_then(|order| fact(FactKind::OrderClosed { order }))
        }
        (Step::Pick, Meaning::Item(item)) => match &ctx.order {
            Some(order) => fact(FactKind::Picked {
                order: order.clone(),
                item,
            }),
            None => None,
        },
        (Step::Pack, Meaning::Parcel { id, order, .. }) => {
            let order = order.or_else(|| ctx.order.clone());
            ctx.parcel = Some(id.clone());
            fact(FactKind::Packed { parcel: id, order })
        }
        (Step::Handover, Meaning::Parcel { id, carrier, .. }) => {
            ctx.parcel = Some(id.clone());
            // A carrier's own SSCC label is both the parcel and its tracking number.
            match carrier {
                Some(c) => fact(FactKind::HandedOver {
                    parcel: id.clone(),
                    carrier: Some(c),
                    tracking: id,
                    valid: Some(true),
                }),
                None => None,
            }
        }
        (
            Step::Handover,
            Meaning::Tracking {
                number,
                carrier,
                valid,
            },
        ) => match ctx.parcel.take() {
            Some(parcel) => fact(FactKind::HandedOver {
                parcel,
                carrier,
                tracking: number,
                valid,
            }),
            None => fact(FactKind::HandoverWithoutParcel { tracking: number }),
        },
        // A code nobody recognises where a carrier label belongs: a bad label.
        (Step::Handover, Meaning::Other | Meaning::Item(_)) => match ctx.parcel.take() {
            Some(parcel) => fact(FactKind::HandedOver {
                parcel,
                carrier: None,
                tracking: scan.code.to_string(),
                valid: None,
            }),
            None => None,
        },
        (Step::ReturnReceipt, Meaning::Parcel { id, .. }) => fact(FactKind::ReturnReceived {
            parcel: Some(id),
            order: None,
        }),
        _ => None,
    };
    ctx.at_ms = at;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    fn scan(row: i64, step: Step, code: &str) -> Scan<'_> {
        Scan {
            row,
            step,
            code,
            symbology: Some("]C1").filter(|_| {
                code.starts_with("00") || code.starts_with("01") || code.starts_with("400")
            }),
            captured_at_ms: 1_000 * row as u64,
            station: None,
        }
    }

    #[test]
    fn codes_mean_what_a_warehouse_means() {
        let rules = ParcelRules {
            id_patterns: vec![Pattern("PCL-#####".into())],
            order_patterns: vec![Pattern("ORD-####".into())],
            order_close_code: None,
        };
        assert_eq!(
            meaning("00340434161094042557", Some("]C1"), &rules),
            Meaning::Parcel {
                id: "340434161094042557".into(),
                order: None,
                carrier: Some(Carrier::Dhl)
            }
        );
        assert_eq!(
            meaning("00106141411234567897\u{1d}400ORD-4711", Some("]C1"), &rules),
            Meaning::Parcel {
                id: "106141411234567897".into(),
                order: Some("ORD-4711".into()),
                carrier: None
            }
        );
        assert_eq!(
            meaning("PCL-00042", None, &rules),
            Meaning::Parcel {
                id: "PCL-00042".into(),
                order: None,
                carrier: None
            }
        );
        assert_eq!(
            meaning("ORD-4711", None, &rules),
            Meaning::Order("ORD-4711".into())
        );
        assert_eq!(
            meaning("4004711", Some("]C1"), &rules),
            Meaning::Order("4711".into())
        );
        assert_eq!(
            meaning("0109506000134352", Some("]C1"), &rules),
            Meaning::Item("09506000134352".into())
        );
        assert!(matches!(
            meaning("1Z879E930346834440", Some("]C0"), &rules),
            Meaning::Tracking {
                valid: Some(true),
                ..
            }
        ));
    }

    #[test]
    fn a_day_at_the_warehouse() {
        let rules = ParcelRules::default();
        let mut picker = Context::default();
        let mut packer = Context::default();
        let mut dock = Context::default();
        assert_eq!(
            read_scan(&mut picker, &scan(1, Step::Pick, "4004711"), &rules),
            None
        );
        let f = read_scan(
            &mut picker,
            &scan(2, Step::Pick, "0109506000134352"),
            &rules,
        )
        .unwrap();
        assert_eq!(
            f.kind,
            FactKind::Picked {
                order: "4711".into(),
                item: "09506000134352".into()
            }
        );
        read_scan(&mut packer, &scan(3, Step::Pack, "4004711"), &rules);
        let f = read_scan(
            &mut packer,
            &scan(4, Step::Pack, "00106141411234567897"),
            &rules,
        )
        .unwrap();
        assert_eq!(
            f.kind,
            FactKind::Packed {
                parcel: "106141411234567897".into(),
                order: Some("4711".into())
            }
        );
        read_scan(
            &mut dock,
            &scan(5, Step::Handover, "00106141411234567897"),
            &rules,
        );
        let f = read_scan(
            &mut dock,
            &scan(6, Step::Handover, "1Z879E930346834440"),
            &rules,
        )
        .unwrap();
        assert_eq!(
            f.kind,
            FactKind::HandedOver {
                parcel: "106141411234567897".into(),
                carrier: Some(Carrier::Ups),
                tracking: "1Z879E930346834440".into(),
                valid: Some(true)
            }
        );
        // The next carrier label without a parcel scan first is not silently attached.
        let f = read_scan(
            &mut dock,
            &scan(7, Step::Handover, "1Z5R89390357567127"),
            &rules,
        )
        .unwrap();
        assert!(matches!(f.kind, FactKind::HandoverWithoutParcel { .. }));
    }

    #[test]
    fn the_next_order_or_the_close_code_closes_the_one_being_packed() {
        let rules = ParcelRules {
            order_close_code: Some("CLOSE".into()),
            ..ParcelRules::default()
        };
        let mut packer = Context::default();
        let mut kinds = Vec::new();
        for (row, code) in [(1, "4004711"), (2, "4004711"), (3, "4004712"), (4, "CLOSE")] {
            kinds
                .push(read_scan(&mut packer, &scan(row, Step::Pack, code), &rules).map(|f| f.kind));
        }
        let closed = |o: &str| Some(FactKind::OrderClosed { order: o.into() });
        // Rescanning the same order closes nothing; the next one closes it; so does the code.
        assert_eq!(kinds, [None, None, closed("4711"), closed("4712")]);
        assert_eq!(packer.order, None);
        // At the pick station an order scan closes nothing, nor does the code with no order.
        let mut picker = Context::default();
        read_scan(&mut picker, &scan(5, Step::Pick, "4004711"), &rules);
        assert_eq!(
            read_scan(&mut picker, &scan(6, Step::Pick, "4004712"), &rules),
            None
        );
        assert_eq!(
            read_scan(&mut packer, &scan(7, Step::Pack, "CLOSE"), &rules),
            None
        );
    }
}
