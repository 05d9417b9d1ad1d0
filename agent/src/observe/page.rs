//! Rendering the status page.

use super::{errors, Snapshot};
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
