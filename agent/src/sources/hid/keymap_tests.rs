//! Recorded key streams, as evdev delivers them (MSC_SCAN, KEY, SYN_REPORT per key).

use super::*;

type Ev = (u16, u16, i32);

/// What a real keyboard interface sends for one key change.
fn key(code: u16, value: i32, out: &mut Vec<Ev>) {
    out.push((4, 4, 0x70000 + code as i32));
    out.push((EV_KEY, code, value));
    out.push((EV_SYN, 0, 0));
}

fn tap(code: u16, out: &mut Vec<Ev>) {
    key(code, 1, out);
    key(code, 0, out);
}

/// `code` with modifier `m` held around it, as scanners type.
fn with(m: u16, code: u16, out: &mut Vec<Ev>) {
    key(m, 1, out);
    tap(code, out);
    key(m, 0, out);
}

/// Keys: plain codes; `S`+code shifted; `G`+code AltGr.
#[derive(Clone, Copy)]
enum K {
    P(u16),
    S(u16),
    G(u16),
}

fn stream(keys: &[K]) -> Vec<Ev> {
    let mut out = Vec::new();
    for k in keys {
        match *k {
            K::P(c) => tap(c, &mut out),
            K::S(c) => with(KEY_LEFTSHIFT, c, &mut out),
            K::G(c) => with(KEY_RIGHTALT, c, &mut out),
        }
    }
    out
}

fn decode(layout: Layout, events: &[Ev]) -> Vec<Output> {
    let mut d = Decoder::new(layout, 64);
    events
        .iter()
        .filter_map(|&(t, c, v)| d.push(t, c, v))
        .collect()
}

fn scan(s: &str) -> Output {
    Output::Scan(s.to_string())
}

use K::{G, P, S};

#[test]
fn us_aim_prefix_shifted_letters_and_digits() {
    // "]C1" + "0034" + "Zz-1" then Enter, on a US layout.
    let keys = [
        P(27),
        S(46),
        P(2),
        P(11),
        P(11),
        P(4),
        P(5),
        S(44),
        P(44),
        P(12),
        P(2),
        P(KEY_ENTER),
    ];
    assert_eq!(
        decode(Layout::Us, &stream(&keys)),
        vec![scan("]C10034Zz-1")]
    );
    let keys = [
        S(3),
        S(4),
        P(53),
        S(53),
        P(57),
        P(82),
        P(79),
        P(KEY_KPENTER),
    ];
    assert_eq!(decode(Layout::Us, &stream(&keys)), vec![scan("@#/? 01")]);
}

#[test]
fn de_swaps_y_and_z_and_has_altgr_symbols() {
    // "Zy-_@€" then "{]}\" then "§3": y/z swapped, minus on the slash key, AltGr for @ and €.
    let keys = [S(21), P(44), P(53), S(53), G(16), G(18), P(KEY_ENTER)];
    assert_eq!(decode(Layout::De, &stream(&keys)), vec![scan("Zy-_@€")]);
    let keys = [G(8), G(10), G(11), G(12), S(4), P(4), S(8), P(KEY_ENTER)];
    assert_eq!(decode(Layout::De, &stream(&keys)), vec![scan("{]}\\§3/")]);
    // The same keys on a US layout mean something else: the layout matters.
    let keys = [S(21), P(44), P(KEY_ENTER)];
    assert_eq!(decode(Layout::Us, &stream(&keys)), vec![scan("Yz")]);
}

#[test]
fn fr_digits_need_shift_and_letters_move() {
    // AZERTY: digits are shifted; a/q, z/w and m move; @ is AltGr+0.
    let keys = [
        S(11),
        S(11),
        S(2),
        S(10),
        P(16),
        S(16),
        P(30),
        P(17),
        P(44),
        P(39),
        G(11),
        P(3),
        P(KEY_ENTER),
    ];
    assert_eq!(
        decode(Layout::Fr, &stream(&keys)),
        vec![scan("0019aAqzwm@é")]
    );
    // Unshifted digit keys are the symbols: "&é\"'(-è_çà".
    let keys: Vec<K> = (2..=11).map(P).chain([P(KEY_ENTER)]).collect();
    assert_eq!(
        decode(Layout::Fr, &stream(&keys)),
        vec![scan("&é\"'(-è_çà")]
    );
}

#[test]
fn dead_keys_give_the_accent_before_space_or_the_next_key() {
    // DE: ^ is dead; "^ " is "^"; "^1" is "^1". FR: the ^ key likewise.
    let keys = [P(41), P(57), P(41), P(2), P(KEY_ENTER)];
    assert_eq!(decode(Layout::De, &stream(&keys)), vec![scan("^^1")]);
    let keys = [P(26), P(57), P(KEY_ENTER)];
    assert_eq!(decode(Layout::Fr, &stream(&keys)), vec![scan("^")]);
    // A dead key last before Enter is kept.
    let keys = [P(2), P(41), P(KEY_ENTER)];
    assert_eq!(decode(Layout::De, &stream(&keys)), vec![scan("1^")]);
}

#[test]
fn a_lost_shift_key_up_costs_at_most_its_own_scan() {
    let mut ev = Vec::new();
    key(KEY_LEFTSHIFT, 1, &mut ev);
    tap(30, &mut ev);
    // The Shift key-up never comes.
    tap(48, &mut ev);
    tap(KEY_ENTER, &mut ev);
    ev.extend(stream(&[P(48), P(30), P(KEY_ENTER)]));
    assert_eq!(decode(Layout::Us, &ev), vec![scan("AB"), scan("ba")]);
}

#[test]
fn a_lost_character_key_up_does_not_repeat_it() {
    let mut ev = Vec::new();
    key(2, 1, &mut ev);
    // Key-up lost: the kernel auto-repeats.
    for _ in 0..5 {
        key(2, 2, &mut ev);
    }
    tap(3, &mut ev);
    tap(KEY_ENTER, &mut ev);
    assert_eq!(decode(Layout::Us, &ev), vec![scan("12")]);
}

#[test]
fn garbage_keys_spoil_only_their_scan() {
    // F1 (59), an arrow (103), Ctrl+C, Alt+letter: each scan with one is garbage.
    let mut ev = stream(&[P(2), P(59), P(3), P(KEY_ENTER)]);
    ev.extend(stream(&[P(103), P(KEY_ENTER)]));
    with(KEY_LEFTCTRL, 46, &mut ev);
    tap(KEY_ENTER, &mut ev);
    with(KEY_LEFTALT, 30, &mut ev);
    tap(KEY_ENTER, &mut ev);
    // Enter alone, and a key without a character at that level (FR ² shifted).
    tap(KEY_ENTER, &mut ev);
    ev.extend(stream(&[S(41), P(KEY_ENTER)]));
    ev.extend(stream(&[P(4), P(KEY_ENTER)]));
    let out = decode(Layout::Fr, &ev);
    assert_eq!(out.len(), 7, "{out:?}");
    assert!(
        out[..6].iter().all(|o| matches!(o, Output::Garbage(_))),
        "{out:?}"
    );
    assert_eq!(out[6], scan("\""));
}

#[test]
fn events_lost_by_the_kernel_discard_the_cut_scan_up_to_its_enter() {
    // "12", a drop, then the tail "34" + Enter: one garbled scan, the tail not a scan.
    let mut ev = stream(&[P(2), P(3)]);
    ev.push((EV_SYN, SYN_DROPPED, 0));
    ev.extend(stream(&[P(4), P(5), P(KEY_ENTER)]));
    ev.extend(stream(&[P(6), P(KEY_ENTER)]));
    let out = decode(Layout::Us, &ev);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        matches!(&out[0], Output::Garbage(w) if w.contains("SYN_DROPPED")),
        "{out:?}"
    );
    assert_eq!(out[1], scan("5"));
    // A drop before anything was typed is counted too (the lost events may have been a
    // scan's start), and what follows up to Enter is discarded.
    let mut ev = vec![(EV_SYN, SYN_DROPPED, 0)];
    ev.extend(stream(&[P(4), P(5), P(KEY_ENTER), P(6), P(KEY_ENTER)]));
    let out = decode(Layout::Us, &ev);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(out[0], Output::Garbage(_)), "{out:?}");
    assert_eq!(out[1], scan("5"));
    // Each drop counts (it may have swallowed whole scans); an unplug during the discard
    // adds nothing more.
    let mut d = Decoder::new(Layout::Us, 64);
    assert!(d.push(EV_SYN, SYN_DROPPED, 0).is_some());
    assert!(d.push(EV_SYN, SYN_DROPPED, 0).is_some());
    assert!(d.push(EV_KEY, 4, 1).is_none());
    assert_eq!(d.abandon(), None);
}

#[test]
fn gs_from_ctrl_bracket_or_alt_keypad_and_caps_lock() {
    // "]C1" 01 GS 21 via Ctrl+], then via Alt + keypad 0 0 2 9.
    let mut ev = stream(&[P(27), S(46), P(2), P(11), P(2)]);
    with(KEY_LEFTCTRL, KEY_RIGHTBRACE, &mut ev);
    ev.extend(stream(&[P(3), P(2)]));
    key(KEY_LEFTALT, 1, &mut ev);
    for kp in [82, 82, 80, 73] {
        tap(kp, &mut ev);
    }
    key(KEY_LEFTALT, 0, &mut ev);
    ev.extend(stream(&[P(4), P(KEY_ENTER)]));
    assert_eq!(decode(Layout::Us, &ev), vec![scan("]C101\u{1d}21\u{1d}3")]);
    // Caps Lock swaps letter case only.
    let ev = stream(&[
        P(KEY_CAPSLOCK),
        P(30),
        S(30),
        P(2),
        S(2),
        P(KEY_CAPSLOCK),
        P(30),
        P(KEY_ENTER),
    ]);
    assert_eq!(decode(Layout::Us, &ev), vec![scan("Aa1!a")]);
}

#[test]
fn too_long_is_garbage_and_the_next_scan_is_clean() {
    let keys: Vec<K> = std::iter::repeat_n(P(2), 70)
        .chain([P(KEY_ENTER), P(3), P(KEY_ENTER)])
        .collect();
    let out = decode(Layout::Us, &stream(&keys));
    assert!(
        matches!(&out[0], Output::Garbage(w) if w.contains("max_line")),
        "{out:?}"
    );
    assert_eq!(out[1], scan("2"));
}

#[test]
fn every_layout_maps_digits_and_letters_somewhere() {
    // Each layout can type every character of GS1's set 82 that it has keys for, and
    // every digit and letter (scanners need those).
    for layout in [Layout::Us, Layout::De, Layout::Fr] {
        let map = keymap(layout);
        let chars: std::collections::HashSet<char> = map
            .iter()
            .flatten()
            .filter_map(|s| match s {
                Some(Sym::Char(c)) => Some(*c),
                _ => None,
            })
            .collect();
        for c in ('0'..='9')
            .chain('a'..='z')
            .chain('A'..='Z')
            .chain("-./:;=?_%&()*+,!\"'<>".chars())
        {
            assert!(chars.contains(&c), "{layout:?} cannot type {c:?}");
        }
    }
}
