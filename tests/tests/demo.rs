//! `darkleg demo`, the real binary, as a first-time user runs it: with the broker inside
//! the process (what a machine without Mosquitto gets) and with a private Mosquitto. Every
//! scan must arrive upstream, the outage must happen and heal, each parcel's day must read
//! picked → packed → handed over, and the demo must end by itself, exit 0, in time.

use darkleg_tests::workload::sscc;
use darkleg_tests::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARCELS: u64 = 3;
/// Three parcels through three stations plus the 3 s outage take about 6 s; the rest is
/// room for a loaded machine.
const BOUND: Duration = Duration::from_secs(50);

/// Runs `darkleg demo ARGS --parcels 3` and returns its output, asserting exit 0 within
/// [`BOUND`].
fn run_demo(name: &str, args: &[&str]) -> String {
    run_demo_with(name, args, &[])
}

fn run_demo_with(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let scratch = Scratch::new(name);
    let out = scratch.0.join("stdout");
    let err = scratch.0.join("stderr");
    let started = Instant::now();
    let mut child = Command::new(darkleg_bin())
        .arg("demo")
        .args(args)
        .args([
            "--parcels",
            &PARCELS.to_string(),
            "--scan-interval-ms",
            "100",
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("starting darkleg demo");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "demo still running after {BOUND:?}:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "demo exited with {status}:\n{text}\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    eprintln!(
        "demo ({name}) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    text
}

/// What every run with a broker must show.
fn check_story(text: &str) {
    let scans = (PARCELS * (3 + 2 + 2)) as usize;
    let first_arrivals = text
        .lines()
        .filter(|l| l.trim_start().starts_with('↑') && !l.contains("sent again"))
        .count();
    assert_eq!(
        first_arrivals, scans,
        "scan events shown as arrived:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "arrived upstream    {scans} of {scans} scan events; {PARCELS} of {PARCELS} parcels told"
        )),
        "{text}"
    );
    // The outage happened and healed while the demo ran.
    let down = text.lines().position(|l| l.contains('✗'));
    let up = text.lines().position(|l| l.contains('✓'));
    assert!(
        matches!((down, up), (Some(d), Some(u)) if d < u),
        "no outage and recovery:\n{text}"
    );
    assert!(text.contains("sent twice"), "{text}");
    // Where the scan event of `code` at `step` first arrived.
    let arrived = |step: &str, code: &str| {
        text.lines()
            .position(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some("↑") && w.next() == Some(step) && l.contains(code)
            })
            .unwrap_or_else(|| panic!("no {step} scan of {code} arrived:\n{text}"))
    };
    for n in 1..=PARCELS {
        let parcel = &sscc(n)[2..];
        // The parcel really went down the line in order: the packer scanned its order after
        // the picker, the dock its label after the packer.
        let order = format!("400ACME-{n} ");
        assert!(
            arrived("pick", &order) < arrived("pack", &order),
            "order {n} packed before it was picked:\n{text}"
        );
        assert!(
            arrived("pack", parcel) < arrived("handover", parcel),
            "parcel {parcel} handed over before it was packed:\n{text}"
        );
        let told: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with('★') && l.contains(parcel))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(
            told,
            ["picked", "packed", "handed_over"],
            "parcel {parcel}'s day out of order or incomplete:\n{text}"
        );
    }
}

#[test]
fn demo_with_the_embedded_broker_tells_each_parcels_day_in_order() {
    let text = run_demo("demo-embedded", &["--embedded-broker"]);
    assert!(text.contains("embedded (rumqttd"), "{text}");
    assert!(text.contains("link to the broker cut"), "{text}");
    check_story(&text);
}

#[test]
fn demo_on_a_machine_without_mosquitto_falls_back_to_the_embedded_broker() {
    let text = run_demo_with(
        "demo-fallback",
        &[],
        &[("DARKLEG_MOSQUITTO", "/nonexistent/mosquitto")],
    );
    assert!(text.contains("embedded (rumqttd"), "{text}");
    check_story(&text);
}

#[test]
fn demo_with_mosquitto_tells_each_parcels_day_in_order() {
    assert!(
        darkleg_agent::sim::broker::find_mosquitto().is_some(),
        "the end-to-end tests need mosquitto (Debian: apt-get install mosquitto)"
    );
    let text = run_demo("demo-mosquitto", &[]);
    assert!(
        text.contains("broker     Mosquitto on 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("broker stopped"), "{text}");
    check_story(&text);
}
