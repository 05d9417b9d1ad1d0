//! The gateway's TOML config: parsed strictly (unknown keys are errors, since a typo in a
//! warehouse config should stop the agent at start, not silently drop a scanner) and
//! validated with errors that name the file, line and key, plus a hint.

mod broker;
mod dark_leg;
mod deser;
mod hid;
mod intake;
mod network;
mod relay;
mod upstream;
mod webhook;

pub use broker::{BrokerLink, Secret};
pub use dark_leg::{AlertRules, Cutoff, EpcisConfig, Merchant, ParcelRules, Pattern};
use darkleg_protocol::Step;
pub use hid::{HidScanner, Layout};
pub use intake::Intake;
pub use network::{NetworkScanner, Suffix, Transport, MAX_CONNECTIONS as NETWORK_MAX_CONNECTIONS};
pub use relay::{Carries, Relay, Route};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
pub use upstream::{MqttVersion, Upstream};
pub use webhook::Webhook;

/// `[http] max_connections` by default.
pub const HTTP_MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    pub store: StoreConfig,
    pub scanners: Vec<Scanner>,
    pub network_scanners: Vec<NetworkScanner>,
    pub hid_scanners: Vec<HidScanner>,
    pub upstreams: Vec<Upstream>,
    /// Other gateways' events come in through these.
    pub relays: Vec<Relay>,
    /// Which upstream gets what; see [`crate::routing`].
    pub routes: Vec<Route>,
    /// Signed HTTPS deliveries of milestones and alerts; see [`crate::sinks::webhook`].
    pub webhooks: Vec<Webhook>,
    pub parcels: ParcelRules,
    pub merchants: Vec<Merchant>,
    pub alerts: AlertRules,
    pub epcis: EpcisConfig,
    /// Where `/metrics`, `/healthz` and the status page are served; `None`: not at all.
    pub http: Option<std::net::SocketAddr>,
    /// `[http] max_connections`: connections served at once; more are closed and counted.
    pub http_max_connections: usize,
    /// `POST /v1/scans` on the `[http]` listener; `None`: not served.
    pub intake: Option<Intake>,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub site: String,
    pub id: String,
    pub data_dir: PathBuf,
    /// The site's time zone: carrier cut-offs are local times.
    pub timezone: jiff::tz::TimeZone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an acked scan survives power loss.
    Full,
    /// fsync at checkpoints only: survives a crash of the agent, not of the machine.
    Normal,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub synchronous: Synchronous,
    /// Most write requests folded into one commit (one fsync).
    pub max_batch: usize,
    /// Delivered events older than this are pruned; undelivered ones never are.
    pub retention: Duration,
    /// Ceiling on the database file; when reached, new scans are refused (framed scanners
    /// keep them and retry) instead of filling the gateway's disk.
    pub max_db_mb: Option<u64>,
    /// When the start-up integrity check runs.
    pub startup_check: StartupCheck,
}

/// When the start-up `quick_check` of the database runs (it reads the whole file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartupCheck {
    /// Before serving below [`crate::store::INLINE_CHECK_BYTES`], beside serving above.
    Auto,
    /// Always before anything is served (a large file makes start-up that much longer).
    Before,
    /// Always beside serving, on a snapshot of the file as it was at start.
    Beside,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScannerProtocol {
    /// `barcode\r\n` lines; the gateway numbers the scans.
    Ascii,
    /// darkleg frames with device sequence numbers and acks.
    Framed,
}

#[derive(Debug, Clone)]
pub struct Scanner {
    /// A device path or a glob over one directory (`/dev/ttyACM*`).
    pub port: String,
    pub baud: u32,
    pub protocol: ScannerProtocol,
    /// The step a scan at this station means (required for ascii scanners).
    pub step: Option<Step>,
    /// Label carried in each event's `station` field.
    pub station_name: Option<String>,
}

/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.gateway.data_dir.join("darkleg.db")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        // Read one byte past the limit, so `parse` can say the file is too big without
        // reading all of it (a device node or a log file passed by mistake).
        let mut text = String::new();
        let read = std::fs::File::open(path).and_then(|f| {
            f.take(MAX_CONFIG_BYTES as u64 + 1)
                .read_to_string(&mut text)
        });
        read.map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
            hint: "pass the path of a darkleg TOML config, e.g. configs/gateway.toml",
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        // A gateway config is a few KiB; megabytes mean the wrong file (or a hostile one).
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError {
                file: file.to_string(),
                line: None,
                key: String::new(),
                message: format!(
                    "is {} bytes; a config is at most {MAX_CONFIG_BYTES}",
                    text.len()
                ),
                hint: "pass the path of a darkleg TOML config, e.g. configs/gateway.toml",
            });
        }
        let raw: RawConfig = deser::from_toml(text, file)?;
        let v = Validator { text, file };
        v.build(raw)
    }
}

/// A config that cannot run, with where and why.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
    pub hint: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    scanner: Vec<RawScanner>,
    #[serde(default)]
    network_scanner: Vec<network::RawNetworkScanner>,
    #[serde(default)]
    hid_scanner: Vec<hid::RawHidScanner>,
    #[serde(default)]
    upstream: Vec<upstream::RawUpstream>,
    #[serde(default)]
    relay: Vec<relay::RawRelay>,
    #[serde(default)]
    route: Vec<relay::RawRoute>,
    #[serde(default)]
    webhook: Vec<webhook::RawWebhook>,
    parcels: Option<dark_leg::RawParcels>,
    #[serde(default)]
    merchant: Vec<dark_leg::RawMerchant>,
    alerts: Option<dark_leg::RawAlerts>,
    epcis: Option<dark_leg::RawEpcis>,
    http: Option<RawHttp>,
    intake: Option<Spanned<intake::RawIntake>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Spanned<String>,
    max_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    site: Spanned<String>,
    id: Spanned<String>,
    data_dir: Spanned<String>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    synchronous: Option<Synchronous>,
    max_batch: Option<Spanned<i64>>,
    retention_days: Option<Spanned<i64>>,
    max_db_mb: Option<Spanned<i64>>,
    startup_check: Option<StartupCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScanner {
    port: Spanned<String>,
    baud: Option<Spanned<i64>>,
    protocol: ScannerProtocol,
    station: Option<Spanned<String>>,
    name: Option<String>,
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    fn err<T>(
        &self,
        at: &Spanned<T>,
        key: String,
        message: String,
        hint: &'static str,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(line_of(self.text, at.span().start)),
            key,
            message,
            hint,
        }
    }

    /// Names end up in MQTT topics and client ids: keep them to a safe alphabet.
    fn name(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(s.clone())
        } else {
            Err(self.err(
                v,
                key.to_string(),
                format!("{s:?} is not a valid name"),
                "use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.' (it becomes part of MQTT topics)",
            ))
        }
    }

    /// [`Self::name`], and not one of `taken` (names that key delivery state or metrics).
    fn unique_name<'t>(
        &self,
        v: &Spanned<String>,
        key: &str,
        mut taken: impl Iterator<Item = &'t str>,
        hint: &'static str,
    ) -> Result<String, ConfigError> {
        let name = self.name(v, key)?;
        if taken.any(|t| t == name) {
            return Err(self.err(v, key.to_string(), format!("{name:?} is used twice"), hint));
        }
        Ok(name)
    }

    fn range(&self, v: &Spanned<i64>, key: &str, lo: i64, hi: i64) -> Result<i64, ConfigError> {
        let n = *v.get_ref();
        if (lo..=hi).contains(&n) {
            Ok(n)
        } else {
            Err(self.err(
                v,
                key.to_string(),
                format!("{n} is out of range {lo}..={hi}"),
                "",
            ))
        }
    }

    /// Two connections with one client id take over each other's session at the broker:
    /// each connect kicks the other off, forever.
    fn client_ids_unique(
        &self,
        upstreams: &[Upstream],
        relays: &[Relay],
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, String)> = Vec::new();
        let tables = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (&u.link.client_id, format!("upstream[{i}]")))
            .chain(
                relays
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (&r.link.client_id, format!("relay[{i}]"))),
            );
        for (id, table) in tables {
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == id.as_str()) {
                return Err(ConfigError {
                    file: self.file.to_string(),
                    line: None,
                    key: format!("{table}.client_id"),
                    message: format!("client id {id:?} is also used by {first}"),
                    hint: "a broker allows one connection per client id: the two would take over each other's session; give each its own client_id",
                });
            }
            seen.push((id, table));
        }
        Ok(())
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gateway = Gateway {
            site: self.name(&raw.gateway.site, "gateway.site")?,
            id: self.name(&raw.gateway.id, "gateway.id")?,
            data_dir: {
                let d = raw.gateway.data_dir.get_ref();
                if d.trim().is_empty() {
                    return Err(self.err(
                        &raw.gateway.data_dir,
                        "gateway.data_dir".into(),
                        "is empty".into(),
                        "a directory the agent can write, e.g. /var/lib/darkleg",
                    ));
                }
                PathBuf::from(d)
            },
            timezone: self.timezone(raw.gateway.timezone.as_ref())?,
        };
        let merchants = self.merchants(raw.merchant)?;
        let store = match raw.store {
            None => StoreConfig {
                synchronous: Synchronous::Full,
                max_batch: 1024,
                retention: Duration::from_secs(14 * 86_400),
                max_db_mb: None,
                startup_check: StartupCheck::Auto,
            },
            Some(s) => StoreConfig {
                synchronous: s.synchronous.unwrap_or(Synchronous::Full),
                max_batch: match &s.max_batch {
                    Some(v) => self.range(v, "store.max_batch", 1, 100_000)? as usize,
                    None => 1024,
                },
                retention: Duration::from_secs(
                    86_400
                        * match &s.retention_days {
                            Some(v) => self.range(v, "store.retention_days", 1, 3650)? as u64,
                            None => 14,
                        },
                ),
                max_db_mb: match &s.max_db_mb {
                    Some(v) => Some(self.range(v, "store.max_db_mb", 1, 16_000_000)? as u64),
                    None => None,
                },
                startup_check: s.startup_check.unwrap_or(StartupCheck::Auto),
            },
        };
        let mut scanners = Vec::new();
        for (i, s) in raw.scanner.into_iter().enumerate() {
            let key = |k: &str| format!("scanner[{i}].{k}");
            if s.port.get_ref().trim().is_empty() {
                return Err(self.err(
                    &s.port,
                    key("port"),
                    "is empty".into(),
                    "a device path such as /dev/ttyUSB0 or a glob such as /dev/ttyACM*",
                ));
            }
            let step = match &s.station {
                Some(st) => Some(st.get_ref().parse::<Step>().map_err(|e| {
                    self.err(
                        st,
                        key("station"),
                        format!("{:?}: {e}", st.get_ref()),
                        "the step a scan at this station means",
                    )
                })?),
                None => None,
            };
            if s.protocol == ScannerProtocol::Ascii && step.is_none() {
                return Err(self.err(
                    &s.port,
                    key("station"),
                    "is missing for an ascii scanner".into(),
                    "plain scanners do not say what a scan means: add station = \"pick\" | \"pack\" | \"handover\" | \"return_receipt\" | \"exception\"",
                ));
            }
            let baud = match &s.baud {
                Some(b) => self.range(b, &key("baud"), 1200, 4_000_000)? as u32,
                None => 115_200,
            };
            scanners.push(Scanner {
                port: s.port.into_inner(),
                baud,
                protocol: s.protocol,
                step,
                station_name: s.name.or_else(|| step.map(|st| st.as_str().to_string())),
            });
        }
        let upstreams = self.upstreams(raw.upstream, &gateway, &merchants)?;
        let relays = self.relays(raw.relay, &gateway)?;
        let routes = self.routes(raw.route, &upstreams, &merchants)?;
        self.client_ids_unique(&upstreams, &relays)?;
        let taken: Vec<&str> = (upstreams.iter().map(|u| u.name.as_str()))
            .chain(relays.iter().map(|r| r.name.as_str()))
            .collect();
        let webhooks = self.webhooks(raw.webhook, &taken, &merchants)?;
        let http = match &raw.http {
                None => None,
                Some(h) => Some(h.listen.get_ref().parse().map_err(|e| {
                    self.err(
                        &h.listen,
                        "http.listen".into(),
                        format!("{:?}: {e}", h.listen.get_ref()),
                        "an address and port such as \"127.0.0.1:9187\" (0.0.0.0 to serve the floor network)",
                    )
                })?),
            };
        // Every handheld that posts keeps its own keep-alive connection: room for a floor's
        // worth by default, within the shipped unit's LimitNOFILE (8192).
        let http_max_connections = match raw.http.as_ref().and_then(|h| h.max_connections.as_ref())
        {
            Some(v) => self.range(v, "http.max_connections", 1, 65_536)? as usize,
            None => HTTP_MAX_CONNECTIONS,
        };
        let intake = self.intake(raw.intake, http)?;
        Ok(Config {
            gateway,
            store,
            scanners,
            network_scanners: self.network_scanners(raw.network_scanner)?,
            hid_scanners: self.hid_scanners(raw.hid_scanner)?,
            upstreams,
            relays,
            routes,
            webhooks,
            parcels: self.parcels(raw.parcels)?,
            merchants,
            alerts: self.alerts(raw.alerts)?,
            epcis: self.epcis(raw.epcis)?,
            http,
            http_max_connections,
            intake,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
site = "ams1"
id = "gw-01"
data_dir = "/tmp/x"

[[scanner]]
port = "/dev/ttyUSB*"
protocol = "ascii"
station = "pack"

[[scanner]]
port = "/dev/ttyACM0"
protocol = "framed"

[[upstream]]
name = "central"
url = "mqtts://broker.example:8883"
"#;

    proptest::proptest! {
        // The config fuzz target's property, run in CI: any mutation of a valid config is
        // parsed or refused with a message — never a panic.
        #[test]
        fn mangled_configs_are_errors_not_crashes(
            cuts in proptest::collection::vec((0usize..2000, 0usize..40, "[ -~\n]{0,12}"), 1..4),
        ) {
            let mut text = format!("{GOOD}\n[[relay]]\nname = \"site\"\nurl = \"mqtt://s\"\n[[route]]\nto = [\"central\"]\nsteps = [\"pack\"]\n");
            for (at, len, with) in cuts {
                let at = at % text.len();
                let end = (at + len).min(text.len());
                if text.is_char_boundary(at) && text.is_char_boundary(end) {
                    text.replace_range(at..end, &with);
                }
            }
            if let Err(e) = Config::parse(&text, "t.toml") {
                proptest::prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn http_max_connections_defaults_and_is_bounded() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.http_max_connections, HTTP_MAX_CONNECTIONS);
        let http = |n: &str| {
            format!("{GOOD}\n[http]\nlisten = \"127.0.0.1:9187\"\nmax_connections = {n}\n")
        };
        let c = Config::parse(&http("2000"), "t.toml").unwrap();
        assert_eq!(c.http_max_connections, 2000);
        let e = error_of(&http("0"));
        assert!(
            e.contains("`http.max_connections`: 0 is out of range 1..=65536"),
            "{e}"
        );
    }

    #[test]
    fn client_ids_are_unique_across_upstreams_and_relays_and_versions_are_checked() {
        let e = error_of(&format!(
            "{GOOD}\n[[relay]]\nname = \"site\"\nurl = \"mqtt://a\"\nclient_id = \"darkleg-ams1-gw-01-central\"\n"
        ));
        assert!(
            e.contains("`relay[0].client_id`") && e.contains("upstream[0]"),
            "{e}"
        );
        let e = error_of(&format!("{GOOD}mqtt_version = \"6\"\n"));
        assert!(e.contains("`upstream[0].mqtt_version`"), "{e}");
        let c = Config::parse(&format!("{GOOD}max_message_kb = 64\n"), "t.toml").unwrap();
        assert_eq!(c.upstreams[0].max_message_bytes, 64 * 1024);
        assert_eq!(c.upstreams[0].mqtt_version, MqttVersion::Auto);
    }

    #[test]
    fn broker_links_reject_ambiguous_or_half_configured_secrets() {
        let with = |extra: &str| error_of(&format!("{GOOD}{extra}\n"));
        let e = with("username = \"u\"\npassword_env = \"A\"\npassword_file = \"/p\"");
        assert!(e.contains("both set"), "{e}");
        let e = with("password_file = \"/p\"");
        assert!(e.contains("without a username"), "{e}");
        let e = with("client_cert = \"/c.pem\"");
        assert!(e.contains("go together"), "{e}");
        let e = error_of(
            &(GOOD.replace("mqtts://broker.example:8883", "mqtt://broker.example")
                + "ca_file = \"/ca.pem\"\n"),
        );
        assert!(e.contains("plain mqtt://"), "{e}");
        let c = Config::parse(
            &format!("{GOOD}username = \"u\"\npassword_file = \"/run/secrets/pw\"\nclient_cert = \"/c.pem\"\nclient_key = \"/k.pem\"\n"),
            "t.toml",
        )
        .unwrap();
        let e = with("\n[[relay]]\nname = \"s\"\nurl = \"mqtt://a\"\n[[relay]]\nname = \"s\"\nurl = \"mqtt://b\"");
        assert!(
            e.contains("`relay[1].name`") && e.contains("used twice"),
            "{e}"
        );
        let l = &c.upstreams[0].link;
        assert_eq!(l.password, Some(Secret::File("/run/secrets/pw".into())));
        assert!(l.client_cert.is_some() && l.client_key.is_some());
    }

    #[test]
    fn parses_the_documented_shape_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.scanners.len(), 2);
        assert_eq!(c.scanners[0].step, Some(Step::Pack));
        assert_eq!(c.scanners[0].baud, 115_200);
        assert_eq!(c.scanners[1].protocol, ScannerProtocol::Framed);
        let u = &c.upstreams[0];
        assert!(u.link.tls);
        assert_eq!(
            (u.link.host.as_str(), u.link.port),
            ("broker.example", 8883)
        );
        assert_eq!(u.events_topic(&c.gateway), "darkleg/v1/ams1/gw-01/events");
        assert_eq!(u.link.client_id, "darkleg-ams1-gw-01-central");
        assert_eq!(c.store.synchronous, Synchronous::Full);
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = error_of(&GOOD.replace("station = \"pack\"", "station = \"packing\""));
        assert!(
            e.starts_with("t.toml:10: `scanner[0].station`: \"packing\": unknown step"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("mqtts://broker.example:8883", "http://x"));
        assert!(e.starts_with("t.toml:18: `upstream[0].url`"), "{e}");
        assert!(e.contains("hint:"), "{e}");
        let e = error_of(&GOOD.replace(
            "protocol = \"ascii\"\nstation = \"pack\"",
            "protocol = \"ascii\"",
        ));
        assert!(e.contains("`scanner[0].station`: is missing"), "{e}");
        let e = error_of(&GOOD.replace("id = \"gw-01\"", "id = \"gw 01/x\""));
        assert!(e.starts_with("t.toml:4: `gateway.id`"), "{e}");
    }

    #[test]
    fn typos_and_wrong_types_are_caught_with_a_line() {
        let e = error_of(&GOOD.replace(
            "protocol = \"framed\"",
            "protocol = \"framed\"\nbuad = 9600",
        ));
        assert!(e.starts_with("t.toml:15"), "{e}");
        assert!(e.contains("buad"), "{e}");
        let e = error_of(&GOOD.replace("protocol = \"framed\"", "protocol = \"serial\""));
        assert!(e.starts_with("t.toml:14"), "{e}");
    }
}

#[cfg(test)]
mod shipped_examples {
    /// The example configs in configs/ are documentation; they must stay valid.
    #[test]
    fn every_shipped_config_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                super::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "expected the example configs in {}", dir.display());
    }
}
