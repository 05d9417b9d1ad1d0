//! `[[webhook]]`: an HTTPS endpoint the outbox is delivered to, one signed POST per message
//! (Standard Webhooks 1.0). Its backlog is its own, keyed by its name like an upstream's.

use super::{Carries, ConfigError, Merchant, Secret, Validator};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct Webhook {
    pub name: String,
    /// Where messages are POSTed. Shown in logs and status; carries no secret (credentials
    /// in the URL are refused).
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, as sent in the request line.
    pub path: String,
    /// Only this merchant's messages (like an upstream with `merchant`).
    pub merchant: Option<String>,
    /// Standard Webhooks secrets (`whsec_…`), one per line: several sign each message with
    /// every key, for rotation. Read when the sink starts (a rotated file counts from the
    /// next agent start).
    pub secret: Secret,
    /// Milestones, alerts and/or order updates; never raw scans.
    pub carries: Vec<Carries>,
    pub timeout: Duration,
    /// Requests in flight at once, each for a different parcel (a parcel's messages go one
    /// after another, in outbox order).
    pub max_in_flight: usize,
    /// Trust these CAs instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    name: Spanned<String>,
    url: Spanned<String>,
    merchant: Option<Spanned<String>>,
    secret_file: Option<String>,
    secret_env: Option<String>,
    carries: Option<Spanned<Vec<String>>>,
    timeout_secs: Option<Spanned<i64>>,
    max_in_flight: Option<Spanned<i64>>,
    ca_file: Option<String>,
}

impl Validator<'_> {
    /// `taken`: upstream and relay names (the outbox and the status tables key by name).
    pub(super) fn webhooks(
        &self,
        raw: Vec<RawWebhook>,
        taken: &[&str],
        merchants: &[Merchant],
    ) -> Result<Vec<Webhook>, ConfigError> {
        let mut hooks: Vec<Webhook> = Vec::new();
        for (i, w) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("webhook[{i}].{k}");
            let name = self.unique_name(
                &w.name,
                &key("name"),
                taken
                    .iter()
                    .copied()
                    .chain(hooks.iter().map(|x| x.name.as_str())),
                "each webhook needs a name no upstream, relay or other webhook has: delivery is tracked per name",
            )?;
            let (tls, host, port, path) = parse_http_url(w.url.get_ref()).map_err(|m| {
                self.err(
                    &w.url,
                    key("url"),
                    m,
                    "https://host[:port]/path (or http:// on a trusted network); the secret goes in secret_file or secret_env",
                )
            })?;
            let secret = match (&w.secret_file, &w.secret_env) {
                (Some(_), Some(_)) => {
                    return Err(self.err(
                        &w.url,
                        key("secret_file"),
                        "secret_file and secret_env are both set".into(),
                        "keep one: where the signing secret comes from must be unambiguous",
                    ))
                }
                (Some(f), None) => Secret::File(PathBuf::from(f)),
                (None, Some(v)) => Secret::Env(v.clone()),
                (None, None) => {
                    return Err(self.err(
                        &w.url,
                        key("secret_file"),
                        "no signing secret".into(),
                        "set secret_file (a file with one whsec_… per line) or secret_env: receivers verify each message with it",
                    ))
                }
            };
            if !tls && w.ca_file.is_some() {
                return Err(self.err(
                    &w.url,
                    key("ca_file"),
                    "ca_file is set on a plain http:// URL".into(),
                    "use https://, or drop ca_file",
                ));
            }
            let carries = match &w.carries {
                None => vec![Carries::Milestones, Carries::Alerts, Carries::Orders],
                Some(list) => {
                    let mut out = Vec::new();
                    for c in list.get_ref() {
                        let c = match c.as_str() {
                            "milestones" => Carries::Milestones,
                            "alerts" => Carries::Alerts,
                            "orders" => Carries::Orders,
                            other => {
                                return Err(self.err(
                                    list,
                                    key("carries"),
                                    format!("{other:?} is not something a webhook carries"),
                                    "\"milestones\", \"alerts\" and/or \"orders\" (raw scans go to MQTT upstreams, not webhooks)",
                                ))
                            }
                        };
                        if !out.contains(&c) {
                            out.push(c);
                        }
                    }
                    if out.is_empty() {
                        return Err(self.err(
                            list,
                            key("carries"),
                            "is empty".into(),
                            "leave it out for milestones and alerts",
                        ));
                    }
                    out
                }
            };
            hooks.push(Webhook {
                name,
                url: w.url.get_ref().clone(),
                tls,
                host,
                port,
                path,
                merchant: match &w.merchant {
                    Some(m) => Some(self.merchant_id(m, &key("merchant"), merchants)?),
                    None => None,
                },
                secret,
                carries,
                timeout: Duration::from_secs(match &w.timeout_secs {
                    Some(t) => self.range(t, &key("timeout_secs"), 1, 300)? as u64,
                    None => 10,
                }),
                max_in_flight: match &w.max_in_flight {
                    Some(n) => self.range(n, &key("max_in_flight"), 1, 256)? as usize,
                    None => 8,
                },
                ca_file: w.ca_file.map(PathBuf::from),
            });
        }
        Ok(hooks)
    }
}

/// `http[s]://host[:port][/path]`; returns (tls, host, port, path-and-query).
fn parse_http_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} is not an https:// or http:// URL"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not accepted (they would show in logs)".into());
    }
    if path.contains('#') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{url:?}: the path has a fragment, a space or a control character"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number 1-65535"))?;
            (h.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || port == 0 {
        return Err(format!("{url:?} has no host or a zero port"));
    }
    Ok((tls, host.to_string(), port, path))
}

#[cfg(test)]
mod tests {
    use super::parse_http_url;
    use crate::config::{Carries, Config};

    const BASE: &str = r#"
[gateway]
site = "ams1"
id = "gw-01"
data_dir = "/tmp/x"

[[merchant]]
id = "acme"
order_prefixes = ["ACME-"]

[[upstream]]
name = "central"
url = "mqtt://c"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("https://shop.example/hooks/darkleg?x=1"),
            Ok((
                true,
                "shop.example".into(),
                443,
                "/hooks/darkleg?x=1".into()
            ))
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080"),
            Ok((false, "127.0.0.1".into(), 8080, "/".into()))
        );
        assert!(parse_http_url("https://u:p@h/x").is_err());
        assert!(parse_http_url("ftp://h").is_err());
        assert!(parse_http_url("https://h:0/").is_err());
    }

    #[test]
    fn parses_with_defaults_and_refuses_what_cannot_work() {
        let c = parse(
            "[[webhook]]\nname = \"shop\"\nurl = \"https://shop.example/h\"\nmerchant = \"acme\"\nsecret_env = \"SHOP_WHSEC\"\n",
        )
        .unwrap();
        let w = &c.webhooks[0];
        assert_eq!(
            w.carries,
            [Carries::Milestones, Carries::Alerts, Carries::Orders]
        );
        assert_eq!((w.timeout.as_secs(), w.max_in_flight), (10, 8));
        assert_eq!(w.merchant.as_deref(), Some("acme"));
        let e =
            parse("[[webhook]]\nname = \"central\"\nurl = \"https://h/\"\nsecret_env = \"S\"\n")
                .unwrap_err();
        assert!(
            e.contains("`webhook[0].name`") && e.contains("used twice"),
            "{e}"
        );
        let e = parse("[[webhook]]\nname = \"w\"\nurl = \"https://h/\"\n").unwrap_err();
        assert!(
            e.contains("`webhook[0].secret_file`: no signing secret"),
            "{e}"
        );
        let e = parse(
            "[[webhook]]\nname = \"w\"\nurl = \"https://h/\"\nsecret_env = \"S\"\ncarries = [\"events\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("t.toml:18: `webhook[0].carries`"), "{e}");
        let e = parse(
            "[[webhook]]\nname = \"w\"\nurl = \"http://h/\"\nsecret_env = \"S\"\nca_file = \"/ca.pem\"\n",
        )
        .unwrap_err();
        assert!(e.contains("plain http://"), "{e}");
    }
}
