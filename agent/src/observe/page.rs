//! Rendering: Prometheus text exposition and the status page.

use super::{errors, latency, Snapshot};
use crate::config::Config;
use crate::faults;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Prometheus label values: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn ago(now: u64, t: Option<i64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = now.saturating_sub(t.max(0) as u64) / 1000;
            match s {
                0..=59 => format!("{s}s ago"),
                60..=3599 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        }
    }
}

/// One metric's `# HELP` and `# TYPE` lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP darkleg_{name} {help}\n# TYPE darkleg_{name} {kind}"
    );
}

/// A metric with one value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    head(out, name, kind, help);
    let _ = writeln!(out, "darkleg_{name} {value}");
}

/// A metric with one value per upstream.
fn per_upstream<V: std::fmt::Display>(
    out: &mut String,
    s: &Snapshot,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&crate::store::UpstreamStatus) -> V,
) {
    head(out, name, kind, help);
    for u in &s.status.upstreams {
        let _ = writeln!(
            out,
            "darkleg_{name}{{upstream=\"{}\"}} {}",
            label(&u.name),
            value(u)
        );
    }
}

/// A metric with one value per webhook.
fn per_webhook<V: std::fmt::Display>(
    out: &mut String,
    s: &Snapshot,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&crate::store::WebhookStatus) -> V,
) {
    head(out, name, kind, help);
    for w in &s.status.webhooks {
        let _ = writeln!(
            out,
            "darkleg_{name}{{webhook=\"{}\"}} {}",
            label(&w.name),
            value(w)
        );
    }
}

/// `/metrics`.
pub fn metrics(s: &Snapshot) -> String {
    let st = &s.status;
    let mut out = String::new();
    let captured: i64 = st.devices.iter().map(|d| d.events).sum();
    let rejected: i64 = st
        .ports
        .iter()
        .filter(|p| !p.is_relay())
        .map(|p| p.rejected)
        .sum::<i64>()
        + st.devices.iter().map(|d| d.refused).sum::<i64>();
    single(
        &mut out,
        "events_captured_total",
        "counter",
        "Scans stored, all devices.",
        captured,
    );
    single(
        &mut out,
        "events_rejected_total",
        "counter",
        "Line noise, bad frames and refused codes.",
        rejected,
    );
    per_upstream(
        &mut out,
        s,
        (
            "events_synced_total",
            "counter",
            "Rows PUBACKed by each upstream.",
        ),
        |u| u.delivered,
    );
    per_upstream(
        &mut out,
        s,
        ("backlog", "gauge", "Rows waiting for each upstream."),
        |u| u.backlog,
    );
    per_upstream(
        &mut out,
        s,
        (
            "upstream_refused_total",
            "counter",
            "Publications each upstream's broker refused (kept and retried; see the status page for the reason).",
        ),
        |u| u.refused,
    );
    per_upstream(
        &mut out,
        s,
        (
            "backlog_age_seconds",
            "gauge",
            "Age of the oldest row waiting for each upstream.",
        ),
        |u| {
            u.oldest_undelivered_ms.map_or(0.0, |t| {
                s.now_ms.saturating_sub(t.max(0) as u64) as f64 / 1000.0
            })
        },
    );
    let online = st
        .ports
        .iter()
        .filter(|p| p.connected && !p.is_relay())
        .count();
    single(
        &mut out,
        "scanners_online",
        "gauge",
        "Scanner ports open now.",
        online,
    );
    single(
        &mut out,
        "alerts_open",
        "gauge",
        "Dark-leg alerts open now.",
        s.alerts.len(),
    );
    let (counts, sum) = latency::ACK_LATENCY.read();
    head(
        &mut out,
        "ack_latency_seconds",
        "histogram",
        "Framed scan received to durable ack written.",
    );
    for (i, b) in latency::BOUNDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "darkleg_ack_latency_seconds_bucket{{le=\"{b}\"}} {}",
            counts[i]
        );
    }
    let total = counts[latency::BOUNDS.len()];
    let _ = writeln!(out, "darkleg_ack_latency_seconds_bucket{{le=\"+Inf\"}} {total}\ndarkleg_ack_latency_seconds_sum {sum}\ndarkleg_ack_latency_seconds_count {total}");
    let relays: Vec<&crate::store::PortStatus> = st.ports.iter().filter(|p| p.is_relay()).collect();
    for (name, kind, help, value) in [
        (
            "relay_messages_total",
            "counter",
            "Relayed messages taken into the outbox, per relay source.",
            (|p: &crate::store::PortStatus| p.frames) as fn(&crate::store::PortStatus) -> i64,
        ),
        (
            "relay_rejected_total",
            "counter",
            "Relayed messages rejected (too big, malformed, forged, looping), per relay source.",
            |p| p.rejected,
        ),
        (
            "relay_conflicts_total",
            "counter",
            "Relayed scans not stored: a different scan holds their event id, per relay source.",
            |p| p.conflicts,
        ),
        (
            "relay_connected",
            "gauge",
            "1 while the relay source is connected to its broker.",
            |p| p.connected as i64,
        ),
    ] {
        head(&mut out, name, kind, help);
        for p in &relays {
            let _ = writeln!(
                out,
                "darkleg_{name}{{relay=\"{}\"}} {}",
                label(p.port.trim_start_matches("relay:")),
                value(p)
            );
        }
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    single(
        &mut out,
        "store_full",
        "gauge",
        "1 while the outbox is full of undelivered rows and new scans are refused.",
        faults::STORE_FULL.load(Relaxed) as u8,
    );
    single(
        &mut out,
        "scans_refused_full_total",
        "counter",
        "Scans refused because the outbox was full (scanners keep and retry them).",
        load(&faults::REFUSED_FULL),
    );
    single(
        &mut out,
        "evicted_for_room_total",
        "counter",
        "Delivered rows removed before their retention was up, to make room.",
        load(&faults::EVICTED_FOR_ROOM),
    );
    single(
        &mut out,
        "clock_jumps_total",
        "counter",
        "Steps of the gateway's wall clock (NTP step, bad RTC) seen by the agent.",
        load(&faults::CLOCK_JUMPS),
    );
    per_webhook(
        &mut out,
        s,
        ("webhook_dead_letters", "gauge", "Messages a webhook endpoint refused for good (4xx), kept for `darkleg webhooks replay`."),
        |w| w.dead_letters,
    );
    per_webhook(
        &mut out,
        s,
        (
            "webhook_dead_lettered_total",
            "counter",
            "Messages dead-lettered per webhook since the store was created.",
        ),
        |w| w.dead_lettered,
    );
    per_webhook(
        &mut out,
        s,
        (
            "webhook_disabled",
            "gauge",
            "1 while a 410 Gone keeps the webhook disabled (its messages wait in the outbox).",
        ),
        |w| w.disabled_at_ms.is_some() as u8,
    );
    out
}

/// `/`: what a supervisor on the floor looks for, refreshing every 5 s.
pub fn html(s: &Snapshot, config: &Config) -> String {
    let st = &s.status;
    let gw = &config.gateway;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>darkleg {site} {id}</title><style>\
body{{font:15px system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}.ok{{color:#176c2f;font-weight:600}}\
.bad{{color:#b3261e;font-weight:600}}.bar{{background:#eee;width:12em;height:.9em;display:inline-block}}\
.fill{{background:#2a7ab0;height:100%}}</style></head><body>\
<h1>darkleg — site {site}, gateway {id}</h1><p>{events} scans stored · updated <span id=\"updated\">{now}</span></p>",
        site = esc(&gw.site),
        id = esc(&gw.id),
        events = st.events,
        now = darkleg_protocol::time::Rfc3339(s.now_ms),
    );
    for i in &st.incidents {
        let _ = write!(
            h,
            "<p class=\"bad\">{} {}: {}</p>",
            darkleg_protocol::time::Rfc3339(i.at_ms.max(0) as u64),
            esc(&i.kind),
            esc(&i.detail)
        );
    }
    if faults::STORE_FULL.load(Relaxed) {
        let _ = write!(h, "<p class=\"bad\" id=\"store-full\">Outbox FULL of undelivered scans: new scans are refused until an upstream drains ({} refused so far).</p>", faults::REFUSED_FULL.load(Relaxed));
    }
    let (relays, scanners): (Vec<_>, Vec<_>) = st.ports.iter().partition(|p| p.is_relay());
    let online = scanners.iter().filter(|p| p.connected).count();
    let _ = write!(h, "<h2>Scanners <span id=\"scanners-online\">{online}</span> of {} online</h2><table id=\"scanners\"><tr><th>port</th><th>device</th><th>state</th><th>last scan</th><th>rejected</th></tr>", scanners.len());
    for p in &scanners {
        let devices: Vec<&crate::store::DeviceStatus> = st
            .devices
            .iter()
            .filter(|d| d.port.as_deref() == Some(p.port.as_str()))
            .collect();
        let names: Vec<&str> = devices.iter().map(|d| d.device.as_str()).collect();
        let last = devices.iter().filter_map(|d| d.last_seen_ms).max();
        let (class, state) = if p.connected {
            ("ok", "online")
        } else {
            ("bad", "offline")
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{state}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.port),
            esc(&names.join(", ")),
            ago(s.now_ms, last),
            p.rejected
        );
    }
    if !relays.is_empty() {
        h.push_str("</table><h2>Relayed gateways</h2><table id=\"relays\"><tr><th>source</th><th>state</th><th>messages</th><th>rejected</th><th>conflicts</th><th>last rejection</th></tr>");
        for p in &relays {
            let (class, state) = if p.connected {
                ("ok", "connected")
            } else {
                ("bad", "disconnected")
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{class}\">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.port),
                p.frames,
                p.rejected,
                p.conflicts,
                esc(p.last_reject.as_deref().unwrap_or(""))
            );
        }
    }
    h.push_str("</table><h2>Upstreams</h2><table id=\"upstreams\"><tr><th>upstream</th><th>backlog</th><th>oldest waiting</th><th>drain</th><th>delivered</th><th>last sync</th></tr>");
    for u in &st.upstreams {
        let peak = s
            .peak_backlog
            .get(&u.name)
            .copied()
            .unwrap_or(0)
            .max(u.backlog);
        let pct = if peak == 0 {
            100
        } else {
            100 - u.backlog * 100 / peak
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td><span class=\"bar\"><span class=\"fill\" style=\"width:{pct}%;display:block\"></span></span> {pct}%</td><td>{}</td><td>{}</td></tr>",
            esc(&u.name),
            if u.backlog == 0 { "ok" } else { "bad" },
            u.backlog,
            if u.backlog == 0 { "-".into() } else { ago(s.now_ms, u.oldest_undelivered_ms) },
            u.delivered,
            ago(s.now_ms, u.last_sync_at_ms)
        );
        if let (Some(reason), true) = (&u.last_refusal, u.refusing()) {
            let _ = write!(
                h,
                "<tr><td colspan=\"6\" class=\"bad\">the broker refuses publications: {} ({}; {} refused so far, kept in the outbox and retried)</td></tr>",
                esc(reason),
                ago(s.now_ms, u.last_refusal_at_ms),
                u.refused
            );
        }
    }
    if !st.webhooks.is_empty() {
        h.push_str("</table><h2>Webhooks</h2><table id=\"webhooks\"><tr><th>webhook</th><th>state</th><th>dead letters</th><th>last dead letter</th></tr>");
        for w in &st.webhooks {
            let (class, state) = match &w.disabled_reason {
                Some(why) => ("bad", format!("DISABLED: {why}")),
                None => ("ok", "enabled".to_string()),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{class}\">{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                esc(&w.name),
                esc(&state),
                if w.dead_letters == 0 { "ok" } else { "bad" },
                w.dead_letters,
                match &w.last_dead {
                    Some(r) => format!("{} ({})", esc(r), ago(s.now_ms, w.last_dead_at_ms)),
                    None => "-".into(),
                }
            );
        }
    }
    let _ = write!(
        h,
        "</table><h2>Open dark-leg alerts <span id=\"alerts-open\">{}</span></h2>",
        s.alerts.len()
    );
    if s.alerts.is_empty() {
        h.push_str("<p id=\"alerts\">none</p>");
    } else {
        h.push_str("<table id=\"alerts\"><tr><th>parcel / order</th><th>rule</th><th>since</th><th>detail</th></tr>");
        for (parcel, rule, opened, detail) in &s.alerts {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"bad\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(parcel),
                esc(rule),
                ago(s.now_ms, Some(*opened as i64)),
                esc(detail)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Recent errors</h2>");
    let recent = errors::recent();
    if recent.is_empty() {
        h.push_str("<p id=\"errors\">none</p>");
    } else {
        h.push_str("<table id=\"errors\">");
        for (t, level, msg) in recent {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{level}</td><td>{}</td></tr>",
                ago(s.now_ms, Some(t as i64)),
                esc(&msg)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PortStatus, Status, UpstreamStatus};

    #[test]
    fn metrics_exposition() {
        let up = |name: &str, backlog, delivered, oldest| UpstreamStatus {
            name: name.into(),
            backlog,
            delivered,
            last_sync_at_ms: None,
            oldest_undelivered_ms: oldest,
            refused: 0,
            last_refusal: None,
            last_refusal_at_ms: None,
        };
        let s = Snapshot {
            status: Status {
                webhooks: vec![],
                incidents: vec![],
                events: 7,
                upstreams: vec![up("central", 3, 4, Some(9_000)), up("a\"b", 0, 1, None)],
                ports: vec![PortStatus {
                    port: "/dev/ttyUSB0".into(),
                    protocol: "framed".into(),
                    connected: true,
                    frames: 9,
                    rejected: 2,
                    last_reject: None,
                    last_seen_ms: None,
                    conflicts: 0,
                }],
                devices: vec![],
            },
            alerts: vec![],
            peak_backlog: Default::default(),
            now_ms: 10_500,
        };
        let m = metrics(&s);
        let head = &m[..m.find("# HELP darkleg_ack_latency").unwrap()];
        assert_eq!(
            head,
            "# HELP darkleg_events_captured_total Scans stored, all devices.\n\
# TYPE darkleg_events_captured_total counter\ndarkleg_events_captured_total 0\n\
# HELP darkleg_events_rejected_total Line noise, bad frames and refused codes.\n\
# TYPE darkleg_events_rejected_total counter\ndarkleg_events_rejected_total 2\n\
# HELP darkleg_events_synced_total Rows PUBACKed by each upstream.\n\
# TYPE darkleg_events_synced_total counter\n\
darkleg_events_synced_total{upstream=\"central\"} 4\ndarkleg_events_synced_total{upstream=\"a\\\"b\"} 1\n\
# HELP darkleg_backlog Rows waiting for each upstream.\n# TYPE darkleg_backlog gauge\n\
darkleg_backlog{upstream=\"central\"} 3\ndarkleg_backlog{upstream=\"a\\\"b\"} 0\n\
# HELP darkleg_upstream_refused_total Publications each upstream's broker refused (kept and retried; see the status page for the reason).\n\
# TYPE darkleg_upstream_refused_total counter\n\
darkleg_upstream_refused_total{upstream=\"central\"} 0\ndarkleg_upstream_refused_total{upstream=\"a\\\"b\"} 0\n\
# HELP darkleg_backlog_age_seconds Age of the oldest row waiting for each upstream.\n\
# TYPE darkleg_backlog_age_seconds gauge\n\
darkleg_backlog_age_seconds{upstream=\"central\"} 1.5\ndarkleg_backlog_age_seconds{upstream=\"a\\\"b\"} 0\n\
# HELP darkleg_scanners_online Scanner ports open now.\n# TYPE darkleg_scanners_online gauge\ndarkleg_scanners_online 1\n\
# HELP darkleg_alerts_open Dark-leg alerts open now.\n# TYPE darkleg_alerts_open gauge\ndarkleg_alerts_open 0\n"
        );
        assert!(m.contains("darkleg_ack_latency_seconds_bucket{le=\"+Inf\"}"));
        for fault in [
            "store_full ",
            "scans_refused_full_total ",
            "evicted_for_room_total ",
            "clock_jumps_total ",
        ] {
            assert!(m.contains(&format!("\ndarkleg_{fault}")), "{fault}");
        }
    }

    #[test]
    fn webhook_metrics_name_each_webhook() {
        let w = crate::store::WebhookStatus {
            name: "shop".into(),
            dead_letters: 2,
            dead_lettered: 5,
            last_dead: Some("HTTP 422".into()),
            last_dead_at_ms: Some(1),
            disabled_at_ms: Some(3),
            disabled_reason: Some("the endpoint answered 410 Gone".into()),
            replays: 1,
        };
        let s = Snapshot {
            status: Status {
                webhooks: vec![w],
                incidents: vec![],
                events: 0,
                upstreams: vec![],
                ports: vec![],
                devices: vec![],
            },
            alerts: vec![],
            peak_backlog: Default::default(),
            now_ms: 10_500,
        };
        let m = metrics(&s);
        assert!(
            m.contains("darkleg_webhook_dead_letters{webhook=\"shop\"} 2\n"),
            "{m}"
        );
        assert!(
            m.contains("darkleg_webhook_dead_lettered_total{webhook=\"shop\"} 5\n"),
            "{m}"
        );
        assert!(
            m.contains("darkleg_webhook_disabled{webhook=\"shop\"} 1\n"),
            "{m}"
        );
        let page = html(
            &s,
            &crate::config::Config::parse(
                "[gateway]\nsite = \"a\"\nid = \"b\"\ndata_dir = \"/tmp/x\"\n",
                "t.toml",
            )
            .unwrap(),
        );
        assert!(
            page.contains("DISABLED: the endpoint answered 410 Gone"),
            "{page}"
        );
    }
}
