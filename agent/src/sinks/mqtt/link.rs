//! One connection to an upstream broker, in MQTT 5 or 3.1.1, seen by the service as a few
//! events: connected, a publish written under a packet id, a publish acknowledged — or
//! refused, which only MQTT 5 can say (its PUBACK carries a reason code; a 3.1.1 broker that
//! will not take a message acks it and drops it, or closes the connection).
//!
//! `poll()` runs in its own task and is never cancelled mid-packet: a `select!` beside a
//! timer would drop a handshake in progress on a slow link.

use crate::config::{BrokerLink, Upstream};
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
use rumqttc::{Event, Outgoing, Packet, QoS};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Connected {
        session_present: bool,
    },
    /// The client wrote a publish under this packet id (in request order).
    Sent(u16),
    Acked(u16),
    /// The broker answered the publish with a failure reason code (MQTT 5).
    Refused {
        pkid: u16,
        reason: String,
    },
}

enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub struct Link {
    client: Client,
    events: mpsc::Receiver<Result<LinkEvent, String>>,
    _driver: AbortOnDrop,
}

impl Link {
    /// Starts connecting to `broker` (one of `u`'s); the first event is `Connected` or an
    /// error.
    pub fn open(u: &Upstream, broker: &BrokerLink, v5: bool) -> Result<Link, String> {
        // The channel holds every publish the window allows, plus a disconnect.
        let cap = u.window + 16;
        let (tx, events) = mpsc::channel::<Result<LinkEvent, String>>(1024);
        let what = format!("upstream {}", u.name);
        let (client, driver) = if v5 {
            let mut o = crate::mqtt::options_v5(broker, &what)?;
            o.set_outgoing_inflight_upper_limit(u.window.min(u16::MAX as usize) as u16);
            o.set_connection_timeout(crate::mqtt::HANDSHAKE_SECS);
            let (client, el) = rumqttc::v5::AsyncClient::new(o, cap);
            (Client::V5(client), drive(el, tx, map_v5))
        } else {
            let o = super::options::mqtt_options(u, broker)?;
            let (client, mut el) = rumqttc::AsyncClient::new(o, cap);
            el.set_network_options(crate::mqtt::network_options());
            (Client::V311(client), drive(el, tx, map_v311))
        };
        Ok(Link {
            client,
            events,
            _driver: AbortOnDrop(driver),
        })
    }

    pub fn is_v5(&self) -> bool {
        matches!(self.client, Client::V5(_))
    }

    /// Hands a QoS 1 publish to the client without waiting: the caller keeps within the
    /// window, so a full channel is a bookkeeping error, reported rather than awaited.
    pub fn publish(&self, topic: String, payload: String) -> Result<(), String> {
        let r = match &self.client {
            Client::V311(c) => c
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .map_err(|e| e.to_string()),
        };
        r.map_err(|e| format!("handing a publish to the client: {e}"))
    }

    pub fn disconnect(&self) {
        let _ = match &self.client {
            Client::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }

    /// The next event; `None` once the connection task ended.
    pub async fn recv(&mut self) -> Option<Result<LinkEvent, String>> {
        self.events.recv().await
    }

    /// Nothing more is waiting right now (a burst of acks has been read).
    pub fn is_idle(&self) -> bool {
        self.events.is_empty()
    }
}

/// Either version's event loop, polled the same way.
trait Poll: Send + 'static {
    type Event;
    fn next(&mut self) -> impl std::future::Future<Output = Result<Self::Event, String>> + Send;
}

impl Poll for rumqttc::EventLoop {
    type Event = Event;
    async fn next(&mut self) -> Result<Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

impl Poll for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    async fn next(&mut self) -> Result<rumqttc::v5::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

/// Polls `el` in a task of its own until the connection fails or nobody listens.
fn drive<P: Poll>(
    mut el: P,
    tx: mpsc::Sender<Result<LinkEvent, String>>,
    map: fn(P::Event) -> Option<LinkEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ev = el.next().await.map(map);
            if !forward(&tx, ev).await {
                break;
            }
        }
    })
}

/// Sends an event on; false once the loop should stop (an error ends the connection).
async fn forward(
    tx: &mpsc::Sender<Result<LinkEvent, String>>,
    ev: Result<Option<LinkEvent>, String>,
) -> bool {
    match ev {
        Ok(None) => true,
        Ok(Some(ev)) => tx.send(Ok(ev)).await.is_ok(),
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            false
        }
    }
}

fn map_v311(ev: Event) -> Option<LinkEvent> {
    match ev {
        Event::Incoming(Packet::ConnAck(c)) => Some(LinkEvent::Connected {
            session_present: c.session_present,
        }),
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Sent(pkid)),
        Event::Incoming(Packet::PubAck(a)) => Some(LinkEvent::Acked(a.pkid)),
        _ => None,
    }
}

fn map_v5(ev: rumqttc::v5::Event) -> Option<LinkEvent> {
    use rumqttc::v5::Event as E;
    match ev {
        E::Incoming(Packet5::ConnAck(c)) => Some(LinkEvent::Connected {
            session_present: c.session_present,
        }),
        E::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Sent(pkid)),
        E::Incoming(Packet5::PubAck(a)) => Some(match refusal(a.reason) {
            None => LinkEvent::Acked(a.pkid),
            Some(name) => LinkEvent::Refused {
                pkid: a.pkid,
                reason: match a.properties.and_then(|p| p.reason_string) {
                    Some(detail) => format!("{name}: {detail}"),
                    None => name.to_string(),
                },
            },
        }),
        _ => None,
    }
}

/// The name of a PUBACK reason code that means "not delivered" (≥ 0x80), as MQTT 5 says it.
pub fn refusal(reason: PubAckReason) -> Option<&'static str> {
    Some(match reason {
        // 0x10: accepted, nobody subscribed yet — delivered as far as the broker goes.
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => return None,
        PubAckReason::UnspecifiedError => "unspecified error (0x80)",
        PubAckReason::ImplementationSpecificError => "implementation specific error (0x83)",
        PubAckReason::NotAuthorized => "not authorized (0x87)",
        PubAckReason::TopicNameInvalid => "topic name invalid (0x90)",
        PubAckReason::PacketIdentifierInUse => "packet identifier in use (0x91)",
        PubAckReason::QuotaExceeded => "quota exceeded (0x97)",
        PubAckReason::PayloadFormatInvalid => "payload format invalid (0x99)",
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failure_codes_are_refusals() {
        assert_eq!(refusal(PubAckReason::Success), None);
        assert_eq!(refusal(PubAckReason::NoMatchingSubscribers), None);
        assert_eq!(
            refusal(PubAckReason::NotAuthorized),
            Some("not authorized (0x87)")
        );
        assert_eq!(
            refusal(PubAckReason::QuotaExceeded),
            Some("quota exceeded (0x97)")
        );
    }
}
