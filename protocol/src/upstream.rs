//! The upstream JSON payloads: `darkleg.scan.v1`, one scan per MQTT message, and
//! `darkleg.batch.v1`, several per message for upstreams configured with `batch`. What a
//! relaying gateway reads back from them is in [`crate::relay`].
//!
//! Field names are a contract with merchants and integrators (documented in README);
//! add fields, never rename or drop them, and bump the schema name when meaning changes.

use crate::{event::ScanEvent, time::Rfc3339};
use alloc::string::{String, ToString};
use serde::Serialize;

pub const SCAN_SCHEMA: &str = "darkleg.scan.v1";

#[derive(Serialize)]
struct ScanPayload<'a> {
    schema: &'static str,
    event_id: String,
    site: &'a str,
    gateway: &'a str,
    device: &'a str,
    seq: u64,
    step: &'static str,
    code: &'a str,
    symbology: Option<&'a str>,
    station: Option<&'a str>,
    operator: Option<&'a str>,
    captured_at: String,
    received_at: String,
    hops: &'a [String],
}

/// Where a scan comes from: the site and gateway that captured it, and every gateway that
/// stored it on the way (`site/gateway`, the capturing one first, the publishing one last).
/// A relay appends itself; seeing itself already there means a loop.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub site: &'a str,
    pub gateway: &'a str,
    pub hops: &'a [String],
}

/// Several scans in one MQTT message: `{"schema":"darkleg.batch.v1","events":[…]}`, each
/// element a complete `darkleg.scan.v1` object, in outbox order. For upstreams that take it:
/// a broker moves far more events per second this way (one message, one PUBACK).
pub const BATCH_SCHEMA: &str = "darkleg.batch.v1";

/// A hop as written in `hops`.
pub fn hop(site: &str, gateway: &str) -> String {
    let mut h = String::with_capacity(site.len() + gateway.len() + 1);
    h.push_str(site);
    h.push('/');
    h.push_str(gateway);
    h
}

/// Renders one scan as the upstream JSON object.
pub fn scan_json(event: &ScanEvent, origin: Origin<'_>) -> String {
    // Serialising plain strings and integers into a String cannot fail.
    serde_json::to_string(&payload(event, origin)).unwrap_or_default()
}

/// Renders scans as one `darkleg.batch.v1` object.
pub fn batch_json<'a>(events: impl IntoIterator<Item = (&'a ScanEvent, Origin<'a>)>) -> String {
    let mut b = BatchBuilder::new();
    for (e, origin) in events {
        b.push(&scan_json(e, origin));
    }
    b.finish()
}

/// A `darkleg.batch.v1` message built one rendered scan at a time, so a sender can measure
/// the real size before adding the next one (escaping makes estimates unreliable).
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: String,
    events: usize,
}

impl BatchBuilder {
    const HEAD: &'static str = "{\"schema\":\"darkleg.batch.v1\",\"events\":[";
    const TAIL: &'static str = "]}";

    pub fn new() -> Self {
        BatchBuilder {
            buf: String::from(Self::HEAD),
            events: 0,
        }
    }

    /// Bytes of the finished message if `scan` (one rendered scan object) were added now.
    pub fn len_with(&self, scan: &str) -> usize {
        self.len() + scan.len() + usize::from(self.events > 0)
    }

    /// Bytes of the finished message as it stands.
    pub fn len(&self) -> usize {
        self.buf.len() + Self::TAIL.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Appends one rendered `darkleg.scan.v1` object.
    pub fn push(&mut self, scan: &str) {
        if self.events > 0 {
            self.buf.push(',');
        }
        self.buf.push_str(scan);
        self.events += 1;
    }

    pub fn finish(mut self) -> String {
        self.buf.push_str(Self::TAIL);
        self.buf
    }
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn payload<'a>(event: &'a ScanEvent, origin: Origin<'a>) -> ScanPayload<'a> {
    ScanPayload {
        schema: SCAN_SCHEMA,
        event_id: event.event_id.to_string(),
        site: origin.site,
        gateway: origin.gateway,
        device: &event.device,
        seq: event.seq,
        step: event.step.as_str(),
        code: &event.code,
        symbology: event.symbology.as_deref(),
        station: event.station.as_deref(),
        operator: event.operator.as_deref(),
        captured_at: Rfc3339(event.captured_at_ms).to_string(),
        received_at: Rfc3339(event.received_at_ms).to_string(),
        hops: origin.hops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventId, Step};

    #[test]
    fn batch_builder_measures_exactly_what_it_renders() {
        let mut b = BatchBuilder::new();
        assert!(b.is_empty());
        for obj in ["{\"a\":1}", "{\"b\":\"\\u001d\"}", "{}"] {
            let predicted = b.len_with(obj);
            b.push(obj);
            assert_eq!(b.len(), predicted);
        }
        let len = b.len();
        let text = b.finish();
        assert_eq!(text.len(), len);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], BATCH_SCHEMA);
        assert_eq!(v["events"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn renders_the_documented_shape() {
        let ev = ScanEvent {
            event_id: EventId::new("sc-1", 7),
            device: "sc-1".into(),
            seq: 7,
            step: Step::Handover,
            code: "1Z999AA10123456784\"q".into(),
            symbology: Some("]C0".into()),
            station: Some("dock-2".into()),
            operator: None,
            captured_at_ms: 1_795_300_000_123,
            received_at_ms: 1_795_300_000_456,
        };
        let hops = [hop("ams1", "gw-01")];
        let origin = Origin {
            site: "ams1",
            gateway: "gw-01",
            hops: &hops,
        };
        let v: serde_json::Value = serde_json::from_str(&scan_json(&ev, origin)).unwrap();
        assert_eq!(v["schema"], "darkleg.scan.v1");
        assert_eq!(v["event_id"], EventId::new("sc-1", 7).to_string());
        assert_eq!(v["site"], "ams1");
        assert_eq!(v["gateway"], "gw-01");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["step"], "handover");
        assert_eq!(v["code"], "1Z999AA10123456784\"q");
        assert_eq!(v["symbology"], "]C0");
        assert_eq!(v["operator"], serde_json::Value::Null);
        assert_eq!(v["captured_at"], "2026-11-21T22:26:40.123Z");
        assert_eq!(v["received_at"], "2026-11-21T22:26:40.456Z");
        assert_eq!(v["hops"], serde_json::json!(["ams1/gw-01"]));
    }
}
