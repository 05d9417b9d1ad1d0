//! Carrier tracking numbers and their check digits.
//!
//! A number is matched against every known format; each match carries its own verdict:
//! `Some(true)` check digit holds, `Some(false)` it fails, `None` the format has no check
//! digit. Several formats can match one number (a 12-digit number may be FedEx Express or
//! GLS); [`classify`] picks the best and keeps the others as candidates. Formats and check
//! digit rules come from the carriers' label specifications (as collected in the team's
//! domain notes); test numbers are the published examples.

use super::gs1;

/// Who carries the parcel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Ups,
    Fedex,
    Usps,
    Dhl,
    Dpd,
    /// A national post's UPU S10 number (the country says which post).
    S10,
    Amazon,
    Gls,
    Evri,
    Postnl,
    CanadaPost,
    Ontrac,
}

impl Carrier {
    pub const ALL: [Carrier; 12] = [
        Carrier::Ups,
        Carrier::Fedex,
        Carrier::Usps,
        Carrier::Dhl,
        Carrier::Dpd,
        Carrier::S10,
        Carrier::Amazon,
        Carrier::Gls,
        Carrier::Evri,
        Carrier::Postnl,
        Carrier::CanadaPost,
        Carrier::Ontrac,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Ups => "ups",
            Carrier::Fedex => "fedex",
            Carrier::Usps => "usps",
            Carrier::Dhl => "dhl",
            Carrier::Dpd => "dpd",
            Carrier::S10 => "s10",
            Carrier::Amazon => "amazon",
            Carrier::Gls => "gls",
            Carrier::Evri => "evri",
            Carrier::Postnl => "postnl",
            Carrier::CanadaPost => "canada_post",
            Carrier::Ontrac => "ontrac",
        }
    }

    pub fn parse(s: &str) -> Option<Carrier> {
        Carrier::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One format a number matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracking<'a> {
    pub carrier: Carrier,
    /// Which of the carrier's formats (`"fedex_express_12"`, `"usps_impb"`, …).
    pub format: &'static str,
    pub valid: Option<bool>,
    /// S10: ISO country of the issuing post; DPD: destination country (numeric ISO).
    pub country: Option<&'a str>,
    /// Service code where the number carries one (UPS, S10, DPD).
    pub service: Option<&'a str>,
}

/// Up to this many formats can match one number.
pub const MAX_CANDIDATES: usize = 4;

/// Every format `code` matches, best first: a holding check digit, then formats without one,
/// then failed check digits. `code` must be uppercase without spaces.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    items: [Option<Tracking<'a>>; MAX_CANDIDATES],
}

impl<'a> Candidates<'a> {
    pub fn best(&self) -> Option<&Tracking<'a>> {
        self.items[0].as_ref()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tracking<'a>> {
        self.items.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
}

/// Matches `code` against every known format.
pub fn classify<'a>(code: &'a str) -> Candidates<'a> {
    let mut found: [Option<Tracking<'a>>; MAX_CANDIDATES] = [None; MAX_CANDIDATES];
    // Every format is ASCII; anything else is not a tracking number (and slicing stays safe).
    if !code.is_ascii() || code.len() < 10 {
        return Candidates { items: found };
    }
    let mut n = 0;
    let mut add = |t: Tracking<'a>| {
        if n < MAX_CANDIDATES {
            found[n] = Some(t);
            n += 1;
        }
    };
    let t = |carrier, format, valid| Tracking::<'a> {
        carrier,
        format,
        valid,
        country: None,
        service: None,
    };
    let b = code.as_bytes();
    let len = b.len();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let upper = |s: &str| s.bytes().all(|c| c.is_ascii_uppercase());
    let all_digits = digits(code);

    // UPS: 1Z + 6 shipper + 2 service + 7 package + check.
    if len == 18 && code.starts_with("1Z") && code[2..].bytes().all(|c| c.is_ascii_alphanumeric()) {
        add(Tracking {
            service: Some(&code[8..10]),
            ..t(
                Carrier::Ups,
                "ups_1z",
                Some(mod10_doubled(&code[2..17], &code[17..])),
            )
        });
    }
    // OnTrac: C or D + 13 digits + check, the letter counted as 4 or 5.
    if len == 15 && (b[0] == b'C' || b[0] == b'D') && digits(&code[1..]) {
        let lead = if b[0] == b'C' { "4" } else { "5" };
        let ok = mod10_doubled_pair(lead, &code[1..14], &code[14..]);
        add(t(Carrier::Ontrac, "ontrac", Some(ok)));
    }
    // Amazon Logistics: TBA + 12 digits, no check digit.
    if len == 15 && code.starts_with("TBA") && digits(&code[3..]) {
        add(t(Carrier::Amazon, "amazon_tba", None));
    }
    // DHL eCommerce: a two-letter prefix and 10–39 digits, no check digit.
    const DHL_ECOM: [&str; 10] = ["GM", "LX", "RX", "UV", "CN", "SG", "TH", "IN", "HK", "MY"];
    if (12..=41).contains(&len) && DHL_ECOM.contains(&&code[..2]) && digits(&code[2..]) {
        add(t(Carrier::Dhl, "dhl_ecommerce", None));
    }
    // DHL Express piece ID: J + 2–3 letters + 9–10 digits (JJD…, JVGL…).
    if b.first() == Some(&b'J') {
        let letters = code[1..].bytes().take_while(u8::is_ascii_uppercase).count();
        if (2..=3).contains(&letters)
            && (9..=10).contains(&(len - 1 - letters))
            && digits(&code[1 + letters..])
        {
            add(t(Carrier::Dhl, "dhl_piece_id", None));
        }
    }
    // UPU S10: 2 letters, 8 digits, check, ISO country.
    if len == 13 && upper(&code[..2]) && digits(&code[2..11]) && upper(&code[11..]) {
        let carrier = match &code[11..] {
            "US" => Carrier::Usps,
            "CA" => Carrier::CanadaPost,
            "NL" => Carrier::Postnl,
            _ => Carrier::S10,
        };
        add(Tracking {
            country: Some(&code[11..]),
            service: Some(&code[..2]),
            ..t(carrier, "upu_s10", Some(s10_ok(&code[2..10], b[10])))
        });
    }
    // PostNL domestic: 3S + 4-letter customer code + 7–9 digits (15 with padding), no check.
    if (13..=15).contains(&len)
        && code.starts_with("3S")
        && upper(&code[2..6])
        && digits(&code[6..])
    {
        add(t(Carrier::Postnl, "postnl_3s", None));
    }
    // Evri (Hermes UK): H + 15 alphanumerics, no published check digit.
    if len == 16 && b[0] == b'H' && code.bytes().all(|c| c.is_ascii_alphanumeric()) && !all_digits {
        add(t(Carrier::Evri, "evri_h", None));
    }
    // DPD: the 28-character label barcode (optionally with its leading %), ISO 7064 mod 37,36
    // over the 27 digits; or the 14-digit parcel number alone (no check character).
    let dpd = code.strip_prefix('%').unwrap_or(code);
    if dpd.len() == 28 && digits(&dpd[..27]) && dpd.as_bytes()[27].is_ascii_alphanumeric() {
        add(Tracking {
            service: Some(&dpd[21..24]),
            country: Some(&dpd[24..27]),
            ..t(
                Carrier::Dpd,
                "dpd_28",
                Some(mod37_36(&dpd[..27]) == Some(dpd.as_bytes()[27])),
            )
        });
    }
    if all_digits {
        match len {
            10 | 11 => add(t(Carrier::Dhl, "dhl_express", Some(mod7_ok(code)))),
            12 => {
                add(t(
                    Carrier::Fedex,
                    "fedex_express_12",
                    Some(fedex_express_ok(code)),
                ));
                add(t(Carrier::Gls, "gls_12", Some(gls_ok(code))));
            }
            14 => add(t(Carrier::Dpd, "dpd_parcel_14", None)),
            15 => add(t(
                Carrier::Fedex,
                "fedex_ground_15",
                Some(gs1::check_digit_ok(code)),
            )),
            16 => {
                add(t(
                    Carrier::CanadaPost,
                    "canada_post_16",
                    Some(gs1::check_digit_ok(code)),
                ));
                add(t(Carrier::Evri, "evri_16", None));
            }
            20 => {
                add(t(Carrier::Usps, "usps_20", Some(gs1::check_digit_ok(code))));
                // FedEx SmartPost: the IMpb with its implied 92.
                add(t(
                    Carrier::Fedex,
                    "fedex_smartpost",
                    Some(gs1_ok_with_prefix("92", code)),
                ));
            }
            22 if code.starts_with("96") => {
                // 96 + SCNC + service, then shipper and package: the check covers those 14.
                add(t(
                    Carrier::Fedex,
                    "fedex_ground_96",
                    Some(gs1::check_digit_ok(&code[7..])),
                ));
            }
            22 | 26 if matches!(&code[..2], "91" | "92" | "93" | "94" | "95") => {
                add(t(
                    Carrier::Usps,
                    "usps_impb",
                    Some(gs1::check_digit_ok(code)),
                ));
            }
            30 if code.starts_with("420") => {
                // Routing (420 + ZIP) then the IMpb.
                add(t(
                    Carrier::Usps,
                    "usps_impb_420",
                    Some(gs1::check_digit_ok(&code[8..])),
                ));
            }
            34 if code.starts_with("420") => {
                add(t(
                    Carrier::Usps,
                    "usps_impb_420_zip4",
                    Some(gs1::check_digit_ok(&code[12..])),
                ));
            }
            34 if code.starts_with("96") => {
                add(t(
                    Carrier::Fedex,
                    "fedex_ground_gsn",
                    Some(fedex_34_ok(&code[20..])),
                ));
            }
            34 if code.starts_with("100") => {
                add(t(
                    Carrier::Fedex,
                    "fedex_express_34",
                    Some(fedex_34_ok(&code[20..])),
                ));
            }
            _ => {}
        }
    }
    // Best first: holding check digit, then no check digit, then failed.
    let rank = |t: &Option<Tracking<'_>>| match t.map(|t| t.valid) {
        Some(Some(true)) => 0,
        Some(None) => 1,
        Some(Some(false)) => 2,
        None => 3,
    };
    // Stable, allocation-free: equal ranks keep the order formats were tried in.
    for i in 1..found.len() {
        let mut j = i;
        while j > 0 && rank(&found[j - 1]) > rank(&found[j]) {
            found.swap(j - 1, j);
            j -= 1;
        }
    }
    Candidates { items: found }
}

/// A DHL Paket parcel number is an SSCC under Deutsche Post's GS1 prefix.
pub fn sscc_carrier(sscc: &str) -> Option<Carrier> {
    sscc.starts_with("340434").then_some(Carrier::Dhl)
}

/// mod 10 with every second character doubled, letters as (ASCII − 3) mod 10 (UPS, OnTrac).
fn mod10_doubled(body: &str, check: &str) -> bool {
    mod10_doubled_pair("", body, check)
}

fn mod10_doubled_pair(lead: &str, body: &str, check: &str) -> bool {
    let mut total = 0u32;
    for (i, c) in lead.bytes().chain(body.bytes()).enumerate() {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c.wrapping_sub(3)) % 10
        };
        total += if i % 2 == 1 { v * 2 } else { v };
    }
    let want = (10 - total % 10) % 10;
    check.len() == 1 && u32::from(check.as_bytes()[0].wrapping_sub(b'0')) == want
}

/// UPU S10: weights 8 6 4 2 3 5 9 7, mod 11; remainder 0 → 5, 1 → 0.
fn s10_ok(serial: &str, check: u8) -> bool {
    const W: [u32; 8] = [8, 6, 4, 2, 3, 5, 9, 7];
    let sum: u32 = serial
        .bytes()
        .zip(W)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    let want = match sum % 11 {
        0 => 5,
        1 => 0,
        r => 11 - r,
    };
    u32::from(check.wrapping_sub(b'0')) == want
}

/// DHL Express: the number without its last digit, mod 7.
fn mod7_ok(code: &str) -> bool {
    let (body, check) = code.split_at(code.len() - 1);
    let value = body.bytes().fold(0u64, |v, c| v * 10 + u64::from(c - b'0'));
    value % 7 == u64::from(check.as_bytes()[0] - b'0')
}

/// FedEx Express 12: weights 3 1 7 over the first 11 digits, mod 11, mod 10.
fn fedex_express_ok(code: &str) -> bool {
    weighted_mod11(&code[..11], &[3, 1, 7], code.as_bytes()[11])
}

/// FedEx 34-digit forms: weights 1 7 3 over the 13-digit serial, mod 11, mod 10.
fn fedex_34_ok(tail: &str) -> bool {
    weighted_mod11(&tail[..13], &[1, 7, 3], tail.as_bytes()[13])
}

fn weighted_mod11(body: &str, weights: &[u32], check: u8) -> bool {
    let sum: u32 = body
        .bytes()
        .zip(weights.iter().cycle())
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    sum % 11 % 10 == u32::from(check - b'0')
}

/// GLS: weights 3 1 from the left over 11 digits, plus one, mod 10.
fn gls_ok(code: &str) -> bool {
    let sum: u32 = code[..11]
        .bytes()
        .zip([3u32, 1].iter().cycle())
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    (10 - (sum + 1) % 10) % 10 == u32::from(code.as_bytes()[11] - b'0')
}

/// GS1 mod 10 over `prefix` + the number's body.
fn gs1_ok_with_prefix(prefix: &str, code: &str) -> bool {
    let (body, check) = code.split_at(code.len() - 1);
    let mut sum = 0u32;
    for (i, c) in body.bytes().rev().chain(prefix.bytes().rev()).enumerate() {
        sum += u32::from(c - b'0') * if i % 2 == 0 { 3 } else { 1 };
    }
    (10 - sum % 10) % 10 == u32::from(check.as_bytes()[0] - b'0')
}

/// ISO 7064 mod 37,36 check character over digits and capital letters (DPD).
fn mod37_36(data: &str) -> Option<u8> {
    const M: u32 = 36;
    let mut cd = M;
    for c in data.bytes() {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        cd += v;
        if cd > M {
            cd -= M;
        }
        cd *= 2;
        if cd > M {
            cd -= M + 1;
        }
    }
    cd = (M + 1 - cd) % M;
    Some(if cd < 10 {
        b'0' + cd as u8
    } else {
        b'A' + (cd - 10) as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(code: &str) -> Option<(Carrier, Option<bool>)> {
        classify(code).best().map(|t| (t.carrier, t.valid))
    }

    // Published valid examples, each with one corrupted variant.
    #[test]
    fn ups() {
        for c in [
            "1Z5R89390357567127",
            "1Z879E930346834440",
            "1Z410E7W0392751591",
            "1Z8V92A70367203024",
        ] {
            assert_eq!(best(c), Some((Carrier::Ups, Some(true))), "{c}");
        }
        assert_eq!(
            best("1Z5R89390357567128"),
            Some((Carrier::Ups, Some(false)))
        );
        assert_eq!(
            classify("1Z879E930346834440").best().unwrap().service,
            Some("03")
        );
    }

    #[test]
    fn fedex_formats() {
        for c in [
            "986578788855",
            "477179081230",
            "799531274483",
            "974367662710",
        ] {
            assert_eq!(best(c), Some((Carrier::Fedex, Some(true))), "{c}");
        }
        assert_eq!(best("041441760228964"), Some((Carrier::Fedex, Some(true))));
        assert_eq!(best("568283610012734"), Some((Carrier::Fedex, Some(true))));
        assert_eq!(best("568283610012732"), Some((Carrier::Fedex, Some(false))));
        assert_eq!(
            best("9611020987654312345672"),
            Some((Carrier::Fedex, Some(true)))
        );
        assert_eq!(
            best("9622001900000000000000776632517510"),
            Some((Carrier::Fedex, Some(true)))
        );
        assert_eq!(
            best("9622001560001234567100794808390595"),
            Some((Carrier::Fedex, Some(false)))
        );
        assert_eq!(
            best("1001921334250001000300779017972697"),
            Some((Carrier::Fedex, Some(true)))
        );
        assert_eq!(
            best("61299998820821171811"),
            Some((Carrier::Fedex, Some(true)))
        );
    }

    #[test]
    fn usps_impb_and_legacy() {
        for c in [
            "9400111201080805483016",
            "9361289878700317633795",
            "9405803699300124287899",
            "92748931507708513018050063",
            "03071790000523483741",
            "71123456789123456787",
            "4201002334249200190132607600833457",
        ] {
            assert_eq!(best(c), Some((Carrier::Usps, Some(true))), "{c}");
        }
        // A corrupted USPS 20 fails USPS's check (it happens to read as a FedEx SmartPost).
        let c = classify("03071790000523483742");
        assert!(c
            .iter()
            .any(|t| t.carrier == Carrier::Usps && t.valid == Some(false)));
        assert_eq!(best("RB123456785US"), Some((Carrier::Usps, Some(true))));
    }

    #[test]
    fn dhl_express_ecommerce_and_piece_ids() {
        for c in ["3318810025", "73891051146", "8487135506", "1099255990"] {
            assert_eq!(best(c), Some((Carrier::Dhl, Some(true))), "{c}");
        }
        assert_eq!(best("3318810010"), Some((Carrier::Dhl, Some(false))));
        assert_eq!(best("GM2951173225174494"), Some((Carrier::Dhl, None)));
        assert_eq!(best("JJD0099999999"), Some((Carrier::Dhl, None)));
        assert_eq!(best("JVGL0999999990"), Some((Carrier::Dhl, None)));
        assert_eq!(sscc_carrier("340434161094042557"), Some(Carrier::Dhl));
    }

    #[test]
    fn dpd_mod_37_36() {
        assert_eq!(
            best("008182709980000020033350276C"),
            Some((Carrier::Dpd, Some(true)))
        );
        assert_eq!(
            best("008182709980000020045327276N"),
            Some((Carrier::Dpd, Some(true)))
        );
        assert_eq!(
            best("%008182709980000020045327276N"),
            Some((Carrier::Dpd, Some(true)))
        );
        assert_eq!(
            best("008182709980000020033350276A"),
            Some((Carrier::Dpd, Some(false)))
        );
        assert_eq!(best("09980000020033"), Some((Carrier::Dpd, None)));
    }

    #[test]
    fn upu_s10() {
        for c in ["RB123456785GB", "RB123456785CF", "EE123456785DE"] {
            let t = *classify(c).best().unwrap();
            assert_eq!((t.carrier, t.valid), (Carrier::S10, Some(true)), "{c}");
        }
        assert_eq!(
            classify("RB123456785GB").best().unwrap().country,
            Some("GB")
        );
        assert_eq!(best("RB123456786GB"), Some((Carrier::S10, Some(false))));
        assert_eq!(best("LA123456785NL"), Some((Carrier::Postnl, Some(true))));
    }

    #[test]
    fn ontrac_amazon_gls_canada_post_postnl_evri() {
        for c in [
            "C11031500001879",
            "C10999911320231",
            "D10011354453707",
            "D10011342332145",
        ] {
            assert_eq!(best(c), Some((Carrier::Ontrac, Some(true))), "{c}");
        }
        assert_eq!(
            best("C11031500001889"),
            Some((Carrier::Ontrac, Some(false)))
        );
        assert_eq!(best("TBA502887274000"), Some((Carrier::Amazon, None)));
        assert_eq!(
            best("0073938000549297"),
            Some((Carrier::CanadaPost, Some(true)))
        );
        // Fails Canada Post's check digit: an Evri number is the other reading.
        assert_eq!(best("0073938000549292"), Some((Carrier::Evri, None)));
        assert_eq!(best("3SABCD123456789"), Some((Carrier::Postnl, None)));
        assert_eq!(best("H01HYA0004567890"), Some((Carrier::Evri, None)));
        // GLS: 11 digits + check (weights 3,1 from the left, +1).
        let gls = "12345678901";
        let sum: u32 = gls
            .bytes()
            .zip([3u32, 1].iter().cycle())
            .map(|(c, w)| u32::from(c - b'0') * w)
            .sum();
        let full = format!("{gls}{}", (10 - (sum + 1) % 10) % 10);
        let cands = classify(&full);
        assert!(cands
            .iter()
            .any(|t| t.carrier == Carrier::Gls && t.valid == Some(true)));
    }

    /// How many of the possible final characters make `body + c` valid for `format`.
    fn valid_completions(body: &str, format: &str, alphabet: &str) -> usize {
        alphabet
            .chars()
            .filter(|c| {
                let code = format!("{body}{c}");
                let ok = classify(&code)
                    .iter()
                    .any(|t| t.format == format && t.valid == Some(true));
                ok
            })
            .count()
    }

    proptest::proptest! {
        /// For every family with a check digit, exactly one final character is valid: any
        /// corruption of the check digit is detected.
        #[test]
        fn exactly_one_check_character_is_valid(
            d in "[0-9]{33}",
            l in "[A-Z]{2}",
            ups in "[0-9A-Z]{15}",
        ) {
            const DIGITS: &str = "0123456789";
            const ALNUM: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
            let cases: [(String, &str, &str); 12] = [
                (format!("1Z{ups}"), "ups_1z", DIGITS),
                (format!("C{}", &d[..13]), "ontrac", DIGITS),
                (d[..9].to_string(), "dhl_express", DIGITS),
                (d[..11].to_string(), "fedex_express_12", DIGITS),
                (d[..11].to_string(), "gls_12", DIGITS),
                (d[..14].to_string(), "fedex_ground_15", DIGITS),
                (d[..15].to_string(), "canada_post_16", DIGITS),
                (d[..19].to_string(), "usps_20", DIGITS),
                (format!("96{}", &d[..19]), "fedex_ground_96", DIGITS),
                (format!("94{}", &d[..19]), "usps_impb", DIGITS),
                (format!("96{}", &d[..31]), "fedex_ground_gsn", DIGITS),
                (d[..27].to_string(), "dpd_28", ALNUM),
            ];
            for (body, format, alphabet) in &cases {
                proptest::prop_assert_eq!(valid_completions(body, format, alphabet), 1, "{} {}", format, body);
            }
            // S10: the check digit sits before the country.
            let valid = DIGITS
                .chars()
                .filter(|c| {
                    let code = format!("{l}{}{c}GB", &d[..8]);
                    let ok = classify(&code)
                        .iter()
                        .any(|t| t.format == "upu_s10" && t.valid == Some(true));
                    ok
                })
                .count();
            proptest::prop_assert_eq!(valid, 1);
        }

        /// GS1 keys (SSCC, GTIN, GLN): any single-digit substitution anywhere is detected.
        #[test]
        fn gs1_detects_any_single_digit_substitution(
            body in "[0-9]{17}",
            at in 0usize..18,
            bump in 1u8..10,
        ) {
            let key = format!("{body}{}", gs1::check_digit(&body).unwrap());
            proptest::prop_assert!(gs1::check_digit_ok(&key));
            let mut bad = key.into_bytes();
            bad[at] = b'0' + (bad[at] - b'0' + bump) % 10;
            proptest::prop_assert!(!gs1::check_digit_ok(core::str::from_utf8(&bad).unwrap()));
        }
    }

    #[test]
    fn unknown_is_not_invalid() {
        assert!(classify("HELLO").is_empty());
        assert!(classify("12345").is_empty());
    }
}
