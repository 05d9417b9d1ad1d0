//! The command line as an operator meets it: configs checked with line numbers, a second
//! agent on the same data_dir refused, status before the first run explained.

use darkleg_tests::*;
use std::process::{Command, Output};
use std::time::Duration;

fn darkleg(args: &[&str]) -> Output {
    Command::new(darkleg_bin())
        .args(args)
        .output()
        .expect("running darkleg")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_examples_and_points_at_mistakes() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/gateway.toml");
    let ok = darkleg(&["check-config", root]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        text.contains(
            "upstream central: mqtts://mqtt.example.com:8883 → darkleg/v1/ams1/gw-01/events"
        ),
        "{text}"
    );

    let dir = Scratch::new("cli-check");
    let bad = dir.0.join("bad.toml");
    let broken = std::fs::read_to_string(root)
        .unwrap()
        .replace("station = \"pack\"", "station = \"packing\"");
    std::fs::write(&bad, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("\"packing\""))
        .unwrap()
        + 1;
    let out = darkleg(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("bad.toml:{line}: `scanner[1].station`")),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");

    let out = darkleg(&["check-config", dir.0.join("missing.toml").to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_second_agent_on_one_data_dir_is_refused_and_status_explains_a_fresh_gateway() {
    let dir = Scratch::new("cli-lock");
    let config = write_config(&dir.0, &[], None);
    let out = darkleg(&["status", "--config", config.to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("has `darkleg run` started"),
        "{}",
        stderr(&out)
    );

    let mut first = Agent::start(&config, &dir.0.join("agent.log"));
    assert!(wait_until(Duration::from_secs(20), || status(&config)
        ["events"]
        == 0));
    let second = darkleg(&["run", "--config", config.to_str().unwrap()]);
    assert!(!second.status.success(), "second agent must not start");
    assert!(
        stderr(&second).contains("another darkleg"),
        "{}",
        stderr(&second)
    );
    assert!(first.stop().is_some_and(|s| s.success()));
}
