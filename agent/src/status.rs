//! `darkleg status`: what an operator asks first — is anything stuck, is every scanner
//! there, when did we last get through to each upstream.

use crate::store::Status;
use darkleg_protocol::time::Rfc3339;
use std::fmt::Write;

/// How long ago `t` was, coarsely: `42s ago`, `7m ago`, `3h ago`.
fn age(now_ms: u64, t: i64) -> String {
    let secs = now_ms.saturating_sub(t as u64) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn ago(now_ms: u64, at: Option<i64>) -> String {
    match at {
        None => "never".into(),
        Some(t) => format!("{} ({})", Rfc3339(t as u64), age(now_ms, t)),
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
            "  {:<16} backlog {:>8}{}  delivered {:>10}  last sync {}",
            u.name,
            u.backlog,
            u.oldest_undelivered_ms
                .map(|t| format!(" (oldest {})", age(now_ms, t)))
                .unwrap_or_default(),
            u.delivered,
            ago(now_ms, u.last_sync_at_ms)
        );
        if let (Some(reason), true) = (&u.last_refusal, u.refusing()) {
            let _ = writeln!(
                out,
                "  {:<16} REFUSED by the broker: {reason} ({}, {} so far; kept and retried)",
                "",
                ago(now_ms, u.last_refusal_at_ms),
                u.refused
            );
        }
    }
    if !s.webhooks.is_empty() {
        let _ = writeln!(
            out,
            "webhooks (backlog and deliveries above, under the same name):"
        );
    }
    for w in &s.webhooks {
        let _ = writeln!(
            out,
            "  {:<16} {}  dead letters {:>6}{}",
            w.name,
            if w.disabled_at_ms.is_some() {
                "DISABLED"
            } else {
                "enabled "
            },
            w.dead_letters,
            match &w.last_dead {
                Some(r) if w.dead_letters > 0 => format!(
                    " (last: {r}, {}; `darkleg webhooks replay {}` sends them again)",
                    ago(now_ms, w.last_dead_at_ms),
                    w.name
                ),
                _ => String::new(),
            }
        );
        if let Some(why) = &w.disabled_reason {
            let _ = writeln!(
                out,
                "  {:<16} {why} ({}); messages kept — fix it, then `darkleg webhooks replay {}`",
                "",
                ago(now_ms, w.disabled_at_ms),
                w.name
            );
        }
    }
    let _ = writeln!(out, "scanner ports:");
    if s.ports.is_empty() {
        let _ = writeln!(out, "  (none seen yet)");
    }
    for p in &s.ports {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} {:<12} frames {:>8}  rejected {:>6}{}{}  last seen {}",
            p.port,
            p.protocol,
            if p.connected {
                "connected"
            } else {
                "disconnected"
            },
            p.frames,
            p.rejected,
            if p.is_relay() {
                format!("  conflicts {:>4}", p.conflicts)
            } else {
                String::new()
            },
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
            "  {:<24} {:<6} fw {:<8} last seq {:>8}  events {:>8}  duplicates {:>6}  refused {:>4}  last seen {}{}",
            d.device,
            d.kind,
            d.firmware.as_deref().unwrap_or("-"),
            d.last_seq,
            d.events,
            d.duplicates,
            d.refused,
            ago(now_ms, d.last_seen_ms),
            // Worth a look past a couple of seconds: its TimeSync went wrong, or ours.
            match d.clock_offset_ms {
                Some(o) if o.abs() >= crate::clock::STEP_THRESHOLD_MS =>
                    format!("  CLOCK OFF by {:+.1}s", o as f64 / 1000.0),
                _ => String::new(),
            }
        );
    }
    for i in &s.incidents {
        let _ = writeln!(
            out,
            "INCIDENT {} {}: {}",
            ago(now_ms, Some(i.at_ms)),
            i.kind,
            i.detail
        );
    }
    out
}

/// A drain progress line for one upstream: how much of the highest backlog seen is gone,
/// and at what rate, e.g. `[##########..........]  50% drained, 2500 left, 1200/s, ~2s`.
pub fn drain_bar(backlog: i64, peak: i64, per_sec: f64) -> String {
    const W: i64 = 20;
    let peak = peak.max(backlog).max(1);
    let done = (peak - backlog) * W / peak;
    let pct = (peak - backlog) * 100 / peak;
    let eta = if per_sec > 0.0 && backlog > 0 {
        format!(", ~{:.0}s", backlog as f64 / per_sec)
    } else {
        String::new()
    };
    format!(
        "[{}{}] {pct:>3}% drained, {backlog} left, {per_sec:.0}/s{eta}",
        "#".repeat(done as usize),
        ".".repeat((W - done) as usize)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn drain_bar_shows_progress_and_eta() {
        let b = super::drain_bar(2500, 5000, 1250.0);
        assert_eq!(
            b,
            "[##########..........]  50% drained, 2500 left, 1250/s, ~2s"
        );
        assert!(super::drain_bar(0, 0, 0.0).starts_with("[####################] 100%"));
    }

    use super::*;
    use crate::store::{DeviceStatus, PortStatus, UpstreamStatus};

    #[test]
    fn shows_what_an_operator_looks_for_first() {
        let now = 1_795_300_000_000u64;
        let s = Status {
            webhooks: vec![],
            incidents: vec![],
            events: 12,
            upstreams: vec![UpstreamStatus {
                name: "central".into(),
                backlog: 3,
                delivered: 9,
                last_sync_at_ms: Some(now as i64 - 5_000),
                oldest_undelivered_ms: Some(now as i64 - 300_000),
                refused: 0,
                last_refusal: None,
                last_refusal_at_ms: None,
            }],
            ports: vec![PortStatus {
                port: "/dev/ttyUSB0".into(),
                protocol: "ascii".into(),
                connected: false,
                frames: 4,
                rejected: 1,
                last_reject: Some("line longer than 512 bytes".into()),
                last_seen_ms: Some(now as i64 - 8_000_000),
                conflicts: 0,
            }],
            devices: vec![DeviceStatus {
                device: "pack-1".into(),
                kind: "framed".into(),
                last_seq: 9,
                firmware: Some("1.2.0".into()),
                port: Some("/dev/ttyACM0".into()),
                last_seen_ms: Some(now as i64),
                events: 9,
                duplicates: 2,
                refused: 0,
                clock_offset_ms: Some(-7_300),
                conflicts: 0,
            }],
        };
        let text = render(&s, now);
        assert!(text.contains("CLOCK OFF by -7.3s"), "{text}");
        assert!(text.contains("backlog        3 (oldest 5m ago)"), "{text}");
        assert!(
            text.contains("last sync 2026-11-21T22:26:35.000Z (5s ago)"),
            "{text}"
        );
        assert!(text.contains("disconnected"), "{text}");
        assert!(
            text.contains("(last: line longer than 512 bytes)"),
            "{text}"
        );
        assert!(text.contains("(2h ago)"), "{text}");
        assert!(text.contains("duplicates      2"), "{text}");
    }
}
