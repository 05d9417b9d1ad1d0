//! DataWedge IP Output: handhelds sending raw scans over TCP (suffix-ended lines) and UDP
//! (one datagram each) to the real agent, through to a private Mosquitto. Each scan arrives
//! once with its listener's step and the device name mapped from its source address;
//! garbage and over-long lines are counted on the listener's row of `darkleg status
//! --json`, never stored; connections past `max_connections` wait in the backlog, their
//! scans kept.

use darkleg_agent::sim::broker::free_port;
use darkleg_tests::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

const MAX_CONNECTIONS: usize = 8;

fn port_row(config: &std::path::Path, name: &str) -> Value {
    status(config)["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["port"] == name).cloned())
        .unwrap_or_default()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Whether the agent closed `s` (EOF or reset) without our having closed it.
fn closed_by_agent(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Codes arrived for `device`, each with its seq.
fn arrived(arrivals: &[darkleg_agent::sim::collector::Arrival], device: &str) -> Vec<Value> {
    let mut seen = HashSet::new();
    arrivals
        .iter()
        .filter(|a| a.json["device"] == device)
        .filter(|a| seen.insert(a.json["event_id"].as_str().unwrap_or("").to_string()))
        .map(|a| a.json.clone())
        .collect()
}

#[test]
fn tcp_and_udp_scans_arrive_with_their_step_and_device_and_garbage_is_counted() {
    let (tcp, udp, idle, evp, http) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[[network_scanner]]\nlisten = \"127.0.0.1:{tcp}\"\ntransport = \"tcp\"\nstation = \"pack\"\nname = \"pack-bench-2\"\nsuffix = \"crlf\"\nmax_line = 64\nmax_connections = {MAX_CONNECTIONS}\nevict_idle_secs = 0\ndevices = {{ \"127.0.0.1\" = \"tc52-dock-3\" }}\n\n\
         [[network_scanner]]\nlisten = \"127.0.0.1:{udp}\"\ntransport = \"udp\"\nstation = \"handover\"\n\n\
         [[network_scanner]]\nlisten = \"127.0.0.1:{idle}\"\nstation = \"pick\"\nidle_secs = 1\n\n\
         [[network_scanner]]\nlisten = \"127.0.0.1:{evp}\"\nstation = \"pack\"\nmax_connections = 2\nevict_idle_secs = 1\n"
    );
    let rig = Rig::with_store("datawedge", &[], &extra);
    let mut agent = rig.start_agent();
    let tcp_name = format!("tcp://127.0.0.1:{tcp}");
    let udp_name = format!("udp://127.0.0.1:{udp}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            port_row(&rig.config, &tcp_name)["connected"] == true
                && port_row(&rig.config, &udp_name)["connected"] == true
        }),
        "both listeners shown on status"
    );
    // A SIGHUP (a service manager's reload) without an intake to re-read: capture goes on
    // (its default action would end the agent; every scan below is sent after it).
    let pid = agent.pid().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(hup.unwrap().success());
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &rig.log
        )
        .unwrap_or_default()
        .contains("SIGHUP: nothing to re-read")),
        "the SIGHUP is logged, not fatal"
    );

    // TCP: four handhelds at once, each line written in two pieces with a pause between, so
    // lines straddle reads; one of them also sends garbage and an over-long line.
    const PER_CONN: usize = 25;
    let handhelds: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(tcp);
                let mut codes = Vec::new();
                for i in 0..PER_CONN {
                    if c == 0 && i == 10 {
                        s.write_all(b"\x01\x02AB\r\n\xff\xfe\xfd\r\n\r\n").unwrap();
                        // Over-long (100 > 64), then a good scan in the same write: the
                        // skip ends at the over-long line's suffix, not later.
                        let mut long = vec![b'9'; 100];
                        long.extend_from_slice(b"\r\n]C100340434161094099990\r\n");
                        s.write_all(&long).unwrap();
                        codes.push("00340434161094099990".to_string());
                    }
                    let code = format!("JJD0{c}{i:04}");
                    let line = format!("{code}\r\n");
                    let (a, b) = line.as_bytes().split_at(line.len() / 2);
                    s.write_all(a).unwrap();
                    s.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(3));
                    s.write_all(b).unwrap();
                    codes.push(code);
                }
                (s, codes)
            })
        })
        .collect();
    let mut sent: Vec<Vec<String>> = Vec::new();
    let mut open = Vec::new();
    for h in handhelds {
        let (s, codes) = h.join().unwrap();
        sent.push(codes);
        open.push(s);
    }

    // UDP: one scan per datagram, with and without the suffix, an AIM prefix on some; and
    // garbage datagrams: control bytes, empty, longer than max_line (4096 by default).
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut udp_codes = Vec::new();
    for i in 0..20 {
        let code = format!("1Z999AA1{i:010}");
        let dgram = match i % 3 {
            0 => format!("{code}\n"),
            1 => code.clone(),
            _ => format!("]C1{code}\n"),
        };
        u.send_to(dgram.as_bytes(), ("127.0.0.1", udp)).unwrap();
        udp_codes.push(code);
        if i == 7 {
            u.send_to(b"\x00\x01\x02\n", ("127.0.0.1", udp)).unwrap();
            u.send_to(b"", ("127.0.0.1", udp)).unwrap();
            u.send_to(&vec![b'7'; 5000], ("127.0.0.1", udp)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // An SSCC label from a handheld that sends no AIM id: stored as plain text, and said so.
    for bare in ["00106141411234567897", "00106141411234567903"] {
        u.send_to(format!("{bare}\n").as_bytes(), ("127.0.0.1", udp))
            .unwrap();
        udp_codes.push(bare.to_string());
    }

    let tcp_total: usize = sent.iter().map(Vec::len).sum();
    let done = wait_until(Duration::from_secs(30), || {
        let a = rig.collector.messages();
        arrived(&a, "tc52-dock-3").len() >= tcp_total
            && arrived(&a, "gw-01:127.0.0.1").len() >= udp_codes.len()
    });
    let arrivals = rig.collector.messages();
    let tcp_got = arrived(&arrivals, "tc52-dock-3");
    let udp_got = arrived(&arrivals, "gw-01:127.0.0.1");
    assert!(
        done,
        "tcp {} of {tcp_total}, udp {} of {}",
        tcp_got.len(),
        udp_got.len(),
        udp_codes.len()
    );
    assert_eq!(tcp_got.len(), tcp_total, "no garbage line became a scan");
    assert_eq!(
        udp_got.len(),
        udp_codes.len(),
        "no garbage datagram became a scan"
    );
    let seq_of: HashMap<&str, u64> = tcp_got
        .iter()
        .map(|j| (j["code"].as_str().unwrap(), j["seq"].as_u64().unwrap()))
        .collect();
    for j in &tcp_got {
        assert_eq!(j["step"], "pack", "{j}");
        assert_eq!(j["station"], "pack-bench-2", "{j}");
    }
    for codes in &sent {
        let seqs: Vec<u64> = codes
            .iter()
            .map(|c| {
                *seq_of
                    .get(c.as_str())
                    .unwrap_or_else(|| panic!("{c} missing"))
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one connection's scans keep their order: {seqs:?}"
        );
    }
    let aim = tcp_got
        .iter()
        .find(|j| j["code"] == "00340434161094099990")
        .unwrap();
    assert_eq!(aim["symbology"], "]C1");
    let mut udp_got_codes: Vec<&str> = udp_got
        .iter()
        .map(|j| j["code"].as_str().unwrap())
        .collect();
    udp_got_codes.sort();
    let mut want: Vec<&str> = udp_codes.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(udp_got_codes, want);
    assert!(udp_got
        .iter()
        .all(|j| j["step"] == "handover" && j["station"] == "handover"));
    let log = std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert_eq!(
        log.matches("came without its AIM identifier").count(),
        1,
        "a bare SSCC is warned about, once per listener"
    );

    // The flood: four connections are open; fill the rest, then four more wait, unaccepted
    // but unrefused, in the kernel's backlog with a scan each in their buffers.
    for _ in open.len()..MAX_CONNECTIONS {
        open.push(connect(tcp));
    }
    // A scan on each held connection proves the agent has accepted all of them.
    for (k, s) in open.iter_mut().enumerate() {
        s.write_all(format!("HELD{k:02}\r\n").as_bytes()).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || arrived(
            &rig.collector.messages(),
            "tc52-dock-3"
        )
        .len()
            >= tcp_total + MAX_CONNECTIONS),
        "every held connection was served"
    );
    let queued_code = |k: usize| format!("QUEUED{k:02}");
    let arrived_code = |code: &str| {
        rig.collector
            .messages()
            .iter()
            .any(|a| a.json["code"] == code)
    };
    let mut queued: Vec<TcpStream> = (0..4)
        .map(|k| {
            let mut s = connect(tcp);
            s.write_all(format!("{}\r\n", queued_code(k)).as_bytes())
                .unwrap();
            s
        })
        .collect();
    queued[0]
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        !closed_by_agent(&mut queued[0]),
        "a connection past max_connections is not closed"
    );
    assert!(
        !(0..4).any(|k| arrived_code(&queued_code(k))),
        "nor read while every slot is taken"
    );
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("darkleg_network_scanner_full_total ") && !l.ends_with(" 0")),
        "the full listener is counted: {metrics}"
    );
    // Slots free: the waiting connections are accepted and their scans, written while they
    // waited, stored.
    for _ in 0..4 {
        drop(open.pop());
    }
    assert!(
        wait_until(Duration::from_secs(10), || (0..4)
            .all(|k| arrived_code(&queued_code(k)))),
        "every scan written while its connection waited is stored"
    );
    // And a freed slot takes a new connection again.
    drop(open.pop());
    let mut again = connect(tcp);
    again.write_all(b"AFTERFLOOD\r\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || arrived_code("AFTERFLOOD")),
        "a connection after the flood is served"
    );

    // idle_secs = 1: a silent connection is closed by the agent.
    let mut quiet = connect(idle);
    quiet
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let t = std::time::Instant::now();
    assert!(closed_by_agent(&mut quiet), "an idle connection is closed");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        t.elapsed()
    );

    // Counted, never stored: 4 garbage lines on TCP; 3 on UDP.
    let counted = wait_until(Duration::from_secs(10), || {
        port_row(&rig.config, &tcp_name)["rejected"] == 4
            && port_row(&rig.config, &udp_name)["rejected"] == 3
    });
    let (t, u) = (
        port_row(&rig.config, &tcp_name),
        port_row(&rig.config, &udp_name),
    );
    assert!(counted, "tcp {t}\nudp {u}");
    assert_eq!(t["protocol"], "datawedge");
    assert_eq!(
        t["frames"].as_u64(),
        Some((tcp_total + MAX_CONNECTIONS + 4 + 1) as u64),
        "{t}"
    );
    assert_eq!(u["frames"].as_u64(), Some(udp_codes.len() as u64), "{u}");
    assert!(t["last_reject"].is_string() && u["last_reject"].is_string());
    let devices = status(&rig.config)["devices"].clone();
    assert!(
        devices
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["device"] == "tc52-dock-3")),
        "the mapped device is on status: {devices}"
    );
    // evict_idle_secs = 1 on a listener of two slots: a third handheld gets the slot of the
    // silent one, not of the one scanning, and the evicted one's scan sent after the FIN
    // (within the linger) is still stored.
    let mut silent = connect(evp);
    silent.write_all(b"EVSILENT1\r\n").unwrap();
    let mut busy = connect(evp);
    busy.write_all(b"EVBUSY00\r\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || arrived_code("EVSILENT1")
            && arrived_code("EVBUSY00")),
        "both slots served"
    );
    let mut third = connect(evp);
    third.write_all(b"EVTHIRD\r\n").unwrap();
    let mut busy_codes = vec!["EVBUSY00".to_string()];
    // The eviction's FIN reaches the silent one while the busy one scans; it answers with
    // one more scan at once, inside the linger — and, like DataWedge, which never reads its
    // socket, keeps scanning into it: the linger is a total, so the slot still frees.
    silent.set_nonblocking(true).unwrap();
    let mut fin_seen = false;
    let t = std::time::Instant::now();
    while !arrived_code("EVTHIRD") && t.elapsed() < Duration::from_secs(15) {
        let code = format!("EVBUSY{:02}", busy_codes.len());
        busy.write_all(format!("{code}\r\n").as_bytes()).unwrap();
        busy_codes.push(code);
        if fin_seen {
            // Refused (reset) once the agent has closed it: what DataWedge would lose.
            let _ = silent.write_all(b"EVSILENTMORE\r\n");
        } else if matches!(silent.read(&mut [0u8; 1]), Ok(0)) {
            fin_seen = true;
            silent.write_all(b"EVSILENT2\r\n").unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(arrived_code("EVTHIRD"), "the waiting handheld was served");
    assert!(fin_seen, "the silent one was evicted");
    busy.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(!closed_by_agent(&mut busy), "the scanning one was kept");
    assert!(
        wait_until(Duration::from_secs(10), || arrived_code("EVSILENT2")
            && busy_codes.iter().all(|c| arrived_code(c))),
        "the evicted one's scan sent after its FIN, and every scan of the busy one, stored"
    );
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    for line in [
        "darkleg_network_scanner_evicted_total 1".to_string(),
        format!("darkleg_network_scanner_connections{{listener=\"tcp://127.0.0.1:{evp}\"}} 2.0"),
        format!(
            "darkleg_network_scanner_waiting_seconds{{listener=\"tcp://127.0.0.1:{evp}\"}} 0.0"
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }

    // Every slot is taken again (the open ones, the four that waited, AFTERFLOOD): one more
    // waits for a slot and another behind it in the backlog, each with a scan, when the
    // agent is stopped; both are read before it ends.
    let mut late = connect(tcp);
    late.write_all(b"ATSTOP\r\n").unwrap();
    let mut later = connect(tcp);
    later.write_all(b"ATSTOP\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let db = darkleg_agent::config::Config::load(&rig.config)
        .unwrap()
        .db_path();
    let stored_atstop = || -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM events WHERE code = 'ATSTOP'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(stored_atstop(), 0, "not read while every slot is taken");
    // A clean stop with handhelds still connected: their tasks end, the writer is not held.
    let t = std::time::Instant::now();
    let exit = agent.stop();
    assert!(
        exit.is_some_and(|e| e.success()),
        "SIGTERM with {} connections open: {exit:?}",
        open.len()
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        t.elapsed()
    );
    assert_eq!(
        stored_atstop(),
        2,
        "the scans waiting for a slot and in the backlog at the stop are stored"
    );
    drop((open, queued, again, late, later, silent, busy, third));
}

/// A rig with one TCP listener at a pack station (`more` is added to its table), started
/// and shown connected; with its port and its name on the status page.
fn one_pack_listener(name: &str, more: &str) -> (Rig, Agent, u16, String) {
    let (tcp, http) = (free_port().unwrap(), free_port().unwrap());
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[[network_scanner]]\nlisten = \"127.0.0.1:{tcp}\"\nstation = \"pack\"\n{more}"
    );
    let rig = Rig::with_store(name, &[], &extra);
    let agent = rig.start_agent();
    let row = format!("tcp://127.0.0.1:{tcp}");
    assert!(wait_until(Duration::from_secs(20), || port_row(
        &rig.config,
        &row
    )["connected"]
        == true));
    (rig, agent, tcp, row)
}

/// A `cr` listener fed CRLF (a handheld's suffix set one way, the gateway's the other): every
/// scan is stored once, and the last line's LF is no torn line when the handheld hangs up.
#[test]
fn a_cr_listener_takes_crlf_lines_and_a_close_after_one_is_no_torn_line() {
    let (rig, _agent, tcp, name) = one_pack_listener("datawedge-cr", "suffix = \"cr\"\n");
    let codes = ["JJD0000000001", "JJD0000000002", "JJD0000000003"];
    {
        let mut s = connect(tcp);
        for code in codes {
            s.write_all(format!("{code}\r\n").as_bytes()).unwrap();
        }
        // One torn line for contrast, on a connection of its own.
        let mut torn = connect(tcp);
        torn.write_all(b"JJD00000000").unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(20), || arrived(
            &rig.collector.messages(),
            "gw-01:127.0.0.1"
        )
        .len()
            >= codes.len()
            && port_row(&rig.config, &name)["rejected"] == 1),
        "{}",
        port_row(&rig.config, &name)
    );
    let got: Vec<Value> = arrived(&rig.collector.messages(), "gw-01:127.0.0.1");
    let got: Vec<&str> = got.iter().map(|j| j["code"].as_str().unwrap()).collect();
    assert_eq!(got, codes);
    // Nothing more comes: the close after the last CRLF was not counted as garbage.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(port_row(&rig.config, &name)["rejected"], 1);
}

/// A handheld that sends no suffix the listener knows (DataWedge's "Send ENTER key" off, or a
/// `cr` handheld on an `lf` listener): every max_line bytes of the run-on line are counted as
/// rejected, the cause is said at WARN once, and the next properly ended line is stored.
#[test]
fn lines_without_the_suffix_are_each_counted_and_warned_about_once() {
    let (rig, _agent, tcp, name) = one_pack_listener("datawedge-nosuffix", "max_line = 64\n");
    let mut s = connect(tcp);
    // 20 scans of 20 bytes ended by CR on an LF listener: 420 bytes without an LF. The
    // first overrun comes at byte 66 (the line may hold a CR more), then one per 65 bytes
    // skipped: 6 in all.
    for i in 0..20 {
        s.write_all(format!("JJD{i:016}\r").as_bytes()).unwrap();
    }
    s.write_all(b"\nJJD0000000000000099\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || arrived(
            &rig.collector.messages(),
            "gw-01:127.0.0.1"
        )
        .len()
            == 1
            && port_row(&rig.config, &name)["rejected"] == 6),
        "{}",
        port_row(&rig.config, &name)
    );
    let got = arrived(&rig.collector.messages(), "gw-01:127.0.0.1");
    assert_eq!(got[0]["code"], "JJD0000000000000099");
    let log = std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert_eq!(
        log.matches("Send ENTER key").count(),
        1,
        "{}",
        tail(&rig.log, 20)
    );
}

/// The store refuses (the outbox full at `max_db_mb` while the upstream is away): a
/// DataWedge scan over TCP and one over UDP are held and offered again, not dropped, and are
/// stored — with the time they were read — once delivered rows make room.
#[test]
fn scans_a_full_store_refuses_are_held_and_stored_once_it_has_room() {
    let (tcp, udp, http) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let tok = Scratch::new("datawedge-full-tok");
    let tokens = tok.0.join("tokens");
    std::fs::write(&tokens, "tok-fill\n").unwrap();
    let extra = format!(
        "[store]\nmax_db_mb = 1\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n\n[intake]\ntokens_file = \"{}\"\n\n\
         [[network_scanner]]\nlisten = \"127.0.0.1:{tcp}\"\nstation = \"pack\"\n\n\
         [[network_scanner]]\nlisten = \"127.0.0.1:{udp}\"\ntransport = \"udp\"\nstation = \"handover\"\n",
        tokens.display()
    );
    let mut rig = Rig::with_store("datawedge-full", &[], &extra);
    rig.broker.stop();
    let _agent = rig.start_agent();
    let (tcp_name, udp_name) = (
        format!("tcp://127.0.0.1:{tcp}"),
        format!("udp://127.0.0.1:{udp}"),
    );
    assert!(wait_until(Duration::from_secs(20), || port_row(
        &rig.config,
        &udp_name
    )["connected"]
        == true));
    // Fill the outbox through the intake until it answers 507.
    let mut seq = 0u64;
    let mut full = false;
    for _ in 0..200 {
        let scans: Vec<Value> = (1..=50)
            .map(|i| serde_json::json!({"device":"filler","seq":seq+i,"code":format!("{:05}-{}", seq+i, "X".repeat(230)),"step":"pack"}))
            .collect();
        let body = serde_json::json!({ "scans": scans }).to_string();
        let answer = post_scans(http, Some("tok-fill"), &body).expect("the intake answers");
        if answer.0 == 507 {
            full = true;
            break;
        }
        assert_eq!(answer.0, 200, "{}", answer.2);
        seq += 50;
    }
    assert!(full, "the outbox filled");
    // A small scan may still fit in a page's free space: fill that too, until three in a
    // row are refused.
    let (mut refused, mut n) = (0, 0u64);
    while refused < 3 {
        let body = serde_json::json!({"device":"filler-2","seq":n+1,"code":"F","step":"pack"});
        let answer =
            post_scans(http, Some("tok-fill"), &body.to_string()).expect("the intake answers");
        match answer.0 {
            200 => {
                n += 1;
                refused = 0;
            }
            507 => refused += 1,
            _ => panic!("{answer:?}"),
        }
        assert!(n < 5000, "small scans never refused");
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let sent_at = now_ms();
    let mut s = connect(tcp);
    s.write_all(b"JJDFULLTCP01\n").unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"JJDFULLUDP01\n", ("127.0.0.1", udp))
        .unwrap();
    let log = || std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || log()
            .matches("held in memory and offered again")
            .count()
            >= 2),
        "both refusals said: {}",
        tail(&rig.log, 20)
    );
    std::thread::sleep(Duration::from_secs(2));
    let db = darkleg_agent::config::Config::load(&rig.config)
        .unwrap()
        .db_path();
    let stored = |code: &str| -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM events WHERE code = ?1", [code], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(
        (stored("JJDFULLTCP01"), stored("JJDFULLUDP01")),
        (0, 0),
        "refused while full"
    );
    // The upstream is back: delivered rows are evicted for room and the held scans go in.
    let restarted_at = now_ms();
    rig.broker.restart().unwrap();
    let got = |code: &str| {
        rig.collector
            .messages()
            .into_iter()
            .find(|a| a.json["code"] == code)
    };
    assert!(
        wait_until(Duration::from_secs(90), || got("JJDFULLTCP01").is_some()
            && got("JJDFULLUDP01").is_some()),
        "both held scans arrive: {}",
        tail(&rig.log, 30)
    );
    for code in ["JJDFULLTCP01", "JJDFULLUDP01"] {
        let j = got(code).unwrap().json;
        let received =
            darkleg_protocol::time::parse_rfc3339_ms(j["received_at"].as_str().unwrap()).unwrap();
        assert!(
            (sent_at..restarted_at).contains(&received),
            "{code} keeps the time it was read: {j}"
        );
        assert_eq!(stored(code), 1);
    }
    for name in [&tcp_name, &udp_name] {
        assert_eq!(
            port_row(&rig.config, name)["rejected"],
            0,
            "nothing dropped"
        );
    }
    // The connection is served again after its held scan went in.
    s.write_all(b"JJDAFTERFULL\n").unwrap();
    assert!(wait_until(Duration::from_secs(20), || got("JJDAFTERFULL").is_some()));
}
