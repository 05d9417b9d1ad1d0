//! A split order end to end: a pack station (simulated firmware on a pty) packs one order into
//! three parcels and moves on to the next order, the dock hands each over under its own DHL
//! waybill; the merchant's subscriber on the orders topic, on a real Mosquitto, ends with the
//! complete order: three parcels, every tracking number.

use darkleg_agent::sim::collector::Collector;
use darkleg_protocol::Step;
use darkleg_tests::scanner::FramedConfig;
use darkleg_tests::workload::{dhl_waybill, sscc_key, PlannedScan};
use darkleg_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn scan(step: Step, code: String, sym: &str) -> PlannedScan {
    PlannedScan {
        step,
        code,
        symbology: Some(sym.to_string()),
    }
}

#[test]
fn a_split_order_arrives_complete_with_every_tracking_number() {
    let mut rig = Rig::new(
        "orders",
        &[PortKind::FramedAt("pack"), PortKind::FramedAt("handover")],
    );
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str("\n[[merchant]]\nid = \"acme\"\norder_prefixes = [\"ACME-\"]\n");
    std::fs::write(&rig.config, text).unwrap();
    let orders = Collector::start(
        rig.broker.port,
        "darkleg/v1/merchants/acme/orders/#",
        "sub-orders",
    );
    assert!(orders.wait_subscribed(Duration::from_secs(10)));
    let _agent = rig.start_agent();
    rig.wait_ports_open();

    let labels: Vec<String> = (1..=3).map(|i| sscc_key("8712345", 100 + i)).collect();
    let waybills: Vec<String> = (1..=3).map(|i| dhl_waybill(100 + i)).collect();
    let mut packs = vec![scan(Step::Pack, "400ACME-100".into(), "]C1")];
    packs.extend(
        labels
            .iter()
            .map(|l| scan(Step::Pack, format!("00{l}"), "]C1")),
    );
    // The next order: the pack station is done with ACME-100.
    packs.push(scan(Step::Pack, "400ACME-101".into(), "]C1"));
    let mut dock = Vec::new();
    for (l, w) in labels.iter().zip(&waybills) {
        dock.push(scan(Step::Handover, format!("00{l}"), "]C1"));
        dock.push(scan(Step::Handover, w.clone(), "]C0"));
    }
    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    for ((pty, plan), (name, pace)) in rig
        .take_ptys()
        .into_iter()
        .zip([packs, dock])
        .zip([("packer", 11), ("dock", 13)])
    {
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

    let of_order = |c: &Collector| -> Vec<serde_json::Value> {
        (c.messages().into_iter())
            .filter(|a| a.json["schema"] == "darkleg.order.v1" && a.json["order"] == "ACME-100")
            .map(|a| {
                assert_eq!(a.topic, "darkleg/v1/merchants/acme/orders/ACME-100");
                a.json
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || of_order(&orders)
            .iter()
            .any(|j| j["complete"] == true)),
        "no complete order message: {:#?}",
        of_order(&orders)
    );
    let got = of_order(&orders);
    let last = got.last().unwrap();
    assert_eq!(
        last["complete"], true,
        "the last word is complete: {got:#?}"
    );
    assert_eq!(last["merchant"], "acme");
    assert_eq!(
        last["counts"],
        serde_json::json!({"packed": 3, "handed_over": 3})
    );
    let tracking: BTreeSet<&str> = (last["parcels"].as_array().unwrap().iter())
        .map(|p| {
            assert_eq!(p["fulfillment_status"], "carrier_picked_up", "{p}");
            p["tracking_number"].as_str().unwrap()
        })
        .collect();
    assert_eq!(tracking, waybills.iter().map(String::as_str).collect());
}
