//! What the demo prints for what arrives upstream: each scan event as it comes, and each
//! parcel's day in its own order — picked, packed, handed over — whatever order the
//! messages took on the wire. QoS 1 is at-least-once and a reconnect resends what was not
//! acked, so a message may come twice, and after an outage a later milestone may overtake
//! an earlier one; a milestone is held until the ones before it have been told.

use crate::sim::collector::Arrival;
use darkleg_protocol::time::parse_rfc3339_ms;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// The order of a parcel's day.
const RANKS: [&str; 3] = ["picked", "packed", "handed_over"];

#[derive(Default)]
pub struct Story {
    /// `event_id`s of the scan events that arrived.
    events: HashSet<String>,
    /// Scan events that arrived again (same `event_id`).
    pub event_repeats: usize,
    /// `message_id`s of the milestone messages that arrived.
    milestones: HashSet<String>,
    /// Milestone messages that arrived again (same `message_id`).
    pub milestone_repeats: usize,
    /// A milestone told already, sent again with more in it (an order or carrier found later).
    pub milestone_updates: usize,
    /// `picked` for an order before any parcel had a label: the merchant's order-level news.
    pub order_picks: usize,
    /// `darkleg.alert.v1` messages (opened or resolved).
    pub alerts: usize,
    parcels: BTreeMap<String, Parcel>,
    /// Scan → upstream, first arrival of each event.
    pub latencies_ms: Vec<u64>,
}

#[derive(Default)]
struct Parcel {
    /// Arrived, not told yet, by rank.
    held: [Option<Value>; RANKS.len()],
    /// Ranks told so far, in order.
    told: usize,
}

impl Story {
    /// The lines to print for one arrival (none, one, or a held milestone's with it).
    pub fn arrive(&mut self, a: &Arrival) -> Vec<String> {
        let j = &a.json;
        match j["schema"].as_str() {
            Some("darkleg.scan.v1") => vec![self.scan(j, a.at_ms)],
            Some("darkleg.milestone.v1") => self.milestone(j),
            Some("darkleg.alert.v1") => {
                self.alerts += 1;
                vec![format!(
                    "  ! alert {} {} — parcel {} (order {}): {}",
                    j["rule"].as_str().unwrap_or("?"),
                    j["state"].as_str().unwrap_or("?"),
                    j["parcel"].as_str().unwrap_or("-"),
                    j["order"].as_str().unwrap_or("-"),
                    text(&j["detail"]),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn scan(&mut self, j: &Value, at_ms: u64) -> String {
        let id = j["event_id"].as_str().unwrap_or("").to_string();
        let repeat = !self.events.insert(id);
        let latency = j["captured_at"]
            .as_str()
            .and_then(parse_rfc3339_ms)
            .map(|c| at_ms.saturating_sub(c));
        if repeat {
            self.event_repeats += 1;
        } else {
            self.latencies_ms.extend(latency);
        }
        format!(
            "  ↑ {:<9} {:<16} #{:<4} {:<22} {}{}",
            j["step"].as_str().unwrap_or("?"),
            j["device"].as_str().unwrap_or("?"),
            j["seq"].as_u64().unwrap_or(0),
            j["code"].as_str().unwrap_or("?"),
            latency
                .map(|l| format!("{l} ms after the scan"))
                .unwrap_or_default(),
            if repeat {
                "  (sent again after a reconnect; dropped by event_id)"
            } else {
                ""
            }
        )
    }

    fn milestone(&mut self, j: &Value) -> Vec<String> {
        let id = j["message_id"].as_str().unwrap_or("").to_string();
        if !self.milestones.insert(id) {
            self.milestone_repeats += 1;
            return Vec::new();
        }
        let Some(parcel) = j["parcel"].as_str() else {
            self.order_picks += 1;
            return Vec::new();
        };
        let Some(rank) = RANKS.iter().position(|m| j["milestone"] == *m) else {
            return Vec::new();
        };
        let p = self.parcels.entry(parcel.to_string()).or_default();
        if rank < p.told {
            self.milestone_updates += 1;
            return Vec::new();
        }
        // A newer message for the same milestone replaces a held one: it knows more.
        p.held[rank] = Some(j.clone());
        let mut lines = Vec::new();
        while let Some(m) = p.held.get_mut(p.told).and_then(Option::take) {
            lines.push(milestone_line(&m));
            p.told += 1;
        }
        lines
    }

    /// Scan events that arrived at least once.
    pub fn unique_events(&self) -> usize {
        self.events.len()
    }

    /// Parcels whose whole day (picked, packed, handed over) has been told.
    pub fn parcels_told(&self) -> usize {
        self.parcels
            .values()
            .filter(|p| p.told == RANKS.len())
            .count()
    }

    /// Milestones that arrived but wait for an earlier one of their parcel.
    pub fn milestones_held(&self) -> usize {
        self.parcels
            .values()
            .map(|p| p.held.iter().flatten().count())
            .sum()
    }

    /// The summary's words on repeats: what they are and why they do no harm.
    pub fn repeats_explained(&self) -> Vec<String> {
        let why = [
            "MQTT QoS 1 is at-least-once: when a link drops (the outage here) after a message",
            "went out but before its acknowledgement came back, the sender — the gateway to the",
            "broker, or the broker to the merchant — sends it again on reconnecting. Harmless:",
            "the merchant keeps the first copy and drops the rest by event_id / message_id",
        ];
        let head = if self.event_repeats + self.milestone_repeats == 0 {
            "none this run (no scan lost or doubled either way)".to_string()
        } else {
            format!(
                "{} scan {}, {} {} — not doubled scans:",
                self.event_repeats,
                plural(self.event_repeats, "event", "events"),
                self.milestone_repeats,
                plural(self.milestone_repeats, "milestone", "milestones"),
            )
        };
        std::iter::once(format!("  sent twice          {head}"))
            .chain(why.iter().map(|l| format!("                      {l}")))
            .collect()
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn milestone_line(j: &Value) -> String {
    format!(
        "  ★ {:<12} parcel {} (order {}, merchant {}){}",
        j["milestone"].as_str().unwrap_or("?"),
        j["parcel"].as_str().unwrap_or("-"),
        j["order"].as_str().unwrap_or("-"),
        j["merchant"].as_str().unwrap_or("-"),
        match (j["carrier"].as_str(), j["tracking_number"].as_str()) {
            (Some(c), Some(t)) => format!(" → {c} {t}"),
            _ => String::new(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arrival(json: Value) -> Arrival {
        Arrival {
            topic: "t".into(),
            json,
            at_ms: 0,
        }
    }

    fn milestone(parcel: &str, m: &str, id: &str) -> Arrival {
        arrival(json!({"schema": "darkleg.milestone.v1", "message_id": id,
            "parcel": parcel, "milestone": m, "order": "ACME-1", "merchant": "acme"}))
    }

    #[test]
    fn a_milestone_that_overtook_an_earlier_one_waits_for_it() {
        let mut s = Story::default();
        assert!(s.arrive(&milestone("P1", "handed_over", "h")).is_empty());
        assert!(s.arrive(&milestone("P1", "packed", "k")).is_empty());
        assert_eq!(s.milestones_held(), 2);
        let lines = s.arrive(&milestone("P1", "picked", "p"));
        let order: Vec<_> = lines
            .iter()
            .map(|l| RANKS.iter().position(|m| l.contains(m)).unwrap())
            .collect();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!((s.parcels_told(), s.milestones_held()), (1, 0));
    }

    #[test]
    fn repeats_are_counted_not_told_and_order_picks_are_not_parcels() {
        let mut s = Story::default();
        let scan = arrival(json!({"schema": "darkleg.scan.v1", "event_id": "e1",
            "captured_at": "2026-01-01T00:00:00Z", "step": "pick", "code": "x"}));
        assert!(!s.arrive(&scan)[0].contains("again"));
        assert!(s.arrive(&scan)[0].contains("dropped by event_id"));
        assert_eq!(s.arrive(&milestone("P1", "picked", "p")).len(), 1);
        assert!(s.arrive(&milestone("P1", "picked", "p")).is_empty());
        assert!(s.arrive(&milestone("P1", "picked", "p2")).is_empty());
        s.arrive(&arrival(
            json!({"schema": "darkleg.milestone.v1", "message_id": "o",
            "parcel": null, "milestone": "picked"}),
        ));
        assert_eq!(
            (
                s.unique_events(),
                s.event_repeats,
                s.milestone_repeats,
                s.milestone_updates,
                s.order_picks
            ),
            (1, 1, 1, 1, 1)
        );
        assert!(s.repeats_explained()[0].contains("1 scan event, 1 milestone "));
    }
}
