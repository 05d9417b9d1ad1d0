//! Config for what the gateway derives from scans: which codes are parcels and orders, which
//! merchant a parcel belongs to, and when a parcel counts as stuck.

use super::{ConfigError, Validator};
use darkleg_protocol::barcode::Carrier;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// A code shape: `#` a digit, `@` a capital letter, `*` any character, anything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

impl Pattern {
    pub fn matches(&self, code: &str) -> bool {
        let (p, c) = (self.0.as_bytes(), code.as_bytes());
        p.len() == c.len()
            && p.iter().zip(c).all(|(&p, &c)| match p {
                b'#' => c.is_ascii_digit(),
                b'@' => c.is_ascii_uppercase(),
                b'*' => c.is_ascii_graphic(),
                _ => p == c,
            })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ParcelRules {
    /// Parcel ids other than SSCCs (an SSCC is always a parcel id).
    pub id_patterns: Vec<Pattern>,
    /// Order barcodes other than GS1 AI (400).
    pub order_patterns: Vec<Pattern>,
    /// A code that, scanned at a pack station, closes the order it is packing (as scanning
    /// the next order does): no more parcels for it, so it can become `complete`.
    pub order_close_code: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: String,
    pub order_prefixes: Vec<String>,
    /// GS1 company prefixes of the merchant's SSCCs.
    pub gs1_prefixes: Vec<String>,
    /// Leading characters of the merchant's parcel ids (from `id_patterns`).
    pub client_codes: Vec<String>,
    /// The carrier its parcels usually go with, for cut-offs before the handover scan.
    pub carrier: Option<Carrier>,
}

#[derive(Debug, Clone)]
pub struct Cutoff {
    /// `None`: any carrier without its own cut-off.
    pub carrier: Option<Carrier>,
    /// Local time at the site.
    pub time: jiff::civil::Time,
}

#[derive(Debug, Clone)]
pub struct AlertRules {
    /// Picked but not packed within this.
    pub pick_to_pack: Option<Duration>,
    pub cutoffs: Vec<Cutoff>,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            pick_to_pack: Some(Duration::from_secs(2 * 3600)),
            cutoffs: Vec::new(),
        }
    }
}

/// How scans appear in the GS1 EPCIS export.
#[derive(Debug, Clone, Default)]
pub struct EpcisConfig {
    /// The site as a business location (an SGLN URN or a Digital Link `…/414/{gln}`).
    pub biz_location: Option<String>,
    /// Station label → read point URI; other stations get `urn:darkleg:{site}:{gateway}:{station}`.
    pub read_points: std::collections::BTreeMap<String, String>,
    /// GLN of the party that issues order numbers, for CBV `urn:epcglobal:cbv:bt:{gln}:{order}`.
    pub order_gln: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEpcis {
    biz_location: Option<Spanned<String>>,
    #[serde(default)]
    read_points: std::collections::BTreeMap<String, Spanned<String>>,
    order_gln: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParcels {
    #[serde(default)]
    id_patterns: Vec<Spanned<String>>,
    #[serde(default)]
    order_patterns: Vec<Spanned<String>>,
    order_close_code: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMerchant {
    id: Spanned<String>,
    #[serde(default)]
    order_prefixes: Vec<String>,
    #[serde(default)]
    gs1_prefixes: Vec<Spanned<String>>,
    #[serde(default)]
    client_codes: Vec<String>,
    carrier: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pick_to_pack_minutes: Option<Spanned<i64>>,
    #[serde(default)]
    cutoff: Vec<RawCutoff>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCutoff {
    carrier: Spanned<String>,
    time: Spanned<String>,
}

const CARRIER_HINT: &str =
    "one of ups, fedex, usps, dhl, dpd, s10, amazon, gls, evri, postnl, canada_post, ontrac";

impl Validator<'_> {
    fn pattern(&self, v: &Spanned<String>, key: String) -> Result<Pattern, ConfigError> {
        let s = v.get_ref();
        if s.is_empty() || s.len() > 64 || !s.is_ascii() || !s.contains(['#', '@', '*']) {
            return Err(self.err(
                v,
                key,
                format!("{s:?} is not a code pattern"),
                "use # for a digit, @ for a capital letter, * for any character, e.g. \"PCL-########\"",
            ));
        }
        Ok(Pattern(s.clone()))
    }

    fn carrier(&self, v: &Spanned<String>, key: String) -> Result<Carrier, ConfigError> {
        Carrier::parse(v.get_ref()).ok_or_else(|| {
            self.err(
                v,
                key,
                format!("{:?}: unknown carrier", v.get_ref()),
                CARRIER_HINT,
            )
        })
    }

    pub(super) fn parcels(&self, raw: Option<RawParcels>) -> Result<ParcelRules, ConfigError> {
        let Some(raw) = raw else {
            return Ok(ParcelRules::default());
        };
        let list = |v: &[Spanned<String>], k: &str| -> Result<Vec<Pattern>, ConfigError> {
            v.iter()
                .enumerate()
                .map(|(i, p)| self.pattern(p, format!("parcels.{k}[{i}]")))
                .collect()
        };
        Ok(ParcelRules {
            id_patterns: list(&raw.id_patterns, "id_patterns")?,
            order_patterns: list(&raw.order_patterns, "order_patterns")?,
            order_close_code: match raw.order_close_code {
                Some(c) if c.get_ref().trim().is_empty() => {
                    return Err(self.err(
                        &c,
                        "parcels.order_close_code".into(),
                        "an empty close code".into(),
                        "the exact code printed on the pack station's close card, e.g. \"CLOSE\"",
                    ))
                }
                Some(c) => Some(c.into_inner()),
                None => None,
            },
        })
    }

    pub(super) fn merchants(&self, raw: Vec<RawMerchant>) -> Result<Vec<Merchant>, ConfigError> {
        let mut out: Vec<Merchant> = Vec::new();
        for (i, m) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("merchant[{i}].{k}");
            let id = self.name(&m.id, &key("id"))?;
            if out.iter().any(|o| o.id == id) {
                return Err(self.err(
                    &m.id,
                    key("id"),
                    format!("{id:?} twice"),
                    "merchant ids are unique",
                ));
            }
            for p in &m.gs1_prefixes {
                if !(6..=12).contains(&p.get_ref().len())
                    || !p.get_ref().bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(self.err(
                        p,
                        key("gs1_prefixes"),
                        format!("{:?} is not a GS1 company prefix", p.get_ref()),
                        "6 to 12 digits, as assigned by GS1",
                    ));
                }
            }
            let carrier = match &m.carrier {
                Some(c) => Some(self.carrier(c, key("carrier"))?),
                None => None,
            };
            out.push(Merchant {
                id,
                order_prefixes: m.order_prefixes,
                gs1_prefixes: m
                    .gs1_prefixes
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
                client_codes: m.client_codes,
                carrier,
            });
        }
        Ok(out)
    }

    pub(super) fn alerts(&self, raw: Option<RawAlerts>) -> Result<AlertRules, ConfigError> {
        let Some(raw) = raw else {
            return Ok(AlertRules::default());
        };
        let pick_to_pack = match &raw.pick_to_pack_minutes {
            Some(v) => match self.range(v, "alerts.pick_to_pack_minutes", 0, 7 * 24 * 60)? {
                0 => None,
                m => Some(Duration::from_secs(m as u64 * 60)),
            },
            None => AlertRules::default().pick_to_pack,
        };
        let mut cutoffs = Vec::new();
        for (i, c) in raw.cutoff.iter().enumerate() {
            let carrier = match c.carrier.get_ref().as_str() {
                "*" => None,
                _ => Some(self.carrier(&c.carrier, format!("alerts.cutoff[{i}].carrier"))?),
            };
            let time = c.time.get_ref().parse::<jiff::civil::Time>().map_err(|e| {
                self.err(
                    &c.time,
                    format!("alerts.cutoff[{i}].time"),
                    format!("{:?}: {e}", c.time.get_ref()),
                    "a local time at the site such as \"16:30\"",
                )
            })?;
            cutoffs.push(Cutoff { carrier, time });
        }
        Ok(AlertRules {
            pick_to_pack,
            cutoffs,
        })
    }

    fn uri(&self, v: &Spanned<String>, key: String) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let scheme_ok = s.split_once(':').is_some_and(|(sch, rest)| {
            !sch.is_empty()
                && !rest.is_empty()
                && sch
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        });
        if !scheme_ok || s.contains(char::is_whitespace) {
            return Err(self.err(
                v,
                key,
                format!("{s:?} is not a URI"),
                "e.g. urn:epc:id:sgln:4012345.00001.0 or https://id.gs1.org/414/4012345000016",
            ));
        }
        Ok(s.clone())
    }

    pub(super) fn epcis(&self, raw: Option<RawEpcis>) -> Result<EpcisConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(EpcisConfig::default());
        };
        let mut read_points = std::collections::BTreeMap::new();
        for (station, uri) in &raw.read_points {
            read_points.insert(
                station.clone(),
                self.uri(uri, format!("epcis.read_points.{station}"))?,
            );
        }
        let order_gln = match &raw.order_gln {
            Some(g)
                if g.get_ref().len() == 13
                    && darkleg_protocol::barcode::gs1::check_digit_ok(g.get_ref()) =>
            {
                Some(g.get_ref().clone())
            }
            Some(g) => {
                return Err(self.err(
                    g,
                    "epcis.order_gln".into(),
                    format!("{:?} is not a GLN", g.get_ref()),
                    "13 digits with a valid GS1 check digit",
                ))
            }
            None => None,
        };
        Ok(EpcisConfig {
            biz_location: match &raw.biz_location {
                Some(b) => Some(self.uri(b, "epcis.biz_location".into())?),
                None => None,
            },
            read_points,
            order_gln,
        })
    }

    pub(super) fn timezone(
        &self,
        v: Option<&Spanned<String>>,
    ) -> Result<jiff::tz::TimeZone, ConfigError> {
        let Some(v) = v else {
            return Ok(jiff::tz::TimeZone::UTC);
        };
        jiff::tz::TimeZone::get(v.get_ref()).map_err(|e| {
            self.err(
                v,
                "gateway.timezone".into(),
                format!("{:?}: {e}", v.get_ref()),
                "an IANA time zone name such as \"Europe/Amsterdam\"",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern("PCL-####@".into());
        assert!(p.matches("PCL-1234X"));
        assert!(!p.matches("PCL-1234x"));
        assert!(!p.matches("PCL-123X4"));
        assert!(!p.matches("PCL-1234XX"));
        assert!(Pattern("ORD-***".into()).matches("ORD-a1!"));
    }
}
