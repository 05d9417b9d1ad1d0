//! One GS1 EPCIS 2.0 ObjectEvent: its JSON-LD form and its CBV 2.0 hash-based event ID.
//!
//! The event ID is `ni:///sha-256;{hex}?ver=CBV2.0` over the canonical pre-hash string:
//! fields in canonical order, `key=value` with no separators, lists sorted, times in UTC with
//! milliseconds, bare CBV terms expanded to `https://ref.gs1.org/cbv/…` and identifiers as
//! constrained canonical GS1 Digital Link URIs. Checked against GS1's reference vectors.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    pub time_ms: u64,
    /// `+01:00`: the site's offset at `time_ms`.
    pub offset: String,
    /// Instance identifiers (GS1 Digital Link or EPC URIs).
    pub epcs: Vec<String>,
    /// Class-level identifiers with a quantity.
    pub quantities: Vec<(String, Option<String>)>,
    pub action: &'static str,
    /// Bare CBV terms (`picking`) or URIs.
    pub biz_step: Option<String>,
    pub disposition: Option<String>,
    pub read_point: Option<String>,
    pub biz_location: Option<String>,
    /// (type, identifier).
    pub biz_transactions: Vec<(Option<String>, String)>,
}

fn cbv(kind: &str, term: &str) -> String {
    if let Some(rest) = term.strip_prefix("urn:epcglobal:cbv:") {
        // urn:epcglobal:cbv:bizstep:receiving → BizStep-receiving
        let (k, t) = rest.split_once(':').unwrap_or((rest, ""));
        let k = match k {
            "bizstep" => "BizStep",
            "disp" => "Disp",
            "btt" => "BTT",
            "sdt" => "SDT",
            other => other,
        };
        return format!("https://ref.gs1.org/cbv/{k}-{t}");
    }
    if term.contains(':') {
        return term.to_string();
    }
    format!("https://ref.gs1.org/cbv/{kind}-{term}")
}

/// Canonical GS1 Digital Link for an identifier: EPC URNs converted, custom domains replaced
/// by id.gs1.org, query strings dropped. Anything else is returned as given.
pub fn canonical_id(id: &str) -> String {
    if let Some(dl) = epc_urn_to_dl(id) {
        return dl;
    }
    for scheme in ["https://", "http://"] {
        if let Some(rest) = id.strip_prefix(scheme) {
            let rest = rest.split(['?', '#']).next().unwrap_or(rest);
            if let Some((_, path)) = rest.split_once('/') {
                // The key starts at the first path segment that is a GS1 primary key.
                let segs: Vec<&str> = path.split('/').collect();
                const KEYS: [&str; 13] = [
                    "00", "01", "253", "255", "401", "402", "414", "417", "8003", "8004", "8006",
                    "8010", "8017",
                ];
                if let Some(i) = segs.iter().position(|s| KEYS.contains(s) || *s == "8018") {
                    return format!("https://id.gs1.org/{}", segs[i..].join("/"));
                }
            }
        }
    }
    id.to_string()
}

fn gs1_key(prefix: &str, reference: &str) -> Option<String> {
    let body = format!("{prefix}{reference}");
    let cd = darkleg_protocol::barcode::gs1::check_digit(&body)?;
    Some(format!("{body}{cd}"))
}

/// `urn:epc:id:{sscc,sgtin,sgln,pgln}:…` → Digital Link (TDS 2.x partition rules).
fn epc_urn_to_dl(id: &str) -> Option<String> {
    let rest = id.strip_prefix("urn:epc:id:")?;
    let (scheme, value) = rest.split_once(':')?;
    let parts: Vec<&str> = value.split('.').collect();
    match (scheme, parts.as_slice()) {
        ("sscc", [cp, sr]) => {
            // Extension digit leads the serial reference.
            let (ext, serial) = sr.split_at(1);
            Some(format!(
                "https://id.gs1.org/00/{}",
                gs1_key(&format!("{ext}{cp}"), serial)?
            ))
        }
        ("sgtin", [cp, ir, serial]) => {
            let (ind, item) = ir.split_at(1);
            let gtin = gs1_key(&format!("{ind}{cp}"), item)?;
            Some(format!("https://id.gs1.org/01/{gtin}/21/{serial}"))
        }
        ("sgln", [cp, lr, ext]) => {
            let gln = gs1_key(cp, lr)?;
            Some(match *ext {
                "0" => format!("https://id.gs1.org/414/{gln}"),
                e => format!("https://id.gs1.org/414/{gln}/254/{e}"),
            })
        }
        ("pgln", [cp, pr]) => Some(format!("https://id.gs1.org/417/{}", gs1_key(cp, pr)?)),
        _ => None,
    }
}

impl ObjectEvent {
    fn time(&self) -> String {
        darkleg_protocol::time::Rfc3339(self.time_ms).to_string()
    }

    /// The canonical pre-hash string.
    pub fn prehash(&self) -> String {
        let mut s = format!(
            "eventType=ObjectEventeventTime={}eventTimeZoneOffset={}",
            self.time(),
            self.offset
        );
        if !self.epcs.is_empty() {
            let mut epcs: Vec<String> = self
                .epcs
                .iter()
                .map(|e| format!("epc={}", canonical_id(e)))
                .collect();
            epcs.sort();
            s.push_str("epcList");
            s.extend(epcs);
        }
        if !self.quantities.is_empty() {
            let mut q: Vec<String> = self
                .quantities
                .iter()
                .map(|(class, qty)| {
                    let mut e = format!("quantityElementepcClass={}", canonical_id(class));
                    if let Some(q) = qty {
                        e.push_str(&format!("quantity={q}"));
                    }
                    e
                })
                .collect();
            q.sort();
            s.push_str("quantityList");
            s.extend(q);
        }
        s.push_str(&format!("action={}", self.action));
        if let Some(b) = &self.biz_step {
            s.push_str(&format!("bizStep={}", cbv("BizStep", b)));
        }
        if let Some(d) = &self.disposition {
            s.push_str(&format!("disposition={}", cbv("Disp", d)));
        }
        if let Some(r) = &self.read_point {
            s.push_str(&format!("readPointid={}", canonical_id(r)));
        }
        if let Some(b) = &self.biz_location {
            s.push_str(&format!("bizLocationid={}", canonical_id(b)));
        }
        if !self.biz_transactions.is_empty() {
            let mut t: Vec<String> = self
                .biz_transactions
                .iter()
                .map(|(ty, id)| match ty {
                    Some(ty) => format!("type={}bizTransaction={id}", cbv("BTT", ty)),
                    None => format!("bizTransaction={id}"),
                })
                .collect();
            t.sort();
            s.push_str("bizTransactionList");
            s.extend(t);
        }
        s
    }

    /// `ni:///sha-256;…?ver=CBV2.0`.
    pub fn event_id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.prehash().as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("ni:///sha-256;{hex}?ver=CBV2.0")
    }

    /// The JSON-LD event as it goes into an EPCISDocument.
    pub fn to_json(&self) -> Value {
        let mut e = Map::new();
        e.insert("type".into(), json!("ObjectEvent"));
        e.insert("eventTime".into(), json!(self.time()));
        e.insert("eventTimeZoneOffset".into(), json!(self.offset));
        e.insert("eventID".into(), json!(self.event_id()));
        e.insert("epcList".into(), json!(self.epcs));
        if !self.quantities.is_empty() {
            let q: Vec<Value> = self
                .quantities
                .iter()
                .map(|(class, qty)| match qty {
                    Some(q) => {
                        json!({"epcClass": class, "quantity": q.parse::<f64>().unwrap_or(1.0)})
                    }
                    None => json!({"epcClass": class}),
                })
                .collect();
            e.insert("quantityList".into(), Value::Array(q));
        }
        e.insert("action".into(), json!(self.action));
        if let Some(b) = &self.biz_step {
            e.insert("bizStep".into(), json!(b));
        }
        if let Some(d) = &self.disposition {
            e.insert("disposition".into(), json!(d));
        }
        if let Some(r) = &self.read_point {
            e.insert("readPoint".into(), json!({"id": r}));
        }
        if let Some(b) = &self.biz_location {
            e.insert("bizLocation".into(), json!({"id": b}));
        }
        if !self.biz_transactions.is_empty() {
            let t: Vec<Value> = self
                .biz_transactions
                .iter()
                .map(|(ty, id)| match ty {
                    Some(ty) => json!({"type": ty, "bizTransaction": id}),
                    None => json!({"bizTransaction": id}),
                })
                .collect();
            e.insert("bizTransactionList".into(), Value::Array(t));
        }
        Value::Object(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epc_urns_become_digital_links() {
        assert_eq!(
            canonical_id("urn:epc:id:sscc:4012345.1112223334"),
            "https://id.gs1.org/00/140123451122233341"
        );
        assert_eq!(
            canonical_id("urn:epc:id:sgln:4012345.00022.0"),
            "https://id.gs1.org/414/4012345000221"
        );
        assert_eq!(
            canonical_id("urn:epc:id:sgtin:0614141.107346.2017"),
            "https://id.gs1.org/01/10614141073464/21/2017"
        );
        assert_eq!(
            canonical_id("https://example.com/shop/01/09506000134352/21/7?x=1"),
            "https://id.gs1.org/01/09506000134352/21/7"
        );
    }
}
