//! The intake's request body, pure: bytes in, scans or the field that is wrong out. No I/O,
//! so the fuzz target (`fuzz/fuzz_targets/intake_json.rs`) and the tests call it directly.
//!
//! A body is one scan object, or `{"scans": [...]}` with 1 to [`MAX_SCANS`] of them.
//! Unknown fields are errors (a typo'd `stpe` must not silently lose a step).

use darkleg_protocol::Step;
use serde::Deserialize;

/// Most scans in one request.
pub const MAX_SCANS: usize = 1000;
/// Longest device name, as for a framed scanner's device id (it names every event).
pub const MAX_DEVICE: usize = 64;
/// Longest station, operator or symbology label.
pub const MAX_LABEL: usize = 64;

/// One scan as posted, checked except for its code (a bad code is answered `rejected`,
/// its seq consumed, like a framed scanner's refused scan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedScan {
    pub device: String,
    pub seq: u64,
    pub code: String,
    pub symbology: Option<String>,
    /// `None`: the station's step from `[intake.stations]`, else a 400.
    pub step: Option<Step>,
    pub station: Option<String>,
    pub operator: Option<String>,
    /// Unix ms; `None`: the receive time.
    pub captured_at_ms: Option<u64>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// 400: `field` is a path such as `scans[3].seq` (empty when the JSON itself is broken).
    Bad { field: String, message: String },
    /// 413: more scans than [`MAX_SCANS`].
    TooMany(usize),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScan {
    device: String,
    seq: u64,
    code: String,
    symbology: Option<String>,
    step: Option<String>,
    station: Option<String>,
    operator: Option<String>,
    captured_at: Option<String>,
}

/// A scan that must be a JSON object: serde's derived structs take an array too, field by
/// field in order, and `["tc52-7",3,"0034…"]` must not pass for a scan.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a scan object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(std::marker::PhantomData))
            .map(Object)
    }
}

/// Either body shape in one pass over the bytes (no `serde_json::Value` in between: a
/// batch of 1,000 was parsed twice before). The scan fields are optional here only so that
/// one struct takes both shapes; [`parse`] names what a single scan lacks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    scans: Option<Vec<Object<RawScan>>>,
    device: Option<String>,
    seq: Option<u64>,
    code: Option<String>,
    symbology: Option<String>,
    step: Option<String>,
    station: Option<String>,
    operator: Option<String>,
    captured_at: Option<String>,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> BodyError {
    BodyError::Bad {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses and checks a body.
pub fn parse(body: &[u8]) -> Result<Vec<PostedScan>, BodyError> {
    let b = typed(body)?;
    let (raw, prefix) = match b.scans {
        Some(scans) => {
            // A scan's fields beside "scans": one shape or the other, not both.
            let beside = [
                ("device", b.device.is_some()),
                ("seq", b.seq.is_some()),
                ("code", b.code.is_some()),
                ("symbology", b.symbology.is_some()),
                ("step", b.step.is_some()),
                ("station", b.station.is_some()),
                ("operator", b.operator.is_some()),
                ("captured_at", b.captured_at.is_some()),
            ];
            if let Some((name, _)) = beside.iter().find(|(_, set)| *set) {
                return Err(bad(
                    *name,
                    format!("unknown field `{name}` beside `scans` (hint: put it in each scan)"),
                ));
            }
            if scans.len() > MAX_SCANS {
                return Err(BodyError::TooMany(scans.len()));
            }
            if scans.is_empty() {
                return Err(bad("scans", "is empty"));
            }
            (scans.into_iter().map(|o| o.0).collect(), true)
        }
        None => {
            let missing = |f: &str| bad(f, format!("missing field `{f}`"));
            let one = RawScan {
                device: b.device.ok_or_else(|| missing("device"))?,
                seq: b.seq.ok_or_else(|| missing("seq"))?,
                code: b.code.ok_or_else(|| missing("code"))?,
                symbology: b.symbology,
                step: b.step,
                station: b.station,
                operator: b.operator,
                captured_at: b.captured_at,
            };
            (vec![one], false)
        }
    };
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |f: &str| {
                if prefix {
                    format!("scans[{i}].{f}")
                } else {
                    f.to_string()
                }
            };
            check(r, at)
        })
        .collect()
}

/// serde with the path of the failing field; broken JSON names none.
fn typed(body: &[u8]) -> Result<RawBody, BodyError> {
    // serde takes a struct from a JSON array too, field by field in order: a body is an
    // object, never `[null,"tc52-7",3,"0034…"]`.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(bad(
            "",
            "not a JSON object (hint: one scan {...} or {\"scans\":[...]})",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let b = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if !e.inner().is_data() {
            return bad("", format!("not JSON: {}", e.inner()));
        }
        let mut field = e.path().to_string();
        let message = e.inner().to_string();
        // serde names a missing, unknown or repeated field in its message, not in the path.
        for lead in ["missing field `", "unknown field `", "duplicate field `"] {
            if let Some(rest) = message.strip_prefix(lead) {
                if let Some((name, _)) = rest.split_once('`') {
                    field = if field == name || field.ends_with(&format!(".{name}")) {
                        field
                    } else if field == "." || field.is_empty() {
                        name.to_string()
                    } else {
                        format!("{field}.{name}")
                    };
                }
            }
        }
        if field == "." {
            field.clear();
        }
        bad(field, message)
    })?;
    // Trailing bytes after the object.
    de.end().map_err(|e| bad("", format!("not JSON: {e}")))?;
    Ok(b)
}

/// A name or label the gateway will put in events: printable and bounded.
fn label(v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() {
        Err("is empty".into())
    } else if v.len() > max {
        Err(format!("is {} bytes; at most {max}", v.len()))
    } else if v.chars().any(char::is_control) {
        Err("contains control characters".into())
    } else {
        Ok(())
    }
}

fn check(r: RawScan, at: impl Fn(&str) -> String) -> Result<PostedScan, BodyError> {
    label(&r.device, MAX_DEVICE).map_err(|m| bad(at("device"), m))?;
    // SQLite keeps sequences as i64; a framed scanner's rule.
    if r.seq == 0 || r.seq > i64::MAX as u64 {
        return Err(bad(
            at("seq"),
            format!("{} is out of range 1..=2^63-1", r.seq),
        ));
    }
    for (name, v) in [
        ("symbology", &r.symbology),
        ("station", &r.station),
        ("operator", &r.operator),
    ] {
        if let Some(v) = v {
            label(v, MAX_LABEL).map_err(|m| bad(at(name), m))?;
        }
    }
    let step = match &r.step {
        None => None,
        Some(s) => Some(
            s.parse::<Step>()
                .map_err(|e| bad(at("step"), format!("{s:?}: {e}")))?,
        ),
    };
    let captured_at_ms = match &r.captured_at {
        None => None,
        Some(t) => {
            let ts: jiff::Timestamp = t.parse().map_err(|e| {
                bad(
                    at("captured_at"),
                    format!("{t:?} is not an RFC 3339 time with an offset: {e}"),
                )
            })?;
            let ms = ts.as_millisecond();
            if ms <= 0 {
                return Err(bad(at("captured_at"), format!("{t:?} is before 1970")));
            }
            Some(ms as u64)
        }
    };
    Ok(PostedScan {
        device: r.device,
        seq: r.seq,
        code: r.code,
        symbology: r.symbology,
        step,
        station: r.station,
        operator: r.operator,
        captured_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(BodyError::Bad { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn one_scan_and_a_batch() {
        let one = parse(br#"{"device":"tc52-7","seq":3,"code":"00340434161094042557","step":"pack","captured_at":"2026-11-22T14:02:11.250Z"}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].step, Some(Step::Pack));
        assert_eq!(one[0].captured_at_ms, Some(1_795_356_131_250));
        let batch =
            parse(br#"{"scans":[{"device":"a","seq":1,"code":"x"},{"device":"b","seq":9,"code":"y","station":"dock-2"}]}"#)
                .unwrap();
        assert_eq!(batch[1].station.as_deref(), Some("dock-2"));
        assert_eq!(batch[1].step, None);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field(r#"{"device":"a","code":"x"}"#), "seq");
        assert_eq!(field(r#"{"device":"a","seq":"1","code":"x"}"#), "seq");
        assert_eq!(
            field(r#"{"device":"a","seq":1,"code":"x","stpe":"pack"}"#),
            "stpe"
        );
        assert_eq!(
            field(r#"{"scans":[{"device":"a","seq":1,"code":"x"},{"device":"a","code":"x"}]}"#),
            "scans[1].seq"
        );
        assert_eq!(
            field(r#"{"scans":[{"device":"a","seq":1,"code":"x","step":"packing"}]}"#),
            "scans[0].step"
        );
        assert_eq!(
            field(r#"{"device":"a\u0007","seq":1,"code":"x"}"#),
            "device"
        );
        assert_eq!(
            field(&format!(
                r#"{{"device":"{}","seq":1,"code":"x"}}"#,
                "d".repeat(65)
            )),
            "device"
        );
        assert_eq!(field(r#"{"device":"a","seq":0,"code":"x"}"#), "seq");
        assert_eq!(
            field(r#"{"device":"a","seq":9223372036854775808,"code":"x"}"#),
            "seq"
        );
        assert_eq!(
            field(r#"{"device":"a","seq":1,"code":"x","captured_at":"yesterday"}"#),
            "captured_at"
        );
        assert_eq!(field(r#"{"scans":[]}"#), "scans");
        assert_eq!(field("{\"device\":"), "");
        assert_eq!(field(r#"{"device":"a","seq":1,"code":"x"} x"#), "");
        assert_eq!(field(r#"{"device":"a","seq":1,"seq":2,"code":"x"}"#), "seq");
        assert_eq!(field(r#"{"seq":1,"code":"x"}"#), "device");
        assert_eq!(field(r#"{"device":"a","seq":1}"#), "code");
        assert_eq!(
            field(r#"{"scans":[{"device":"a","seq":1,"code":"x"}],"device":"a"}"#),
            "device"
        );
        assert_eq!(
            field(r#"{"scans":[{"device":"a","seq":1,"code":"x","stpe":"pack"}]}"#),
            "scans[0].stpe"
        );
        assert_eq!(field("[1]"), "");
        assert_eq!(field(r#" [null,"tc52-7",3,"x"]"#), "");
        assert_eq!(field(r#"{"scans":[["tc52-7",3,"x"]]}"#), "scans[0]");
        assert_eq!(field(r#"{"scans":{"device":"a"}}"#), "scans");
    }

    #[test]
    fn too_many_scans() {
        let one = r#"{"device":"a","seq":1,"code":"x"}"#;
        let body = format!(r#"{{"scans":[{}]}}"#, vec![one; MAX_SCANS + 1].join(","));
        assert_eq!(
            parse(body.as_bytes()),
            Err(BodyError::TooMany(MAX_SCANS + 1))
        );
        let body = format!(r#"{{"scans":[{}]}}"#, vec![one; MAX_SCANS].join(","));
        assert_eq!(parse(body.as_bytes()).unwrap().len(), MAX_SCANS);
    }
}
