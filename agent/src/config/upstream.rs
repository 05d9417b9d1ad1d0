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
    url: Spanned<String>,
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
