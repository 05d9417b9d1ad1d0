//! `darkleg export --epcis`: stored scans as one EPCISDocument, streamed page by page so a
//! large export runs in constant memory, written to a temporary file and renamed into place
//! so a partial file never looks complete.

use super::event::{canonical_id, ObjectEvent};
use crate::config::Config;
use crate::store::derived::ExportRow;
use crate::store::Reader;
use darkleg_protocol::barcode::{self, Kind};
use darkleg_protocol::Step;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

const PAGE: usize = 1000;

pub struct ExportOptions {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// `None`: standard output.
    pub output: Option<PathBuf>,
}

/// CBV 2.0 business step and disposition for a darkleg step.
fn cbv_for(step: Step) -> (&'static str, &'static str) {
    match step {
        Step::Pick => ("picking", "in_progress"),
        Step::Pack => ("packing", "container_closed"),
        Step::Handover => ("departing", "in_transit"),
        Step::ReturnReceipt => ("receiving", "returned"),
        Step::Exception => ("inspecting", "non_sellable_other"),
    }
}

fn offset_at(tz: &jiff::tz::TimeZone, ms: u64) -> String {
    let secs = jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| tz.to_offset(t).seconds())
        .unwrap_or(0);
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
}

/// One stored scan as an ObjectEvent.
pub fn object_event(row: &ExportRow, config: &Config) -> ObjectEvent {
    let (biz_step, disposition) = cbv_for(row.step);
    let raw = format!("{}{}", row.symbology.as_deref().unwrap_or(""), row.code);
    let i = barcode::inspect(&raw);
    let mut epcs = Vec::new();
    let mut quantities = Vec::new();
    match (&i.gs1, &i.link) {
        (Some(e), _) => {
            if let Some(sscc) = e.get("00") {
                epcs.push(format!("https://id.gs1.org/00/{sscc}"));
            } else if let Some(gtin) = e.get("01") {
                match (e.get("21"), e.get("10")) {
                    (Some(serial), _) => {
                        epcs.push(format!("https://id.gs1.org/01/{gtin}/21/{}", pct(serial)))
                    }
                    (None, Some(lot)) => quantities.push((
                        format!("https://id.gs1.org/01/{gtin}/10/{}", pct(lot)),
                        Some("1".into()),
                    )),
                    (None, None) => {
                        quantities.push((format!("https://id.gs1.org/01/{gtin}"), Some("1".into())))
                    }
                }
            }
        }
        (None, Some(_)) => epcs.push(canonical_id(&row.code)),
        _ if i.kind == Kind::Gtin => quantities.push((
            format!("https://id.gs1.org/01/{:0>14}", i.data),
            Some("1".into()),
        )),
        _ => {}
    }
    // A carrier label identifies the consignment, not our parcel: the parcel goes in the
    // event, the tracking number as a bill-of-lading reference.
    let mut biz_transactions = Vec::new();
    if row.fact_kind.as_deref() == Some("handed_over") {
        if let Some(p) = &row.parcel {
            if p.len() == 18 && p.bytes().all(|b| b.is_ascii_digit()) {
                let dl = format!("https://id.gs1.org/00/{p}");
                if !epcs.contains(&dl) {
                    epcs.push(dl);
                }
            }
        }
        if let (Some(t), false) = (
            &row.tracking,
            row.tracking.as_deref() == row.parcel.as_deref(),
        ) {
            let carrier = row.carrier.as_deref().unwrap_or("unknown");
            biz_transactions.push((
                Some("bol".to_string()),
                format!("urn:darkleg:tracking:{carrier}:{}", pct(t)),
            ));
        }
    }
    if let Some(order) = &row.order {
        let id = match &config.epcis.order_gln {
            Some(gln) => format!("urn:epcglobal:cbv:bt:{gln}:{}", pct(order)),
            None => format!("urn:darkleg:order:{}", pct(order)),
        };
        biz_transactions.push((Some("po".to_string()), id));
    }
    let station = row.station.clone().unwrap_or_else(|| row.device.clone());
    let read_point = config
        .epcis
        .read_points
        .get(&station)
        .cloned()
        .unwrap_or_else(|| {
            format!(
                "urn:darkleg:{}:{}:{}",
                config.gateway.site,
                config.gateway.id,
                pct(&station)
            )
        });
    ObjectEvent {
        time_ms: row.captured_at_ms,
        offset: offset_at(&config.gateway.timezone, row.captured_at_ms),
        epcs,
        quantities,
        action: "OBSERVE",
        biz_step: Some(biz_step.into()),
        disposition: Some(disposition.into()),
        read_point: Some(read_point),
        biz_location: config.epcis.biz_location.clone(),
        biz_transactions,
    }
}

/// Percent-encodes what may not appear raw in a URI path segment.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes the document; returns how many events it holds.
pub fn export(config: &Config, opts: &ExportOptions) -> Result<u64, String> {
    let reader = Reader::open_durable(&config.db_path()).map_err(|e| e.to_string())?;
    let since = opts.since_ms.unwrap_or(0);
    let until = opts.until_ms.unwrap_or(u64::MAX / 2);
    let total = reader
        .export_count(since, until)
        .map_err(|e| e.to_string())?;
    let tmp = opts
        .output
        .as_ref()
        .map(|p| p.with_extension("epcis-partial"));
    let mut out: Box<dyn Write> = match &tmp {
        Some(t) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(t).map_err(|e| format!("creating {}: {e}", t.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let progress = std::io::stderr().is_terminal();
    let io = |e: std::io::Error| format!("writing the export: {e}");
    let head = serde_json::json!({
        "@context": ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": darkleg_protocol::time::Rfc3339(crate::clock::now_ms()).to_string(),
        "sender": format!("urn:darkleg:{}:{}", config.gateway.site, config.gateway.id),
    })
    .to_string();
    // The header object, opened up to append the body.
    write!(
        out,
        "{},\"epcisBody\":{{\"eventList\":[",
        &head[..head.len() - 1]
    )
    .map_err(io)?;
    let mut after = 0i64;
    let mut n = 0u64;
    loop {
        let rows = reader
            .export_rows(after, since, until, PAGE)
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last().map(|r| r.row) else {
            break;
        };
        for r in &rows {
            if n > 0 {
                out.write_all(b",").map_err(io)?;
            }
            out.write_all(object_event(r, config).to_json().to_string().as_bytes())
                .map_err(io)?;
            n += 1;
        }
        after = last;
        if progress {
            eprint!("\r  exported {n}/{total} events");
        }
    }
    out.write_all(b"]}}\n").map_err(io)?;
    out.flush().map_err(io)?;
    drop(out);
    if progress {
        eprintln!();
    }
    if let (Some(t), Some(p)) = (&tmp, &opts.output) {
        std::fs::rename(t, p).map_err(|e| format!("moving the export to {}: {e}", p.display()))?;
    }
    Ok(n)
}
