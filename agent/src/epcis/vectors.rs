//! Our event hash against GS1's reference vectors in `../shared/epcis/event-hash/examples`
//! (read at test time, not copied): every ObjectEvent there made only of the fields darkleg
//! emits must give exactly the published pre-hash string and hash.

use super::event::ObjectEvent;
use serde_json::Value;
use std::path::PathBuf;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/epcis/event-hash/examples")
}

const FIELDS: [&str; 13] = [
    "type",
    "eventTime",
    "eventTimeZoneOffset",
    "epcList",
    "quantityList",
    "action",
    "bizStep",
    "disposition",
    "readPoint",
    "bizLocation",
    "bizTransactionList",
    // Not hashed: the reference ignores them.
    "eventID",
    "recordTime",
];

fn number(v: &Value) -> Option<String> {
    if let Some(i) = v.as_i64() {
        return Some(i.to_string());
    }
    let f = v.as_f64()?;
    Some(format!("{f}"))
}

fn parse(e: &Value) -> Option<ObjectEvent> {
    let o = e.as_object()?;
    if o.get("type")? != "ObjectEvent" || !o.keys().all(|k| FIELDS.contains(&k.as_str())) {
        return None;
    }
    let ts: jiff::Timestamp = o.get("eventTime")?.as_str()?.parse().ok()?;
    // Millisecond precision, the fourth decimal rounding half up.
    let time_ms = ((ts.as_nanosecond() + 500_000) / 1_000_000) as u64;
    let strs = |k: &str| -> Vec<String> {
        o.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut quantities = Vec::new();
    for q in o
        .get("quantityList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if q.get("uom").is_some() {
            return None; // darkleg never emits a unit
        }
        quantities.push((
            q.get("epcClass")?.as_str()?.to_string(),
            q.get("quantity").and_then(number),
        ));
    }
    let mut biz_transactions = Vec::new();
    for t in o
        .get("bizTransactionList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        biz_transactions.push((
            t.get("type").and_then(Value::as_str).map(str::to_string),
            t.get("bizTransaction")?.as_str()?.to_string(),
        ));
    }
    // Identifier forms darkleg emits or accepts in its config; the vectors also exercise
    // every other GS1 key and percent-encoding rule, which darkleg never produces.
    let supported = |id: &str| {
        [
            "urn:epc:id:sscc:",
            "urn:epc:id:sgtin:",
            "urn:epc:id:sgln:",
            "urn:epc:id:pgln:",
        ]
        .iter()
        .any(|p| id.starts_with(p))
            || ["00", "01", "414", "417"].iter().any(|k| {
                id.strip_prefix("https://id.gs1.org/")
                    .and_then(|r| r.strip_prefix(k))
                    .is_some_and(|r| r.starts_with('/') && !r.contains(['%', '?']))
            })
    };
    if !strs("epcList").iter().all(|e| supported(e)) {
        return None;
    }
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let id = |k: &str| {
        o.get(k)
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let action = match o.get("action")?.as_str()? {
        "OBSERVE" => "OBSERVE",
        "ADD" => "ADD",
        "DELETE" => "DELETE",
        _ => return None,
    };
    Some(ObjectEvent {
        time_ms,
        offset: s("eventTimeZoneOffset")?,
        epcs: strs("epcList"),
        quantities,
        action,
        biz_step: s("bizStep"),
        disposition: s("disposition"),
        read_point: id("readPoint"),
        biz_location: id("bizLocation"),
        biz_transactions,
    })
}

#[test]
fn matches_the_gs1_reference_event_hashes() {
    let dir = examples();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared GS1 vectors must sit beside the checkout)",
            dir.display()
        )
    });
    let mut checked = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "jsonld") {
            continue;
        }
        let Ok(doc) = serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap())
        else {
            continue;
        };
        let body = &doc["epcisBody"];
        let events = body["eventList"]
            .as_array()
            .or_else(|| body["queryResults"]["resultsBody"]["eventList"].as_array());
        let (Ok(pre), Ok(hashes)) = (
            std::fs::read_to_string(path.with_extension("prehashes")),
            std::fs::read_to_string(path.with_extension("hashes")),
        ) else {
            continue;
        };
        let pre: Vec<&str> = pre.lines().collect();
        let hashes: Vec<&str> = hashes.lines().collect();
        for (i, e) in events.into_iter().flatten().enumerate() {
            let Some(ev) = parse(e) else { continue };
            let name = format!("{}#{i}", path.file_name().unwrap().to_string_lossy());
            // One published pre-hash line is cut short in the vectors; its hash is whole.
            let p = ev.prehash();
            assert!(
                p == pre[i] || (p.len() > pre[i].len() && p.starts_with(pre[i])),
                "pre-hash of {name}:\n ours {p}\n gs1  {}",
                pre[i]
            );
            assert_eq!(ev.event_id(), hashes[i], "hash of {name}");
            checked.push(name);
        }
    }
    checked.sort();
    println!("matched {} reference events: {checked:?}", checked.len());
    assert!(
        checked.len() >= 8,
        "too few reference events checked: {checked:?}"
    );
}
