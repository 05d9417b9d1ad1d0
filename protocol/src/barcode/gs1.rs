//! GS1 element strings: Application Identifiers (AIs) with their lengths, character sets and
//! check digits, as scanned (`]C1` + data with GS separators) or written (`(00)…(400)…`).
//!
//! Facts from the GS1 General Specifications (AI table, §3; check digits, §7.9). Only AIs a
//! warehouse or carrier label carries are listed; an unknown AI is an error, not a guess.

/// ASCII GS, the FNC1 separator as scanners transmit it.
pub const GS: char = '\u{1d}';

/// How an AI's data is made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Exactly `n` digits.
    N(u8),
    /// 1 to `n` digits, ended by GS or the end of the data.
    NVar(u8),
    /// 1 to `n` characters of GS1 character set 82, ended by GS or the end.
    X(u8),
    /// Exactly `n` digits, then 0 to `m` characters of set 82.
    NX(u8, u8),
    /// Exactly `n` digits, then 0 to `m` more digits.
    NN(u8, u8),
}

impl Format {
    /// Fixed-length AIs need no separator after them.
    pub fn fixed(self) -> Option<usize> {
        match self {
            Format::N(n) => Some(n as usize),
            _ => None,
        }
    }

    fn max(self) -> usize {
        match self {
            Format::N(n) | Format::NVar(n) | Format::X(n) => n as usize,
            Format::NX(n, m) | Format::NN(n, m) => (n + m) as usize,
        }
    }

    fn accepts(self, v: &str) -> bool {
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let n = v.len();
        match self {
            Format::N(k) => n == k as usize && digits(v),
            Format::NVar(k) => (1..=k as usize).contains(&n) && digits(v),
            Format::X(k) => (1..=k as usize).contains(&n) && v.chars().all(is_cset82),
            Format::NX(k, m) => {
                let k = k as usize;
                // `get`: byte `k` may fall inside a multi-byte character of a bad scan.
                (k..=k + m as usize).contains(&n)
                    && v.get(..k).is_some_and(digits)
                    && v.get(k..).is_some_and(|x| x.chars().all(is_cset82))
            }
            Format::NN(k, m) => (k as usize..=(k + m) as usize).contains(&n) && digits(v),
        }
    }
}

/// One row of the AI table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ai {
    pub code: &'static str,
    pub format: Format,
    /// The data (or its first `n` digits) ends in a GS1 mod-10 check digit.
    pub check_digit: bool,
    /// GS1's data title.
    pub title: &'static str,
}

const fn ai(code: &'static str, format: Format, check_digit: bool, title: &'static str) -> Ai {
    Ai {
        code,
        format,
        check_digit,
        title,
    }
}

use Format::*;

/// The AIs darkleg understands. Four-digit measure AIs (`310n`…) are listed by their
/// three-digit stem and matched with any decimal-point digit.
pub const AIS: &[Ai] = &[
    ai("00", N(18), true, "SSCC"),
    ai("01", N(14), true, "GTIN"),
    ai("02", N(14), true, "CONTENT"),
    ai("10", X(20), false, "BATCH/LOT"),
    ai("11", N(6), false, "PROD DATE"),
    ai("12", N(6), false, "DUE DATE"),
    ai("13", N(6), false, "PACK DATE"),
    ai("15", N(6), false, "BEST BEFORE or BEST BY"),
    ai("16", N(6), false, "SELL BY"),
    ai("17", N(6), false, "USE BY or EXPIRY"),
    ai("20", N(2), false, "VARIANT"),
    ai("21", X(20), false, "SERIAL"),
    ai("22", X(20), false, "CPV"),
    ai("235", X(28), false, "TPX"),
    ai("240", X(30), false, "ADDITIONAL ID"),
    ai("241", X(30), false, "CUST. PART No."),
    ai("250", X(30), false, "SECONDARY SERIAL"),
    ai("251", X(30), false, "REF. TO SOURCE"),
    ai("253", NX(13, 17), true, "GDTI"),
    ai("254", X(20), false, "GLN EXTENSION COMPONENT"),
    ai("255", NN(13, 12), true, "GCN"),
    ai("30", NVar(8), false, "VAR. COUNT"),
    ai("310", N(6), false, "NET WEIGHT (kg)"),
    ai("311", N(6), false, "LENGTH (m)"),
    ai("312", N(6), false, "WIDTH (m)"),
    ai("313", N(6), false, "HEIGHT (m)"),
    ai("315", N(6), false, "NET VOLUME (l)"),
    ai("330", N(6), false, "GROSS WEIGHT (kg)"),
    ai("37", NVar(8), false, "COUNT"),
    ai("400", X(30), false, "ORDER NUMBER"),
    ai("401", X(30), false, "GINC"),
    ai("402", N(17), true, "GSIN"),
    ai("403", X(30), false, "ROUTE"),
    ai("410", N(13), true, "SHIP TO LOC"),
    ai("411", N(13), true, "BILL TO"),
    ai("412", N(13), true, "PURCHASE FROM"),
    ai("413", N(13), true, "SHIP FOR LOC"),
    ai("414", N(13), true, "LOC No."),
    ai("415", N(13), true, "PAY TO"),
    ai("416", N(13), true, "PROD/SERV LOC"),
    ai("417", N(13), true, "PARTY"),
    ai("420", X(20), false, "SHIP TO POST"),
    ai("421", NX(3, 9), false, "SHIP TO POST"),
    ai("422", N(3), false, "ORIGIN"),
    ai("424", N(3), false, "COUNTRY - PROCESS."),
    ai("426", N(3), false, "COUNTRY - FULL PROCESS"),
    ai("7003", N(10), false, "EXPIRY TIME"),
    ai("8003", NX(14, 16), true, "GRAI"),
    ai("8004", X(30), false, "GIAI"),
    ai("8006", N(18), true, "ITIP"),
    ai("8017", N(18), true, "GSRN - PROVIDER"),
    ai("8018", N(18), true, "GSRN - RECIPIENT"),
    ai("8020", X(25), false, "REF No."),
    ai("90", X(30), false, "INTERNAL"),
    ai("91", X(90), false, "INTERNAL"),
    ai("92", X(90), false, "INTERNAL"),
    ai("93", X(90), false, "INTERNAL"),
    ai("94", X(90), false, "INTERNAL"),
    ai("95", X(90), false, "INTERNAL"),
    ai("96", X(90), false, "INTERNAL"),
    ai("97", X(90), false, "INTERNAL"),
    ai("98", X(90), false, "INTERNAL"),
    ai("99", X(90), false, "INTERNAL"),
];

/// The table row for the AI `data` starts with, and the AI's length in `data`.
pub fn lookup(data: &str) -> Option<(&'static Ai, usize)> {
    AIS.iter().find_map(|a| {
        let stem = a.code.len();
        if !data.starts_with(a.code) {
            return None;
        }
        // 31nn–33nn: the fourth digit is the decimal point position.
        if matches!(a.code, "310" | "311" | "312" | "313" | "315" | "330") {
            let d = *data.as_bytes().get(stem)?;
            return d.is_ascii_digit().then_some((a, stem + 1));
        }
        Some((a, stem))
    })
}

/// The table row for an AI given on its own (`"00"`, `"3103"`).
pub fn by_code(code: &str) -> Option<&'static Ai> {
    match lookup(code) {
        Some((a, len)) if len == code.len() => Some(a),
        _ => None,
    }
}

/// GS1 character set 82: what a variable AI may hold.
pub fn is_cset82(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!\"%&'()*+,-./:;<=>?_".contains(c)
}

/// The GS1 mod-10 check digit over `digits` (weights 3, 1, 3, … from the right).
pub fn check_digit(digits: &str) -> Option<u8> {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        sum += u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 };
    }
    Some(((10 - sum % 10) % 10) as u8)
}

/// True if the last digit of `key` is the GS1 check digit of the rest.
pub fn check_digit_ok(key: &str) -> bool {
    let Some((body, last)) = key.len().checked_sub(1).map(|n| key.split_at(n)) else {
        return false;
    };
    check_digit(body).is_some_and(|c| last.as_bytes()[0] == b'0' + c)
}

/// One AI and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The AI as it appears (`"3103"`, not the table stem).
    pub ai: &'a str,
    pub value: &'a str,
    pub spec: &'static Ai,
}

impl Field<'_> {
    /// The check digit verdict for AIs that carry one.
    pub fn check_ok(&self) -> Option<bool> {
        if !self.spec.check_digit {
            return None;
        }
        let key = match self.spec.format {
            Format::NX(n, _) | Format::NN(n, _) => self.value.get(..n as usize)?,
            _ => self.value,
        };
        Some(check_digit_ok(key))
    }
}

/// Most element strings on a label hold a handful of AIs.
pub const MAX_FIELDS: usize = 16;

/// A parsed element string: its AIs in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementString<'a> {
    fields: [Option<Field<'a>>; MAX_FIELDS],
    len: usize,
}

impl<'a> ElementString<'a> {
    fn new() -> Self {
        ElementString {
            fields: [None; MAX_FIELDS],
            len: 0,
        }
    }

    fn push(&mut self, f: Field<'a>) -> Result<(), Gs1Error> {
        let slot = self
            .fields
            .get_mut(self.len)
            .ok_or(Gs1Error::TooManyFields)?;
        *slot = Some(f);
        self.len += 1;
        Ok(())
    }

    pub fn fields(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields[..self.len].iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of the first field with this AI.
    pub fn get(&self, ai: &str) -> Option<&'a str> {
        self.fields().find(|f| f.ai == ai).map(|f| f.value)
    }

    /// False if any check digit fails.
    pub fn check_digits_ok(&self) -> bool {
        self.fields().all(|f| f.check_ok() != Some(false))
    }
}

/// Why an element string did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gs1Error {
    Empty,
    /// No AI in the table starts at this byte offset.
    UnknownAi(usize),
    /// The data of this AI has the wrong length or characters.
    BadValue(&'static str),
    TooManyFields,
    /// A bracketed string without its closing bracket.
    Unbalanced,
}

impl core::fmt::Display for Gs1Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Gs1Error::Empty => f.write_str("no element string"),
            Gs1Error::UnknownAi(at) => write!(f, "unknown application identifier at offset {at}"),
            Gs1Error::BadValue(ai) => write!(f, "AI ({ai}): wrong length or characters"),
            Gs1Error::TooManyFields => write!(f, "more than {MAX_FIELDS} AIs"),
            Gs1Error::Unbalanced => f.write_str("unbalanced brackets"),
        }
    }
}

/// Parses an element string as scanned: AIs back to back, variable-length ones ended by GS
/// (a leading GS, the FNC1 in first position, is skipped).
pub fn parse(data: &str) -> Result<ElementString<'_>, Gs1Error> {
    let mut out = ElementString::new();
    let mut rest = data.strip_prefix(GS).unwrap_or(data);
    if rest.is_empty() {
        return Err(Gs1Error::Empty);
    }
    while !rest.is_empty() {
        let at = data.len() - rest.len();
        let (spec, ai_len) = lookup(rest).ok_or(Gs1Error::UnknownAi(at))?;
        let ai = &rest[..ai_len];
        let body = &rest[ai_len..];
        let end = match spec.format.fixed() {
            Some(n) => n.min(body.len()),
            None => body
                .find(GS)
                .unwrap_or(body.len())
                .min(spec.format.max() + 1),
        };
        let value = body.get(..end).ok_or(Gs1Error::BadValue(spec.code))?;
        if !spec.format.accepts(value) {
            return Err(Gs1Error::BadValue(spec.code));
        }
        out.push(Field { ai, value, spec })?;
        rest = &body[end..];
        rest = rest.strip_prefix(GS).unwrap_or(rest);
    }
    Ok(out)
}

/// Parses the human-readable form `(00)340434161094042557(400)4711`.
pub fn parse_bracketed(s: &str) -> Result<ElementString<'_>, Gs1Error> {
    let mut out = ElementString::new();
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(Gs1Error::Empty);
    }
    while !rest.is_empty() {
        let at = s.len() - rest.len();
        let inner = rest.strip_prefix('(').ok_or(Gs1Error::UnknownAi(at))?;
        let close = inner.find(')').ok_or(Gs1Error::Unbalanced)?;
        let ai = &inner[..close];
        let spec = by_code(ai).ok_or(Gs1Error::UnknownAi(at))?;
        let body = &inner[close + 1..];
        // A `(` may be data in set 82; only a known `(AI)` starts the next field.
        let end = next_bracket_ai(body).unwrap_or(body.len());
        let value = &body[..end];
        if !spec.format.accepts(value) {
            return Err(Gs1Error::BadValue(spec.code));
        }
        out.push(Field { ai, value, spec })?;
        rest = &body[end..];
    }
    Ok(out)
}

fn next_bracket_ai(body: &str) -> Option<usize> {
    body.match_indices('(').map(|(i, _)| i).find(|&i| {
        body[i + 1..]
            .find(')')
            .is_some_and(|c| by_code(&body[i + 1..i + 1 + c]).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_inside_a_fixed_part_is_a_bad_value_not_a_panic() {
        // Found by the barcode fuzz target: AI 8003 (N14 + X..16) with a two-byte character
        // straddling byte 14 of the value.
        let code = "\u{1d}800380q\0\0\0\0\0\x0003\r4\u{7df}";
        assert!(parse(code).is_err());
        assert!(parse("8003\u{e9}1234567890123ABC").is_err());
    }

    #[test]
    fn check_digits_of_published_keys() {
        // GS1 General Specifications examples.
        assert!(check_digit_ok("106141411234567897")); // SSCC
        assert!(check_digit_ok("4006381333931")); // GTIN-13
        assert!(check_digit_ok("09506000134352")); // GTIN-14
        assert!(check_digit_ok("5412345000013")); // GLN
        assert!(!check_digit_ok("4006381333932"));
        assert_eq!(check_digit("10614141123456789"), Some(7));
        assert_eq!(check_digit("12a"), None);
    }

    #[test]
    fn fixed_and_variable_fields_with_separators() {
        let s = "0109506000134352\u{1d}17201225\u{1d}10ABC123\u{1d}21XYZ";
        // A GS after a fixed field is tolerated; after a variable one it is required.
        let e = parse(s).unwrap();
        let got: Vec<(&str, &str)> = e.fields().map(|f| (f.ai, f.value)).collect();
        assert_eq!(
            got,
            [
                ("01", "09506000134352"),
                ("17", "201225"),
                ("10", "ABC123"),
                ("21", "XYZ")
            ]
        );
        assert!(e.check_digits_ok());
    }

    #[test]
    fn sscc_with_order_number_and_weight() {
        let e = parse("\u{1d}00340434161094042557400ORDER-4711\u{1d}3103001250").unwrap();
        assert_eq!(e.get("00"), Some("340434161094042557"));
        assert_eq!(e.get("400"), Some("ORDER-4711"));
        assert_eq!(e.get("3103"), Some("001250"));
        assert!(e.check_digits_ok());
    }

    #[test]
    fn bracketed_form() {
        let e = parse_bracketed("(00)106141411234567897(420)10115(421)2762A").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e.get("421"), Some("2762A"));
        assert_eq!(
            parse_bracketed("(00)1061414112345678(420)x"),
            Err(Gs1Error::BadValue("00"))
        );
        assert_eq!(
            parse_bracketed("(00)106141411234567897(4"),
            Err(Gs1Error::BadValue("00"))
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(parse("0012345"), Err(Gs1Error::BadValue("00")));
        assert_eq!(parse("05123"), Err(Gs1Error::UnknownAi(0)));
        assert_eq!(parse("10"), Err(Gs1Error::BadValue("10")));
        assert_eq!(parse("11ABCDEF"), Err(Gs1Error::BadValue("11")));
        assert!(parse("").is_err());
        // Variable field longer than its maximum.
        assert_eq!(
            parse(&format!("10{}", "A".repeat(21))),
            Err(Gs1Error::BadValue("10"))
        );
    }

    #[test]
    fn failed_check_digit_is_reported_per_field() {
        let e = parse("00106141411234567898").unwrap();
        assert_eq!(e.fields().next().unwrap().check_ok(), Some(false));
        assert!(!e.check_digits_ok());
    }
}
