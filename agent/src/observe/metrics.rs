//! `/metrics` through `prometheus-client`. The agent's numbers already live elsewhere —
//! counters in the store (they survive restarts), fault counters and the ack-latency
//! histogram in atomics — so nothing is registered up front: each scrape builds a registry
//! with one collector over the snapshot it read, and the collector reads the atomics as it
//! encodes. No second copy of any counter exists to drift.
//!
//! Format: Prometheus text 0.0.4 by default (curl, the tests, older scrapers); OpenMetrics
//! when the scraper asks for it in `Accept`, as Prometheus itself does.

use super::{latency, Snapshot};
use crate::faults;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The body of `/metrics` and its content type, in the format `accept` prefers. Ages are
/// taken at `now_ms`, not at the snapshot's read: a reused snapshot must not hold an
/// alerting age back by its own age.
pub fn render(
    s: std::sync::Arc<Snapshot>,
    now_ms: u64,
    accept: Option<&str>,
) -> (&'static str, String) {
    let mut registry = Registry::with_prefix("darkleg");
    registry.register_collector(Box::new(Scrape(s, now_ms)));
    let mut out = String::new();
    let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
    // Writing into a String cannot fail, and the collector's own errors come only from it.
    let ctype = if openmetrics {
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        OPENMETRICS
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (ctype, out)
}

#[derive(Debug)]
struct Scrape(std::sync::Arc<Snapshot>, u64);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v.max(0) as u64).encode(m)
}

fn gauge<N: EncodeGaugeValue + fmt::Debug>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// One sample per `(label value, metric)`, all under label `key`.
fn labelled<M: EncodeMetric>(
    m: &mut MetricEncoder,
    key: &str,
    rows: impl Iterator<Item = (String, M)>,
) -> fmt::Result {
    for (value, metric) in rows {
        metric.encode(m.encode_family(&[(key, value.as_str())])?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let (s, st) = (&self.0, &self.0.status);
        let captured: i64 = st.devices.iter().map(|d| d.events).sum();
        let rejected: i64 = st
            .ports
            .iter()
            .filter(|p| !p.is_relay())
            .map(|p| p.rejected)
            .sum::<i64>()
            + st.devices.iter().map(|d| d.refused).sum::<i64>();
        counter(
            &mut e,
            "events_captured",
            "Scans stored, all devices.",
            captured,
        )?;
        counter(
            &mut e,
            "events_rejected",
            "Line noise, bad frames and refused codes.",
            rejected,
        )?;

        let ups = || st.upstreams.iter();
        let per_upstream_counter = |e: &mut DescriptorEncoder,
                                    name: &str,
                                    help: &str,
                                    v: fn(&crate::store::UpstreamStatus) -> i64|
         -> fmt::Result {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            labelled(
                &mut m,
                "upstream",
                ups().map(|u| (u.name.clone(), ConstCounter::new(v(u).max(0) as u64))),
            )
        };
        per_upstream_counter(
            &mut e,
            "events_synced",
            "Rows PUBACKed by each upstream.",
            |u| u.delivered,
        )?;
        let mut m = e.encode_descriptor(
            "backlog",
            "Rows waiting for each upstream.",
            None,
            MetricType::Gauge,
        )?;
        labelled(
            &mut m,
            "upstream",
            ups().map(|u| (u.name.clone(), ConstGauge::new(u.backlog))),
        )?;
        per_upstream_counter(
            &mut e,
            "upstream_refused",
            "Publications each upstream's broker refused (kept and retried; see the status page for the reason).",
            |u| u.refused,
        )?;
        let mut m = e.encode_descriptor(
            "backlog_age",
            "Age of the oldest row waiting for each upstream.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        labelled(
            &mut m,
            "upstream",
            ups().map(|u| {
                let age = u.oldest_undelivered_ms.map_or(0.0, |t| {
                    self.1.saturating_sub(t.max(0) as u64) as f64 / 1000.0
                });
                (u.name.clone(), ConstGauge::new(age))
            }),
        )?;

        let online = st
            .ports
            .iter()
            .filter(|p| p.connected && !p.is_relay())
            .count();
        gauge(
            &mut e,
            "scanners_online",
            "Scanner ports open now.",
            online as i64,
        )?;
        gauge(
            &mut e,
            "alerts_open",
            "Dark-leg alerts open now.",
            s.alerts.len() as i64,
        )?;

        // One family, a `source` label per histogram: an operator's quantile query covers
        // every scanner, `by (source)` splits framed acks from HTTP answers.
        // The histogram's own read is cumulative per bound; the encoder wants counts per
        // bucket and adds them up again. `+Inf` is given explicitly: the OpenMetrics encoder
        // writes only the buckets it is handed.
        let mut m = e.encode_descriptor(
            "ack_latency",
            "Scan received to durable ack: a framed scanner's ack, an HTTP intake answer (per request).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (source, h) in latency::by_source() {
            let (cumulative, sum) = h.read();
            let total = cumulative[latency::BOUNDS.len()];
            let buckets: Vec<(f64, u64)> = latency::BOUNDS
                .iter()
                .chain([f64::INFINITY].iter())
                .enumerate()
                .map(|(i, &b)| {
                    (
                        b,
                        cumulative[i] - if i == 0 { 0 } else { cumulative[i - 1] },
                    )
                })
                .collect();
            m.encode_family(&[("source", source)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, total, &buckets, None,
                )?;
        }

        let relays = || st.ports.iter().filter(|p| p.is_relay());
        let relay = |p: &crate::store::PortStatus| p.port.trim_start_matches("relay:").to_string();
        for (name, help, v) in [
            (
                "relay_messages",
                "Relayed messages taken into the outbox, per relay source.",
                (|p: &crate::store::PortStatus| p.frames) as fn(&crate::store::PortStatus) -> i64,
            ),
            (
                "relay_rejected",
                "Relayed messages rejected (too big, malformed, forged, looping), per relay source.",
                |p| p.rejected,
            ),
            (
                "relay_conflicts",
                "Relayed scans not stored: a different scan holds their event id, per relay source.",
                |p| p.conflicts,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            labelled(
                &mut m,
                "relay",
                relays().map(|p| (relay(p), ConstCounter::new(v(p).max(0) as u64))),
            )?;
        }
        let mut m = e.encode_descriptor(
            "relay_connected",
            "1 while the relay source is connected to its broker.",
            None,
            MetricType::Gauge,
        )?;
        labelled(
            &mut m,
            "relay",
            relays().map(|p| (relay(p), ConstGauge::new(p.connected as i64))),
        )?;

        let mut m = e.encode_descriptor(
            "intake_requests",
            "HTTP intake requests answered, by HTTP status.",
            None,
            MetricType::Counter,
        )?;
        labelled(
            &mut m,
            "status",
            crate::intake::metrics::requests().map(|(s, n)| (s.to_string(), ConstCounter::new(n))),
        )?;
        let mut m = e.encode_descriptor(
            "intake_scans",
            "Scans posted to the HTTP intake, by result.",
            None,
            MetricType::Counter,
        )?;
        labelled(
            &mut m,
            "result",
            crate::intake::metrics::scans().map(|(r, n)| (r.to_string(), ConstCounter::new(n))),
        )?;

        let mut m = e.encode_descriptor(
            "webhook_dead_letters",
            "Messages a webhook endpoint refused for good (4xx), kept for `darkleg webhooks replay`.",
            None,
            MetricType::Gauge,
        )?;
        labelled(
            &mut m,
            "webhook",
            st.webhooks
                .iter()
                .map(|w| (w.name.clone(), ConstGauge::new(w.dead_letters))),
        )?;
        let mut m = e.encode_descriptor(
            "webhook_dead_lettered",
            "Messages dead-lettered per webhook since the store was created.",
            None,
            MetricType::Counter,
        )?;
        labelled(
            &mut m,
            "webhook",
            st.webhooks.iter().map(|w| {
                (
                    w.name.clone(),
                    ConstCounter::new(w.dead_lettered.max(0) as u64),
                )
            }),
        )?;
        let mut m = e.encode_descriptor(
            "webhook_disabled",
            "1 while a 410 Gone keeps the webhook disabled (its messages wait in the outbox).",
            None,
            MetricType::Gauge,
        )?;
        labelled(
            &mut m,
            "webhook",
            st.webhooks.iter().map(|w| {
                (
                    w.name.clone(),
                    ConstGauge::new(w.disabled_at_ms.is_some() as i64),
                )
            }),
        )?;

        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed) as i64;
        gauge(
            &mut e,
            "store_full",
            "1 while the outbox is full of undelivered rows and new scans are refused.",
            faults::STORE_FULL.load(Relaxed) as i64,
        )?;
        counter(
            &mut e,
            "scans_refused_full",
            "Scans refused because the outbox was full (scanners keep and retry them).",
            load(&faults::REFUSED_FULL),
        )?;
        counter(
            &mut e,
            "evicted_for_room",
            "Delivered rows removed before their retention was up, to make room.",
            load(&faults::EVICTED_FOR_ROOM),
        )?;
        counter(
            &mut e,
            "clock_jumps",
            "Steps of the gateway's wall clock (NTP step, bad RTC) seen by the agent.",
            load(&faults::CLOCK_JUMPS),
        )?;
        counter(
            &mut e,
            "http_connections_refused",
            "Connections the HTTP listener closed at accept because [http] max_connections were open.",
            load(&faults::HTTP_REFUSED),
        )?;
        counter(
            &mut e,
            "network_scanner_full",
            "Connections a [[network_scanner]] TCP listener accepted with all max_connections slots taken: each waits, unread, for one to free.",
            load(&faults::NETWORK_FULL),
        )?;
        counter(
            &mut e,
            "network_scanner_evicted",
            "Silent [[network_scanner]] connections closed to make room for a waiting one (evict_idle_secs).",
            load(&faults::NETWORK_EVICTED),
        )?;
        let listeners = crate::sources::network::load::listeners();
        let per_listener = |e: &mut DescriptorEncoder,
                            name: &str,
                            help: &str,
                            v: fn(&crate::sources::network::load::Load) -> f64|
         -> fmt::Result {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let rows = listeners
                .iter()
                .map(|(p, l)| (p.clone(), ConstGauge::new(v(l))));
            labelled(&mut m, "listener", rows)
        };
        per_listener(
            &mut e,
            "network_scanner_connections",
            "Open connections on each [[network_scanner]] TCP listener (at most its max_connections).",
            |l| l.open as f64,
        )?;
        per_listener(
            &mut e,
            "network_scanner_waiting_seconds",
            "How long a connection has waited for a slot on each [[network_scanner]] TCP listener (0: none waits).",
            |l| l.waiting_since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        )?;
        counter(
            &mut e,
            "http_tls_failed",
            "TLS handshakes the HTTP listener failed (plain-http clients, untrusted or expired certificates).",
            load(&faults::TLS_FAILED),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PortStatus, Status, UpstreamStatus};
    use std::collections::BTreeMap;

    fn snapshot() -> std::sync::Arc<Snapshot> {
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
        let port = |port: &str, connected, frames, rejected, conflicts| PortStatus {
            port: port.into(),
            protocol: "framed".into(),
            connected,
            frames,
            rejected,
            last_reject: None,
            last_seen_ms: None,
            conflicts,
        };
        std::sync::Arc::new(Snapshot {
            status: Status {
                webhooks: vec![crate::store::WebhookStatus {
                    name: "shop".into(),
                    dead_letters: 2,
                    dead_lettered: 5,
                    last_dead: Some("HTTP 422".into()),
                    last_dead_at_ms: Some(1),
                    disabled_at_ms: Some(3),
                    disabled_reason: Some("the endpoint answered 410 Gone".into()),
                    replays: 1,
                }],
                incidents: vec![],
                events: 7,
                upstreams: vec![up("central", 3, 4, Some(9_000)), up("a\"b", 0, 1, None)],
                ports: vec![
                    port("/dev/ttyUSB0", true, 9, 2, 0),
                    PortStatus {
                        protocol: "relay".into(),
                        ..port("relay:site", true, 5, 4, 1)
                    },
                ],
                devices: vec![],
            },
            alerts: vec![],
            peak_backlog: Default::default(),
            now_ms: 10_500,
        })
    }

    /// The text the hand-written renderer produced before `prometheus-client`, byte for
    /// byte (scrapers and dashboards keyed on it), up to the histogram.
    #[test]
    fn prometheus_text_is_what_it_was() {
        let (ctype, m) = render(snapshot(), 10_500, None);
        assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
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
darkleg_backlog_age_seconds{upstream=\"central\"} 1.5\ndarkleg_backlog_age_seconds{upstream=\"a\\\"b\"} 0.0\n\
# HELP darkleg_scanners_online Scanner ports open now.\n# TYPE darkleg_scanners_online gauge\ndarkleg_scanners_online 1\n\
# HELP darkleg_alerts_open Dark-leg alerts open now.\n# TYPE darkleg_alerts_open gauge\ndarkleg_alerts_open 0\n"
        );
        for line in [
            "darkleg_relay_messages_total{relay=\"site\"} 5\n",
            "darkleg_relay_rejected_total{relay=\"site\"} 4\n",
            "darkleg_relay_conflicts_total{relay=\"site\"} 1\n",
            "darkleg_relay_connected{relay=\"site\"} 1\n",
            "darkleg_store_full 0\n",
        ] {
            assert!(m.contains(line), "{line}");
        }
    }

    /// (family, type, help, label names, samples), read back strictly from the exposition:
    /// every sample under a declared family, `# HELP` and `# TYPE` once per family.
    type Family = (String, String, String, Vec<String>, usize);

    fn parse(text: &str, openmetrics: bool) -> BTreeMap<String, Family> {
        let mut fams: BTreeMap<String, Family> = BTreeMap::new();
        let mut current = String::new();
        let mut lines = text.lines().peekable();
        while let Some(l) = lines.next() {
            if openmetrics && l == "# EOF" {
                assert!(lines.peek().is_none(), "# EOF is the last line");
                return fams;
            }
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!fams.contains_key(name), "{name} declared twice");
                current = name.to_string();
                fams.insert(
                    current.clone(),
                    (name.into(), String::new(), help.into(), vec![], 0),
                );
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(name, current, "TYPE follows its HELP");
                fams.get_mut(name).unwrap().1 = kind.into();
            } else if let Some(rest) = l.strip_prefix("# UNIT ") {
                assert!(openmetrics, "UNIT is OpenMetrics only");
                assert!(rest.starts_with(&current), "{l}");
            } else {
                let (series, value) = l.rsplit_once(' ').unwrap();
                assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{l}");
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
                    None => (series, ""),
                };
                let f = fams.get_mut(&current).expect("a sample before any family");
                let base = &f.0;
                let suffixes: &[&str] = match f.1.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "counter" if openmetrics => &["_total"],
                    _ => &[""],
                };
                assert!(
                    suffixes.iter().any(|s| name == format!("{base}{s}")),
                    "{name} under {base}"
                );
                let keys: Vec<String> = labels
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| kv.split_once('=').unwrap().0.to_string())
                    .filter(|k| k != "le")
                    .collect();
                if f.4 > 0 {
                    assert_eq!(f.3, keys, "{l}: one label set per family");
                }
                f.3 = keys;
                f.4 += 1;
            }
        }
        assert!(!openmetrics, "OpenMetrics ends with # EOF");
        fams
    }

    const FAMILIES: [(&str, &str, &[&str]); 29] = [
        ("events_captured_total", "counter", &[]),
        ("events_rejected_total", "counter", &[]),
        ("events_synced_total", "counter", &["upstream"]),
        ("backlog", "gauge", &["upstream"]),
        ("upstream_refused_total", "counter", &["upstream"]),
        ("backlog_age_seconds", "gauge", &["upstream"]),
        ("scanners_online", "gauge", &[]),
        ("alerts_open", "gauge", &[]),
        ("ack_latency_seconds", "histogram", &["source"]),
        ("relay_messages_total", "counter", &["relay"]),
        ("relay_rejected_total", "counter", &["relay"]),
        ("relay_conflicts_total", "counter", &["relay"]),
        ("relay_connected", "gauge", &["relay"]),
        ("store_full", "gauge", &[]),
        ("scans_refused_full_total", "counter", &[]),
        ("evicted_for_room_total", "counter", &[]),
        ("clock_jumps_total", "counter", &[]),
        ("http_connections_refused_total", "counter", &[]),
        ("network_scanner_full_total", "counter", &[]),
        ("network_scanner_evicted_total", "counter", &[]),
        ("network_scanner_connections", "gauge", &["listener"]),
        ("network_scanner_waiting_seconds", "gauge", &["listener"]),
        ("http_tls_failed_total", "counter", &[]),
        ("intake_requests_total", "counter", &["status"]),
        ("intake_scans_total", "counter", &["result"]),
        ("webhook_dead_letters", "gauge", &["webhook"]),
        ("webhook_dead_lettered_total", "counter", &["webhook"]),
        ("webhook_disabled", "gauge", &["webhook"]),
        ("", "", &[]),
    ];

    /// Framed acks and HTTP answers are one family, told apart by `source`.
    #[test]
    fn ack_latency_by_source() {
        latency::HTTP_ACK_LATENCY.observe(std::time::Duration::from_micros(1500));
        let (_, text) = render(snapshot(), 10_500, None);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}\n{text}"))
                .rsplit_once(' ')
                .unwrap()
                .1
                .parse::<u64>()
                .unwrap()
        };
        // Other tests observe too (the statics are shared): at least ours, in its bucket.
        assert!(line("darkleg_ack_latency_seconds_bucket{source=\"http\",le=\"0.002\"}") >= 1);
        assert!(line("darkleg_ack_latency_seconds_count{source=\"http\"}") >= 1);
        assert!(text.contains("darkleg_ack_latency_seconds_count{source=\"framed\"}"));
    }

    #[test]
    fn both_formats_parse_to_the_same_families() {
        latency::ACK_LATENCY.observe(std::time::Duration::from_millis(3));
        crate::sources::network::load::set(
            "tcp://127.0.0.1:1",
            crate::sources::network::load::Load {
                open: 3,
                waiting_since: Some(std::time::Instant::now()),
            },
        );
        let (_, text) = render(snapshot(), 10_500, Some("*/*"));
        let (ctype, om) = render(
            snapshot(),
            10_500,
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        );
        assert!(ctype.starts_with("application/openmetrics-text; version=1.0.0"));
        let (text, om) = (parse(&text, false), parse(&om, true));
        let want: Vec<_> = FAMILIES.iter().filter(|f| !f.0.is_empty()).collect();
        assert_eq!(text.len(), want.len(), "{:?}", text.keys());
        assert_eq!(om.len(), want.len(), "{:?}", om.keys());
        for (name, kind, labels) in want {
            let t = &text[&format!("darkleg_{name}")];
            // OpenMetrics names a counter family without its `_total`.
            let o = &om[&format!(
                "darkleg_{}",
                name.strip_suffix("_total")
                    .filter(|_| *kind == "counter")
                    .unwrap_or(name)
            )];
            assert_eq!((t.1.as_str(), o.1.as_str()), (*kind, *kind), "{name}");
            assert_eq!(t.2, o.2, "{name}: same help");
            assert!(t.2.ends_with('.'), "{name}: {}", t.2);
            assert!(t.4 > 0 && t.4 == o.4, "{name}: samples {} vs {}", t.4, o.4);
            assert_eq!(t.3, *labels, "{name}");
            assert_eq!(o.3, *labels, "{name}");
        }
    }
}
