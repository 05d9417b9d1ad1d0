//! `[[upstream]]`: a broker the outbox is delivered to, with its own backlog.

use super::broker::{raw_link, BrokerLink};
use super::{ConfigError, Gateway, Merchant, Validator};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub link: BrokerLink,
    pub topic_prefix: String,
    /// Publishes handed to the MQTT client and not yet PUBACKed.
    pub window: usize,
    /// A merchant's own upstream: only that merchant's milestones and alerts, no raw scans
    /// (unless a `[[route]]` sends them).
    pub merchant: Option<String>,
    /// Scans per MQTT message: 1 sends `darkleg.scan.v1`, more sends `darkleg.batch.v1`.
    pub batch: usize,
    /// Largest batch payload in bytes (measured, serialized): the broker's packet limit
    /// minus room for the topic.
    pub max_message_bytes: usize,
    pub mqtt_version: MqttVersion,
}

/// Which MQTT the sink speaks. MQTT 5 is what makes a refusal visible: its PUBACK carries a
/// reason code ("not authorized", "quota exceeded"), where a 3.1.1 broker acks and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 5, falling back to 3.1.1 for a broker that does not take a v5 CONNECT
    /// (NATS, older RabbitMQ); tried again at the next reconnect.
    Auto,
    V5,
    V311,
}

impl Upstream {
    /// Where scan events go: `{prefix}/{site}/{gateway}/events`.
    pub fn events_topic(&self, gw: &Gateway) -> String {
        format!("{}/{}/{}/events", self.topic_prefix, gw.site, gw.id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    topic_prefix: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    keep_alive_secs: Option<Spanned<i64>>,
    window: Option<Spanned<i64>>,
    merchant: Option<Spanned<String>>,
    batch: Option<Spanned<i64>>,
    max_message_kb: Option<Spanned<i64>>,
    mqtt_version: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn upstreams(
        &self,
        raw: Vec<RawUpstream>,
        gateway: &Gateway,
        merchants: &[Merchant],
    ) -> Result<Vec<Upstream>, ConfigError> {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let table = format!("upstream[{i}]");
            let key = |k: &str| format!("{table}.{k}");
            let name = self.unique_name(
                &u.name,
                &key("name"),
                upstreams.iter().map(|x| x.name.as_str()),
                "each upstream needs its own name: delivery is tracked per name",
            )?;
            let link = self.link(
                raw_link!(u),
                &table,
                format!("darkleg-{}-{}-{}", gateway.site, gateway.id, name),
            )?;
            let topic_prefix = match &u.topic_prefix {
                Some(p) => self.topic_prefix(p, &key("topic_prefix"))?,
                None => "darkleg/v1".to_string(),
            };
            let window = match &u.window {
                Some(w) => self.range(w, &key("window"), 1, 65_000)? as usize,
                None => 256,
            };
            upstreams.push(Upstream {
                name,
                link,
                topic_prefix,
                window,
                batch: match &u.batch {
                    Some(b) => self.range(b, &key("batch"), 1, 1000)? as usize,
                    None => 1,
                },
                max_message_bytes: match &u.max_message_kb {
                    Some(k) => {
                        self.range(k, &key("max_message_kb"), 1, 256 * 1024)? as usize * 1024
                    }
                    // AWS IoT's 128 KiB, the smallest limit among the brokers darkleg targets.
                    None => 120 * 1024,
                },
                mqtt_version: match &u.mqtt_version {
                    None => MqttVersion::Auto,
                    Some(v) => match v.get_ref().as_str() {
                        "auto" => MqttVersion::Auto,
                        "5" | "5.0" => MqttVersion::V5,
                        "3.1.1" | "3" | "4" => MqttVersion::V311,
                        other => {
                            return Err(self.err(
                                v,
                                key("mqtt_version"),
                                format!("{other:?} is not an MQTT version"),
                                "\"auto\" (MQTT 5, falling back to 3.1.1), \"5\" or \"3.1.1\"",
                            ))
                        }
                    },
                },
                merchant: match &u.merchant {
                    Some(m) => Some(self.merchant_id(m, &key("merchant"), merchants)?),
                    None => None,
                },
            });
        }
        Ok(upstreams)
    }

    pub(super) fn topic_prefix(
        &self,
        p: &Spanned<String>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let s = p.get_ref();
        if s.is_empty()
            || s.len() > 128
            || s.contains(['#', '+'])
            || s.starts_with('/')
            || s.ends_with('/')
        {
            return Err(self.err(
                p,
                key.to_string(),
                format!("{s:?} is not a usable topic prefix"),
                "no wildcards (#, +), no leading or trailing '/', at most 128 characters",
            ));
        }
        Ok(s.clone())
    }

    pub(super) fn merchant_id(
        &self,
        m: &Spanned<String>,
        key: &str,
        merchants: &[Merchant],
    ) -> Result<String, ConfigError> {
        if merchants.iter().any(|x| &x.id == m.get_ref()) {
            Ok(m.get_ref().clone())
        } else {
            Err(self.err(
                m,
                key.to_string(),
                format!("{:?} is not a [[merchant]] id", m.get_ref()),
                "name one of the [[merchant]] tables, or leave it out for everything",
            ))
        }
    }
}
