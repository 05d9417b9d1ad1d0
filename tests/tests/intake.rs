//! The HTTP intake end to end: the real binary, a private Mosquitto, real sockets. Answers
//! (200 stored/duplicate, 401, 400, 409, 413, 507), SIGHUP re-reading the tokens (and the TLS
//! certificate), TLS with a rustls client, and a SIGKILL of the agent under load from many
//! devices: every scan answered `stored` or `duplicate` arrives upstream, once by event id.

use darkleg_agent::sim::broker::free_port;
use darkleg_tests::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "tok-0123456789abcdef";

/// A rig with `[http]` and `[intake]` (tokens file with [`TOKEN`]) and `more` config.
fn rig(name: &str, more: &str) -> (Rig, u16) {
    let http = free_port().unwrap();
    let dir = Scratch::new(&format!("{name}-tok"));
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, format!("# floor apps\n{TOKEN}\n")).unwrap();
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[intake]\ntokens_file = \"{}\"\n{more}\n[intake.stations]\ndock-1 = \"handover\"\n",
        tokens.display()
    );
    std::mem::forget(dir); // the tokens file lives as long as the test
    (Rig::with_store(name, &[], &extra), http)
}

fn tokens_path(rig: &Rig) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let line = text.lines().find(|l| l.starts_with("tokens_file")).unwrap();
    line.split('"').nth(1).unwrap().into()
}

fn must(port: u16, token: Option<&str>, body: Value) -> (u16, String, Value) {
    post_scans(port, token, &body.to_string()).expect("the intake answers")
}

fn wait_serving(port: u16) {
    assert!(
        wait_until(Duration::from_secs(20), || http_get(port, "/healthz")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))),
        "the agent serves HTTP"
    );
}

#[test]
fn the_intake_answers_every_path_and_stored_scans_arrive_with_their_step() {
    let (rig, http) = rig("intake-paths", "");
    let agent = rig.start_agent();
    wait_serving(http);
    let t = Some(TOKEN);
    let scan = |seq: u64, code: &str| json!({"device":"tc52-07","seq":seq,"code":code,"station":"dock-1","captured_at":"2026-11-22T14:02:11.250Z"});

    let (code, _, body) = must(http, t, scan(1, "1Z999AA10123456784"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "stored", "{body}");
    let (code, _, body) = must(http, t, scan(1, "1Z999AA10123456784"));
    assert_eq!(
        (code, body["results"][0]["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );

    // Auth: missing and wrong tokens.
    let (code, head, _) = must(http, None, scan(2, "X"));
    assert_eq!(code, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(must(http, Some("tok-wrong"), scan(2, "X")).0, 401);

    // 400: broken JSON, a missing field named.
    let (code, _, body) = post_scans(http, t, "{\"device\":").unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, _, body) = must(
        http,
        t,
        json!({"scans":[{"device":"tc52-07","seq":2,"code":"X","step":"pack"},{"device":"tc52-07","code":"Y","step":"pack"}]}),
    );
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("scans[1].seq")),
        "{body}"
    );
    let (code, _, body) = must(http, t, json!({"device":"tc52-07","seq":2,"code":"X"}));
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("step")),
        "{body}"
    );

    // 409: a different code under a stored seq; a gap names the expected seq.
    let (code, _, body) = must(http, t, scan(1, "DIFFERENT"));
    assert_eq!(
        (code, body["results"][0]["status"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (code, _, body) = must(http, t, scan(5, "1Z999AA10123456785"));
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["expected_seq"], 2, "{body}");
    assert_eq!(body["results"][0]["status"], "gap", "{body}");

    // A refused code consumes its seq: rejected with a reason, the next seq goes on.
    let (code, _, body) = must(
        http,
        t,
        json!({"scans":[
        {"device":"tc52-07","seq":2,"code":"bad\u{7}code","step":"pack"},
        {"device":"tc52-07","seq":3,"code":"00340434161094042557","step":"pack"}]}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "rejected", "{body}");
    assert!(body["results"][0]["reason"].is_string(), "{body}");
    assert_eq!(body["results"][1]["status"], "stored", "{body}");

    // 413: a body over 1 MiB is refused from its Content-Length, unread.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(s, "POST /v1/scans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2000000\r\n\r\n{{\"scans\":[").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"device":"x","seq":i+1,"code":"c","step":"pick"}))
        .collect();
    assert_eq!(must(http, t, json!({ "scans": many })).0, 413);

    // SIGHUP re-reads the tokens: the old one goes, the new one works.
    std::fs::write(tokens_path(&rig), "# rotated\ntok-new-42\n").unwrap();
    let pid = agent.pid().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(
        wait_until(Duration::from_secs(5), || post_scans(
            http,
            Some("tok-new-42"),
            &scan(4, "00340434161094042564").to_string()
        )
        .is_some_and(|r| r.0 == 200)),
        "the new token is taken"
    );
    assert_eq!(must(http, t, scan(5, "X")).0, 401, "the old token is gone");
    assert!(
        !std::fs::read_to_string(&rig.log).unwrap().contains(TOKEN),
        "tokens are never logged"
    );

    // Upstream: seqs 1, 3, 4 with their steps (station dock-1 → handover).
    assert!(wait_until(Duration::from_secs(20), || rig.collector.len() >= 3));
    let got: BTreeMap<u64, Value> = rig
        .collector
        .messages()
        .into_iter()
        .map(|a| (a.json["seq"].as_u64().unwrap(), a.json))
        .collect();
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 3, 4]);
    assert_eq!(got[&1]["step"], "handover");
    assert_eq!(got[&1]["captured_at"], "2026-11-22T14:02:11.250Z");
    assert_eq!(got[&3]["step"], "pack");

    // Status and metrics show the device and the answers.
    let st = status(&rig.config);
    let dev = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "tc52-07")
        .expect("device in status")
        .clone();
    assert_eq!(dev["last_seq"], 4, "{dev}");
    assert!(
        dev["conflicts"].as_i64().unwrap_or(0) >= 1,
        "conflict counted: {dev}"
    );
    let m = http_get(http, "/metrics").unwrap();
    for line in [
        "darkleg_intake_requests_total{status=\"409\"} 2",
        "darkleg_intake_scans_total{result=\"rejected\"} 1",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    // Three refusals of ours, and any poll with the new token that came before the reload.
    let unauthorized: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("darkleg_intake_requests_total{status=\"401\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(unauthorized >= 3, "401s counted: {unauthorized}\n{m}");
    // Every answer the store gave (200, 409) is in the ack-latency histogram under
    // source="http"; refusals before the store (401, 400, 413) are not acks.
    let sample = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing\n{m}")) as u64
    };
    let answered = sample("darkleg_intake_requests_total{status=\"200\"}")
        + sample("darkleg_intake_requests_total{status=\"409\"}");
    assert!(answered >= 4, "{m}");
    assert_eq!(
        sample("darkleg_ack_latency_seconds_count{source=\"http\"}"),
        answered,
        "{m}"
    );
    assert_eq!(
        sample("darkleg_ack_latency_seconds_bucket{source=\"http\",le=\"+Inf\"}"),
        answered
    );
}

#[test]
fn a_full_outbox_is_507_with_retry_after() {
    let (mut rig, http) = rig("intake-full", "");
    let text = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        text.replace("[http]", "[store]\nmax_db_mb = 1\n\n[http]"),
    )
    .unwrap();
    rig.broker.stop();
    let _agent = rig.start_agent();
    wait_serving(http);
    let mut seq = 0u64;
    let mut last = (0, String::new(), Value::Null);
    for _ in 0..200 {
        let scans: Vec<Value> = (0..50).map(|i| json!({"device":"app-1","seq":seq+i+1,"code":format!("{:05}-{}", seq+i, "X".repeat(230)),"step":"pack"})).collect();
        last = must(http, Some(TOKEN), json!({ "scans": scans }));
        if last.0 != 200 {
            break;
        }
        seq += 50;
    }
    let (code, head, body) = last;
    assert_eq!(code, 507, "{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "not_stored"),
        "{body}"
    );
    assert!(seq > 0, "some scans fit before the outbox was full");
}

#[test]
fn the_intake_over_tls_with_a_rustls_client() {
    let certs = Scratch::new("intake-tls-certs");
    darkleg_tests::tls::make_certs(&certs.0);
    let (rig, http) = rig(
        "intake-tls",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            certs.0.join("server.pem").display(),
            certs.0.join("server.key").display()
        ),
    );
    let agent = rig.start_agent();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(certs.0.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let config = Arc::new(config);
    let tls_post = |body: Value| -> Option<(u16, String, Value)> {
        let sock = std::net::TcpStream::connect(("127.0.0.1", http)).ok()?;
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).ok()?;
        exchange_scans(
            rustls::StreamOwned::new(conn, sock),
            Some(TOKEN),
            &body.to_string(),
        )
    };
    let scan = json!({"device":"tls-app","seq":1,"code":"00340434161094042557","step":"pick"});
    assert!(
        wait_until(Duration::from_secs(20), || tls_post(scan.clone()).is_some()),
        "TLS answers"
    );
    let (code, _, body) = tls_post(scan.clone()).unwrap();
    assert_eq!(
        (code, body["results"][0]["status"].as_str()),
        (200, Some("duplicate")),
        "{body}"
    );
    // Plain HTTP on the TLS listener gets no answer.
    assert!(post_scans(http, Some(TOKEN), &scan.to_string()).is_none_or(|r| r.0 != 200));
    // ... and is said in the log (and counted on /metrics), not only at debug level.
    let logged = |needle: &str| {
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&rig.log)
                .unwrap_or_default()
                .contains(needle)
        })
    };
    assert!(logged("a TLS handshake failed"), "{}", tail(&rig.log, 20));
    assert!(wait_until(Duration::from_secs(20), || rig.collector.len() == 1));

    // A renewed certificate is served after a SIGHUP, without a restart.
    let served = || -> Option<Vec<u8>> {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", http)).ok()?;
        let mut conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).ok()?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).ok()?;
        }
        Some(conn.peer_certificates()?.first()?.to_vec())
    };
    let der = |name: &str| {
        rustls::pki_types::CertificateDer::from_pem_file(certs.0.join(name))
            .unwrap()
            .to_vec()
    };
    assert_eq!(served(), Some(der("server.pem")));
    darkleg_tests::tls::sign(
        &certs.0,
        "renewed",
        "/CN=localhost",
        "subjectAltName=DNS:localhost",
    );
    for ext in ["pem", "key"] {
        std::fs::copy(
            certs.0.join(format!("renewed.{ext}")),
            certs.0.join(format!("server.{ext}")),
        )
        .unwrap();
    }
    let hup = || {
        let pid = agent.pid().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    hup();
    assert!(
        wait_until(Duration::from_secs(10), || served()
            == Some(der("renewed.pem"))),
        "the renewed certificate is served: {}",
        tail(&rig.log, 10)
    );
    // A renewal that does not load (a key written half) keeps the pair in use, loudly.
    std::fs::write(certs.0.join("server.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    hup();
    assert!(
        logged("the certificate read before is still served"),
        "{}",
        tail(&rig.log, 10)
    );
    assert_eq!(served(), Some(der("renewed.pem")));
    let (code, _, _) = tls_post(scan.clone()).unwrap();
    assert_eq!(code, 200, "the intake still answers over TLS");
}

#[test]
fn sigkill_under_http_load_loses_no_answered_scan() {
    const DEVICES: u64 = 50;
    const SCANS: u64 = 40;
    const CLIENTS: u64 = 5;
    let (rig, http) = rig("intake-kill", "");
    let mut agent = rig.start_agent();
    wait_serving(http);
    let answered = Arc::new(AtomicUsize::new(0));
    // (device, seq, code) answered stored or duplicate.
    let durable: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (answered, durable) = (answered.clone(), durable.clone());
            std::thread::spawn(move || {
                let devices: Vec<String> = (0..DEVICES / CLIENTS).map(|d| format!("hh-{c}-{d:02}")).collect();
                for seq in 1..=SCANS {
                    let scans: Vec<Value> = devices.iter().map(|d| json!({"device":d,"seq":seq,"code":format!("{d}/{seq:03}"),"step":"pack"})).collect();
                    let body = json!({ "scans": scans }).to_string();
                    // Resend until answered: through the kill and the restart.
                    let t0 = std::time::Instant::now();
                    let r = loop {
                        match post_scans(http, Some(TOKEN), &body) {
                            Some(r) if r.0 == 200 => break r,
                            _ if t0.elapsed() > Duration::from_secs(60) => panic!("no answer for 60 s"),
                            _ => std::thread::sleep(Duration::from_millis(50)),
                        }
                    };
                    for (d, res) in devices.iter().zip(r.2["results"].as_array().unwrap()) {
                        let st = res["status"].as_str().unwrap();
                        assert!(st == "stored" || st == "duplicate", "{res}");
                        durable.lock().unwrap().push((d.clone(), seq, format!("{d}/{seq:03}")));
                    }
                    answered.fetch_add(devices.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let total = (DEVICES * SCANS) as usize;
    assert!(
        wait_until(Duration::from_secs(60), || answered.load(Ordering::Relaxed)
            >= total / 3),
        "load under way"
    );
    agent.kill9();
    let at_kill = answered.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let _agent = rig.start_agent();
    for c in clients {
        c.join().expect("a client failed");
    }
    assert!(
        at_kill < total,
        "killed mid-way ({at_kill} of {total} answered)"
    );
    let durable = durable.lock().unwrap().clone();
    assert_eq!(durable.len(), total);
    assert!(
        wait_until(Duration::from_secs(60), || unique_ids(
            &rig.collector.messages()
        ) >= total),
        "everything arrives: {} of {total}",
        unique_ids(&rig.collector.messages())
    );
    let arrivals = rig.collector.messages();
    let mut by_id: BTreeMap<String, (String, u64, String)> = BTreeMap::new();
    for a in &arrivals {
        let j = &a.json;
        let v = (
            j["device"].as_str().unwrap().to_string(),
            j["seq"].as_u64().unwrap(),
            j["code"].as_str().unwrap().to_string(),
        );
        if let Some(prev) = by_id.insert(j["event_id"].as_str().unwrap().to_string(), v.clone()) {
            assert_eq!(prev, v, "a redelivery carries the same scan");
        }
    }
    assert_eq!(by_id.len(), total, "once by event id");
    let arrived: HashSet<(String, u64, String)> = by_id.into_values().collect();
    for d in &durable {
        assert!(
            arrived.contains(d),
            "answered durable but never arrived: {d:?}"
        );
    }
    println!(
        "intake kill: {at_kill} of {total} answered at the kill, {} messages for {total} scans",
        arrivals.len()
    );
}

#[test]
fn an_app_goes_on_after_the_gateway_lost_its_store_under_new_event_ids() {
    let (rig, http) = rig("intake-wipe", "");
    let mut agent = rig.start_agent();
    wait_serving(http);
    let scan = |seq: u64| json!({"device":"tc52-wipe","seq":seq,"code":format!("WIPE-{seq}"),"step":"pack"});
    let stored = |seq: u64| {
        let (code, _, body) = must(http, Some(TOKEN), scan(seq));
        assert_eq!(
            (code, body["results"][0]["status"].as_str()),
            (200, Some("stored")),
            "seq {seq}: {body}"
        );
    };
    (1..=3).for_each(stored);
    assert!(
        wait_until(Duration::from_secs(20), || unique_ids(
            &rig.collector.messages()
        ) >= 3),
        "the first three delivered"
    );
    // The gateway's store is lost (a new SD card): the app, which knows nothing of it,
    // goes on at 4 — and must not be sent back to 1, whose event id names a delivered scan.
    agent.stop();
    let config = darkleg_agent::config::Config::load(&rig.config).unwrap();
    std::fs::remove_dir_all(&config.gateway.data_dir).unwrap();
    let _agent = rig.start_agent();
    wait_serving(http);
    (4..=5).for_each(stored);
    // A gap after that is still a gap.
    let (code, _, body) = must(http, Some(TOKEN), scan(9));
    assert_eq!(
        (code, body["expected_seq"].as_u64()),
        (409, Some(6)),
        "{body}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || unique_ids(
            &rig.collector.messages()
        ) >= 5),
        "all five arrive, under five ids: {}",
        unique_ids(&rig.collector.messages())
    );
    let mut codes: BTreeMap<String, String> = BTreeMap::new();
    for a in rig.collector.messages() {
        let (id, code) = (
            a.json["event_id"].as_str().unwrap(),
            a.json["code"].as_str().unwrap(),
        );
        let prev = codes.insert(id.to_string(), code.to_string());
        assert!(prev.is_none_or(|p| p == code), "one id, two scans: {id}");
    }
    assert_eq!(codes.len(), 5, "{codes:?}");
}

/// An app that posts SSCC labels without their AIM identifier (they are stored as plain
/// text, so no parcel or merchant route sees them) is warned about once per device.
#[test]
fn a_bare_sscc_is_warned_about_once_per_device() {
    let (rig, http) = rig("intake-sscc", "");
    let _agent = rig.start_agent();
    wait_serving(http);
    let bare = ["00106141411234567897", "00106141411234567903"];
    for (device, seq0) in [("app-a", 1), ("app-b", 1)] {
        for (i, code) in bare.iter().enumerate() {
            let scan =
                json!({"device": device, "seq": seq0 + i as u64, "code": code, "step": "pack"});
            let (status, _, body) = must(http, Some(TOKEN), scan);
            assert_eq!(status, 200, "{body}");
        }
    }
    // With its symbology: no warning.
    let scan = json!({"device":"app-c","seq":1,"code":bare[0],"symbology":"]C1","step":"pack"});
    assert_eq!(must(http, Some(TOKEN), scan).0, 200);
    let log = std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert_eq!(
        log.matches("came without its AIM identifier").count(),
        2,
        "{}",
        tail(&rig.log, 20)
    );
    assert!(
        log.contains("device=\"app-a\"")
            && log.contains("device=\"app-b\"")
            && !log.contains("device=\"app-c\""),
        "{}",
        tail(&rig.log, 20)
    );
}

/// A handheld posting on one keep-alive connection never lets it idle into the head timeout:
/// at SIGTERM the connection answers what it has in hand and closes, and the agent stops
/// cleanly at once — it waited out the connection's whole 60 s lifetime before (systemd's
/// 30 s stop timeout then killed it).
#[test]
fn a_stop_closes_busy_keep_alive_connections_and_exits_cleanly() {
    let (rig, http) = rig("intake-stop", "");
    let mut agent = rig.start_agent();
    wait_serving(http);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (stop.clone(), answered.clone());
    let poster = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4096];
        for seq in 1u64.. {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            let body =
                json!({"device":"keepalive-1","seq":seq,"code":format!("KA{seq}"),"step":"pack"})
                    .to_string();
            let req = format!(
                "POST /v1/scans HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(req.as_bytes()).is_err() {
                break;
            }
            // The whole answer (head, then Content-Length bytes); end of stream is the
            // gateway closing.
            let mut got = Vec::new();
            let complete = loop {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break false,
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
                    break true;
                }
            };
            if !complete {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(wait_until(Duration::from_secs(10), || answered
        .load(Ordering::Relaxed)
        >= 5));
    let t = std::time::Instant::now();
    let status = agent.stop().expect("the agent was running");
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    poster.join().unwrap();
    assert!(status.success(), "a clean stop, not a kill: {status:?}");
    assert!(took < Duration::from_secs(8), "stopped after {took:?}");
}
