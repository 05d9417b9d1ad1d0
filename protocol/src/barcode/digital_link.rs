//! GS1 Digital Link URIs: `https://{domain}/{stem…}/01/{gtin}/10/{lot}/21/{serial}?17=…`
//! (also `/00/{sscc}`, `/414/{gln}`, …). Values stay as written (percent-encoded); the
//! element-string rules for each AI apply to them.

use super::gs1::{self, Ai, Gs1Error};

/// AIs that can be a Digital Link's primary key.
const PRIMARY: [&str; 14] = [
    "01", "00", "253", "255", "401", "402", "414", "417", "8003", "8004", "8006", "8010", "8017",
    "8018",
];

pub const MAX_FIELDS: usize = 12;

#[derive(Debug, Clone, Copy)]
pub struct DigitalLink<'a> {
    pub host: &'a str,
    fields: [Option<(&'a str, &'a str, &'static Ai)>; MAX_FIELDS],
    len: usize,
}

impl<'a> DigitalLink<'a> {
    /// `(ai, value)` in URI order: the primary key, its qualifiers, then query attributes.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.fields[..self.len]
            .iter()
            .flatten()
            .map(|(a, v, _)| (*a, *v))
    }

    pub fn get(&self, ai: &str) -> Option<&'a str> {
        self.fields().find(|(a, _)| *a == ai).map(|(_, v)| v)
    }

    /// False if a key's check digit fails (a GTIN may be 8, 12, 13 or 14 digits here).
    pub fn check_digits_ok(&self) -> bool {
        self.fields[..self.len]
            .iter()
            .flatten()
            .filter(|(_, _, spec)| spec.check_digit)
            .all(|(_, v, _)| gs1::check_digit_ok(v.get(..key_len(v)).unwrap_or(v)))
    }

    fn push(&mut self, ai: &'a str, value: &'a str) -> Result<(), Gs1Error> {
        let spec = gs1::by_code(ai).ok_or(Gs1Error::UnknownAi(0))?;
        let ok = if ai == "01" {
            matches!(value.len(), 8 | 12 | 13 | 14) && value.bytes().all(|b| b.is_ascii_digit())
        } else {
            value.len() <= 90 && !value.is_empty()
        };
        if !ok {
            return Err(Gs1Error::BadValue(spec.code));
        }
        let slot = self
            .fields
            .get_mut(self.len)
            .ok_or(Gs1Error::TooManyFields)?;
        *slot = Some((ai, value, spec));
        self.len += 1;
        Ok(())
    }
}

fn key_len(v: &str) -> usize {
    v.bytes().take_while(u8::is_ascii_digit).count().min(18)
}

/// `None` if `uri` is not an http(s) URI with a GS1 primary key in its path.
pub fn parse(uri: &str) -> Option<Result<DigitalLink<'_>, Gs1Error>> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let rest = rest.split('#').next().unwrap_or(rest);
    let (host_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = host_path.split_once('/').unwrap_or((host_path, ""));
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    // Skip any stem until the primary key.
    let first = segments.find(|s| PRIMARY.contains(s))?;
    let mut dl = DigitalLink {
        host,
        fields: [None; MAX_FIELDS],
        len: 0,
    };
    let mut run = || -> Result<(), Gs1Error> {
        let value = segments.next().ok_or(Gs1Error::BadValue("01"))?;
        dl.push(first, value)?;
        while let Some(ai) = segments.next() {
            let value = segments.next().ok_or(Gs1Error::Unbalanced)?;
            dl.push(ai, value)?;
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // Non-AI parameters (linkType, …) are for the resolver, not data.
            if k.bytes().all(|b| b.is_ascii_digit()) && gs1::by_code(k).is_some() {
                dl.push(k, v)?;
            }
        }
        Ok(())
    };
    Some(run().map(|()| dl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtin_lot_serial_and_query_attributes() {
        let dl =
            parse("https://id.gs1.org/01/09506000134352/10/ABC1/21/12345?17=201225&linkType=all")
                .unwrap()
                .unwrap();
        assert_eq!(dl.host, "id.gs1.org");
        let f: Vec<_> = dl.fields().collect();
        assert_eq!(
            f,
            [
                ("01", "09506000134352"),
                ("10", "ABC1"),
                ("21", "12345"),
                ("17", "201225")
            ]
        );
        assert!(dl.check_digits_ok());
    }

    #[test]
    fn custom_domain_with_stem_and_short_gtin() {
        let dl = parse("https://brand.example.com/products/01/4006381333931")
            .unwrap()
            .unwrap();
        assert_eq!(dl.get("01"), Some("4006381333931"));
        assert!(dl.check_digits_ok());
        let bad = parse("https://id.gs1.org/01/4006381333932")
            .unwrap()
            .unwrap();
        assert!(!bad.check_digits_ok());
    }

    #[test]
    fn sscc_and_non_links() {
        let dl = parse("https://id.gs1.org/00/106141411234567897")
            .unwrap()
            .unwrap();
        assert_eq!(dl.get("00"), Some("106141411234567897"));
        assert!(dl.check_digits_ok());
        assert!(parse("https://example.com/shop/item/42").is_none());
        assert!(parse("ftp://id.gs1.org/01/09506000134352").is_none());
        assert!(parse("https://id.gs1.org/01").unwrap().is_err());
        assert!(parse("https://id.gs1.org/01/123").unwrap().is_err());
    }
}
