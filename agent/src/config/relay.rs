//! `[[relay]]` (other gateways' events in, from a site broker) and `[[route]]` (which
//! upstream gets what).

use super::broker::{raw_link, BrokerLink};
use super::{ConfigError, Gateway, Merchant, Upstream, Validator};
use darkleg_protocol::Step;
use serde::Deserialize;
use toml::Spanned;

/// A broker this gateway subscribes to for other gateways' events.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Names the source in `status` and `/metrics`.
    pub name: String,
    pub link: BrokerLink,
    /// Topic filters, subscribed with QoS 1.
    pub topics: Vec<String>,
    /// A bigger message is rejected and counted, never parsed.
    pub max_payload_bytes: usize,
    /// An event that already passed this many gateways is rejected (a loop not caught by
    /// the gateway-id check, e.g. a misconfigured id).
    pub max_hops: usize,
}

/// What a route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carries {
    Events,
    Milestones,
    Alerts,
    /// `darkleg.order.v1`: one message per order, its parcels together.
    Orders,
}

impl Carries {
    /// What an upstream or route carries unless told otherwise.
    pub const ALL: [Carries; 4] = [
        Carries::Events,
        Carries::Milestones,
        Carries::Alerts,
        Carries::Orders,
    ];
}

#[derive(Debug, Clone)]
pub struct Route {
    pub to: Vec<String>,
    pub merchant: Option<String>,
    /// Raw scans of these steps only (`None`: any).
    pub steps: Option<Vec<Step>>,
    /// Raw scans captured at these sites only (`None`: any).
    pub sites: Option<Vec<String>>,
    pub carries: Vec<Carries>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    topics: Option<Vec<Spanned<String>>>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    keep_alive_secs: Option<Spanned<i64>>,
    max_payload_kb: Option<Spanned<i64>>,
    max_hops: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    to: Spanned<Vec<String>>,
    merchant: Option<Spanned<String>>,
    steps: Option<Vec<Spanned<String>>>,
    sites: Option<Vec<String>>,
    carries: Option<Vec<Carries>>,
}

impl Validator<'_> {
    pub(super) fn relays(
        &self,
        raw: Vec<RawRelay>,
        gateway: &Gateway,
    ) -> Result<Vec<Relay>, ConfigError> {
        let mut relays: Vec<Relay> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let table = format!("relay[{i}]");
            let key = |k: &str| format!("{table}.{k}");
            let name = self.unique_name(
                &r.name,
                &key("name"),
                relays.iter().map(|x| x.name.as_str()),
                "each relay needs its own name",
            )?;
            let link = self.link(
                raw_link!(r),
                &table,
                // Stable: the broker keeps this session's queue while the gateway is away.
                format!("darkleg-{}-{}-relay-{}", gateway.site, gateway.id, name),
            )?;
            let topics = match r.topics {
                None => vec!["darkleg/v1/+/+/events".to_string()],
                Some(ts) => {
                    let mut out = Vec::new();
                    for t in ts {
                        let s = t.get_ref();
                        if s.is_empty() || s.len() > 256 || !valid_filter(s) {
                            return Err(self.err(&t, key("topics"), format!("{s:?} is not an MQTT topic filter"),
                                "e.g. \"darkleg/v1/+/+/events\": '+' stands for one level, '#' only at the end"));
                        }
                        out.push(s.clone());
                    }
                    if out.is_empty() {
                        return Err(self.err(
                            &r.name,
                            key("topics"),
                            "is empty".into(),
                            "leave it out for darkleg/v1/+/+/events",
                        ));
                    }
                    out
                }
            };
            relays.push(Relay {
                name,
                link,
                topics,
                max_payload_bytes: match &r.max_payload_kb {
                    Some(k) => self.range(k, &key("max_payload_kb"), 1, 256)? as usize * 1024,
                    None => 256 * 1024,
                },
                max_hops: match &r.max_hops {
                    Some(h) => self.range(h, &key("max_hops"), 1, 16)? as usize,
                    None => 8,
                },
            });
        }
        Ok(relays)
    }

    pub(super) fn routes(
        &self,
        raw: Vec<RawRoute>,
        upstreams: &[Upstream],
        merchants: &[Merchant],
    ) -> Result<Vec<Route>, ConfigError> {
        let mut routes = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            if r.to.get_ref().is_empty() {
                return Err(self.err(
                    &r.to,
                    key("to"),
                    "names no upstream".into(),
                    "to = [\"merchant-upstream\"]",
                ));
            }
            for u in r.to.get_ref() {
                if !upstreams.iter().any(|x| &x.name == u) {
                    return Err(self.err(
                        &r.to,
                        key("to"),
                        format!("{u:?} is not an [[upstream]] name"),
                        "name upstreams defined in this file",
                    ));
                }
            }
            let steps = match r.steps {
                None => None,
                Some(ss) => Some(
                    ss.iter()
                        .map(|s| {
                            s.get_ref().parse::<Step>().map_err(|e| {
                                self.err(
                                    s,
                                    key("steps"),
                                    format!("{:?}: {e}", s.get_ref()),
                                    "pick, pack, handover, return_receipt, exception",
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            routes.push(Route {
                to: r.to.into_inner(),
                merchant: match &r.merchant {
                    Some(m) => Some(self.merchant_id(m, &key("merchant"), merchants)?),
                    None => None,
                },
                steps,
                sites: r.sites,
                carries: r.carries.unwrap_or_else(|| Carries::ALL.to_vec()),
            });
        }
        Ok(routes)
    }
}

/// MQTT 3.1.1 §4.7: `+` fills a whole level, `#` only as the whole last level.
fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "+" => true,
        "#" => i == levels.len() - 1,
        l => !l.contains(['+', '#']) && !l.contains('\0'),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn topic_filters_follow_mqtt() {
        for ok in ["darkleg/v1/+/+/events", "a/#", "#", "+"] {
            assert!(super::valid_filter(ok), "{ok}");
        }
        for bad in ["a/#/b", "a+/b", "a/b#"] {
            assert!(!super::valid_filter(bad), "{bad}");
        }
    }
}
