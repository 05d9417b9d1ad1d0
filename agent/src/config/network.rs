//! `[[network_scanner]]`: handhelds that send scans over the floor network (Zebra
//! DataWedge's IP Output with Remote Wedge off, and anything else that writes raw lines).

use super::{ConfigError, Validator};
use darkleg_protocol::Step;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One scan per suffix-ended line on a connection.
    Tcp,
    /// One scan per datagram.
    Udp,
}

/// What ends a scan, as DataWedge's Keystroke/IP "send suffix" is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suffix {
    Lf,
    Cr,
    Crlf,
    Tab,
}

impl Suffix {
    /// The byte a line is split on; for `crlf` the CR before it is stripped.
    pub fn end_byte(self) -> u8 {
        match self {
            Suffix::Lf | Suffix::Crlf => b'\n',
            Suffix::Cr => b'\r',
            Suffix::Tab => b'\t',
        }
    }

    /// `line` without a trailing suffix. `lf` also drops a CR before the LF, and `cr` an LF
    /// after the CR (over TCP it leads the next line; a UDP datagram ends with it): a
    /// device sending CRLF to an `lf` or `cr` listener is common and costs nothing to forgive.
    pub fn strip(self, line: &[u8]) -> &[u8] {
        let line = match self {
            Suffix::Cr => line.strip_suffix(b"\r\n").unwrap_or(line),
            _ => line,
        };
        let line = line.strip_suffix(&[self.end_byte()]).unwrap_or(line);
        match self {
            Suffix::Lf | Suffix::Crlf => line.strip_suffix(b"\r").unwrap_or(line),
            Suffix::Cr => line.strip_prefix(b"\n").unwrap_or(line),
            Suffix::Tab => line,
        }
    }
}

/// The port DataWedge's IP Output sends to unless set otherwise on the handheld.
pub const DATAWEDGE_PORT: u16 = 58627;

/// `max_connections` by default: one connection per handheld, room for a large floor on one
/// gateway, within the shipped unit's LimitNOFILE (8192) beside the HTTP listener's.
pub const MAX_CONNECTIONS: usize = 1024;

/// `evict_idle_secs` by default: five minutes of silence is a handheld parked or gone
/// (keepalive finds vanished ones in about 2.5 minutes), rarely one about to scan.
pub const EVICT_IDLE_SECS: u64 = 300;

#[derive(Debug, Clone)]
pub struct NetworkScanner {
    pub listen: SocketAddr,
    pub transport: Transport,
    pub step: Step,
    /// Label carried in each event's `station` field.
    pub station_name: String,
    pub suffix: Suffix,
    /// Source address → device id; others are `{gateway}:{ip}`.
    pub devices: HashMap<IpAddr, String>,
    /// TCP: connections beyond this wait, unread, in the listen backlog until a slot frees.
    pub max_connections: usize,
    /// TCP, while a connection waits for a slot: the longest-idle open one silent at least
    /// this long is closed to make room (`None`: never; the waiting one waits).
    pub evict_idle: Option<Duration>,
    /// Longest scan in bytes; longer is counted as garbage.
    pub max_line: usize,
    /// TCP: silence after which a connection is closed (`None`: never; TCP keepalive clears out
    /// handhelds that vanished).
    pub idle: Option<Duration>,
}

impl NetworkScanner {
    /// The name its counters go under in the ports table (`tcp://0.0.0.0:58627`).
    pub fn port_name(&self) -> String {
        let scheme = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        format!("{scheme}://{}", self.listen)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetworkScanner {
    listen: Option<Spanned<String>>,
    transport: Option<Transport>,
    station: Spanned<String>,
    name: Option<String>,
    suffix: Option<Suffix>,
    devices: Option<BTreeMap<String, Spanned<String>>>,
    max_connections: Option<Spanned<i64>>,
    evict_idle_secs: Option<Spanned<i64>>,
    max_line: Option<Spanned<i64>>,
    idle_secs: Option<Spanned<i64>>,
}

impl Validator<'_> {
    /// A station's step: what a scan there means.
    pub(super) fn station_step(
        &self,
        v: &Spanned<String>,
        key: String,
    ) -> Result<Step, ConfigError> {
        v.get_ref().parse::<Step>().map_err(|e| {
            self.err(
                v,
                key,
                format!("{:?}: {e}", v.get_ref()),
                "the step a scan at this station means",
            )
        })
    }

    pub(super) fn network_scanners(
        &self,
        raw: Vec<RawNetworkScanner>,
    ) -> Result<Vec<NetworkScanner>, ConfigError> {
        let mut out: Vec<NetworkScanner> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("network_scanner[{i}].{k}");
            // Unset: every interface on DataWedge's default IP output port.
            let listen: SocketAddr = match &r.listen {
                None => SocketAddr::from(([0, 0, 0, 0], DATAWEDGE_PORT)),
                Some(l) => l.get_ref().parse().map_err(|e| {
                    self.err(
                        l,
                        key("listen"),
                        format!("{:?}: {e}", l.get_ref()),
                        "an address and port such as \"0.0.0.0:58627\" (DataWedge's default IP output port)",
                    )
                })?,
            };
            let transport = r.transport.unwrap_or(Transport::Tcp);
            if out
                .iter()
                .any(|o| o.listen == listen && o.transport == transport)
            {
                return Err(self.err(
                    r.listen.as_ref().unwrap_or(&r.station),
                    key("listen"),
                    format!("{listen} is used twice"),
                    "give each network scanner table its own port (TCP and UDP may share one)",
                ));
            }
            let step = self.station_step(&r.station, key("station"))?;
            let mut devices = HashMap::new();
            for (addr, name) in r.devices.unwrap_or_default() {
                let ip: IpAddr = addr.parse().map_err(|e| {
                    self.err(
                        &name,
                        key(&format!("devices.{addr:?}")),
                        format!("{addr:?} is not an IP address: {e}"),
                        "map a handheld's address to its name: devices = { \"10.0.0.7\" = \"tc52-dock-3\" }",
                    )
                })?;
                let dev = self.name(&name, &key(&format!("devices.{addr:?}")))?;
                devices.insert(ip.to_canonical(), dev);
            }
            let int = |v: &Option<Spanned<i64>>, k: &str, lo, hi, default| match v {
                Some(v) => self.range(v, &key(k), lo, hi),
                None => Ok(default),
            };
            out.push(NetworkScanner {
                listen,
                transport,
                step,
                station_name: r.name.unwrap_or_else(|| step.as_str().to_string()),
                suffix: r.suffix.unwrap_or(Suffix::Lf),
                devices,
                max_connections: int(
                    &r.max_connections,
                    "max_connections",
                    1,
                    65_536,
                    MAX_CONNECTIONS as i64,
                )? as usize,
                // Only when every slot is taken and a handheld waits: a long silence first,
                // because a handheld that writes into the closed connection loses that scan.
                evict_idle: match int(
                    &r.evict_idle_secs,
                    "evict_idle_secs",
                    0,
                    86_400,
                    EVICT_IDLE_SECS as i64,
                )? {
                    0 => None,
                    s => Some(Duration::from_secs(s as u64)),
                },
                max_line: int(&r.max_line, "max_line", 16, 65_536, 4096)? as usize,
                // 0 (the default): never. DataWedge keeps a connection for its next scan,
                // and one sent into a connection the gateway closed is lost unseen.
                idle: match int(&r.idle_secs, "idle_secs", 0, 86_400, 0)? {
                    0 => None,
                    s => Some(Duration::from_secs(s as u64)),
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[gateway]\nsite = \"s\"\nid = \"gw-01\"\ndata_dir = \"/tmp/x\"\n\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_devices_and_errors_with_line_and_key() {
        let c = parse(
            "[[network_scanner]]\nlisten = \"0.0.0.0:58627\"\nstation = \"pack\"\ndevices = { \"10.0.0.7\" = \"tc52-dock-3\" }\n",
        )
        .unwrap();
        let n = &c.network_scanners[0];
        assert_eq!(n.transport, super::Transport::Tcp);
        assert_eq!(n.suffix, super::Suffix::Lf);
        assert_eq!((n.max_connections, n.max_line), (1024, 4096));
        assert_eq!(n.evict_idle, Some(std::time::Duration::from_secs(300)));
        assert_eq!(n.port_name(), "tcp://0.0.0.0:58627");
        assert_eq!(
            n.devices[&"10.0.0.7".parse::<std::net::IpAddr>().unwrap()],
            "tc52-dock-3"
        );
        let e = parse("[[network_scanner]]\nlisten = \"0.0.0.0:58627\"\nstation = \"packing\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("t.toml:8: `network_scanner[0].station`: \"packing\": unknown step"),
            "{e}"
        );
        let e = parse("[[network_scanner]]\nlisten = \"0.0.0.0:58627\"\nstation = \"pack\"\ndevices = { \"10.0.0\" = \"x\" }\n")
            .unwrap_err();
        assert!(e.contains("`network_scanner[0].devices.\"10.0.0\"`"), "{e}");
        let e = parse("[[network_scanner]]\nlisten = \"58627\"\nstation = \"pack\"\n").unwrap_err();
        assert!(
            e.contains("`network_scanner[0].listen`") && e.contains("hint:"),
            "{e}"
        );
        let e = parse(
            "[[network_scanner]]\nlisten = \"0.0.0.0:1\"\nstation = \"pack\"\nmax_line = 3\n",
        )
        .unwrap_err();
        assert!(e.contains("`network_scanner[0].max_line`"), "{e}");
        for (key, bad) in [
            ("max_connections", "0"),
            ("idle_secs", "-1"),
            ("idle_secs", "86401"),
            ("evict_idle_secs", "-5"),
        ] {
            let e = parse(&format!(
                "[[network_scanner]]\nlisten = \"0.0.0.0:1\"\nstation = \"pack\"\n{key} = {bad}\n"
            ))
            .unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "t.toml:9: `network_scanner[0].{key}`: {bad} is out of range"
                )),
                "{e}"
            );
        }
        assert_eq!(n.idle, None, "never closed for silence unless asked");
        // No listen: DataWedge's default port on every interface, over TCP and UDP alike.
        let c = parse(
            "[[network_scanner]]\nstation = \"pack\"\n\n[[network_scanner]]\nstation = \"pack\"\ntransport = \"udp\"\n",
        )
        .unwrap();
        let names: Vec<String> = c.network_scanners.iter().map(|n| n.port_name()).collect();
        assert_eq!(names, ["tcp://0.0.0.0:58627", "udp://0.0.0.0:58627"]);
        let e = parse(
            "[[network_scanner]]\nstation = \"pack\"\n\n[[network_scanner]]\nstation = \"pick\"\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("t.toml:10: `network_scanner[1].listen`: 0.0.0.0:58627 is used twice"),
            "{e}"
        );
        let e = parse(
            "[[network_scanner]]\nlisten = \"0.0.0.0:1\"\nstation = \"pack\"\nsuffix = \"nl\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("t.toml:9") && e.contains("`crlf`"), "{e}");
    }

    #[test]
    fn suffixes_strip_what_they_end_with() {
        use super::Suffix::*;
        assert_eq!(Lf.strip(b"abc\r\n"), b"abc");
        assert_eq!(Lf.strip(b"abc"), b"abc");
        assert_eq!(Crlf.strip(b"abc\r\n"), b"abc");
        assert_eq!(Cr.strip(b"abc\r"), b"abc");
        // CRLF into a `cr` listener: the LF leads the next line, and is forgiven there.
        assert_eq!(Cr.strip(b"\nabc\r"), b"abc");
        // ... and one UDP datagram ending in CRLF.
        assert_eq!(Cr.strip(b"abc\r\n"), b"abc");
        assert_eq!(Tab.strip(b"abc\t"), b"abc");
        assert_eq!(Tab.strip(b"abc\n"), b"abc\n");
    }
}
