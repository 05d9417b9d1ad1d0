//! Which upstream gets which outbox row. Decided once, when the row is written (the outbox
//! holds one entry per upstream owed), so each upstream's backlog is its own: a merchant's
//! broker that is down only grows its own backlog.
//!
//! Defaults keep small sites simple: an upstream no `[[route]]` names gets every scan,
//! milestone, alert and order update, or — with `merchant = "…"` — that merchant's
//! milestones, alerts and order updates (a merchant wants one view of a split order).
//! An upstream a route names gets exactly what its routes match.

use crate::config::{Carries, Config, Merchant, ParcelRules, Route};
use crate::domain::{facts, parcel};
use darkleg_protocol::Step;

/// What a route can see of a scan.
pub struct ScanFacts<'a> {
    pub step: Step,
    /// Where it was captured (its origin, for relayed scans).
    pub site: &'a str,
    pub code: &'a str,
    pub symbology: Option<&'a str>,
}

#[derive(Debug, Default)]
pub struct Router {
    /// This gateway's site: where scans captured here come from.
    pub site: String,
    rules: Vec<Rule>,
    upstreams: Vec<String>,
    parcels: ParcelRules,
    merchants: Vec<Merchant>,
    /// Some rule for scans names a merchant: resolving one costs a barcode parse per scan.
    scans_need_merchant: bool,
}

#[derive(Debug)]
struct Rule {
    upstream: String,
    merchant: Option<String>,
    steps: Option<Vec<Step>>,
    sites: Option<Vec<String>>,
    carries: Vec<Carries>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut rules = Vec::new();
        for r in &config.routes {
            for to in &r.to {
                rules.push(Rule::from_route(to, r));
            }
        }
        for u in &config.upstreams {
            let routed = config.routes.iter().any(|r| r.to.contains(&u.name));
            if routed && u.merchant.is_none() {
                continue;
            }
            rules.push(Rule {
                upstream: u.name.clone(),
                merchant: u.merchant.clone(),
                steps: None,
                sites: None,
                carries: match u.merchant {
                    // A merchant's own upstream: its parcels' story, never the raw scans.
                    Some(_) => vec![Carries::Milestones, Carries::Alerts, Carries::Orders],
                    None => Carries::ALL.to_vec(),
                },
            });
        }
        // A webhook is an outbox consumer like an upstream, with its own `carries` (never
        // raw scans) and merchant; routes do not name webhooks.
        for w in &config.webhooks {
            rules.push(Rule {
                upstream: w.name.clone(),
                merchant: w.merchant.clone(),
                steps: None,
                sites: None,
                carries: w.carries.clone(),
            });
        }
        Router {
            site: config.gateway.site.clone(),
            scans_need_merchant: rules
                .iter()
                .any(|r| r.merchant.is_some() && r.carries.contains(&Carries::Events)),
            upstreams: (config.upstreams.iter().map(|u| u.name.clone()))
                .chain(config.webhooks.iter().map(|w| w.name.clone()))
                .collect(),
            rules,
            parcels: config.parcels.clone(),
            merchants: config.merchants.clone(),
        }
    }

    /// Every configured outbox consumer: upstreams, then webhooks.
    pub fn upstreams(&self) -> &[String] {
        &self.upstreams
    }

    /// Whether `upstream` takes every scan, unfiltered.
    pub fn takes_every_scan(&self, upstream: &str) -> bool {
        self.rules.iter().any(|r| {
            r.upstream == upstream
                && r.carries.contains(&Carries::Events)
                && r.merchant.is_none()
                && r.steps.is_none()
                && r.sites.is_none()
        })
    }

    /// Upstreams owed this scan, each once, in config order.
    pub fn for_scan<'a>(&'a self, scan: &ScanFacts<'a>) -> impl Iterator<Item = &'a str> + 'a {
        let merchant = if self.scans_need_merchant {
            // This runs in the store writer: a parser bug on some odd code must cost that
            // scan its merchant route, not the writer.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.merchant_of_scan(scan)))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        code = scan.code,
                        "reading a scan's merchant panicked; routed as no merchant's"
                    );
                    None
                })
        } else {
            None
        };
        let (step, site) = (scan.step, scan.site);
        self.owed(move |r| {
            r.carries.contains(&Carries::Events)
                && r.steps.as_ref().is_none_or(|s| s.contains(&step))
                && r.sites.as_ref().is_none_or(|s| s.iter().any(|x| x == site))
                && r.merchant.as_deref().is_none_or(|m| merchant == Some(m))
        })
    }

    /// Upstreams owed a derived message (`kind`: "milestone" | "alert" | "order"), each once.
    pub fn for_message<'r>(
        &'r self,
        kind: &str,
        merchant: Option<&'r str>,
    ) -> impl Iterator<Item = &'r str> + 'r {
        let carries = match kind {
            "milestone" => Some(Carries::Milestones),
            "alert" => Some(Carries::Alerts),
            "order" => Some(Carries::Orders),
            _ => None,
        };
        self.owed(move |r| {
            carries.is_some_and(|c| r.carries.contains(&c))
                && r.merchant.as_deref().is_none_or(|m| merchant == Some(m))
        })
    }

    /// The upstream of every rule that `fits`, the first time it appears: an upstream named
    /// by several fitting rules (a route and its own `merchant`) is owed the row once.
    fn owed<'r>(&'r self, fits: impl Fn(&Rule) -> bool + 'r) -> impl Iterator<Item = &'r str> + 'r {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(i, r)| {
                fits(r)
                    && !self.rules[..*i]
                        .iter()
                        .any(|e| e.upstream == r.upstream && fits(e))
            })
            .map(|(_, r)| r.upstream.as_str())
    }

    /// A scan's merchant as far as the code itself tells (an SSCC's company prefix, an order
    /// number's prefix, a parcel id's client code). A carrier label says nothing about the
    /// merchant: such scans reach merchant routes only through milestones.
    fn merchant_of_scan(&self, scan: &ScanFacts<'_>) -> Option<&str> {
        match facts::meaning(scan.code, scan.symbology, &self.parcels) {
            facts::Meaning::Parcel { id, order, .. } => {
                parcel::merchant_of(&id, order.as_deref(), &self.merchants)
            }
            facts::Meaning::Order(o) => parcel::merchant_of("", Some(&o), &self.merchants),
            // Not configured as an order or parcel shape: a merchant's own prefix still says
            // whose it is.
            facts::Meaning::Other => {
                parcel::merchant_of(scan.code, Some(scan.code), &self.merchants)
            }
            facts::Meaning::Item(_) | facts::Meaning::Tracking { .. } => None,
        }
    }
}

impl Rule {
    fn from_route(to: &str, r: &Route) -> Rule {
        Rule {
            upstream: to.to_string(),
            merchant: r.merchant.clone(),
            steps: r.steps.clone(),
            sites: r.sites.clone(),
            carries: r.carries.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(extra: &str) -> Router {
        let text = format!(
            r#"
[gateway]
site = "3pl"
id = "relay"
data_dir = "/tmp/x"

[[merchant]]
id = "acme"
order_prefixes = ["ACME-"]
gs1_prefixes = ["4012345"]

[[merchant]]
id = "globex"
order_prefixes = ["GLX-"]

[[upstream]]
name = "central"
url = "mqtt://c"

[[upstream]]
name = "acme"
url = "mqtt://a"
merchant = "acme"

[[upstream]]
name = "globex"
url = "mqtt://g"
{extra}"#
        );
        Router::new(&Config::parse(&text, "t.toml").unwrap())
    }

    fn scan<'a>(step: Step, site: &'a str, code: &'a str) -> ScanFacts<'a> {
        ScanFacts {
            step,
            site,
            code,
            symbology: None,
        }
    }

    fn names<'r>(r: &'r Router, s: &ScanFacts<'r>) -> Vec<&'r str> {
        let mut out: Vec<&str> = r.for_scan(s).collect();
        out.sort();
        out
    }

    #[test]
    fn unrouted_upstreams_keep_their_defaults() {
        let r = router("");
        assert_eq!(
            names(&r, &scan(Step::Pick, "a", "ACME-1")),
            ["central", "globex"]
        );
        let msg = |kind, merchant| r.for_message(kind, merchant).collect::<Vec<_>>();
        let out = msg("milestone", Some("acme"));
        assert_eq!(out, ["central", "acme", "globex"]);
        let out = msg("alert", Some("globex"));
        assert_eq!(out, ["central", "globex"]);
        let out = msg("alert", None);
        assert_eq!(out, ["central", "globex"]);
    }

    #[test]
    fn routes_pick_by_merchant_step_and_site() {
        let r = router(
            r#"
[[route]]
to = ["globex"]
merchant = "globex"
steps = ["pack", "handover"]
sites = ["dock-a"]
carries = ["events", "milestones"]

[[route]]
to = ["acme"]
merchant = "acme"
carries = ["events"]
"#,
        );
        // globex now gets only what its route matches.
        assert_eq!(
            names(&r, &scan(Step::Pack, "dock-a", "GLX-7")),
            ["central", "globex"]
        );
        assert_eq!(names(&r, &scan(Step::Pick, "dock-a", "GLX-7")), ["central"]);
        assert_eq!(names(&r, &scan(Step::Pack, "dock-b", "GLX-7")), ["central"]);
        assert_eq!(
            names(&r, &scan(Step::Pack, "dock-a", "ACME-7")),
            ["acme", "central"]
        );
        // An SSCC under acme's company prefix is acme's.
        let label = format!("00{}", crate::sim::workload::sscc_key("4012345", 17));
        let mut s = scan(Step::Handover, "x", &label);
        s.symbology = Some("]C1");
        assert_eq!(names(&r, &s), ["acme", "central"]);
        // A carrier label names no merchant.
        assert_eq!(
            names(&r, &scan(Step::Handover, "dock-a", "1Z999AA10123456784")),
            ["central"]
        );
        let msg = |kind, merchant| r.for_message(kind, merchant).collect::<Vec<_>>();
        let out = msg("alert", Some("globex"));
        assert_eq!(out, ["central"], "globex's route does not carry alerts");
        let mut out = msg("milestone", Some("acme"));
        out.sort();
        assert_eq!(
            out,
            ["acme", "central"],
            "merchant = keeps milestones beside the route"
        );
    }

    #[test]
    fn webhooks_get_their_merchants_messages_and_never_scans() {
        let r = router(
            r#"
[[webhook]]
name = "acme-shop"
url = "https://shop.example/h"
merchant = "acme"
secret_env = "S"

[[webhook]]
name = "ops"
url = "https://ops.example/h"
secret_env = "S"
carries = ["alerts"]
"#,
        );
        assert!(r.upstreams().iter().any(|u| u == "acme-shop"));
        assert!(!r.takes_every_scan("acme-shop"));
        let scans = names(&r, &scan(Step::Pack, "a", "ACME-1"));
        assert!(!scans.iter().any(|u| *u == "acme-shop" || *u == "ops"));
        let msg = |kind, merchant| r.for_message(kind, merchant).collect::<Vec<_>>();
        assert_eq!(
            msg("milestone", Some("acme")),
            ["central", "acme", "globex", "acme-shop"]
        );
        assert_eq!(msg("milestone", Some("globex")), ["central", "globex"]);
        assert_eq!(msg("alert", Some("globex")), ["central", "globex", "ops"]);
    }
}
