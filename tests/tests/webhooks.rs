//! Webhooks end to end: ASCII pack and handover stations make milestones; the agent POSTs
//! them, signed (Standard Webhooks 1.0, two keys), to local HTTPS receivers that check
//! every signature with their own HMAC. Faults: the receiver down at first, 500s, a request
//! stalled past the timeout, a 429 with Retry-After, a kill -9 of the agent mid-stream; a
//! 422 dead-lettered and replayed; a 410 that disables the endpoint until a replay.

use darkleg_agent::sim::broker::free_port;
use darkleg_agent::sim::scanner::write_ascii_scan;
use darkleg_protocol::Step;
use darkleg_tests::webhook_receiver::{whsec, Hit, Receiver, Reply};
use darkleg_tests::workload::{dhl_waybill, sscc_key, PlannedScan};
use darkleg_tests::*;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const KEY_OLD: &[u8] = b"darkleg-test-key-old-0123456789ab";
const KEY_NEW: &[u8] = b"darkleg-test-key-new-0123456789ab";

fn scan(step: Step, code: String, sym: &str) -> PlannedScan {
    PlannedScan {
        step,
        code,
        symbology: Some(sym.into()),
    }
}

/// (order, SSCC) of parcel `i`: even ones acme's, odd ones globex's.
fn parcel(i: u64) -> (String, String) {
    if i.is_multiple_of(2) {
        (format!("ACME-{i}"), sscc_key("8712345", i))
    } else {
        (format!("GLX-{i}"), sscc_key("8799999", i))
    }
}

/// One line from a plain scanner; a write the pty refuses (the agent's port closed by the
/// kill, not reopened yet) is tried again, so no scan is lost on our side.
fn line(pty: &mut scanner::Pty, s: PlannedScan) {
    let ok = wait_until(Duration::from_secs(10), || {
        write_ascii_scan(&mut pty.master, &s).is_ok()
    });
    assert!(ok, "writing {s:?}");
}

fn pack(pty: &mut scanner::Pty, i: u64) {
    let (order, sscc) = parcel(i);
    line(pty, scan(Step::Pack, format!("400{order}"), "]C1"));
    line(pty, scan(Step::Pack, format!("00{sscc}"), "]C1"));
}

fn hand_over(pty: &mut scanner::Pty, i: u64) {
    let (_, sscc) = parcel(i);
    line(pty, scan(Step::Handover, format!("00{sscc}"), "]C1"));
    line(pty, scan(Step::Handover, dhl_waybill(i), "]C0"));
}

/// The parcel id a milestone names (its SSCC without the AI).
fn parcel_id(i: u64) -> String {
    parcel(i).1
}

/// Certificates, the secret file (two keys: rotation) and the webhook and merchant tables.
fn setup(dir: &Path, hooks: &str) -> String {
    darkleg_tests::tls::make_certs(dir);
    let secret = dir.join("whsec");
    std::fs::write(&secret, format!("{}\n{}\n", whsec(KEY_NEW), whsec(KEY_OLD))).unwrap();
    format!(
        "[[merchant]]\nid = \"acme\"\norder_prefixes = [\"ACME-\"]\n\n[[merchant]]\nid = \"globex\"\norder_prefixes = [\"GLX-\"]\n\n{}\n",
        hooks
            .replace("{ca}", &dir.join("ca.pem").display().to_string())
            .replace("{secret}", &secret.display().to_string())
    )
}

fn keys() -> Vec<Vec<u8>> {
    vec![KEY_OLD.to_vec(), KEY_NEW.to_vec()]
}

/// Every request signed with both keys, each signature verifying, JSON, a fresh timestamp.
fn assert_well_formed(hits: &[Hit], who: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for h in hits {
        assert!(h.signed_ok, "{who}: a signature did not verify: {h:?}");
        assert_eq!(h.signatures, 2, "{who}: one signature per key: {h:?}");
        assert_eq!(h.content_type, "application/json", "{who}");
        assert!(
            h.timestamp + 300 > now && h.timestamp <= now + 5,
            "{who}: {h:?}"
        );
        assert!(h.id.starts_with("msg_"), "{who}: {h:?}");
    }
}

/// Per parcel, the first accepted delivery of `packed` comes before that of `handed_over`.
fn assert_parcel_order(accepted: &[Hit], who: &str) {
    let mut first: HashMap<(String, String), usize> = HashMap::new();
    for (i, h) in accepted.iter().enumerate() {
        if let Some(p) = &h.parcel {
            first.entry((p.clone(), h.kind.clone())).or_insert(i);
        }
    }
    for ((p, kind), at) in &first {
        if kind == "parcel.handed_over" {
            let packed = first.get(&(p.clone(), "parcel.packed".into()));
            assert!(
                packed.is_some_and(|x| x < at),
                "{who}: parcel {p} handed_over (#{at}) before packed ({packed:?})"
            );
        }
    }
}

#[test]
fn webhooks_arrive_signed_in_order_through_outages_errors_and_a_kill() {
    const N: u64 = 24;
    let mut rig = Rig::new(
        "webhooks",
        &[PortKind::Ascii("pack"), PortKind::Ascii("handover")],
    );
    let (all_port, acme_port) = (free_port().unwrap(), free_port().unwrap());
    let extra = setup(
        &rig.dir.0,
        &format!(
            r#"
[[webhook]]
name = "all"
url = "https://localhost:{all_port}/hooks/darkleg?source=test"
secret_file = "{{secret}}"
ca_file = "{{ca}}"
timeout_secs = 1
max_in_flight = 4

[[webhook]]
name = "acme-shop"
url = "https://localhost:{acme_port}/acme"
merchant = "acme"
secret_file = "{{secret}}"
ca_file = "{{ca}}"
"#
        ),
    );
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&extra);
    std::fs::write(&rig.config, text).unwrap();
    // acme's endpoint takes everything; the general one is down for a start.
    let acme = Receiver::start(
        acme_port,
        &rig.dir.0,
        keys(),
        Box::new(|_, _| Reply::Status(200, None)),
    );
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let mut ptys = rig.take_ptys();
    let (mut packer, mut dock) = (ptys.remove(0), ptys.remove(0));
    for i in 0..N / 2 {
        pack(&mut packer, i);
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..N / 4 {
        hand_over(&mut dock, i);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Up now: five 500s, one request stalled past the 1 s timeout, one 429, then fine.
    let all = Receiver::start(
        all_port,
        &rig.dir.0,
        keys(),
        Box::new(|_, n| match n {
            0..=4 => Reply::Status(500, None),
            5 => Reply::Stall(Duration::from_millis(2500)),
            6 => Reply::Status(429, Some("1".into())),
            _ => Reply::Status(200, None),
        }),
    );
    assert!(
        wait_until(Duration::from_secs(30), || all.accepted().len() >= 4),
        "the general endpoint takes messages once it is up"
    );
    // kill -9 mid-stream, and back (plain scanners cannot resend: nothing is scanned
    // while the agent is down).
    agent.kill9();
    agent = rig.start_agent();
    assert!(
        wait_until(Duration::from_secs(20), || {
            status(&rig.config)["ports"]
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["connected"] == true))
        }),
        "the restarted agent has both stations open"
    );
    for i in N / 4..N / 2 {
        hand_over(&mut dock, i);
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in N / 2..N {
        pack(&mut packer, i);
        std::thread::sleep(Duration::from_millis(10));
        hand_over(&mut dock, i);
        std::thread::sleep(Duration::from_millis(10));
    }
    let expected: BTreeSet<(String, String)> = (0..N)
        .flat_map(|i| {
            ["parcel.packed", "parcel.handed_over"].map(|k| (parcel_id(i), k.to_string()))
        })
        .collect();
    let got = |r: &Receiver| -> BTreeSet<(String, String)> {
        r.accepted()
            .into_iter()
            .filter_map(|h| Some((h.parcel?, h.kind)))
            .collect()
    };
    let acme_expected: BTreeSet<_> = expected
        .iter()
        .filter(|(p, _)| (0..N).step_by(2).any(|i| parcel_id(i) == *p))
        .cloned()
        .collect();
    let done = wait_until(Duration::from_secs(60), || {
        expected.is_subset(&got(&all)) && acme_expected.is_subset(&got(&acme))
    });
    let arrived = got(&all);
    let missing: Vec<_> = expected.difference(&arrived).collect();
    assert!(
        done,
        "every milestone arrives at least once; missing at `all`: {missing:?}"
    );

    let hits = all.hits();
    assert_well_formed(&hits, "all");
    assert_well_formed(&acme.hits(), "acme-shop");
    // The faults happened, and each failed attempt's message came again under its id.
    let failed: Vec<&Hit> = hits.iter().filter(|h| !h.accepted()).collect();
    assert!(failed.iter().filter(|h| h.answered == 500).count() >= 5);
    assert!(
        failed.iter().any(|h| h.answered == 0),
        "the stalled request"
    );
    let throttled = hits.iter().find(|h| h.answered == 429).expect("the 429");
    for f in &failed {
        assert!(
            hits.iter()
                .any(|h| h.accepted() && h.id == f.id && h.at > f.at),
            "a retry of {} under the same webhook-id was accepted",
            f.id
        );
    }
    let retry = hits
        .iter()
        .find(|h| h.id == throttled.id && h.at > throttled.at)
        .unwrap();
    assert!(
        retry.at.duration_since(throttled.at) >= Duration::from_millis(950),
        "Retry-After: 1 honoured ({:?})",
        retry.at.duration_since(throttled.at)
    );
    // One id, one message: a webhook-id never names two bodies.
    let mut by_id: HashMap<&str, (&str, &Option<String>)> = HashMap::new();
    for h in &hits {
        let prev = by_id.insert(&h.id, (&h.kind, &h.parcel));
        assert!(prev.is_none_or(|p| p == (&h.kind, &h.parcel)), "{h:?}");
    }
    // acme's endpoint: acme's parcels only, and all of them.
    for h in acme.hits() {
        assert_eq!(h.merchant.as_deref(), Some("acme"), "{h:?}");
        assert!(h.order.as_deref().is_some_and(|o| o.starts_with("ACME-")));
    }
    assert_parcel_order(&all.accepted(), "all");
    assert_parcel_order(&acme.accepted(), "acme-shop");
    // Delivered rows leave the outbox.
    assert!(
        wait_until(Duration::from_secs(10), || {
            status(&rig.config)["upstreams"]
                .as_array()
                .is_some_and(|u| {
                    u.iter()
                        .filter(|u| u["name"] == "all" || u["name"] == "acme-shop")
                        .all(|u| u["backlog"] == 0)
                })
        }),
        "webhook backlogs drain"
    );
    agent.stop();
    let log = std::fs::read_to_string(&rig.log).unwrap();
    assert!(
        log.contains("webhook not delivered"),
        "the failures are logged"
    );
    for k in [KEY_OLD, KEY_NEW] {
        let s = whsec(k);
        assert!(!log.contains(&s[6..]), "a secret in the log");
    }
    println!(
        "webhooks: {} requests to `all` ({} failed and retried), {} to acme-shop",
        hits.len(),
        failed.len(),
        acme.hits().len()
    );
}

fn webhook_status(config: &Path) -> serde_json::Value {
    status(config)["webhooks"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == "shop").cloned())
        .unwrap_or_default()
}

fn shop_backlog(config: &Path) -> Option<u64> {
    status(config)["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == "shop")?["backlog"]
        .as_u64()
}

fn replay(config: &Path) -> String {
    let out = Command::new(darkleg_bin())
        .args(["webhooks", "replay", "shop", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `darkleg status` as an operator reads it.
fn status_text(config: &Path) -> String {
    let out = Command::new(darkleg_bin())
        .args(["status", "--config"])
        .arg(config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain pack scanner and one webhook `shop` carrying milestones, on fresh ports; the rig
/// and the webhook's and the status server's ports. The webhook table is the config's last.
fn shop_rig(name: &str) -> (Rig, u16, u16) {
    let rig = Rig::new(name, &[PortKind::Ascii("pack")]);
    let (port, http) = (free_port().unwrap(), free_port().unwrap());
    let extra = setup(
        &rig.dir.0,
        &format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[[webhook]]\nname = \"shop\"\nurl = \"https://localhost:{port}/h\"\nsecret_file = \"{{secret}}\"\nca_file = \"{{ca}}\"\ncarries = [\"milestones\"]\n"
        ),
    );
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(&extra);
    std::fs::write(&rig.config, text).unwrap();
    (rig, port, http)
}

#[test]
fn a_refused_message_is_dead_lettered_and_replayed_and_410_disables_until_replay() {
    let (mut rig, port, http) = shop_rig("webhook-dead");
    let bad = parcel_id(3);
    let shop = {
        let bad = bad.clone();
        Receiver::start(
            port,
            &rig.dir.0,
            keys(),
            Box::new(move |h, _| {
                if h.parcel.as_deref() == Some(&bad) {
                    Reply::Status(422, None)
                } else {
                    Reply::Status(200, None)
                }
            }),
        )
    };
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let mut packer = rig.take_ptys().remove(0);
    for i in 0..6 {
        pack(&mut packer, i);
        std::thread::sleep(Duration::from_millis(20));
    }
    let parcels_in = |r: &Receiver| -> BTreeSet<String> {
        r.accepted().into_iter().filter_map(|h| h.parcel).collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            parcels_in(&shop).len() == 5 && webhook_status(&rig.config)["dead_letters"] == 1
        }),
        "five delivered, one dead-lettered: {:?}",
        webhook_status(&rig.config)
    );
    // Sent once: a 422 is not retried.
    let refused = shop.hits().iter().filter(|h| h.answered == 422).count();
    assert_eq!(refused, 1);
    assert_eq!(
        shop_backlog(&rig.config),
        Some(0),
        "dead letters leave the outbox"
    );
    let metrics = http_get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("darkleg_webhook_dead_letters{webhook=\"shop\"} 1"),
        "{metrics}"
    );
    let text = status_text(&rig.config);
    assert!(
        text.contains("dead letters      1 (last: HTTP 422"),
        "{text}"
    );
    let page = http_get(http, "/").unwrap();
    assert!(page.contains("<h2>Webhooks</h2>"), "{page}");

    // Fixed at the receiver: replayed, with the agent running.
    shop.set_policy(Box::new(|_, _| Reply::Status(200, None)));
    let said = replay(&rig.config);
    assert!(said.contains("1 dead letter(s) queued again"), "{said}");
    assert!(
        wait_until(Duration::from_secs(15), || parcels_in(&shop).contains(&bad)),
        "the replayed message arrives"
    );
    let first = shop.hits().into_iter().find(|h| h.answered == 422).unwrap();
    assert!(
        shop.accepted().iter().any(|h| h.id == first.id),
        "the replay carries the same webhook-id"
    );
    assert!(wait_until(Duration::from_secs(5), || webhook_status(
        &rig.config
    )["dead_letters"]
        == 0));

    // 410: disabled loudly, nothing lost, no more requests until a replay.
    shop.set_policy(Box::new(|_, _| Reply::Status(410, None)));
    for i in 6..9 {
        pack(&mut packer, i);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wait_until(Duration::from_secs(15), || {
            !webhook_status(&rig.config)["disabled_at_ms"].is_null()
        }),
        "a 410 disables the webhook"
    );
    assert!(
        wait_until(Duration::from_secs(5), || shop_backlog(&rig.config)
            == Some(3)),
        "its messages stay in the outbox: {:?}",
        shop_backlog(&rig.config)
    );
    let asked = shop.hits().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(shop.hits().len(), asked, "a disabled webhook sends nothing");
    let metrics = http_get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("darkleg_webhook_disabled{webhook=\"shop\"} 1"),
        "{metrics}"
    );
    assert!(status_text(&rig.config).contains("DISABLED"));

    // A restart keeps it disabled; a replay lifts it and the three arrive.
    agent.kill9();
    agent = rig.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(shop.hits().len(), asked, "still disabled after a restart");
    shop.set_policy(Box::new(|_, _| Reply::Status(200, None)));
    let said = replay(&rig.config);
    assert!(said.contains("re-enabled after its 410"), "{said}");
    assert!(
        wait_until(Duration::from_secs(15), || {
            (6..9).all(|i| parcels_in(&shop).contains(&parcel_id(i)))
                && shop_backlog(&rig.config) == Some(0)
        }),
        "all arrive once re-enabled"
    );
    assert_well_formed(&shop.hits(), "shop");
    agent.stop();
    let log = std::fs::read_to_string(&rig.log).unwrap();
    assert!(log.contains("WEBHOOK DISABLED"), "the 410 is loud");
    assert!(log.contains("dead-lettered"), "the 422 is logged");
}

/// The drain figure: a backlog of N milestones (one pack per parcel, derived while the
/// endpoint is down), then the agent restarted against a receiver that takes everything.
/// `cargo test --release -p darkleg-tests --test webhooks -- --ignored --nocapture`;
/// `DARKLEG_WEBHOOK_BACKLOG=N` (default 20,000).
#[test]
#[ignore = "a measurement: run with --release --ignored"]
fn drain_a_webhook_backlog() {
    let n: u64 = std::env::var("DARKLEG_WEBHOOK_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rig = Rig::new("webhook-drain", &[]);
    let port = free_port().unwrap();
    let extra = setup(
        &rig.dir.0,
        &format!("[[webhook]]\nname = \"shop\"\nurl = \"https://localhost:{port}/h\"\nsecret_file = \"{{secret}}\"\nca_file = \"{{ca}}\"\ncarries = [\"milestones\"]\n"),
    );
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    // No MQTT upstream: only the webhook's drain is measured.
    text = text.replace("[[upstream]]", "[[upstream_unused]]");
    text = text[..text.find("[[upstream_unused]]").unwrap_or(text.len())].to_string();
    text.push_str(&extra);
    std::fs::write(&rig.config, text).unwrap();
    let config = darkleg_agent::config::Config::load(&rig.config).unwrap();
    {
        let (store, writer) = darkleg_agent::store::StoreHandle::open(&config).unwrap();
        let codes = (0..n).flat_map(|i| {
            let (order, sscc) = parcel(i);
            [
                (Step::Pack, format!("400{order}")),
                (Step::Pack, format!("00{sscc}")),
            ]
        });
        write_device_scans(&store, "packer", codes);
        drop(store);
        writer.join().unwrap();
    }
    // Derive with the endpoint down, until the whole backlog is owed to the webhook.
    let mut agent = rig.start_agent();
    assert!(
        wait_until(Duration::from_secs(600), || shop_backlog(&rig.config)
            == Some(n)),
        "derived {n} milestones: backlog {:?}",
        shop_backlog(&rig.config)
    );
    agent.stop();
    let shop = Receiver::start(
        port,
        &rig.dir.0,
        keys(),
        Box::new(|_, _| Reply::Status(200, None)),
    );
    let start = std::time::Instant::now();
    let _agent = rig.start_agent();
    assert!(
        wait_until(Duration::from_secs(600), || shop_backlog(&rig.config)
            == Some(0)),
        "drained"
    );
    let secs = start.elapsed().as_secs_f64();
    let accepted = shop.accepted();
    let ids: BTreeSet<&str> = accepted.iter().map(|h| h.id.as_str()).collect();
    assert!(ids.len() as u64 >= n);
    assert!(accepted.iter().all(|h| h.signed_ok));
    println!(
        "webhook drain: {n} messages in {secs:.2} s = {:.0} messages/s (max_in_flight 8, HTTPS, signed with 2 keys, agent start included; {} requests)",
        n as f64 / secs,
        accepted.len()
    );
}

#[test]
fn a_merchant_endpoint_never_gets_another_merchants_backlog_after_a_config_change() {
    // Who is owed a row is decided when it is written. A webhook for every merchant builds a
    // backlog while its endpoint is down; then the operator scopes it to acme. globex's rows
    // must not be POSTed to acme's shop: dead-lettered, counted, and acme's delivered.
    let (mut rig, port, _) = shop_rig("webhook-rescoped");
    let mut agent = rig.start_agent();
    rig.wait_ports_open();
    let mut packer = rig.take_ptys().remove(0);
    for i in 0..4 {
        pack(&mut packer, i);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wait_until(Duration::from_secs(20), || shop_backlog(&rig.config)
            == Some(4)),
        "four packed milestones owed: {:?}",
        shop_backlog(&rig.config)
    );
    agent.stop();
    // The webhook table is the config's last: scope it to acme.
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str("merchant = \"acme\"\n");
    std::fs::write(&rig.config, text).unwrap();
    let shop = Receiver::start(
        port,
        &rig.dir.0,
        keys(),
        Box::new(|_, _| Reply::Status(200, None)),
    );
    let _agent = rig.start_agent();
    let acme: BTreeSet<String> = [0, 2].iter().map(|&i| parcel_id(i)).collect();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let got: BTreeSet<String> = shop
                .accepted()
                .into_iter()
                .filter_map(|h| h.parcel)
                .collect();
            got == acme && webhook_status(&rig.config)["dead_letters"] == 2
        }),
        "acme's two delivered, globex's two dead-lettered: {:?} {:?}",
        shop.hits()
            .iter()
            .map(|h| h.parcel.clone())
            .collect::<Vec<_>>(),
        webhook_status(&rig.config)
    );
    let globex = [parcel_id(1), parcel_id(3)];
    assert!(
        shop.hits()
            .iter()
            .all(|h| !globex.iter().any(|g| h.parcel.as_deref() == Some(g))),
        "no globex parcel reached acme's endpoint"
    );
    assert_eq!(shop_backlog(&rig.config), Some(0));
}
