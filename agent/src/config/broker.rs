//! How the gateway reaches an MQTT broker — shared by `[[upstream]]` (where the outbox goes)
//! and `[[relay]]` (where other gateways' events come from): address, TLS (custom CA, client
//! certificate for mTLS), credentials. Secrets are named, never written in the config: the
//! password comes from an environment variable or a file, and is read only when connecting.

use super::{ConfigError, Validator};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct BrokerLink {
    /// The first broker (`url`, or the first of `urls`).
    pub host: String,
    pub port: u16,
    /// The other brokers of `urls`, tried in turn after `host:port` when a connection fails
    /// or is lost (same client id, same TLS and credentials: one cluster, or mirrors).
    pub failover: Vec<(String, u16)>,
    pub tls: bool,
    /// Trust these CAs instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain) and key presented to the broker (mTLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
}

impl BrokerLink {
    /// `mqtts://host:port` — for logs and `check-config`; carries no secret. Several brokers
    /// are listed comma-separated.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        std::iter::once((self.host.as_str(), self.port))
            .chain(self.failover.iter().map(|(h, p)| (h.as_str(), *p)))
            .map(|(h, p)| match h.contains(':') {
                true => format!("{scheme}://[{h}]:{p}"),
                false => format!("{scheme}://{h}:{p}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many brokers there are to try (1 + `failover`).
    pub fn brokers(&self) -> usize {
        1 + self.failover.len()
    }

    /// The link to broker `i` (modulo [`brokers`](Self::brokers)) alone: everything else
    /// (client id, credentials, TLS) is the same.
    pub fn at(&self, i: usize) -> BrokerLink {
        let mut one = self.clone();
        one.failover.clear();
        match i % self.brokers() {
            0 => {}
            k => (one.host, one.port) = self.failover[k - 1].clone(),
        }
        one
    }
}

/// Where a password lives. `Debug` and `Display` name the source, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

impl Secret {
    /// The secret itself, read now (a rotated file is picked up on the next connect).
    pub fn reveal(&self) -> Result<String, String> {
        match self {
            Secret::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} (password_env) is not set")),
            Secret::File(path) => std::fs::read_to_string(path)
                // One trailing newline is how editors and `echo` leave files; it is not part
                // of the password.
                .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_string())
                .map_err(|e| format!("password_file {}: {e}", path.display())),
        }
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Env(var) => write!(f, "from ${var}"),
            Secret::File(p) => write!(f, "from file {}", p.display()),
        }
    }
}

/// The connection keys as written in one table (`upstream[2]`, `relay[0]`).
pub(super) struct RawLink<'a> {
    /// The table's `name`: where an error about a missing `url` points.
    pub name: &'a Spanned<String>,
    pub url: Option<&'a Spanned<String>>,
    pub urls: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub client_id: Option<&'a Spanned<String>>,
    pub username: Option<&'a String>,
    pub password_env: Option<&'a String>,
    pub password_file: Option<&'a String>,
    pub ca_file: Option<&'a String>,
    pub client_cert: Option<&'a String>,
    pub client_key: Option<&'a String>,
    pub keep_alive_secs: Option<&'a Spanned<i64>>,
}

/// [`RawLink`] borrowed from any raw table that has the connection keys.
macro_rules! raw_link {
    ($t:expr) => {
        $crate::config::broker::RawLink {
            name: &$t.name,
            url: $t.url.as_ref(),
            urls: $t.urls.as_ref(),
            client_id: $t.client_id.as_ref(),
            username: $t.username.as_ref(),
            password_env: $t.password_env.as_ref(),
            password_file: $t.password_file.as_ref(),
            ca_file: $t.ca_file.as_ref(),
            client_cert: $t.client_cert.as_ref(),
            client_key: $t.client_key.as_ref(),
            keep_alive_secs: $t.keep_alive_secs.as_ref(),
        }
    };
}
pub(super) use raw_link;

impl Validator<'_> {
    pub(super) fn link(
        &self,
        raw: RawLink<'_>,
        table: &str,
        default_client_id: String,
    ) -> Result<BrokerLink, ConfigError> {
        let key = |k: &str| format!("{table}.{k}");
        let (tls, mut brokers) = self.brokers(&raw, table)?;
        let (host, port) = brokers.remove(0);
        // Other errors about the connection point at the (first) URL.
        let at = raw
            .url
            .or(raw.urls.and_then(|l| l.get_ref().first()))
            .expect("one URL");
        let client_id = match raw.client_id {
            Some(c) => self.name(c, &key("client_id"))?,
            None => default_client_id,
        };
        let keep_alive = match raw.keep_alive_secs {
            Some(k) => self.range(k, &key("keep_alive_secs"), 5, 3600)? as u64,
            None => 30,
        };
        let password = match (raw.password_env, raw.password_file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    at,
                    key("password_file"),
                    "password_env and password_file are both set".into(),
                    "keep one: where the password comes from must be unambiguous",
                ))
            }
            (Some(v), None) => Some(Secret::Env(v.clone())),
            (None, Some(p)) => Some(Secret::File(PathBuf::from(p))),
            (None, None) => None,
        };
        if password.is_some() && raw.username.is_none() {
            return Err(self.err(
                at,
                key("username"),
                "a password is configured without a username".into(),
                "MQTT sends a password only with a username: add username = \"…\"",
            ));
        }
        if raw.client_cert.is_some() != raw.client_key.is_some() {
            return Err(self.err(
                at,
                key(if raw.client_cert.is_some() {
                    "client_key"
                } else {
                    "client_cert"
                }),
                "client_cert and client_key go together".into(),
                "mTLS needs both the certificate (PEM) and its private key (PEM)",
            ));
        }
        if !tls && (raw.ca_file.is_some() || raw.client_cert.is_some()) {
            return Err(self.err(
                at,
                key("url"),
                "TLS files are set on a plain mqtt:// URL".into(),
                "use mqtts:// to connect with TLS, or drop ca_file/client_cert/client_key",
            ));
        }
        Ok(BrokerLink {
            host,
            port,
            failover: brokers,
            tls,
            ca_file: raw.ca_file.map(PathBuf::from),
            client_cert: raw.client_cert.map(PathBuf::from),
            client_key: raw.client_key.map(PathBuf::from),
            client_id,
            username: raw.username.cloned(),
            password,
            keep_alive: Duration::from_secs(keep_alive),
        })
    }

    /// `url = "…"` or `urls = ["…", …]`, exactly one, each a valid broker URL, all of one
    /// scheme (they share the TLS settings), none twice. Returns (tls, [(host, port)]).
    fn brokers(
        &self,
        raw: &RawLink<'_>,
        table: &str,
    ) -> Result<(bool, Vec<(String, u16)>), ConfigError> {
        const HINT: &str = "mqtt://host:1883 or mqtts://host:8883; credentials go in username and password_env/password_file, not the URL";
        let list: Vec<(&Spanned<String>, String)> = match (raw.url, raw.urls) {
            (Some(u), None) => vec![(u, format!("{table}.url"))],
            (None, Some(l)) if l.get_ref().is_empty() => {
                return Err(self.err(
                    l,
                    format!("{table}.urls"),
                    "is empty".into(),
                    "list at least one broker: urls = [\"mqtt://a:1883\", \"mqtt://b:1883\"]",
                ))
            }
            (None, Some(l)) => l
                .get_ref()
                .iter()
                .enumerate()
                .map(|(j, u)| (u, format!("{table}.urls[{j}]")))
                .collect(),
            (Some(u), Some(_)) => {
                return Err(self.err(
                    u,
                    format!("{table}.urls"),
                    "url and urls are both set".into(),
                    "keep one: url for one broker, urls for several to fail over across",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    raw.name,
                    format!("{table}.url"),
                    "is missing".into(),
                    "url = \"mqtt://host:1883\", or urls = [\"mqtt://a:1883\", \"mqtt://b:1883\"] for several brokers",
                ))
            }
        };
        let mut tls = None;
        let mut out: Vec<(String, u16)> = Vec::new();
        for (u, key) in list {
            let (t, host, port) =
                parse_mqtt_url(u.get_ref()).map_err(|m| self.err(u, key.clone(), m, HINT))?;
            if tls.is_some_and(|first| first != t) {
                return Err(self.err(
                    u,
                    key,
                    "mixes mqtt:// and mqtts://".into(),
                    "the brokers of one table share its TLS settings: use one scheme for all",
                ));
            }
            if out.contains(&(host.clone(), port)) {
                return Err(self.err(
                    u,
                    key,
                    format!("{:?} is listed twice", u.get_ref()),
                    "list each broker once",
                ));
            }
            tls = Some(t);
            out.push((host, port));
        }
        Ok((tls.expect("at least one URL"), out))
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; returns (tls, host, port).
fn parse_mqtt_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!("{url:?} is not an mqtt:// or mqtts:// URL"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err("credentials in the URL are not accepted".into());
    }
    if rest.contains('/') {
        return Err(format!("{url:?} has a path; put topics in topic_prefix"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number 1-65535"))?;
            (h.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || port == 0 {
        return Err(format!("{url:?} has no host or a zero port"));
    }
    Ok((tls, host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::{parse_mqtt_url, Secret};
    use crate::config::Config;

    fn with_upstream(keys: &str) -> Result<Config, String> {
        let text = format!(
            "[gateway]\nsite = \"s\"\nid = \"g\"\ndata_dir = \"/tmp/x\"\n\n[[upstream]]\nname = \"c\"\n{keys}\n"
        );
        Config::parse(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn urls_lists_brokers_to_fail_over_across() {
        let c =
            with_upstream(r#"urls = ["mqtt://a:1883", "mqtt://b", "mqtt://[::1]:1885"]"#).unwrap();
        let l = &c.upstreams[0].link;
        assert_eq!(l.brokers(), 3);
        assert_eq!((l.host.as_str(), l.port), ("a", 1883));
        assert_eq!(l.url(), "mqtt://a:1883, mqtt://b:1883, mqtt://[::1]:1885");
        let b = l.at(1);
        assert_eq!((b.host.as_str(), b.port, b.brokers()), ("b", 1883, 1));
        assert_eq!(b.client_id, l.client_id, "one client id, one session");
        assert_eq!(l.at(2).url(), "mqtt://[::1]:1885");
        assert_eq!(l.at(3).url(), "mqtt://a:1883", "wraps around");
        let one = with_upstream(r#"url = "mqtts://x:8883""#).unwrap();
        assert_eq!(one.upstreams[0].link.brokers(), 1);
        assert_eq!(one.upstreams[0].link.url(), "mqtts://x:8883");
    }

    #[test]
    fn bad_urls_are_named_by_file_line_and_key() {
        let e = with_upstream("urls = []").unwrap_err();
        assert!(
            e.starts_with("t.toml:8: `upstream[0].urls`: is empty"),
            "{e}"
        );
        let e = with_upstream("url = \"mqtt://a\"\nurls = [\"mqtt://b\"]").unwrap_err();
        assert!(
            e.starts_with("t.toml:8: `upstream[0].urls`: url and urls are both set"),
            "{e}"
        );
        let e = with_upstream("").unwrap_err();
        assert!(
            e.starts_with("t.toml:7: `upstream[0].url`: is missing"),
            "{e}"
        );
        let e = with_upstream(r#"urls = ["mqtt://a", "mqtts://b"]"#).unwrap_err();
        assert!(
            e.starts_with("t.toml:8: `upstream[0].urls[1]`: mixes"),
            "{e}"
        );
        let e = with_upstream(r#"urls = ["mqtt://a", "http://b"]"#).unwrap_err();
        assert!(e.starts_with("t.toml:8: `upstream[0].urls[1]`"), "{e}");
        assert!(e.contains("hint:"), "{e}");
        let e = with_upstream(r#"urls = ["mqtt://a:1883", "mqtt://a"]"#).unwrap_err();
        assert!(
            e.contains("`upstream[0].urls[1]`") && e.contains("listed twice"),
            "{e}"
        );
    }

    #[test]
    fn a_relay_takes_urls_too() {
        let text = "[gateway]\nsite = \"s\"\nid = \"g\"\ndata_dir = \"/tmp/x\"\n\n[[relay]]\nname = \"site\"\nurls = [\"mqtt://a\", \"mqtt://b\"]\n";
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.relays[0].link.url(), "mqtt://a:1883, mqtt://b:1883");
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1"),
            Ok((false, "127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1884"),
            Ok((false, "::1".into(), 1884))
        );
        assert!(parse_mqtt_url("mqtt://user:pw@host").is_err());
        assert!(parse_mqtt_url("mqtt://host:99999").is_err());
        assert!(parse_mqtt_url("mqtt://host/topic").is_err());
    }

    #[test]
    fn a_secret_shows_where_it_lives_never_what_it_is() {
        let dir = std::env::temp_dir().join(format!("darkleg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        let s = Secret::File(f.clone());
        assert_eq!(s.reveal().unwrap(), "s3cret-value");
        assert!(!format!("{s} {s:?}").contains("s3cret"));
        let missing = Secret::Env("DARKLEG_TEST_SURELY_UNSET_VAR".into());
        assert!(missing.reveal().unwrap_err().contains("is not set"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
