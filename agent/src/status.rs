//! `darkleg status`: what an operator asks first — is anything stuck, is every scanner
//! there, when did we last get through to each upstream.

use crate::store::Status;
use darkleg_protocol::time::Rfc3339;
use std::fmt::Write;

fn ago(now_ms: u64, at: Option<i64>) -> String {
    match at {
        None => "never".into(),
        Some(t) => {
            let secs = now_ms.saturating_sub(t as u64) / 1000;
            let rel = match secs {
                0..=119 => format!("{secs}s ago"),
                120..=7199 => format!("{}m ago", secs / 60),
                _ => format!("{}h ago", secs / 3600),
            };
            format!("{} ({rel})", Rfc3339(t as u64))
        }
    }
}

pub fn render(s: &Status, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "events stored: {}", s.events);
    let _ = writeln!(out, "upstreams:");
    if s.upstreams.is_empty() {
        let _ = writeln!(out, "  (none configured: events stay in the outbox)");
    }
    for u in &s.upstreams {
        let _ = writeln!(
            out,
            "  {:<16} backlog {:>8}  delivered {:>10}  last sync {}",
            u.name,
            u.backlog,
            u.delivered,
            ago(now_ms, u.last_sync_at_ms)
        );
    }
    let _ = writeln!(out, "scanner ports:");
    if s.ports.is_empty() {
        let _ = writeln!(out, "  (none seen yet)");
    }
    for p in &s.ports {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} {:<12} frames {:>8}  rejected {:>6}{}  last seen {}",
            p.port,
            p.protocol,
            if p.connected {
                "connected"
            } else {
                "disconnected"
            },
            p.frames,
            p.rejected,
            p.last_reject
                .as_deref()
                .map(|r| format!(" (last: {r})"))
                .unwrap_or_default(),
            ago(now_ms, p.last_seen_ms)
        );
    }
    let _ = writeln!(out, "devices:");
    for d in &s.devices {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} fw {:<8} last seq {:>8}  events {:>8}  duplicates {:>6}  refused {:>4}  last seen {}",
            d.device,
            d.kind,
            d.firmware.as_deref().unwrap_or("-"),
            d.last_seq,
            d.events,
            d.duplicates,
            d.refused,
            ago(now_ms, d.last_seen_ms)
        );
    }
    out
}
