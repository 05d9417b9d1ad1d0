//! The demo's broker: a private Mosquitto when one is installed, else (or with
//! `--embedded-broker`) one inside this process, else none (offline).

use crate::sim::broker::Mosquitto;
use std::path::Path;

pub enum Broker {
    Mosquitto(Mosquitto),
    #[cfg(feature = "embedded-broker")]
    Embedded {
        broker: crate::sim::embedded::EmbeddedBroker,
        /// Between the gateway and the broker: an in-process broker cannot be stopped, so
        /// the outage cuts the gateway's link instead.
        gate: crate::sim::embedded::Gate,
    },
}

/// Which broker, as the user asked: `Ok(None)` runs offline, with the reason to print.
pub fn choose(
    dir: &Path,
    offline: bool,
    embedded: bool,
) -> Result<(Option<Broker>, String), String> {
    if offline {
        return Ok((None, "none: --offline given".into()));
    }
    if embedded {
        return start_embedded().map(|b| {
            let why = b.describe();
            (Some(b), why)
        });
    }
    match Mosquitto::start(&dir.join("broker")) {
        Ok(m) => {
            let b = Broker::Mosquitto(m);
            let why = b.describe();
            Ok((Some(b), why))
        }
        Err(e) if cfg!(feature = "embedded-broker") => {
            let b = start_embedded()?;
            let why = format!("{}; no Mosquitto: {e}", b.describe());
            Ok((Some(b), why))
        }
        Err(e) => Ok((None, format!("none: {e}"))),
    }
}

#[cfg(feature = "embedded-broker")]
fn start_embedded() -> Result<Broker, String> {
    let broker = crate::sim::embedded::EmbeddedBroker::start()?;
    let gate = crate::sim::embedded::Gate::start(broker.port_v5)?;
    Ok(Broker::Embedded { broker, gate })
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded() -> Result<Broker, String> {
    Err(
        "this darkleg was built without its embedded broker (hint: build with \
         `--features embedded-broker`, or install Mosquitto and leave out --embedded-broker)"
            .into(),
    )
}

impl Broker {
    fn describe(&self) -> String {
        match self {
            Broker::Mosquitto(m) => format!(
                "Mosquitto on 127.0.0.1:{} (started for this demo, stopped at the end)",
                m.port
            ),
            #[cfg(feature = "embedded-broker")]
            Broker::Embedded { broker, .. } => format!(
                "embedded (rumqttd, inside this process) on 127.0.0.1:{} — MQTT 5 — and :{} — 3.1.1",
                broker.port_v5, broker.port_v4
            ),
        }
    }

    /// The `[[upstream]]` keys that point the agent at this broker.
    pub fn upstream_keys(&self) -> String {
        match self {
            Broker::Mosquitto(m) => format!("url = \"{}\"\n", m.url()),
            // rumqttd speaks both; say which, so the agent does not spend a connect finding out.
            #[cfg(feature = "embedded-broker")]
            Broker::Embedded { gate, .. } => {
                format!("url = \"{}\"\nmqtt_version = \"5\"\n", gate.url())
            }
        }
    }

    /// Where the merchant's subscriber connects (MQTT 3.1.1).
    pub fn merchant_port(&self) -> u16 {
        match self {
            Broker::Mosquitto(m) => m.port,
            #[cfg(feature = "embedded-broker")]
            Broker::Embedded { broker, .. } => broker.port_v4,
        }
    }

    /// The outage: what went away, for the line the demo prints.
    pub fn go_down(&mut self) -> &'static str {
        match self {
            Broker::Mosquitto(m) => {
                m.stop();
                "broker stopped"
            }
            #[cfg(feature = "embedded-broker")]
            Broker::Embedded { gate, .. } => {
                gate.cut();
                "link to the broker cut"
            }
        }
    }

    pub fn come_back(&mut self) -> Result<&'static str, String> {
        match self {
            Broker::Mosquitto(m) => m.restart().map(|()| "broker back"),
            #[cfg(feature = "embedded-broker")]
            Broker::Embedded { gate, .. } => {
                gate.restore();
                Ok("link back")
            }
        }
    }
}
