//! `darkleg report`: per carrier and handover station — parcels, valid tracking rate,
//! pack → handover dwell (p50/p95), and the share handed over before the carrier's cut-off.

use crate::config::Config;
use crate::domain::alerts;
use crate::domain::parcel::ParcelState;
use crate::store::Reader;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Default)]
struct Group {
    parcels: usize,
    trusted: usize,
    dwell_ms: Vec<u64>,
    on_time: usize,
    with_cutoff: usize,
}

fn pct(n: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| 100.0 * n as f64 / of as f64)
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * q).round() as usize).copied()
}

/// Rows keyed by (carrier, station); parcels not handed over yet under `not handed over`.
fn groups(parcels: &[ParcelState], config: &Config) -> BTreeMap<(String, String), Group> {
    let mut out: BTreeMap<(String, String), Group> = BTreeMap::new();
    for p in parcels.iter().filter(|p| p.parcel_id().is_some()) {
        let Some(h) = &p.handover else {
            let station = p.pack_station.clone().unwrap_or_else(|| "-".into());
            out.entry(("(not handed over)".into(), station))
                .or_default()
                .parcels += 1;
            continue;
        };
        let carrier = h
            .carrier
            .map_or("(unrecognised)", |c| c.as_str())
            .to_string();
        let g = out
            .entry((carrier, h.station.clone().unwrap_or_else(|| "-".into())))
            .or_default();
        g.parcels += 1;
        g.trusted += usize::from(h.trusted());
        if let Some(packed) = p.packed_at {
            g.dwell_ms.push(h.at_ms.saturating_sub(packed));
            if let Some(d) =
                alerts::deadline(packed, h.carrier, &config.alerts, &config.gateway.timezone)
            {
                g.with_cutoff += 1;
                g.on_time += usize::from(h.at_ms <= d);
            }
        }
    }
    out
}

fn dur(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 120_000 => format!("{:.0}s", ms as f64 / 1000.0),
        Some(ms) if ms < 7_200_000 => format!("{:.0}m", ms as f64 / 60_000.0),
        Some(ms) => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.1}%"))
}

/// Renders the report as text, or as JSON rows.
pub fn run(config: &Config, json_out: bool) -> Result<String, String> {
    let reader = Reader::open_durable(&config.db_path()).map_err(|e| e.to_string())?;
    let parcels = reader.all_parcels().map_err(|e| e.to_string())?;
    let alerts_open = reader.all_open_alerts().map_err(|e| e.to_string())?.len();
    let mut rows = Vec::new();
    for ((carrier, station), mut g) in groups(&parcels, config) {
        g.dwell_ms.sort_unstable();
        rows.push(json!({
            "carrier": carrier,
            "station": station,
            "parcels": g.parcels,
            "valid_tracking_rate": pct(g.trusted, g.parcels),
            "dwell_p50_ms": percentile(&g.dwell_ms, 0.5),
            "dwell_p95_ms": percentile(&g.dwell_ms, 0.95),
            "on_time_rate": pct(g.on_time, g.with_cutoff),
        }));
    }
    if json_out {
        let doc = json!({"site": config.gateway.site, "open_alerts": alerts_open, "rows": rows});
        return serde_json::to_string_pretty(&doc).map_err(|e| e.to_string());
    }
    let mut out = format!(
        "darkleg report — site {}, {} parcels, {} open alerts\n",
        config.gateway.site,
        parcels.iter().filter(|p| p.parcel_id().is_some()).count(),
        alerts_open
    );
    out.push_str(&format!(
        "  {:<18} {:<16} {:>7} {:>8} {:>9} {:>9} {:>8}\n",
        "carrier", "station", "parcels", "valid", "dwell p50", "dwell p95", "on time"
    ));
    let ms = |v: &Value| v.as_u64();
    for r in &rows {
        let valid = if r["carrier"].as_str().is_some_and(|c| c.starts_with("(not")) {
            "-".to_string()
        } else {
            rate(r["valid_tracking_rate"].as_f64())
        };
        out.push_str(&format!(
            "  {:<18} {:<16} {:>7} {:>8} {:>9} {:>9} {:>8}\n",
            r["carrier"].as_str().unwrap_or(""),
            r["station"].as_str().unwrap_or(""),
            r["parcels"],
            valid,
            dur(ms(&r["dwell_p50_ms"])),
            dur(ms(&r["dwell_p95_ms"])),
            rate(r["on_time_rate"].as_f64()),
        ));
    }
    if rows.is_empty() {
        out.push_str("  (no parcels yet)\n");
    }
    out.push_str("  dwell = pack → handover; on time = handed over before the carrier's cut-off ([[alerts.cutoff]])\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parcel::Handover;
    use darkleg_protocol::barcode::Carrier;

    #[test]
    fn groups_rates_and_dwell() {
        let config = Config::parse(
            "[gateway]\nsite = \"s\"\nid = \"g\"\ndata_dir = \"/tmp/x\"\n[[alerts.cutoff]]\ncarrier = \"*\"\ntime = \"18:00\"\n",
            "t.toml",
        )
        .unwrap();
        let p = |id: &str, packed: u64, at: u64, valid: Option<bool>| ParcelState {
            parcel: id.into(),
            packed_at: Some(packed),
            handover: Some(Handover {
                at_ms: at,
                carrier: Some(Carrier::Dhl),
                tracking: "x".into(),
                valid,
                station: Some("dock".into()),
            }),
            ..ParcelState::default()
        };
        // Packed at 10:00Z and 17:00Z on 2026-12-01; cut-off 18:00 UTC.
        let ten = 1_796_119_200_000;
        let parcels = vec![
            p("a", ten, ten + 60_000, Some(true)),
            p("b", ten, ten + 120_000, Some(false)),
            p("c", ten + 7 * 3_600_000, ten + 9 * 3_600_000, Some(true)),
        ];
        let g = &groups(&parcels, &config)[&("dhl".to_string(), "dock".to_string())];
        assert_eq!(g.parcels, 3);
        assert_eq!(g.trusted, 2);
        assert_eq!((g.on_time, g.with_cutoff), (2, 3));
        assert_eq!(
            percentile(&[60_000, 120_000, 7_200_000], 0.5),
            Some(120_000)
        );
    }
}
