//! What a scanned code *is*: an SSCC on a parcel label, an item's GTIN, a GS1 element string,
//! a Digital Link, a carrier's tracking number — and whether its check digits hold.
//!
//! Unknown is not invalid: a code no rule recognises is [`Kind::Unknown`] with no verdict;
//! `valid == Some(false)` means a recognised format whose check digit or syntax fails.
//!
//! - [`gs1`]: Application Identifiers, element strings (scanned and bracketed), check digits.
//! - [`digital_link`]: GS1 Digital Link URIs.
//! - [`tracking`]: carrier tracking numbers and their check-digit families.
//! - [`json`] (with `alloc`): the `inspect-barcode` JSON object.

pub mod digital_link;
pub mod gs1;
#[cfg(feature = "alloc")]
pub mod json;
pub mod tracking;

pub use tracking::Carrier;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sscc,
    Gtin,
    Gs1,
    Tracking,
    DigitalLink,
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sscc => "sscc",
            Kind::Gtin => "gtin",
            Kind::Gs1 => "gs1",
            Kind::Tracking => "tracking",
            Kind::DigitalLink => "digital_link",
            Kind::Unknown => "unknown",
        }
    }
}

/// Everything [`inspect`] found out about one code.
#[derive(Debug, Clone, Copy)]
pub struct Inspection<'a> {
    /// The data after any AIM symbology identifier and line ending.
    pub data: &'a str,
    pub symbology: Option<&'a str>,
    pub kind: Kind,
    pub valid: Option<bool>,
    pub carrier: Option<Carrier>,
    pub gs1: Option<gs1::ElementString<'a>>,
    pub link: Option<digital_link::DigitalLink<'a>>,
    pub tracking: Option<tracking::Candidates<'a>>,
    pub error: Option<gs1::Gs1Error>,
}

/// AIM identifiers that mean "GS1 element string follows" (FNC1 in first position).
const GS1_SYMBOLOGIES: [&str; 6] = ["]C1", "]e0", "]d2", "]Q3", "]J1", "]h1"];

impl<'a> Inspection<'a> {
    fn new(data: &'a str, symbology: Option<&'a str>) -> Self {
        Inspection {
            data,
            symbology,
            kind: Kind::Unknown,
            valid: None,
            carrier: None,
            gs1: None,
            link: None,
            tracking: None,
            error: None,
        }
    }

    fn element_string(mut self, parsed: Result<gs1::ElementString<'a>, gs1::Gs1Error>) -> Self {
        match parsed {
            Ok(e) => {
                let only = |ai: &str| e.len() == 1 && e.get(ai).is_some();
                self.kind = if only("00") {
                    Kind::Sscc
                } else if only("01") {
                    Kind::Gtin
                } else {
                    Kind::Gs1
                };
                let has_check = e.fields().any(|f| f.spec.check_digit);
                self.valid = has_check.then(|| e.check_digits_ok());
                self.carrier = e.get("00").and_then(tracking::sscc_carrier);
                self.gs1 = Some(e);
            }
            Err(err) => {
                self.kind = Kind::Gs1;
                self.valid = Some(false);
                self.error = Some(err);
            }
        }
        self
    }
}

/// Works out what `raw` is. Tracking numbers are matched as given: pass them uppercase and
/// without spaces (scanners do).
pub fn inspect(raw: &str) -> Inspection<'_> {
    let trimmed = raw.trim_end_matches(['\r', '\n']);
    let (symbology, data) = match trimmed.get(..3) {
        Some(p) if p.starts_with(']') => (Some(p), &trimmed[3..]),
        _ => (None, trimmed),
    };
    let base = Inspection::new(data, symbology);
    // A GS anywhere means FNC1 separators: an element string whose AIM prefix was lost.
    if symbology.is_some_and(|s| GS1_SYMBOLOGIES.contains(&s)) || data.contains(gs1::GS) {
        return base.element_string(gs1::parse(data));
    }
    if data.starts_with('(') {
        return base.element_string(gs1::parse_bracketed(data));
    }
    if let Some(parsed) = digital_link::parse(data) {
        let mut out = base;
        match parsed {
            Ok(dl) => {
                out.kind = Kind::DigitalLink;
                out.valid = Some(dl.check_digits_ok());
                out.carrier = dl.get("00").and_then(tracking::sscc_carrier);
                out.link = Some(dl);
            }
            Err(e) => {
                out.kind = Kind::DigitalLink;
                out.valid = Some(false);
                out.error = Some(e);
            }
        }
        return out;
    }
    let numeric = !data.is_empty() && data.bytes().all(|b| b.is_ascii_digit());
    // EAN/UPC symbologies carry a bare GTIN.
    if matches!(symbology, Some("]E0" | "]E4" | "]E3")) && numeric {
        let mut out = base;
        out.kind = Kind::Gtin;
        out.valid = Some(matches!(data.len(), 8 | 12 | 13 | 14) && gs1::check_digit_ok(data));
        return out;
    }
    // An SSCC from a scanner whose AIM prefix was lost (keyboard wedge): 00 + 18 digits.
    if numeric && data.len() == 20 && data.starts_with("00") {
        return base.element_string(gs1::parse(data));
    }
    let candidates = tracking::classify(data);
    if let Some(best) = candidates.best() {
        let mut out = base;
        out.kind = Kind::Tracking;
        out.valid = best.valid;
        out.carrier = Some(best.carrier);
        out.tracking = Some(candidates);
        return out;
    }
    if numeric && matches!(data.len(), 8 | 12 | 13 | 14) {
        let mut out = base;
        out.kind = Kind::Gtin;
        out.valid = Some(gs1::check_digit_ok(data));
        return out;
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let k = |s: &str| {
            let i = inspect(s);
            (i.kind, i.valid, i.carrier.map(Carrier::as_str))
        };
        assert_eq!(
            k("]C100340434161094042557"),
            (Kind::Sscc, Some(true), Some("dhl"))
        );
        assert_eq!(
            k("00340434161094042557"),
            (Kind::Sscc, Some(true), Some("dhl"))
        );
        assert_eq!(k("]C100106141411234567897"), (Kind::Sscc, Some(true), None));
        assert_eq!(
            k("]C100106141411234567898"),
            (Kind::Sscc, Some(false), None)
        );
        assert_eq!(k("]C10109506000134352"), (Kind::Gtin, Some(true), None));
        assert_eq!(
            k("]d20109506000134352\u{1d}10ABC"),
            (Kind::Gs1, Some(true), None)
        );
        assert_eq!(
            k("(00)106141411234567897(400)PO-1"),
            (Kind::Gs1, Some(true), None)
        );
        assert_eq!(k("]E04006381333931"), (Kind::Gtin, Some(true), None));
        assert_eq!(k("4006381333931"), (Kind::Gtin, Some(true), None));
        assert_eq!(
            k("https://id.gs1.org/01/09506000134352"),
            (Kind::DigitalLink, Some(true), None)
        );
        assert_eq!(
            k("1Z879E930346834440"),
            (Kind::Tracking, Some(true), Some("ups"))
        );
        assert_eq!(
            k("]C01Z879E930346834440"),
            (Kind::Tracking, Some(true), Some("ups"))
        );
        assert_eq!(k("TBA502887274000"), (Kind::Tracking, None, Some("amazon")));
        assert_eq!(k("hello world"), (Kind::Unknown, None, None));
        assert_eq!(k("]C1ZZZ").0, Kind::Gs1);
        assert!(inspect("]C1ZZZ").error.is_some());
    }
}
