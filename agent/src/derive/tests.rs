//! Derivation on a real store: the same scans in any interleaving of devices give the same
//! parcels and the same final milestones; merchants get only their own messages; alert
//! timers follow a controllable clock and resolve with the missing scan.

use super::task::Deriver;
use crate::config::Config;
use crate::sim::workload::{dhl_waybill, sscc_key};
use crate::store::{FramedScan, Item, StoreHandle};
use darkleg_protocol::Step;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

const T0: u64 = 1_795_300_000_000; // 2026-11-21T22:26:40Z

struct Fixture {
    dir: PathBuf,
    config: Arc<Config>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("darkleg-derive-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            r#"
[gateway]
site = "ams1"
id = "gw-01"
data_dir = "{}"
timezone = "Europe/Amsterdam"

[[merchant]]
id = "acme"
order_prefixes = ["ACME-"]

[[merchant]]
id = "globex"
gs1_prefixes = ["8799999"]

[parcels]
order_close_code = "CLOSE"

[alerts]
pick_to_pack_minutes = 60

[[upstream]]
name = "central"
url = "mqtt://127.0.0.1:1"

[[upstream]]
name = "acme-up"
url = "mqtt://127.0.0.1:1"
merchant = "acme"
"#,
            dir.display()
        );
        Fixture {
            config: Arc::new(Config::parse(&text, "t.toml").unwrap()),
            dir,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (device, step, code, symbology, captured_at) for `n` parcels, per device in capture order.
fn workload(n: u64) -> BTreeMap<&'static str, Vec<(Step, String, &'static str, u64)>> {
    let mut w: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for i in 0..n {
        let t = T0 + i * 60_000;
        // Even parcels are acme's (by order number), odd ones globex's (by SSCC prefix).
        let (order, label) = if i % 2 == 0 {
            (format!("ACME-{i}"), sscc_key("8712345", i))
        } else {
            (format!("G{i}"), sscc_key("8799999", i))
        };
        let picks = w.entry("picker").or_default();
        picks.push((Step::Pick, format!("400{order}"), "]C1", t));
        picks.push((
            Step::Pick,
            format!("01{}", "09506000134352"),
            "]C1",
            t + 1_000,
        ));
        let packs = w.entry("packer").or_default();
        packs.push((Step::Pack, format!("400{order}"), "]C1", t + 20_000));
        packs.push((Step::Pack, format!("00{label}"), "]C1", t + 21_000));
        let dock = w.entry("dock").or_default();
        dock.push((Step::Handover, format!("00{label}"), "]C1", t + 40_000));
        dock.push((Step::Handover, dhl_waybill(i), "]C0", t + 41_000));
    }
    w
}

fn put(store: &StoreHandle, device: &str, seq: u64, s: &(Step, String, &str, u64)) {
    let scan = FramedScan {
        seq,
        step: s.0,
        code: s.1.clone(),
        symbology: Some(s.2.to_string()),
        operator: None,
        captured_at_ms: s.3,
        station: Some(format!("{device}-station")),
        received_at_ms: s.3 + 5,
        refused: false,
        client: crate::store::SeqClient::Firmware,
    };
    store
        .framed_blocking(device.into(), "p".into(), scan)
        .blocking_recv()
        .unwrap()
        .unwrap();
}

/// Stores the workload with devices interleaved by `seed`, deriving every few events.
/// Parcel states, the last milestone message per subject, (topic, merchant) on acme's upstream.
type Outcome = (Vec<String>, BTreeMap<String, String>, Vec<(String, String)>);

fn run(name: &str, seed: u64) -> Outcome {
    let f = Fixture::new(name);
    let (store, join) = StoreHandle::open(&f.config).unwrap();
    let mut d = Deriver::new(f.config.clone(), store.clone()).unwrap();
    let w = workload(6);
    let mut next: BTreeMap<&str, usize> = w.keys().map(|k| (*k, 0)).collect();
    let mut rng = seed | 1;
    let mut put_count = 0;
    loop {
        let open: Vec<&str> = next
            .iter()
            .filter(|(k, i)| **i < w[*k].len())
            .map(|(k, _)| *k)
            .collect();
        if open.is_empty() {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let dev = open[rng as usize % open.len()];
        let i = next[dev];
        put(&store, dev, i as u64 + 1, &w[dev][i]);
        *next.get_mut(dev).unwrap() += 1;
        put_count += 1;
        if put_count % (1 + rng as usize % 5) == 0 {
            d.step(T0).unwrap();
        }
    }
    while d.step(T0).unwrap() > 0 {}
    let mut parcels: Vec<String> = d
        .reader()
        .all_parcels()
        .unwrap()
        .into_iter()
        .map(|p| format!("{p:?}"))
        .collect();
    parcels.sort();
    // The last message per (parcel or order, milestone): what a subscriber ends up believing.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut merchant_up = Vec::new();
    for up in ["central", "acme-up"] {
        for p in d.reader().pending(up, 0, 100_000).unwrap() {
            if let Item::Message { topic, payload } = p.item {
                let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
                if up == "central" && v["schema"] == "darkleg.milestone.v1" {
                    let subject = match v["parcel"].as_str() {
                        Some(p) => p.to_string(),
                        None => format!("order {}", v["order"]),
                    };
                    let key = format!("{subject} {}", v["milestone"]);
                    let mut v = v.clone();
                    v.as_object_mut().unwrap().remove("message_id");
                    last.insert(key, v.to_string());
                }
                if up == "acme-up" {
                    merchant_up.push((topic, v["merchant"].as_str().unwrap_or("").to_string()));
                }
            }
        }
    }
    drop(d);
    drop(store);
    join.join().unwrap();
    (parcels, last, merchant_up)
}

#[test]
fn any_interleaving_of_devices_gives_the_same_milestones() {
    let (parcels, last, acme) = run("base", 1);
    // Six parcels, and their six orders (tracked from the first pick).
    assert_eq!(parcels.len(), 12);
    assert_eq!(parcels.iter().filter(|p| p.contains("\"order:")).count(), 6);
    // Picked, packed, handed over per parcel (no returns), picked per order.
    assert_eq!(last.len(), 6 * 3 + 6, "{last:#?}");
    let first = last
        .values()
        .find(|v| v.contains("\"handed_over\""))
        .unwrap();
    assert!(first.contains("\"carrier\":\"dhl\""), "{first}");
    assert!(first.contains("\"tracking_valid\":true"), "{first}");
    // The merchant's own upstream carries only its parcels.
    assert!(!acme.is_empty());
    assert!(
        acme.iter()
            .all(|(t, m)| t.starts_with("merchants/acme/") && m == "acme"),
        "{acme:?}"
    );
    for seed in [7, 42, 1234, 99_999] {
        let (p2, l2, _) = run(&format!("s{seed}"), seed);
        assert_eq!(p2, parcels, "parcel states differ for seed {seed}");
        assert_eq!(l2, last, "final milestones differ for seed {seed}");
    }
}

#[test]
fn alert_timers_follow_the_clock_and_resolve_with_the_scan() {
    let f = Fixture::new("alerts");
    let (store, join) = StoreHandle::open(&f.config).unwrap();
    let mut d = Deriver::new(f.config.clone(), store.clone()).unwrap();
    let w = workload(1);
    put(&store, "picker", 1, &w["picker"][0]);
    put(&store, "picker", 2, &w["picker"][1]);
    // Packed under its order: the parcel exists, picked at T0.
    put(&store, "packer", 1, &w["packer"][0]);
    d.step(T0).unwrap();
    let alerts = |d: &Deriver| d.reader().all_open_alerts().unwrap();
    assert!(
        alerts(&d).is_empty(),
        "no parcel yet: the pack label was not scanned"
    );
    put(&store, "packer", 2, &w["packer"][1]);
    d.step(T0 + 30_000).unwrap();
    // No cut-off configured: packed parcels wait without alert; a handover w/o label check:
    put(&store, "dock", 1, &w["dock"][0]);
    put(
        &store,
        "dock",
        2,
        &(Step::Handover, "NOT-A-LABEL".into(), "]C0", T0 + 50_000),
    );
    d.step(T0 + 60_000).unwrap();
    let open = alerts(&d);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].1, "invalid_tracking");
    // The good label rescanned: resolved.
    put(&store, "dock", 3, &w["dock"][0]);
    put(&store, "dock", 4, &w["dock"][1]);
    d.step(T0 + 70_000).unwrap();
    assert!(alerts(&d).is_empty());

    // A second parcel: picked, then nobody packs it.
    let order = "ACME-77";
    put(
        &store,
        "picker",
        3,
        &(Step::Pick, format!("400{order}"), "]C1", T0),
    );
    put(
        &store,
        "picker",
        4,
        &(Step::Pick, "0109506000134352".into(), "]C1", T0 + 1_000),
    );
    d.step(T0).unwrap();
    d.sweep(T0 + 3_500_000).unwrap();
    assert!(alerts(&d).is_empty(), "within the hour");
    d.sweep(T0 + 3_600_000 + 10_000).unwrap();
    let open = alerts(&d);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].0.as_str(), open[0].1.as_str()),
        ("order:ACME-77", "picked_not_packed")
    );
    // Packed at last (late): resolved by the scan, not by the clock.
    put(
        &store,
        "packer",
        3,
        &(Step::Pack, format!("400{order}"), "]C1", T0 + 3_700_000),
    );
    put(
        &store,
        "packer",
        4,
        &(
            Step::Pack,
            format!("00{}", sscc_key("8712345", 77)),
            "]C1",
            T0 + 3_701_000,
        ),
    );
    d.step(T0 + 3_702_000).unwrap();
    assert!(alerts(&d).is_empty(), "{:?}", alerts(&d));
    // The alert's whole life went upstream, to the merchant too.
    let msgs: Vec<String> = d
        .reader()
        .pending("acme-up", 0, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|p| match p.item {
            Item::Message { payload, .. } if payload.contains("picked_not_packed") => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].contains("\"state\":\"open\"") && msgs[1].contains("\"state\":\"resolved\""));
    drop(d);
    drop(store);
    join.join().unwrap();
}

/// Makes every derivation commit fail (as a full disk or a busy database would) while held:
/// a trigger on the watermark aborts the batch's write inside the store writer.
struct FailingCommits(rusqlite::Connection);

impl FailingCommits {
    fn install(db: &std::path::Path) -> FailingCommits {
        let c = rusqlite::Connection::open(db).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c.execute_batch(
            "CREATE TRIGGER test_fail_derive BEFORE UPDATE ON derive_watermark
             BEGIN SELECT RAISE(ABORT, 'injected commit failure'); END;",
        )
        .unwrap();
        FailingCommits(c)
    }
}

impl Drop for FailingCommits {
    fn drop(&mut self) {
        self.0
            .execute_batch("DROP TRIGGER test_fail_derive")
            .unwrap();
    }
}

#[test]
fn a_failed_commit_is_retried_from_where_the_store_is_not_where_memory_ran_to() {
    let f = Fixture::new("failed-commit");
    let (store, join) = StoreHandle::open(&f.config).unwrap();
    let mut d = Deriver::new(f.config.clone(), store.clone()).unwrap();
    let item = format!("01{}", "09506000134352");
    let scans = [
        (Step::Pick, "400ACME-1".to_string(), "]C1", T0),
        (Step::Pick, item.clone(), "]C1", T0 + 1_000),
        // The second item of ACME-1, then the picker moves on to ACME-2.
        (Step::Pick, item.clone(), "]C1", T0 + 2_000),
        (Step::Pick, "400ACME-2".to_string(), "]C1", T0 + 3_000),
    ];
    for (i, s) in scans[..2].iter().enumerate() {
        put(&store, "picker", i as u64 + 1, s);
    }
    assert_eq!(d.step(T0).unwrap(), 2);
    for (i, s) in scans[2..].iter().enumerate() {
        put(&store, "picker", i as u64 + 3, s);
    }
    {
        let _failing = FailingCommits::install(&store.path);
        assert!(
            d.step(T0).is_err(),
            "the injected failure reaches the deriver"
        );
    }
    assert_eq!(d.step(T0).unwrap(), 2, "the retry reads the same two scans");
    let items = |order: &str| d.reader().picks_of_order(order).unwrap().len();
    assert_eq!(items("ACME-1"), 2, "both items were picked for ACME-1");
    assert_eq!(items("ACME-2"), 0, "nothing was picked for ACME-2 yet");
    drop(d);
    drop(store);
    join.join().unwrap();
}

/// A split order in three parcels, each handed over under its own tracking number, then the
/// next order scanned at the pack station: the order's last message is the whole, complete
/// story. The next order, closed by the close code with a parcel still on the floor, is not.
#[test]
fn a_split_order_ends_complete_with_every_tracking_number() {
    let f = Fixture::new("orders");
    let (store, join) = StoreHandle::open(&f.config).unwrap();
    let mut d = Deriver::new(f.config.clone(), store.clone()).unwrap();
    let label = |i| format!("00{}", sscc_key("8712345", i));
    let mut t = T0;
    let mut seq: BTreeMap<&str, u64> = BTreeMap::new();
    let mut scan = |dev: &'static str, step, code: String, sym: &'static str| {
        t += 1_000;
        let n = seq.entry(dev).or_default();
        *n += 1;
        put(&store, dev, *n, &(step, code, sym, t));
        // Derive after every scan: each change is its own batch, its own message.
        d.step(T0).unwrap();
    };
    scan("packer", Step::Pack, "400ACME-100".into(), "]C1");
    for i in 1..=3 {
        scan("packer", Step::Pack, label(i), "]C1");
    }
    for i in 1..=3 {
        scan("dock", Step::Handover, label(i), "]C1");
        scan("dock", Step::Handover, dhl_waybill(100 + i), "]C0");
    }
    // The next order closes ACME-100; its second parcel never reaches the dock.
    scan("packer", Step::Pack, "400ACME-101".into(), "]C1");
    scan("packer", Step::Pack, label(4), "]C1");
    scan("packer", Step::Pack, label(5), "]C1");
    scan("dock", Step::Handover, label(4), "]C1");
    scan("dock", Step::Handover, dhl_waybill(104), "]C0");
    scan("packer", Step::Pack, "CLOSE".into(), "]C0");
    while d.step(T0).unwrap() > 0 {}

    let orders = |d: &Deriver, up: &str, order: &str| -> Vec<(String, serde_json::Value)> {
        (d.reader().pending(up, 0, 100_000).unwrap().into_iter())
            .filter_map(|p| match p.item {
                Item::Message { topic, payload } => {
                    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
                    (v["schema"] == "darkleg.order.v1" && v["order"] == order).then_some((topic, v))
                }
                _ => None,
            })
            .collect()
    };
    let split = orders(&d, "acme-up", "ACME-100");
    // Three packs and three handovers, then the close: one message each.
    assert_eq!(split.len(), 7, "{split:#?}");
    let (topic, last) = split.last().unwrap();
    assert_eq!(topic, "merchants/acme/orders/ACME-100");
    assert_eq!(last["merchant"], "acme");
    assert_eq!(last["complete"], true, "{last}");
    assert_eq!(
        last["counts"],
        serde_json::json!({"packed": 3, "handed_over": 3})
    );
    let parcels = last["parcels"].as_array().unwrap();
    assert_eq!(parcels.len(), 3);
    let mut tracking: Vec<&str> = parcels
        .iter()
        .map(|p| p["tracking_number"].as_str().unwrap())
        .collect();
    tracking.sort();
    let want: Vec<String> = (101..=103).map(dhl_waybill).collect();
    assert_eq!(tracking, want);
    for p in parcels {
        assert_eq!(p["milestone"], "handed_over", "{p}");
        assert_eq!(p["fulfillment_status"], "carrier_picked_up", "{p}");
        assert_eq!(p["carrier"], "dhl", "{p}");
        assert_eq!(p["tracking_valid"], true, "{p}");
    }
    for (_, v) in &split[..split.len() - 1] {
        assert_eq!(v["complete"], false, "complete before its close: {v}");
    }
    // Every parcel handed over but the order still open: not complete yet.
    assert_eq!(
        split[5].1["counts"],
        serde_json::json!({"packed": 3, "handed_over": 3})
    );
    assert_eq!(
        split[0].1["parcels"][0]["fulfillment_status"],
        "label_printed"
    );
    let ids: std::collections::BTreeSet<&str> = split
        .iter()
        .map(|(_, v)| v["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), split.len(), "each update is its own message");
    // The site's own upstream gets the same order updates.
    assert_eq!(orders(&d, "central", "ACME-100").len(), split.len());

    let open = orders(&d, "acme-up", "ACME-101");
    let (_, last) = open.last().unwrap();
    assert_eq!(
        last["counts"],
        serde_json::json!({"packed": 2, "handed_over": 1})
    );
    assert_eq!(
        last["complete"], false,
        "a parcel is still on the floor: {last}"
    );
    assert!(open.iter().all(|(_, v)| v["complete"] == false));
    assert!(
        d.reader().order_closed("ACME-101").unwrap().is_some(),
        "the close code closed it"
    );
    // The packer goes back to ACME-100 for a fourth parcel: the earlier close is not the end
    // of the order any more — a shop must not be told `complete` while parcels still come.
    put(
        &store,
        "packer",
        9,
        &(Step::Pack, "400ACME-100".into(), "]C1", T0 + 17_000),
    );
    put(
        &store,
        "packer",
        10,
        &(Step::Pack, label(6), "]C1", T0 + 18_000),
    );
    // …and hands it over: every packed parcel at a carrier, but no close since that pack.
    put(
        &store,
        "dock",
        9,
        &(Step::Handover, label(6), "]C1", T0 + 19_000),
    );
    put(
        &store,
        "dock",
        10,
        &(Step::Handover, dhl_waybill(106), "]C0", T0 + 20_000),
    );
    while d.step(T0).unwrap() > 0 {}
    let again = orders(&d, "acme-up", "ACME-100");
    let (_, last) = again.last().unwrap();
    assert_eq!(
        last["counts"],
        serde_json::json!({"packed": 4, "handed_over": 4})
    );
    assert_eq!(last["complete"], false, "reopened by a later pack: {last}");
    drop(d);
    drop(store);
    join.join().unwrap();
}
