//! Dark-leg alerts: conditions on a parcel's state at a given time. An alert is open while
//! its condition holds and resolves itself when a scan makes it false (the pack scan arrives,
//! a good carrier label is rescanned). Pure: the caller passes the clock.

use super::parcel::ParcelState;
use crate::config::{AlertRules, Merchant};
use darkleg_protocol::barcode::Carrier;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    PickedNotPacked,
    MissedCutoff,
    InvalidTracking,
    TwoCarriers,
    HandoverWithoutPack,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::PickedNotPacked,
        Rule::MissedCutoff,
        Rule::InvalidTracking,
        Rule::TwoCarriers,
        Rule::HandoverWithoutPack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::PickedNotPacked => "picked_not_packed",
            Rule::MissedCutoff => "missed_cutoff",
            Rule::InvalidTracking => "invalid_tracking",
            Rule::TwoCarriers => "two_carriers",
            Rule::HandoverWithoutPack => "handover_without_pack",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The cut-off a parcel packed at `packed_ms` must make: the first cut-off time for its
/// carrier (or the site-wide `*` one) at or after packing, in the site's time zone.
pub fn deadline(
    packed_ms: u64,
    carrier: Option<Carrier>,
    rules: &AlertRules,
    tz: &jiff::tz::TimeZone,
) -> Option<u64> {
    let cutoff = rules
        .cutoffs
        .iter()
        .find(|c| c.carrier.is_some() && c.carrier == carrier)
        .or_else(|| rules.cutoffs.iter().find(|c| c.carrier.is_none()))?;
    let packed = jiff::Timestamp::from_millisecond(packed_ms as i64)
        .ok()?
        .to_zoned(tz.clone());
    let mut day = packed.date();
    for _ in 0..2 {
        let at = day.to_datetime(cutoff.time).to_zoned(tz.clone()).ok()?;
        if at.timestamp() >= packed.timestamp() {
            return Some(at.timestamp().as_millisecond() as u64);
        }
        day = day.tomorrow().ok()?;
    }
    None
}

/// The carrier a parcel is expected to go with before its handover scan says.
pub fn expected_carrier(state: &ParcelState, merchants: &[Merchant]) -> Option<Carrier> {
    if let Some(h) = &state.handover {
        if h.carrier.is_some() {
            return h.carrier;
        }
    }
    let m = state.merchant.as_deref()?;
    merchants.iter().find(|x| x.id == m)?.carrier
}

/// Every rule that holds for `state` at `now_ms`, with a human-readable detail.
pub fn active(
    state: &ParcelState,
    now_ms: u64,
    rules: &AlertRules,
    merchants: &[Merchant],
    tz: &jiff::tz::TimeZone,
) -> Vec<(Rule, String)> {
    let mut out = Vec::new();
    if let (Some(picked), None, Some(limit)) =
        (state.picked_at, state.packed_at, rules.pick_to_pack)
    {
        if now_ms.saturating_sub(picked) > limit.as_millis() as u64 {
            out.push((
                Rule::PickedNotPacked,
                format!("picked, not packed within {} min", limit.as_secs() / 60),
            ));
        }
    }
    if let (Some(packed), None) = (state.packed_at, &state.handover) {
        let carrier = expected_carrier(state, merchants);
        if let Some(d) = deadline(packed, carrier, rules, tz) {
            if now_ms > d {
                out.push((
                    Rule::MissedCutoff,
                    format!(
                        "packed, not handed over by the {} cut-off at {}",
                        carrier.map_or("site", Carrier::as_str),
                        darkleg_protocol::time::Rfc3339(d)
                    ),
                ));
            }
        }
    }
    if let Some(h) = &state.handover {
        if !h.trusted() {
            let why = match (h.carrier, h.valid) {
                (None, _) => "not a recognised tracking number",
                _ => "tracking number check digit fails",
            };
            out.push((Rule::InvalidTracking, format!("{}: {why}", h.tracking)));
        }
        if state.packed_at.is_none() {
            out.push((
                Rule::HandoverWithoutPack,
                "handed over with no pack scan".into(),
            ));
        }
    }
    if state.carriers.len() > 1 {
        let list: Vec<&str> = state.carriers.iter().copied().collect();
        out.push((
            Rule::TwoCarriers,
            format!("handed to {}", list.join(" and ")),
        ));
    }
    out
}

/// `darkleg.alert.v1`.
#[allow(clippy::too_many_arguments)]
pub fn alert_json(
    state: &ParcelState,
    rule: Rule,
    open: bool,
    opened_at: u64,
    resolved_at: Option<u64>,
    detail: &str,
    site: &str,
    gateway: &str,
) -> Value {
    let id =
        darkleg_protocol::EventId::new(&format!("{}/{}", state.parcel, rule.as_str()), opened_at);
    json!({
        "schema": "darkleg.alert.v1",
        "alert_id": id.to_string(),
        "rule": rule.as_str(),
        "state": if open { "open" } else { "resolved" },
        "parcel": state.parcel_id(),
        "order": state.order,
        "merchant": state.merchant,
        "site": site,
        "gateway": gateway,
        "opened_at": darkleg_protocol::time::Rfc3339(opened_at).to_string(),
        "resolved_at": resolved_at.map(|t| darkleg_protocol::time::Rfc3339(t).to_string()),
        "detail": detail,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parcel::Handover;
    use super::*;
    use crate::config::Cutoff;
    use std::time::Duration;

    fn rules() -> AlertRules {
        AlertRules {
            pick_to_pack: Some(Duration::from_secs(3600)),
            cutoffs: vec![
                Cutoff {
                    carrier: Some(Carrier::Dhl),
                    time: "16:30".parse().unwrap(),
                },
                Cutoff {
                    carrier: None,
                    time: "18:00".parse().unwrap(),
                },
            ],
        }
    }

    fn ms(s: &str) -> u64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
    }

    fn ams() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("Europe/Amsterdam").unwrap()
    }

    fn rules_at(state: &ParcelState, now: &str) -> Vec<Rule> {
        active(state, ms(now), &rules(), &[], &ams())
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    #[test]
    fn cutoffs_are_local_time_at_the_site_dst_included() {
        // 16:30 in Amsterdam is 14:30Z in summer (CEST) and 15:30Z in winter (CET).
        let d = deadline(
            ms("2026-07-01T09:00:00Z"),
            Some(Carrier::Dhl),
            &rules(),
            &ams(),
        )
        .unwrap();
        assert_eq!(d, ms("2026-07-01T14:30:00Z"));
        let d = deadline(
            ms("2026-12-01T09:00:00Z"),
            Some(Carrier::Dhl),
            &rules(),
            &ams(),
        )
        .unwrap();
        assert_eq!(d, ms("2026-12-01T15:30:00Z"));
        // Packed after today's cut-off: tomorrow's.
        let d = deadline(
            ms("2026-12-01T16:00:00Z"),
            Some(Carrier::Dhl),
            &rules(),
            &ams(),
        )
        .unwrap();
        assert_eq!(d, ms("2026-12-02T15:30:00Z"));
        // A carrier without its own cut-off uses the site's.
        let d = deadline(
            ms("2026-12-01T09:00:00Z"),
            Some(Carrier::Ups),
            &rules(),
            &ams(),
        )
        .unwrap();
        assert_eq!(d, ms("2026-12-01T17:00:00Z"));
    }

    #[test]
    fn timers_open_with_the_clock_and_resolve_with_the_scan() {
        let mut s = ParcelState {
            parcel: "P".into(),
            picked_at: Some(ms("2026-12-01T08:00:00Z")),
            ..ParcelState::default()
        };
        assert!(rules_at(&s, "2026-12-01T08:59:00Z").is_empty());
        assert_eq!(
            rules_at(&s, "2026-12-01T09:01:00Z"),
            [Rule::PickedNotPacked]
        );
        // The pack scan arrives: resolved; the cut-off clock starts.
        s.packed_at = Some(ms("2026-12-01T09:30:00Z"));
        assert!(rules_at(&s, "2026-12-01T16:59:00Z").is_empty());
        assert_eq!(rules_at(&s, "2026-12-01T17:01:00Z"), [Rule::MissedCutoff]);
        s.handover = Some(Handover {
            at_ms: ms("2026-12-01T17:10:00Z"),
            carrier: Some(Carrier::Ups),
            tracking: "1Z879E930346834440".into(),
            valid: Some(true),
            station: None,
        });
        s.carriers.insert("ups");
        assert!(rules_at(&s, "2026-12-01T17:11:00Z").is_empty());
    }

    #[test]
    fn label_problems() {
        let mut s = ParcelState {
            parcel: "P".into(),
            handover: Some(Handover {
                at_ms: 1,
                carrier: Some(Carrier::Ups),
                tracking: "1Z879E930346834441".into(),
                valid: Some(false),
                station: None,
            }),
            ..ParcelState::default()
        };
        assert_eq!(
            rules_at(&s, "2026-12-01T00:00:00Z"),
            [Rule::InvalidTracking, Rule::HandoverWithoutPack]
        );
        s.packed_at = Some(0);
        s.handover.as_mut().unwrap().valid = Some(true);
        s.carriers.extend(["ups", "dhl"]);
        assert_eq!(rules_at(&s, "2026-12-01T00:00:00Z"), [Rule::TwoCarriers]);
    }
}
