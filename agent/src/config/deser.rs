//! TOML → raw config structs, with errors that say where: serde only reports *what* went
//! wrong ("invalid type: string, expected i64") and toml only *which line*, so the key path
//! (`scanner[0].baud`) is tracked by `serde_path_to_error` around toml's deserializer.

use super::{line_of, ConfigError};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

const HINT: &str = "see configs/gateway.toml for every key with a comment";

pub(super) fn from_toml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    let at = |span: Option<std::ops::Range<usize>>| span.map(|s| line_of(text, s.start));
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: at(e.span()),
        // A syntax error or a duplicate key comes before any struct: the path is read off
        // the text around it.
        key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
        message: e.message().trim().to_string(),
        hint: HINT,
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut key = key_path(e.path());
        let inner = e.inner();
        let (line, message) = (at(inner.span()), inner.message().trim());
        let message = if let Some((field, expected)) = unknown_field(message) {
            // The path normally ends in the refused key already (it was read first).
            if !(key == field || key.ends_with(&format!(".{field}"))) {
                key = join(&key, field);
            }
            unknown_key_message(field, &expected)
        } else if let Some(field) = missing_field(message) {
            key = join(&key, field);
            "is missing".to_string()
        } else {
            message.to_string()
        };
        ConfigError {
            file: file.to_string(),
            line,
            key,
            message,
            hint: HINT,
        }
    })
}

/// The key path at byte `offset` of `text`, from the table header above it (its index among
/// headers of that array, for `[[…]]`) and the key its line starts with: `scanner[1].baud`.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .unwrap_or_default();
    let header = |l: &str| -> Option<(String, bool)> {
        let l = l.trim();
        if let Some(n) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            return Some((n.0.trim().to_string(), true));
        }
        l.strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|n| (n.0.trim().to_string(), false))
    };
    let lines: Vec<&str> = before[..line_start].lines().collect();
    let table = lines.iter().rev().find_map(|l| header(l)).or_else(|| {
        // The error is on a header line itself (a duplicate table).
        header(line).filter(|_| key.is_empty())
    });
    let table = match table {
        None => String::new(),
        Some((name, false)) => name,
        Some((name, true)) => {
            let n = lines
                .iter()
                .chain(std::iter::once(&line).filter(|_| key.is_empty()))
                .filter(|l| header(l).is_some_and(|(h, arr)| arr && h == name))
                .count();
            format!("{name}[{}]", n.saturating_sub(1))
        }
    };
    join(&table, &key)
}

/// `scanner[0].baud`, the form the validator's errors use. Spanned's own wrapper fields
/// (`$__serde_spanned_private_value`) are an implementation detail of `toml::Spanned`.
fn key_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out = join(&out, key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// serde's wording, stable since serde 1.0: "unknown field `x`, expected `a`" or
/// "…, expected one of `a`, `b`" (or "there are no fields").
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).collect();
    Some((field, expected))
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .strip_suffix('`')
        .filter(|f| !f.contains('`'))
}

fn unknown_key_message(field: &str, expected: &[&str]) -> String {
    // A typo is within a couple of edits; anything further is a different word.
    let close = expected
        .iter()
        .map(|e| (strsim::levenshtein(field, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4) && *d < e.len())
        .min();
    match close {
        Some((_, e)) => format!("unknown key `{field}`: did you mean `{e}`?"),
        None if expected.is_empty() => format!("unknown key `{field}`: this table takes no keys"),
        None => format!(
            "unknown key `{field}`: this table takes {}",
            expected.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_read_apart() {
        assert_eq!(
            unknown_field("unknown field `buad`, expected one of `port`, `baud`"),
            Some(("buad", vec!["port", "baud"]))
        );
        assert_eq!(
            unknown_field("unknown field `x`, expected `listen`"),
            Some(("x", vec!["listen"]))
        );
        assert_eq!(missing_field("missing field `protocol`"), Some("protocol"));
        assert_eq!(missing_field("invalid type: string"), None);
        assert_eq!(
            unknown_key_message("buad", &["port", "baud", "protocol"]),
            "unknown key `buad`: did you mean `baud`?"
        );
        assert_eq!(
            unknown_key_message("colour", &["port", "baud"]),
            "unknown key `colour`: this table takes port, baud"
        );
    }

    /// Every kind of table, one of each; line numbers below are counted in this text.
    const BASE: &str = r#"[gateway]
site = "ams1"
id = "gw-01"
data_dir = "/tmp/x"

[store]
max_batch = 64

[[scanner]]
port = "/dev/ttyACM0"
protocol = "framed"
baud = 9600

[[upstream]]
name = "central"
url = "mqtt://broker:1883"
window = 16

[[relay]]
name = "site"
url = "mqtt://site:1883"
max_hops = 4

[[route]]
to = ["central"]
steps = ["pack"]

[[merchant]]
id = "acme"
order_prefixes = ["ACME-"]

[alerts]
pick_to_pack_minutes = 90

[[alerts.cutoff]]
carrier = "dhl"
time = "16:00"

[http]
listen = "127.0.0.1:9187"
"#;

    fn error_with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from}");
        super::super::Config::parse(&BASE.replace(from, to), "gw.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_base_config_is_valid() {
        super::super::Config::parse(BASE, "gw.toml").unwrap();
    }

    #[test]
    fn type_errors_name_file_line_and_key_in_every_kind_of_table() {
        for (from, to, want) in [
            (
                "baud = 9600",
                "baud = \"fast\"",
                "gw.toml:12: `scanner[0].baud`: invalid type: string \"fast\", expected i64",
            ),
            (
                "max_batch = 64",
                "max_batch = \"many\"",
                "gw.toml:7: `store.max_batch`: invalid type: string \"many\"",
            ),
            (
                "window = 16",
                "window = 1.5",
                "gw.toml:17: `upstream[0].window`: invalid type: floating point `1.5`",
            ),
            (
                "max_hops = 4",
                "max_hops = [4]",
                "gw.toml:22: `relay[0].max_hops`: invalid type: sequence",
            ),
            (
                "steps = [\"pack\"]",
                "steps = [\"pack\", 3]",
                "gw.toml:26: `route[0].steps[1]`: invalid type: integer `3`",
            ),
            (
                "order_prefixes = [\"ACME-\"]",
                "order_prefixes = \"ACME-\"",
                "gw.toml:30: `merchant[0].order_prefixes`: invalid type: string \"ACME-\"",
            ),
            (
                "pick_to_pack_minutes = 90",
                "pick_to_pack_minutes = true",
                "gw.toml:33: `alerts.pick_to_pack_minutes`: invalid type: boolean `true`",
            ),
            (
                "time = \"16:00\"",
                "time = 16",
                "gw.toml:37: `alerts.cutoff[0].time`: invalid type: integer `16`",
            ),
            (
                "protocol = \"framed\"",
                "protocol = \"serial\"",
                "gw.toml:11: `scanner[0].protocol`: unknown variant `serial`",
            ),
            (
                "id = \"gw-01\"",
                "id = 1",
                "gw.toml:3: `gateway.id`: invalid type: integer `1`",
            ),
        ] {
            let e = error_with(from, to);
            assert!(e.starts_with(want), "{to}:\n{e}");
            assert!(e.contains("\n  hint: "), "{e}");
        }
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_name_their_key_path_too() {
        let text = "[gateway]\nsite = \"s\"\nid = \"g\"\ndata_dir = \"/tmp/x\"\n\n[[scanner]]\nport = \"/dev/a\"\nprotocol = \"ascii\"\n\n[[scanner]]\nport = \"/dev/b\"\nbaud = 9600\nbaud = 19200\n";
        let e = super::super::Config::parse(text, "gw.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("gw.toml:13: `scanner[1].baud`"), "{e}");
        let text = "[gateway]\nsite = \"s\"\nid = = \"g\"\n";
        let e = super::super::Config::parse(text, "gw.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("gw.toml:3: `gateway.id`"), "{e}");
    }

    #[test]
    fn typos_are_unknown_keys_with_a_suggestion_and_missing_keys_are_named() {
        let e = error_with("baud = 9600", "buad = 9600");
        assert!(
            e.starts_with(
                "gw.toml:12: `scanner[0].buad`: unknown key `buad`: did you mean `baud`?"
            ),
            "{e}"
        );
        let e = error_with("window = 16", "windwo = 16");
        assert!(
            e.starts_with(
                "gw.toml:17: `upstream[0].windwo`: unknown key `windwo`: did you mean `window`?"
            ),
            "{e}"
        );
        let e = error_with("[alerts]", "[alerts]\ncolour = \"red\"");
        assert!(
            e.starts_with("gw.toml:33: `alerts.colour`: unknown key `colour`: this table takes pick_to_pack_minutes, cutoff"),
            "{e}"
        );
        let e = error_with("[[relay]]", "[[relais]]");
        assert!(
            e.starts_with("gw.toml:19: `relais`: unknown key `relais`: did you mean `relay`?"),
            "{e}"
        );
        let e = error_with("protocol = \"framed\"\n", "");
        assert!(
            e.starts_with("gw.toml:9: `scanner[0].protocol`: is missing"),
            "{e}"
        );
    }
}
