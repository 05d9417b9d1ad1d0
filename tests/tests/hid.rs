//! Keyboard-wedge scanners as the operator meets them when something is wrong: a by-id glob
//! that matches nothing is said in the log, and a path that matches something the agent
//! cannot read as a keyboard is an error in the log and on the status page — never silence.
//! (Reading a real keyboard needs /dev/uinput, absent here: the decoding is unit-tested on
//! recorded key streams.)

use darkleg_tests::*;
use std::time::Duration;

#[test]
fn a_missing_or_unreadable_keyboard_scanner_is_said_not_silent() {
    let scratch = Scratch::new("hid-devices");
    let by_id = scratch.0.join("by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let glob = by_id.join("usb-*-event-kbd");
    let extra = format!(
        "[[hid_scanner]]\ndevice = \"{}\"\nstation = \"pack\"\n",
        glob.display()
    );
    let rig = Rig::with_store("hid-missing", &[], &extra);
    let _agent = rig.start_agent();
    let log = || std::fs::read_to_string(&rig.log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || log()
            .contains("nothing matches this path")),
        "a glob matching nothing is logged: {}",
        tail(&rig.log, 20)
    );
    // Something appears under the name that is no input device (a wrong udev rule, say).
    let fake = by_id.join("usb-Acme_Scanner-event-kbd");
    std::fs::write(&fake, b"not an evdev device").unwrap();
    let name = fake.display().to_string();
    let row = || {
        status(&rig.config)["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"] == name.as_str()).cloned())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(20), || row()["last_reject"]
            .as_str()
            .is_some_and(|r| !r.is_empty())),
        "the unreadable device is on the status page: {}\n{}",
        status(&rig.config)["ports"],
        tail(&rig.log, 20)
    );
    assert_eq!(row()["connected"], false);
    assert!(
        log().contains("keyboard-wedge scanner NOT read"),
        "{}",
        tail(&rig.log, 20)
    );
}
