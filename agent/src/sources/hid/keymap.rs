//! Key events back to characters: what a USB scanner in keyboard mode typed, read the way a
//! keyboard of the configured layout would have meant it. Pure (no I/O), so it is tested on
//! recorded key streams.
//!
//! A scanner presses Shift (and AltGr) around each character that needs it, and Enter after
//! the scan. Modifiers are reset at every Enter, so a lost Shift key-up costs at most the
//! scan it happened in; key repeats (a lost key-up of a character key) are ignored. GS (the
//! GS1 separator) comes as Ctrl+] (the key right of P on a US board) or Alt + keypad 0029.
//! Lost events (SYN_DROPPED) count as one garbled scan each, and the keys up to the next
//! Enter are dropped with it: a cut scan's tail is no scan.

use crate::config::Layout;
use std::sync::OnceLock;

pub const EV_SYN: u16 = 0;
pub const EV_KEY: u16 = 1;
/// The kernel's input buffer overflowed: events were lost.
pub const SYN_DROPPED: u16 = 3;

const KEY_ENTER: u16 = 28;
const KEY_KPENTER: u16 = 96;
const KEY_LEFTSHIFT: u16 = 42;
const KEY_RIGHTSHIFT: u16 = 54;
const KEY_LEFTCTRL: u16 = 29;
const KEY_RIGHTCTRL: u16 = 97;
const KEY_LEFTALT: u16 = 56;
const KEY_RIGHTALT: u16 = 100;
const KEY_CAPSLOCK: u16 = 58;
const KEY_NUMLOCK: u16 = 69;
const KEY_RIGHTBRACE: u16 = 27;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Char(char),
    /// A dead key: it waits for the next key (Space gives the accent itself).
    Dead(char),
}

const KEYS: usize = 128;
/// Per key code: the symbol without modifier, with Shift, with AltGr.
type Keymap = [[Option<Sym>; 3]; KEYS];

const N: char = '\0';
/// (code, plain, shift, altgr, dead-mask: bit 0 plain, 1 shift, 2 altgr is a dead key)
type Row = (u16, char, char, char, u8);

const US: &[Row] = &[
    (41, '`', '~', N, 0),
    (2, '1', '!', N, 0),
    (3, '2', '@', N, 0),
    (4, '3', '#', N, 0),
    (5, '4', '$', N, 0),
    (6, '5', '%', N, 0),
    (7, '6', '^', N, 0),
    (8, '7', '&', N, 0),
    (9, '8', '*', N, 0),
    (10, '9', '(', N, 0),
    (11, '0', ')', N, 0),
    (12, '-', '_', N, 0),
    (13, '=', '+', N, 0),
    (26, '[', '{', N, 0),
    (27, ']', '}', N, 0),
    (43, '\\', '|', N, 0),
    (39, ';', ':', N, 0),
    (40, '\'', '"', N, 0),
    (51, ',', '<', N, 0),
    (52, '.', '>', N, 0),
    (53, '/', '?', N, 0),
    (86, '\\', '|', N, 0),
];

const DE: &[Row] = &[
    (41, '^', '°', N, 0b001),
    (2, '1', '!', N, 0),
    (3, '2', '"', '²', 0),
    (4, '3', '§', '³', 0),
    (5, '4', '$', N, 0),
    (6, '5', '%', N, 0),
    (7, '6', '&', N, 0),
    (8, '7', '/', '{', 0),
    (9, '8', '(', '[', 0),
    (10, '9', ')', ']', 0),
    (11, '0', '=', '}', 0),
    (12, 'ß', '?', '\\', 0),
    (13, '´', '`', N, 0b011),
    (16, 'q', 'Q', '@', 0),
    (18, 'e', 'E', '€', 0),
    (26, 'ü', 'Ü', N, 0),
    (27, '+', '*', '~', 0),
    (43, '#', '\'', N, 0),
    (39, 'ö', 'Ö', N, 0),
    (40, 'ä', 'Ä', N, 0),
    (50, 'm', 'M', 'µ', 0),
    (51, ',', ';', N, 0),
    (52, '.', ':', N, 0),
    (53, '-', '_', N, 0),
    (86, '<', '>', '|', 0),
];

const FR: &[Row] = &[
    (41, '²', N, N, 0),
    (2, '&', '1', N, 0),
    (3, 'é', '2', '~', 0b100),
    (4, '"', '3', '#', 0),
    (5, '\'', '4', '{', 0),
    (6, '(', '5', '[', 0),
    (7, '-', '6', '|', 0),
    (8, 'è', '7', '`', 0b100),
    (9, '_', '8', '\\', 0),
    (10, 'ç', '9', '^', 0),
    (11, 'à', '0', '@', 0),
    (12, ')', '°', ']', 0),
    (13, '=', '+', '}', 0),
    (18, 'e', 'E', '€', 0),
    (26, '^', '¨', N, 0b011),
    (27, '$', '£', '¤', 0),
    (43, '*', 'µ', N, 0),
    (40, 'ù', '%', N, 0),
    (50, ',', '?', N, 0),
    (51, ';', '.', N, 0),
    (52, ':', '/', N, 0),
    (53, '!', '§', N, 0),
    (86, '<', '>', N, 0),
];

/// Letter rows from Q, A and Z positions (codes 16, 30, 44).
fn letters(layout: Layout) -> [&'static str; 3] {
    match layout {
        Layout::Us => ["qwertyuiop", "asdfghjkl", "zxcvbnm"],
        Layout::De => ["qwertzuiop", "asdfghjkl", "yxcvbnm"],
        Layout::Fr => ["azertyuiop", "qsdfghjklm", "wxcvbn"],
    }
}

/// The keypad types digits whatever the layout (scanners often use it for numbers).
const KEYPAD: &[(u16, char)] = &[
    (71, '7'),
    (72, '8'),
    (73, '9'),
    (74, '-'),
    (75, '4'),
    (76, '5'),
    (77, '6'),
    (78, '+'),
    (79, '1'),
    (80, '2'),
    (81, '3'),
    (82, '0'),
    (83, '.'),
    (98, '/'),
    (55, '*'),
];

fn build(layout: Layout) -> Keymap {
    let mut map: Keymap = [[None; 3]; KEYS];
    for (row, start) in letters(layout).iter().zip([16u16, 30, 44]) {
        for (i, c) in row.chars().enumerate() {
            map[start as usize + i] = [
                Some(Sym::Char(c)),
                Some(Sym::Char(c.to_ascii_uppercase())),
                None,
            ];
        }
    }
    for &(code, c) in KEYPAD {
        map[code as usize] = [Some(Sym::Char(c)); 3];
    }
    map[57] = [Some(Sym::Char(' ')); 3];
    let rows = match layout {
        Layout::Us => US,
        Layout::De => DE,
        Layout::Fr => FR,
    };
    for &(code, plain, shift, altgr, dead) in rows {
        for (level, c) in [plain, shift, altgr].into_iter().enumerate() {
            map[code as usize][level] = match (c, dead & (1 << level) != 0) {
                (N, _) => None,
                (c, true) => Some(Sym::Dead(c)),
                (c, false) => Some(Sym::Char(c)),
            };
        }
    }
    map
}

fn keymap(layout: Layout) -> &'static Keymap {
    static MAPS: [OnceLock<Keymap>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = layout as usize;
    MAPS[i].get_or_init(|| build(layout))
}

/// What a finished scan was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Scan(String),
    /// Not a scan (a key without a character, a Ctrl/Alt combination, lost events, too
    /// long, nothing before Enter): counted, never stored.
    Garbage(String),
}

pub struct Decoder {
    layout: Layout,
    map: &'static Keymap,
    max_chars: usize,
    shift: [bool; 2],
    altgr: bool,
    ctrl: [bool; 2],
    caps: bool,
    /// Left Alt held: keypad digits typed since, for Alt + keypad codes.
    alt: Option<u32>,
    dead: Option<char>,
    line: String,
    /// Why the scan being typed is already garbage (the first reason).
    bad: Option<String>,
    /// After lost events: the keys up to the next Enter are the cut scan's tail (its
    /// start, or its Enter, may be among the lost), never a scan of their own.
    discarding: bool,
}

impl Decoder {
    pub fn new(layout: Layout, max_chars: usize) -> Self {
        Decoder {
            layout,
            map: keymap(layout),
            max_chars,
            shift: [false; 2],
            altgr: false,
            ctrl: [false; 2],
            caps: false,
            alt: None,
            dead: None,
            line: String::new(),
            bad: None,
            discarding: false,
        }
    }

    fn spoil(&mut self, why: String) {
        self.bad.get_or_insert(why);
    }

    fn push_char(&mut self, c: char) {
        if self.line.chars().count() >= self.max_chars {
            self.spoil(format!("scan longer than max_line ({})", self.max_chars));
        } else {
            self.line.push(c);
        }
    }

    /// Modifiers and the scan so far forgotten: after Enter, and after lost events.
    fn reset(&mut self) -> (String, Option<String>) {
        self.shift = [false; 2];
        self.altgr = false;
        self.ctrl = [false; 2];
        self.alt = None;
        if let Some(d) = self.dead.take() {
            self.line.push(d);
        }
        (std::mem::take(&mut self.line), self.bad.take())
    }

    /// The device went away (or the agent stops) in the middle of a scan: what was typed of
    /// it, if anything, for the caller to count — it is not a scan, and never stored.
    pub fn abandon(&mut self) -> Option<String> {
        let (line, bad) = self.reset();
        // A cut scan's tail was counted at its drop.
        let counted = std::mem::take(&mut self.discarding);
        (!counted && (!line.is_empty() || bad.is_some())).then_some(line)
    }

    /// One input event (`type`, `code`, `value` as evdev gives them); a scan or garbage when
    /// one ends.
    pub fn push(&mut self, ty: u16, code: u16, value: i32) -> Option<Output> {
        if ty == EV_SYN && code == SYN_DROPPED {
            // Always a garbled scan: even with nothing typed yet, the lost events may have
            // held a scan's start, or a whole one.
            self.reset();
            self.discarding = true;
            return Some(Output::Garbage(
                "key events lost by the kernel (SYN_DROPPED): the scan they cut is discarded up to its Enter".into(),
            ));
        }
        if ty != EV_KEY {
            return None;
        }
        let down = match value {
            1 => true,
            0 => false,
            // Auto-repeat: a scanner never holds a key, so this is a key whose key-up was lost.
            _ => return None,
        };
        match code {
            KEY_LEFTSHIFT => self.shift[0] = down,
            KEY_RIGHTSHIFT => self.shift[1] = down,
            KEY_LEFTCTRL => self.ctrl[0] = down,
            KEY_RIGHTCTRL => self.ctrl[1] = down,
            KEY_RIGHTALT => self.altgr = down,
            KEY_LEFTALT if down => self.alt = Some(0),
            KEY_LEFTALT => {
                // Alt released: the keypad code typed meanwhile is one character.
                if let Some(n) = self.alt.take().filter(|&n| n > 0) {
                    match char::from_u32(n) {
                        Some(c) => self.push_char(c),
                        None => self.spoil(format!("Alt + keypad {n} is no character")),
                    }
                }
            }
            KEY_CAPSLOCK if down => self.caps = !self.caps,
            KEY_CAPSLOCK | KEY_NUMLOCK => {}
            _ if !down => {}
            KEY_ENTER | KEY_KPENTER => {
                let (line, bad) = self.reset();
                if std::mem::take(&mut self.discarding) {
                    return None;
                }
                return Some(match bad {
                    Some(why) => Output::Garbage(why),
                    None if line.is_empty() => Output::Garbage("Enter without a scan".into()),
                    None => Output::Scan(line),
                });
            }
            _ => self.key(code),
        }
        None
    }

    fn key(&mut self, code: u16) {
        if let Some(n) = self.alt.as_mut() {
            match KEYPAD.iter().find(|(k, _)| *k == code) {
                Some((_, d)) if d.is_ascii_digit() => {
                    *n = n.saturating_mul(10).saturating_add(*d as u32 - '0' as u32)
                }
                _ => self.spoil(format!("Alt + key {code}")),
            }
            return;
        }
        if self.ctrl.iter().any(|&c| c) {
            if code == KEY_RIGHTBRACE {
                self.push_char('\u{1d}');
            } else {
                self.spoil(format!("Ctrl + key {code}"));
            }
            return;
        }
        let level = if self.altgr {
            2
        } else if self.shift.iter().any(|&s| s) {
            1
        } else {
            0
        };
        let Some(syms) = self.map.get(code as usize) else {
            self.spoil(format!("key {code} has no character"));
            return;
        };
        let mut sym = syms[level];
        // Caps Lock swaps case for letters only, as on a real keyboard.
        if self.caps && level < 2 {
            if let (Some(Sym::Char(a)), Some(Sym::Char(b))) = (syms[0], syms[1]) {
                if a.is_alphabetic() && b.is_alphabetic() {
                    sym = syms[1 - level];
                }
            }
        }
        match sym {
            None => self.spoil(format!(
                "key {code} has no character in layout {:?} at this level",
                self.layout
            )),
            Some(Sym::Dead(d)) => {
                if let Some(prev) = self.dead.replace(d) {
                    self.push_char(prev);
                }
            }
            Some(Sym::Char(c)) => {
                // No composition (â, ñ): barcodes do not carry them; the accent is kept
                // before the key, and alone before Space.
                if let Some(d) = self.dead.take() {
                    self.push_char(d);
                    if c == ' ' {
                        return;
                    }
                }
                self.push_char(c);
            }
        }
    }
}

#[cfg(test)]
#[path = "keymap_tests.rs"]
mod tests;
