//! Rendering: Prometheus text exposition and the status page.

use super::{errors, latency, Snapshot};
use crate::config::Config;
use std::fmt::Write as _;

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

/// `/metrics`.
pub fn metrics(s: &Snapshot) -> String {
    let st = &s.status;
    let mut out = String::new();
    let captured: i64 = st.devices.iter().map(|d| d.events).sum();
    let rejected: i64 = st.ports.iter().map(|p| p.rejected).sum::<i64>()
        + st.devices.iter().map(|d| d.refused).sum::<i64>();
    let _ = writeln!(out, "# HELP darkleg_events_captured_total Scans stored, all devices.\n# TYPE darkleg_events_captured_total counter\ndarkleg_events_captured_total {captured}");
    let _ = writeln!(out, "# HELP darkleg_events_rejected_total Line noise, bad frames and refused codes.\n# TYPE darkleg_events_rejected_total counter\ndarkleg_events_rejected_total {rejected}");
    let _ = writeln!(out, "# HELP darkleg_events_synced_total Rows PUBACKed by each upstream.\n# TYPE darkleg_events_synced_total counter");
    for u in &st.upstreams {
        let _ = writeln!(
            out,
            "darkleg_events_synced_total{{upstream=\"{}\"}} {}",
            label(&u.name),
            u.delivered
        );
    }
    let _ = writeln!(
        out,
        "# HELP darkleg_backlog Rows waiting for each upstream.\n# TYPE darkleg_backlog gauge"
    );
    for u in &st.upstreams {
        let _ = writeln!(
            out,
            "darkleg_backlog{{upstream=\"{}\"}} {}",
            label(&u.name),
            u.backlog
        );
    }
    let _ = writeln!(out, "# HELP darkleg_backlog_age_seconds Age of the oldest row waiting for each upstream.\n# TYPE darkleg_backlog_age_seconds gauge");
    for u in &st.upstreams {
        let age = u.oldest_undelivered_ms.map_or(0.0, |t| {
            s.now_ms.saturating_sub(t.max(0) as u64) as f64 / 1000.0
        });
        let _ = writeln!(
            out,
            "darkleg_backlog_age_seconds{{upstream=\"{}\"}} {age}",
            label(&u.name)
        );
    }
    let online = st.ports.iter().filter(|p| p.connected).count();
    let _ = writeln!(out, "# HELP darkleg_scanners_online Scanner ports open now.\n# TYPE darkleg_scanners_online gauge\ndarkleg_scanners_online {online}");
    let _ = writeln!(out, "# HELP darkleg_alerts_open Dark-leg alerts open now.\n# TYPE darkleg_alerts_open gauge\ndarkleg_alerts_open {}", s.alerts.len());
    let (counts, sum) = latency::ACK_LATENCY.read();
    let _ = writeln!(out, "# HELP darkleg_ack_latency_seconds Framed scan received to durable ack written.\n# TYPE darkleg_ack_latency_seconds histogram");
    for (i, b) in latency::BOUNDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "darkleg_ack_latency_seconds_bucket{{le=\"{b}\"}} {}",
            counts[i]
        );
    }
    let total = counts[latency::BOUNDS.len()];
    let _ = writeln!(out, "darkleg_ack_latency_seconds_bucket{{le=\"+Inf\"}} {total}\ndarkleg_ack_latency_seconds_sum {sum}\ndarkleg_ack_latency_seconds_count {total}");
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
    let online = st.ports.iter().filter(|p| p.connected).count();
    let _ = write!(h, "<h2>Scanners <span id=\"scanners-online\">{online}</span> of {} online</h2><table id=\"scanners\"><tr><th>port</th><th>device</th><th>state</th><th>last scan</th><th>rejected</th></tr>", st.ports.len());
    for p in &st.ports {
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
