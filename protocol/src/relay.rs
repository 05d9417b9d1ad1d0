//! Reading `darkleg.scan.v1` / `darkleg.batch.v1` back: what a relaying gateway (a 3PL's
//! gateway taking its dock doors' events from a site broker) accepts into its outbox.
//!
//! A relay payload comes from the network, so everything is bounded and checked before a
//! byte is stored: size, event count, every string's length and alphabet, timestamps, and the
//! event id itself — it must be the one the device and sequence derive, so a relay can never
//! be made to overwrite (or shadow) another scanner's event. The hop trace catches loops.

use crate::event::{check_code, EventId, ScanEvent, Step};
use crate::time::parse_rfc3339_ms;
use crate::upstream::{hop, BATCH_SCHEMA, SCAN_SCHEMA};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::Deserialize;

/// Longest scanned code accepted from a relay (a scanner line's limit).
pub const MAX_CODE: usize = crate::ascii::MAX_LINE;
/// Longest device, site, gateway, station or operator name.
pub const MAX_NAME: usize = 64;
/// Most scans in one relayed message.
pub const MAX_EVENTS: usize = 1000;

/// One relayed scan with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub event: ScanEvent,
    pub site: String,
    pub gateway: String,
    /// Every gateway that stored it so far, the capturing one first.
    pub hops: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub max_bytes: usize,
    pub max_hops: usize,
    /// This gateway as a hop (`site/gateway`): an event that already passed it is a loop.
    pub me: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    TooBig {
        bytes: usize,
        max: usize,
    },
    NotJson(String),
    UnknownSchema(String),
    TooManyEvents(usize),
    Field {
        field: &'static str,
        why: &'static str,
    },
    /// The event id is not the one its device and sequence derive.
    IdMismatch,
    /// This gateway is already in the event's hop trace.
    Loop(String),
    TooManyHops(usize),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::TooBig { bytes, max } => {
                write!(f, "{bytes} bytes, over the {max}-byte limit")
            }
            RelayError::NotJson(e) => write!(f, "not darkleg JSON: {e}"),
            RelayError::UnknownSchema(s) => write!(f, "unknown schema {s:?}"),
            RelayError::TooManyEvents(n) => {
                write!(f, "{n} events in one message, over {MAX_EVENTS}")
            }
            RelayError::Field { field, why } => write!(f, "field {field}: {why}"),
            RelayError::IdMismatch => f.write_str("event_id does not match device and seq"),
            RelayError::Loop(trace) => write!(f, "loop: this gateway is already in hops {trace}"),
            RelayError::TooManyHops(n) => write!(f, "{n} hops, over the limit"),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    schema: &'a str,
    #[serde(default)]
    events: Vec<Wire>,
}

#[derive(Deserialize)]
struct Wire {
    schema: String,
    event_id: String,
    site: String,
    gateway: String,
    device: String,
    seq: u64,
    step: String,
    code: String,
    symbology: Option<String>,
    station: Option<String>,
    operator: Option<String>,
    captured_at: String,
    received_at: String,
    /// Absent from gateways that predate relaying: the capturing gateway is the only hop.
    hops: Option<Vec<String>>,
}

/// Parses and checks one relayed message (a scan or a batch).
pub fn parse(payload: &[u8], limits: Limits<'_>) -> Result<Vec<Relayed>, RelayError> {
    if payload.len() > limits.max_bytes {
        return Err(RelayError::TooBig {
            bytes: payload.len(),
            max: limits.max_bytes,
        });
    }
    let head: Envelope<'_> =
        serde_json::from_slice(payload).map_err(|e| RelayError::NotJson(e.to_string()))?;
    let wires = if head.schema == SCAN_SCHEMA {
        let one: Wire =
            serde_json::from_slice(payload).map_err(|e| RelayError::NotJson(e.to_string()))?;
        alloc::vec![one]
    } else if head.schema == BATCH_SCHEMA {
        head.events
    } else {
        let mut s = head.schema.to_string();
        s.truncate(MAX_NAME);
        return Err(RelayError::UnknownSchema(s));
    };
    if wires.len() > MAX_EVENTS {
        return Err(RelayError::TooManyEvents(wires.len()));
    }
    wires.into_iter().map(|w| check(w, limits)).collect()
}

fn field(field: &'static str, why: &'static str) -> RelayError {
    RelayError::Field { field, why }
}

fn name(v: &str, f: &'static str) -> Result<(), RelayError> {
    if v.is_empty() || v.len() > MAX_NAME {
        return Err(field(f, "empty or longer than 64 bytes"));
    }
    if v.chars()
        .any(|c| c.is_control() || c == '/' || c == '+' || c == '#')
    {
        return Err(field(f, "control characters or MQTT topic characters"));
    }
    Ok(())
}

fn label(v: &Option<String>, f: &'static str) -> Result<(), RelayError> {
    match v {
        Some(s) if s.len() > MAX_NAME || s.chars().any(char::is_control) => {
            Err(field(f, "longer than 64 bytes or control characters"))
        }
        _ => Ok(()),
    }
}

fn check(w: Wire, limits: Limits<'_>) -> Result<Relayed, RelayError> {
    if w.schema != SCAN_SCHEMA {
        return Err(field(
            "schema",
            "an element of a batch is not darkleg.scan.v1",
        ));
    }
    name(&w.site, "site")?;
    name(&w.gateway, "gateway")?;
    name(&w.device, "device")?;
    label(&w.station, "station")?;
    label(&w.operator, "operator")?;
    if w.code.len() > MAX_CODE {
        return Err(field("code", "longer than a scanner line"));
    }
    check_code(&w.code).map_err(|_| field("code", "empty or control characters"))?;
    if let Some(s) = &w.symbology {
        if s.len() != 3 || !s.starts_with(']') || !s.is_ascii() {
            return Err(field("symbology", "not an AIM identifier such as ]C1"));
        }
    }
    let step: Step = w.step.parse().map_err(|_| field("step", "unknown step"))?;
    let id = EventId::parse(&w.event_id).ok_or(field("event_id", "not 32 hex digits"))?;
    if id != EventId::new(&w.device, w.seq) {
        return Err(RelayError::IdMismatch);
    }
    let captured =
        parse_rfc3339_ms(&w.captured_at).ok_or(field("captured_at", "not RFC 3339 UTC"))?;
    let received =
        parse_rfc3339_ms(&w.received_at).ok_or(field("received_at", "not RFC 3339 UTC"))?;
    let hops = match w.hops {
        Some(h) if h.is_empty() => return Err(field("hops", "empty")),
        Some(h) => h,
        None => alloc::vec![hop(&w.site, &w.gateway)],
    };
    if hops.len() >= limits.max_hops {
        return Err(RelayError::TooManyHops(hops.len()));
    }
    for h in &hops {
        if h.len() > 2 * MAX_NAME + 1 || h.chars().any(char::is_control) {
            return Err(field("hops", "an entry is not site/gateway"));
        }
    }
    if hops.iter().any(|h| h == limits.me) {
        return Err(RelayError::Loop(hops.join(" > ")));
    }
    Ok(Relayed {
        event: ScanEvent {
            event_id: id,
            device: w.device,
            seq: w.seq,
            step,
            code: w.code,
            symbology: w.symbology,
            station: w.station,
            operator: w.operator,
            captured_at_ms: captured,
            received_at_ms: received,
        },
        site: w.site,
        gateway: w.gateway,
        hops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{batch_json, scan_json, Origin};

    const ME: Limits<'static> = Limits {
        max_bytes: 64 * 1024,
        max_hops: 8,
        me: "3pl/relay",
    };

    fn event(device: &str, seq: u64) -> ScanEvent {
        ScanEvent {
            event_id: EventId::new(device, seq),
            device: device.into(),
            seq,
            step: Step::Pack,
            code: "00387123450000000017".into(),
            symbology: Some("]C1".into()),
            station: Some("pack-2".into()),
            operator: None,
            captured_at_ms: 1_795_300_000_123,
            received_at_ms: 1_795_300_000_456,
        }
    }

    fn origin(hops: &[String]) -> Origin<'_> {
        Origin {
            site: "dock",
            gateway: "gw-1",
            hops,
        }
    }

    #[test]
    fn reads_back_what_a_gateway_publishes() {
        let hops = [hop("dock", "gw-1")];
        let one = scan_json(&event("sc-1", 7), origin(&hops));
        let got = parse(one.as_bytes(), ME).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, event("sc-1", 7));
        assert_eq!(
            (got[0].site.as_str(), got[0].hops.clone()),
            ("dock", hops.to_vec())
        );
        let evs: Vec<ScanEvent> = (1..=3).map(|s| event("sc-2", s)).collect();
        let batch = batch_json(evs.iter().map(|e| (e, origin(&hops))));
        let got = parse(batch.as_bytes(), ME).unwrap();
        assert_eq!(
            got.iter().map(|r| r.event.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        let hops = [hop("dock", "gw-1")];
        let good = scan_json(&event("sc-1", 7), origin(&hops));
        let small = Limits {
            max_bytes: 10,
            ..ME
        };
        assert!(matches!(
            parse(good.as_bytes(), small),
            Err(RelayError::TooBig { .. })
        ));
        assert!(matches!(
            parse(b"{not json", ME),
            Err(RelayError::NotJson(_))
        ));
        assert!(matches!(
            parse(br#"{"schema":"x"}"#, ME),
            Err(RelayError::UnknownSchema(_))
        ));
        // A forged id (another device's seq 7) is refused.
        let forged = good.replace(
            &EventId::new("sc-1", 7).to_string(),
            &EventId::new("sc-9", 7).to_string(),
        );
        assert_eq!(parse(forged.as_bytes(), ME), Err(RelayError::IdMismatch));
        let ctrl = good.replace("pack-2", "pack\\u0007");
        assert!(matches!(
            parse(ctrl.as_bytes(), ME),
            Err(RelayError::Field {
                field: "station",
                ..
            })
        ));
        let long = good.replace("00387123450000000017", &"7".repeat(MAX_CODE + 1));
        assert!(matches!(
            parse(long.as_bytes(), ME),
            Err(RelayError::Field { field: "code", .. })
        ));
        let step = good.replace("\"pack\"", "\"teleport\"");
        assert!(matches!(
            parse(step.as_bytes(), ME),
            Err(RelayError::Field { field: "step", .. })
        ));
    }

    #[test]
    fn a_loop_and_a_runaway_trace_are_cut() {
        let hops = [
            hop("dock", "gw-1"),
            "3pl/relay".to_string(),
            hop("hq", "gw-9"),
        ];
        let looped = scan_json(&event("sc-1", 7), origin(&hops));
        assert!(matches!(
            parse(looped.as_bytes(), ME),
            Err(RelayError::Loop(_))
        ));
        let long: Vec<String> = (0..8).map(|i| hop("s", &alloc::format!("g{i}"))).collect();
        let far = scan_json(&event("sc-1", 7), origin(&long));
        assert_eq!(parse(far.as_bytes(), ME), Err(RelayError::TooManyHops(8)));
    }

    proptest::proptest! {
        // The fuzz target's property, run in CI: arbitrary bytes and byte-level mutations of
        // a valid batch never panic, and what is accepted is consistent.
        #[test]
        fn any_bytes_are_parsed_or_rejected_never_trusted_blindly(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 0..6),
        ) {
            let _ = parse(&noise, ME);
            let hops = [hop("dock", "gw-1")];
            let evs: Vec<ScanEvent> = (1..=3).map(|s| event("sc-2", s)).collect();
            let mut batch = batch_json(evs.iter().map(|e| (e, origin(&hops)))).into_bytes();
            for (at, b) in flips {
                let i = at % batch.len();
                batch[i] = b;
            }
            if let Ok(scans) = parse(&batch, ME) {
                for s in scans {
                    proptest::prop_assert_eq!(s.event.event_id, EventId::new(&s.event.device, s.event.seq));
                    proptest::prop_assert!(s.event.code.len() <= MAX_CODE);
                }
            }
        }
    }

    #[test]
    fn a_payload_without_hops_is_from_its_gateway() {
        let hops = [hop("dock", "gw-1")];
        let old =
            scan_json(&event("sc-1", 7), origin(&hops)).replace(",\"hops\":[\"dock/gw-1\"]", "");
        assert!(!old.contains("hops"));
        assert_eq!(parse(old.as_bytes(), ME).unwrap()[0].hops, ["dock/gw-1"]);
    }
}
