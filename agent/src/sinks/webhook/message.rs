//! An outbox message as a Standard Webhooks delivery: its stable `webhook-id`, the body
//! `{"type", "timestamp", "data"}`, and the key that orders it (a parcel's messages, and an
//! order's, go one at a time and in outbox order).

use ring::digest;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub row: i64,
    /// `msg_{message_id}_{hash}`: the darkleg message's own id (`message_id`, `alert_id`)
    /// and a hash of its payload — a retry or an identical republish carries the same id, a
    /// republish that says something new (the merchant became known) a new one.
    pub id: String,
    /// What ordering is kept per: the order (which covers its parcels), else the parcel.
    pub key: String,
    pub body: bytes::Bytes,
    /// The merchant the message names, if any.
    pub merchant: Option<String>,
}

/// `None`: not a message a webhook carries (a raw scan row, an unknown schema).
pub fn build(row: i64, payload: &str) -> Result<Outgoing, String> {
    let data: Value =
        serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let field = |k: &str| data.get(k).and_then(Value::as_str);
    let (kind, own_id, at) = match field("schema") {
        Some("darkleg.milestone.v1") => {
            let m = field("milestone").ok_or("milestone without `milestone`")?;
            (format!("parcel.{m}"), field("message_id"), field("at"))
        }
        Some("darkleg.alert.v1") => {
            let (kind, at) = match field("state") {
                Some("resolved") => ("alert.resolved", field("resolved_at")),
                _ => ("alert.opened", field("opened_at")),
            };
            (kind.to_string(), field("alert_id"), at)
        }
        Some("darkleg.order.v1") => {
            // The latest of its parcels' milestones (RFC 3339 UTC strings sort by time), so a
            // re-sent body is the same body.
            let at = data
                .get("parcels")
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().filter_map(|p| p.get("at")?.as_str()).max());
            ("order.updated".to_string(), field("message_id"), at)
        }
        other => return Err(format!("schema {other:?} is not one a webhook carries")),
    };
    let own_id = own_id.ok_or("message without its id")?;
    let hash = digest::digest(&digest::SHA256, payload.as_bytes());
    let id = format!("msg_{own_id}_{}", hex8(hash.as_ref()));
    let key = field("order")
        .map(|o| format!("order:{o}"))
        .or_else(|| field("parcel").map(|p| format!("parcel:{p}")))
        .unwrap_or_default();
    let timestamp = at
        .map(str::to_string)
        .unwrap_or_else(|| darkleg_protocol::time::Rfc3339(crate::clock::now_ms()).to_string());
    let body = json!({"type": kind, "timestamp": timestamp, "data": data});
    Ok(Outgoing {
        row,
        id,
        key,
        body: bytes::Bytes::from(body.to_string()),
        merchant: field("merchant").map(str::to_string),
    })
}

fn hex8(b: &[u8]) -> String {
    b[..8].iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn milestones_and_alerts_become_typed_bodies_with_stable_ids() {
        let m = r#"{"schema":"darkleg.milestone.v1","message_id":"abc","parcel":"p1","order":"ACME-1","merchant":"acme","milestone":"handed_over","at":"2026-11-22T16:40:02.120Z"}"#;
        let a = super::build(7, m).unwrap();
        let again = super::build(8, m).unwrap();
        assert_eq!(a.id, again.id, "same message, same webhook-id");
        assert!(a.id.starts_with("msg_abc_"), "{}", a.id);
        assert_eq!(a.key, "order:ACME-1");
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["type"], "parcel.handed_over");
        assert_eq!(body["timestamp"], "2026-11-22T16:40:02.120Z");
        assert_eq!(body["data"]["parcel"], "p1");
        let changed = super::build(9, &m.replace("acme\"", "globex\"")).unwrap();
        assert_ne!(
            changed.id, a.id,
            "a republish that says something new is a new message"
        );

        let r = r#"{"schema":"darkleg.alert.v1","alert_id":"x1","state":"resolved","parcel":"p2","order":null,"opened_at":"2026-11-22T15:00:00.000Z","resolved_at":"2026-11-22T15:30:00.000Z"}"#;
        let r = super::build(10, r).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "alert.resolved");
        assert_eq!(body["timestamp"], "2026-11-22T15:30:00.000Z");
        assert_eq!(r.key, "parcel:p2");
        assert!(super::build(11, r#"{"schema":"darkleg.scan.v1"}"#).is_err());
    }

    #[test]
    fn an_order_update_is_typed_and_ordered_with_its_parcels() {
        let o = r#"{"schema":"darkleg.order.v1","message_id":"o1","order":"ACME-9","merchant":"acme","parcels":[{"parcel":"p1","at":"2026-11-22T16:40:02.120Z"},{"parcel":"p2","at":"2026-11-22T16:41:00.000Z"}],"counts":{"packed":2,"handed_over":2},"complete":true}"#;
        let a = super::build(12, o).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["type"], "order.updated");
        assert_eq!(body["timestamp"], "2026-11-22T16:41:00.000Z");
        assert_eq!(a.key, "order:ACME-9");
        assert!(a.id.starts_with("msg_o1_"), "{}", a.id);
        assert_eq!(body["data"]["complete"], true);
    }
}
