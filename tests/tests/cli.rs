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

/// Control bytes other than a newline: a raw GS or ESC in help text corrupts a terminal.
fn control_bytes(text: &[u8]) -> Vec<u8> {
    text.iter()
        .copied()
        .filter(|b| (b.is_ascii_control() && *b != b'\n') || *b == 0x7f)
        .collect()
}

#[test]
fn a_mistyped_flag_is_an_error_that_names_the_right_one() {
    let dir = Scratch::new("cli-typo");
    let config = write_config(&dir.0, &[], None);
    let config = config.to_str().unwrap();
    for (args, meant) in [
        (vec!["status", "--config", config, "--jsn"], "'--json'"),
        (vec!["demo", "--parcel", "3"], "'--parcels'"),
        (
            vec!["simulate", "--config", config, "--scaners", "2"],
            "'--scanners'",
        ),
        (vec!["run", "--confg", config], "'--config'"),
    ] {
        let out = darkleg(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
        assert!(
            err.contains(&format!("a similar argument exists: {meant}")),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
    let out = darkleg(&["report", "--config", config, "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'--bogus'"), "{}", stderr(&out));

    let out = darkleg(&["stauts", "--config", config]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a similar subcommand exists: 'status'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn numbers_and_times_out_of_range_are_refused_before_anything_runs() {
    for (args, says) in [
        (
            vec!["simulate", "--config", "x.toml", "--garbage", "1.5"],
            "a probability per frame, 0 to 1",
        ),
        (
            vec!["simulate", "--config", "x.toml", "--garbage", "lots"],
            "'--garbage <P>'",
        ),
        (
            vec!["simulate", "--config", "x.toml", "--scanners", "65"],
            "65 is not in 1..=64",
        ),
        (vec!["demo", "--parcels", "0"], "0 is not in 1.."),
        (
            vec!["demo", "--scan-interval-ms", "often"],
            "'--scan-interval-ms <MS>'",
        ),
        (
            vec![
                "export", "--epcis", "--config", "x.toml", "--since", "monday",
            ],
            "hint: RFC 3339",
        ),
        (vec!["export", "--config", "x.toml"], "--epcis"),
        (
            vec!["status", "--config", "x.toml", "--json", "--watch"],
            "cannot be used with",
        ),
    ] {
        let out = darkleg(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        // Refused by the parser, so the config (which does not exist) was never read.
        assert!(!err.contains("cannot read"), "{args:?}: {err}");
    }
}

#[test]
fn every_subcommand_has_help_without_control_characters() {
    let top = darkleg(&["--help"]);
    assert!(top.status.success(), "{}", stderr(&top));
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    let subcommands = [
        "run",
        "check-config",
        "status",
        "demo",
        "export",
        "report",
        "inspect-barcode",
        "simulate",
        "recover",
        "webhooks",
        "completions",
        "man",
    ];
    for sub in subcommands {
        assert!(
            text.contains(&format!("\n  {sub} ")),
            "{sub} not listed:\n{text}"
        );
        for flag in ["--help", "-h"] {
            let out = darkleg(&[sub, flag]);
            assert!(out.status.success(), "{sub} {flag}: {}", stderr(&out));
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(
                help.contains(&format!("Usage: darkleg {sub}")),
                "{sub} {flag}:\n{help}"
            );
            assert_eq!(control_bytes(&out.stdout), b"", "{sub} {flag}:\n{help}");
        }
        let out = darkleg(&["help", sub]);
        assert!(out.status.success(), "help {sub}: {}", stderr(&out));
    }
    assert_eq!(control_bytes(&top.stdout), b"", "{text}");

    // The descriptions operators had before the parser changed, where they matter most.
    let help = |sub: &str| String::from_utf8_lossy(&darkleg(&[sub, "--help"]).stdout).into_owned();
    assert!(help("inspect-barcode").contains(r"the four characters \x1d"));
    assert!(help("run").contains("DARKLEG_LOG_FORMAT=json"));
    assert!(help("simulate").contains("--power-cut-every-ms <MS>"));
    assert!(help("export").contains("2026-11-22T00:00:00Z"));
    assert!(help("recover").contains("darkleg.db.damaged-*"));
    let replay = darkleg(&["webhooks", "replay", "--help"]);
    let text = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(
        replay.status.success() && text.contains("Usage: darkleg webhooks replay"),
        "{text}"
    );
    assert_eq!(control_bytes(&replay.stdout), b"", "{text}");

    let version = darkleg(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("darkleg {}", env!("CARGO_PKG_VERSION"))
    );
    // No subcommand: the help, on stderr, as a usage error.
    let bare = darkleg(&[]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        stderr(&bare).contains("Usage: darkleg <COMMAND>"),
        "{}",
        stderr(&bare)
    );
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_same_definitions() {
    let bash = darkleg(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(script.contains("complete -F _darkleg"), "{script}");
    for word in [
        "check-config",
        "inspect-barcode",
        "simulate",
        "recover",
        "--scan-interval-ms",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    // And bash, given the script, completes with it.
    let dir = Scratch::new("cli-completions");
    let file = dir.0.join("darkleg.bash");
    std::fs::write(&file, &bash.stdout).unwrap();
    let complete = |words: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 _darkleg darkleg \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
                 echo \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .expect("running bash");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("darkleg sta"), "status");
    assert_eq!(complete("darkleg status --js"), "--json");
    assert_eq!(complete("darkleg simulate --power"), "--power-cut-every-ms");

    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = darkleg(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("darkleg") && text.contains("check-config"),
            "{shell}: {text}"
        );
    }
    let out = darkleg(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("possible values"), "{}", stderr(&out));

    let man = darkleg(&["man"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.starts_with(".TH") || page.starts_with(".ie"), "{page}");
    assert!(page.contains(".TH darkleg 1"), "{page}");
    assert!(page.contains("inspect\\-barcode"), "{page}");
    assert_eq!(control_bytes(&man.stdout), b"");

    // One page per subcommand into a directory, for packagers.
    let out = darkleg(&["man", "--dir", dir.0.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status_page = std::fs::read_to_string(dir.0.join("darkleg-status.1")).unwrap();
    assert!(status_page.contains("\\-\\-watch"), "{status_page}");
    let out = darkleg(&["man", "--dir", dir.0.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));
}

#[test]
fn a_one_shot_command_piped_into_head_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // The reader has gone before the first write, as with `darkleg man | head -0`: the write
    // must end the process by SIGPIPE like other Unix tools, not by a panic on EPIPE.
    for args in [
        &["completions", "bash"][..],
        &["man"],
        &["inspect-barcode", "00012345678901234560"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(darkleg_bin())
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}
