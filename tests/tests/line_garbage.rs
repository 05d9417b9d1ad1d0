//! (4) Random garbage interleaved on the serial lines: every valid frame is still
//! accepted (the agent's frame count equals what the scanners wrote), every rejection is
//! counted, and the scans arrive exactly once.

use darkleg_protocol::Step;
use darkleg_tests::scanner::{write_ascii_scan, FramedConfig};
use darkleg_tests::workload::parcel_scans;
use darkleg_tests::*;
use std::io::Write;
use std::time::Duration;

#[test]
fn garbage_between_frames_is_counted_and_costs_no_valid_frame() {
    let mut rig = Rig::new(
        "garbage",
        &[
            PortKind::Framed,
            PortKind::Framed,
            PortKind::Ascii("handover"),
        ],
    );
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let mut ptys = rig.take_ptys();
    let mut dock = ptys.pop().unwrap();

    let mut plans = Plans::new();
    let mut scanners = Vec::new();
    let mut paths = Vec::new();
    for (i, pty) in ptys.into_iter().enumerate() {
        let plan = (0..80u64)
            .flat_map(|n| parcel_scans(500 * (i as u64 + 1) + n, Step::Pick))
            .collect();
        let cfg = FramedConfig {
            scan_interval: Duration::from_millis(5),
            garbage: 0.3,
            ..FramedConfig::new(&format!("noisy-{i}"), 1234 + i as u64)
        };
        paths.push(pty.slave_path.clone());
        scanners.push(start_framed(pty, cfg, plan, &mut plans));
    }

    // The plain scanner: noise lines (control characters, never CR/LF) between real scans.
    let handover: Vec<_> = (0..40u64)
        .flat_map(|n| parcel_scans(9000 + n, Step::Handover))
        .collect();
    let mut rng = 42u64;
    let mut noise_lines = 0u64;
    for scan in &handover {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng.is_multiple_of(3) {
            let junk: Vec<u8> = (0..1 + rng % 20)
                .map(|k| [0x01, 0x07, 0x1B, 0x7F, b'A', b'9'][((rng >> k) % 6) as usize])
                .collect();
            let mut line = vec![0x02];
            line.extend(junk);
            line.extend_from_slice(b"\r\n");
            dock.master.write_all(&line).unwrap();
            noise_lines += 1;
        }
        write_ascii_scan(&mut dock.master, scan).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }

    let expected = plans.values().map(Vec::len).sum::<usize>() + handover.len();
    let all = wait_until(Duration::from_secs(60), || {
        scanners.iter().all(|(s, n)| s.done(*n))
            && unique_ids(&rig.collector.messages()) >= expected
    });
    let arrivals = rig.collector.messages();
    assert!(all, "{} of {expected} arrived", unique_ids(&arrivals));
    let dock_device = ascii_device(&dock.slave_path);
    let (ascii, framed_arrivals): (Vec<_>, Vec<_>) = arrivals
        .into_iter()
        .partition(|a| a.json["device"] == dock_device.as_str());
    check_exactly_once(&framed_arrivals, &plans);
    let codes: Vec<&str> = ascii
        .iter()
        .map(|a| a.json["code"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = handover.iter().map(|s| s.code.as_str()).collect();
    assert_eq!(
        codes, want,
        "every real ascii scan, once, in order; no noise line became a scan"
    );

    for (s, _) in &mut scanners {
        s.stop();
    }
    let stats: Vec<_> = scanners.iter().map(|(s, _)| s.stats()).collect();
    assert!(
        stats.iter().all(|s| s.garbage_bytes > 0),
        "garbage was sent: {stats:?}"
    );
    // Port counters reach the store about once a second; wait for them to settle.
    let port = |st: &serde_json::Value, path: &str| {
        st["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"] == path).cloned())
            .unwrap_or_default()
    };
    let settled = wait_until(Duration::from_secs(10), || {
        let st = status(&rig.config);
        paths
            .iter()
            .zip(&stats)
            .all(|(path, s)| port(&st, path)["frames"] == s.frames_sent)
            && port(&st, &dock.slave_path)["rejected"] == noise_lines
    });
    let st = status(&rig.config);
    assert!(
        settled,
        "agent frame counts {:?} vs frames written {:?}; ascii rejected {} vs noise lines {noise_lines}",
        paths.iter().map(|p| port(&st, p)["frames"].clone()).collect::<Vec<_>>(),
        stats.iter().map(|s| s.frames_sent).collect::<Vec<_>>(),
        port(&st, &dock.slave_path)["rejected"]
    );
    for path in &paths {
        let p = port(&st, path);
        assert!(
            p["rejected"].as_u64().unwrap() > 0,
            "garbage counted as rejections on {path}: {p}"
        );
        assert!(
            p["last_reject"].is_string(),
            "the last rejection reason is kept: {p}"
        );
    }
}

#[test]
fn a_scan_numbered_past_two_to_the_63_is_a_counted_rejection_never_a_wrapped_id() {
    // The store keeps sequences as SQLite integers (i64): a seq above that would wrap
    // negative. The frame protocol document tells vendors to stay below 2^63.
    use darkleg_protocol::frame::{EventFrame, Frame};
    let mut rig = Rig::new("seq-bound", &[PortKind::Framed]);
    let _agent = rig.start_agent();
    rig.wait_ports_open();
    let mut pty = rig.take_ptys().pop().unwrap();
    let send = |master: &mut dyn Write, f: &Frame| {
        let mut buf = [0u8; 600];
        let n = f.encode(&mut buf).unwrap();
        master.write_all(&buf[..n]).unwrap();
    };
    let event = |seq: u64, code: &'static str| {
        Frame::Event(EventFrame {
            seq,
            step: Step::Pick,
            code,
            symbology: None,
            operator: None,
            captured_at_ms: 0,
        })
    };
    send(
        &mut pty.master,
        &Frame::Hello {
            device: "vendor-x",
            firmware: "x/1",
            last_acked: i64::MAX as u64,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    send(&mut pty.master, &event(i64::MAX as u64 + 1, "SO-HUGE-1"));
    std::thread::sleep(Duration::from_millis(300));
    // A second device on the same line, numbered normally, is taken.
    send(
        &mut pty.master,
        &Frame::Hello {
            device: "vendor-y",
            firmware: "x/1",
            last_acked: 0,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    send(&mut pty.master, &event(1, "SO-FINE-1"));
    let arrived = wait_until(Duration::from_secs(20), || {
        rig.collector
            .messages()
            .iter()
            .any(|a| a.json["code"] == "SO-FINE-1")
    });
    assert!(arrived, "the normally numbered scan arrives");
    let path = pty.slave_path.clone();
    let rejected = wait_until(Duration::from_secs(10), || {
        let st = status(&rig.config);
        st["ports"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["port"] == path.as_str() && p["rejected"] == 1)
        })
    });
    assert!(rejected, "one counted rejection: {}", status(&rig.config));
    assert!(
        !rig.collector
            .messages()
            .iter()
            .any(|a| a.json["code"] == "SO-HUGE-1"),
        "the impossible seq is never stored under a wrapped id"
    );
}
