//! The `darkleg inspect-barcode` object:
//! `{"code", "kind", "valid", "carrier", "fields": {…}}` plus `symbology`, `error` and, for
//! ambiguous tracking numbers, `fields.candidates`.

use super::{Inspection, Kind};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{json, Map, Value};

/// Renders an inspection; `code` is the input as the user gave it.
pub fn inspection_json(code: &str, i: &Inspection<'_>) -> Value {
    let mut fields = Map::new();
    if let Some(e) = &i.gs1 {
        for f in e.fields() {
            fields.insert(f.ai.to_string(), Value::String(f.value.to_string()));
        }
    }
    if let Some(dl) = &i.link {
        for (ai, v) in dl.fields() {
            fields.insert(ai.to_string(), Value::String(percent_decode(v)));
        }
        fields.insert("host".into(), Value::String(dl.host.to_string()));
    }
    if let Some(c) = &i.tracking {
        if let Some(best) = c.best() {
            fields.insert("format".into(), json!(best.format));
            if let Some(s) = best.service {
                fields.insert("service".into(), json!(s));
            }
            if let Some(cc) = best.country {
                fields.insert("country".into(), json!(cc));
            }
        }
        if c.len() > 1 {
            let all: Vec<Value> = c
                .iter()
                .map(|t| json!({"carrier": t.carrier.as_str(), "format": t.format, "valid": t.valid}))
                .collect();
            fields.insert("candidates".into(), Value::Array(all));
        }
    }
    if i.kind == Kind::Gtin && i.gs1.is_none() {
        fields.insert("01".into(), json!(pad14(i.data)));
    }
    let mut out = json!({
        "code": code,
        "kind": i.kind.as_str(),
        "valid": i.valid,
        "carrier": i.carrier.map(|c| c.as_str()),
        "fields": fields,
    });
    if let Some(s) = i.symbology {
        out["symbology"] = json!(s);
    }
    if let Some(e) = i.error {
        out["error"] = json!(e.to_string());
    }
    out
}

fn pad14(gtin: &str) -> String {
    let mut s = String::new();
    for _ in gtin.len()..14 {
        s.push('0');
    }
    s.push_str(gtin);
    s
}

/// `%2F` → `/`; malformed escapes stay as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::inspect;
    use super::*;

    #[test]
    fn shapes() {
        let v = inspection_json(
            "]C100340434161094042557",
            &inspect("]C100340434161094042557"),
        );
        assert_eq!(
            v,
            json!({"code": "]C100340434161094042557", "kind": "sscc", "valid": true,
                   "carrier": "dhl", "fields": {"00": "340434161094042557"}, "symbology": "]C1"})
        );
        let v = inspection_json(
            "x",
            &inspect("https://id.gs1.org/01/09506000134352/10/A%2FB"),
        );
        assert_eq!(v["fields"]["10"], "A/B");
        let v = inspection_json("x", &inspect("986578788855"));
        assert_eq!(v["carrier"], "fedex");
        assert_eq!(v["fields"]["candidates"].as_array().unwrap().len(), 2);
        let v = inspection_json("x", &inspect("nonsense"));
        assert_eq!(v["kind"], "unknown");
        assert_eq!(v["valid"], Value::Null);
    }
}
