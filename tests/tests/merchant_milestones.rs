//! Pick → pack → handover for parcels of two merchants, driven by three simulated scanners
//! (the firmware) on ptys at their stations, against the agent and a real Mosquitto. Each
//! merchant's subscriber sees its own parcels' milestones — with carrier and tracking number
//! — and none of the other's; a merchant's own upstream carries only its messages; `darkleg
//! report` sums it up.

use darkleg_agent::sim::collector::Collector;
use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::{dhl_waybill, sscc_key, PlannedScan};
use darkleg_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const PARCELS: u64 = 16;

fn scan(step: Step, code: String, sym: &str) -> PlannedScan {
    PlannedScan {
        step,
        code,
        symbology: Some(sym.to_string()),
    }
}

/// (merchant, order, sscc, waybill) per parcel: even ones acme's (by order number), odd ones
/// globex's (by the GS1 company prefix of their SSCC).
fn parcels() -> Vec<(&'static str, String, String, String)> {
    (0..PARCELS)
        .map(|i| {
            if i % 2 == 0 {
                (
                    "acme",
                    format!("ACME-{i}"),
                    sscc_key("8712345", i),
                    dhl_waybill(i),
                )
            } else {
                (
                    "globex",
                    format!("G-{i}"),
                    sscc_key("8799999", i),
                    dhl_waybill(i),
                )
            }
        })
        .collect()
}

#[test]
fn each_merchant_sees_only_its_own_parcels_milestones() {
    let mut rig = Rig::new(
        "merchants",
        &[
            PortKind::FramedAt("pick"),
            PortKind::FramedAt("pack"),
            PortKind::FramedAt("handover"),
        ],
    );
    // Two merchants; acme also has an upstream of its own (on the same broker here, under
    // its own prefix; in production its own broker and credentials).
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&format!(
        r#"
[[merchant]]
id = "acme"
order_prefixes = ["ACME-"]

[[merchant]]
id = "globex"
gs1_prefixes = ["8799999"]

[[upstream]]
name = "acme-own"
url = "{}"
topic_prefix = "acme-private"
merchant = "acme"
"#,
        rig.broker.url()
    ));
    std::fs::write(&rig.config, text).unwrap();
    let acme = Collector::start(rig.broker.port, "darkleg/v1/merchants/acme/#", "sub-acme");
    let globex = Collector::start(
        rig.broker.port,
        "darkleg/v1/merchants/globex/#",
        "sub-globex",
    );
    let private = Collector::start(rig.broker.port, "acme-private/#", "sub-acme-private");
    for c in [&acme, &globex, &private] {
        assert!(c.wait_subscribed(Duration::from_secs(10)));
    }
    let _agent = rig.start_agent();
    rig.wait_ports_open();

    let ps = parcels();
    let mut picks = Vec::new();
    let mut packs = Vec::new();
    let mut dock = Vec::new();
    for (_, order, label, waybill) in &ps {
        picks.push(scan(Step::Pick, format!("400{order}"), "]C1"));
        picks.push(scan(Step::Pick, "0109506000134352".into(), "]C1"));
        packs.push(scan(Step::Pack, format!("400{order}"), "]C1"));
        packs.push(scan(Step::Pack, format!("00{label}"), "]C1"));
        dock.push(scan(Step::Handover, format!("00{label}"), "]C1"));
        dock.push(scan(Step::Handover, waybill.clone(), "]C0"));
    }
    let mut plans = Plans::new();
    let ptys = rig.take_ptys();
    let mut scanners = Vec::new();
    for ((pty, plan), (name, pace)) in ptys.into_iter().zip([picks, packs, dock]).zip([
        ("picker", 7),
        ("packer", 11),
        ("dock", 13),
    ]) {
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(pace),
            ..FramedConfig::new(name, pace)
        };
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }
    assert!(
        wait_until(Duration::from_secs(60), || scanners
            .iter()
            .all(|(s, n)| s.done(*n))),
        "every scan acked"
    );

    // Each merchant ends up with picked, packed and handed_over for each of its parcels.
    let milestones = |c: &Collector| -> BTreeMap<(String, String), serde_json::Value> {
        c.messages()
            .into_iter()
            .filter(|a| a.json["schema"] == "darkleg.milestone.v1" && a.json["parcel"].is_string())
            .map(|a| {
                let key = (
                    a.json["parcel"].as_str().unwrap().to_string(),
                    a.json["milestone"].as_str().unwrap().to_string(),
                );
                (key, a.json)
            })
            .collect()
    };
    let per_merchant = (PARCELS / 2) as usize * 3;
    assert!(
        wait_until(Duration::from_secs(30), || milestones(&acme).len()
            >= per_merchant
            && milestones(&globex).len() >= per_merchant
            && milestones(&private).len() >= per_merchant),
        "acme {} globex {} private {} of {per_merchant}",
        milestones(&acme).len(),
        milestones(&globex).len(),
        milestones(&private).len()
    );
    std::thread::sleep(Duration::from_millis(500));
    for (merchant, c) in [("acme", &acme), ("globex", &globex), ("acme", &private)] {
        let got = milestones(c);
        let own: BTreeSet<&str> = ps
            .iter()
            .filter(|p| p.0 == merchant)
            .map(|p| p.2.as_str())
            .collect();
        let seen: BTreeSet<&str> = got.keys().map(|(p, _)| p.as_str()).collect();
        assert_eq!(seen, own, "{merchant}: exactly its own parcels");
        for (_, order, label, waybill) in ps.iter().filter(|p| p.0 == merchant) {
            for m in ["picked", "packed", "handed_over"] {
                let j = &got[&(label.clone(), m.to_string())];
                assert_eq!(j["merchant"], merchant, "{j}");
                assert_eq!(j["order"], order.as_str(), "{j}");
                assert_eq!(j["site"], "e2e");
            }
            let h = &got[&(label.clone(), "handed_over".to_string())];
            assert_eq!(h["carrier"], "dhl", "{h}");
            assert_eq!(h["tracking_number"], waybill.as_str());
            assert_eq!(h["tracking_valid"], true);
        }
        // Nothing of the other merchant's, on any topic it can read.
        assert!(
            c.messages().iter().all(|a| a.json["merchant"] == merchant),
            "{merchant}"
        );
    }

    let out = Command::new(darkleg_bin())
        .args(["report", "--config"])
        .arg(&rig.config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dhl = report
        .lines()
        .find(|l| l.trim_start().starts_with("dhl"))
        .unwrap_or_else(|| panic!("no dhl line in:\n{report}"));
    assert!(dhl.contains(&format!(" {PARCELS} ")), "{report}");
    assert!(
        dhl.contains("100.0%"),
        "all tracking numbers valid: {report}"
    );
}

/// Needs parcels in the store: runs its own small site (no broker needed for export).
#[test]
fn epcis_export_validates_against_the_gs1_schema_and_carries_every_scan() {
    let mut rig = Rig::new(
        "epcis",
        &[PortKind::FramedAt("pack"), PortKind::FramedAt("handover")],
    );
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(
        "\n[epcis]\nbiz_location = \"urn:epc:id:sgln:8712345.00000.0\"\norder_gln = \"8712345000004\"\n[epcis.read_points]\n",
    );
    std::fs::write(&rig.config, text).unwrap();
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let ps = parcels();
    let mut packs = Vec::new();
    let mut dock = Vec::new();
    for (_, order, label, waybill) in &ps {
        packs.push(scan(Step::Pack, format!("400{order}"), "]C1"));
        packs.push(scan(Step::Pack, format!("00{label}"), "]C1"));
        dock.push(scan(Step::Handover, format!("00{label}"), "]C1"));
        dock.push(scan(Step::Handover, waybill.clone(), "]C0"));
    }
    let total = packs.len() + dock.len();
    let mut plans = Plans::new();
    let mut ptys = rig.take_ptys().into_iter();
    let a = start_framed(
        ptys.next().unwrap(),
        FramedConfig::new("packer", 1),
        packs,
        &mut plans,
    );
    let b = start_framed(
        ptys.next().unwrap(),
        FramedConfig::new("dock", 2),
        dock,
        &mut plans,
    );
    assert!(wait_until(Duration::from_secs(60), || a.0.done(a.1) && b.0.done(b.1)));
    // Derivation runs behind ingest: wait for the last handover to be known.
    assert!(wait_until(Duration::from_secs(20), || {
        let out = Command::new(darkleg_bin())
            .args(["report", "--json", "--config"])
            .arg(&rig.config)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["rows"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["carrier"] == "dhl" && r["parcels"] == PARCELS)
        })
    }));
    let doc = rig.dir.0.join("export.jsonld");
    let out = Command::new(darkleg_bin())
        .args(["export", "--epcis", "--config"])
        .arg(&rig.config)
        .arg("--output")
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(validate_epcis(&doc), total, "one ObjectEvent per scan");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&doc).unwrap()).unwrap();
    let events = v["epcisBody"]["eventList"].as_array().unwrap();
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["eventID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), total, "hash ids are distinct");
    assert!(ids
        .iter()
        .all(|i| i.starts_with("ni:///sha-256;") && i.ends_with("?ver=CBV2.0")));
    let departing: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["bizStep"] == "departing")
        .collect();
    assert_eq!(departing.len(), total / 2);
    // The handover of the carrier label names the parcel, its order and the waybill.
    let (_, order, label, waybill) = &ps[0];
    let e = departing
        .iter()
        .find(|e| {
            e["bizTransactionList"]
                .to_string()
                .contains(waybill.as_str())
        })
        .expect("waybill as a bill of lading");
    assert_eq!(e["epcList"][0], format!("https://id.gs1.org/00/{label}"));
    assert!(
        e["bizTransactionList"]
            .to_string()
            .contains(&format!("urn:epcglobal:cbv:bt:8712345000004:{order}")),
        "{e}"
    );
    assert_eq!(e["disposition"], "in_transit");
    // A window excludes what lies outside it.
    let out = Command::new(darkleg_bin())
        .args([
            "export",
            "--epcis",
            "--since",
            "2100-01-01T00:00:00Z",
            "--config",
        ])
        .arg(&rig.config)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["epcisBody"]["eventList"].as_array().unwrap().len(), 0);
}
