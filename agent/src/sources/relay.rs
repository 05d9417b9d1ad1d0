//! Relay source: other gateways' events from a site broker into this gateway's outbox.
//!
//! Subscribes with QoS 1 on a persistent session and acknowledges a message (PUBACK) only
//! once its scans are durable here — so a relay that crashes, or whose disk is full, leaves
//! the message with the broker to be delivered again. Duplicates (the sender's resends, a
//! second path) are dropped by event id; a different scan under an id already held is a
//! conflict, logged as an error and counted by the store. A payload that is too big,
//! malformed, forged or looping is rejected and counted, and acknowledged: redelivering it
//! would not fix it.
//! Never talks to a sink: what it stores reaches upstreams through the outbox.

use crate::config::{BrokerLink, Gateway, Relay};
use crate::mqtt::backoff::{Backoff, Reconnect};
use crate::mqtt::failover::{self, Failover};
use crate::store::{PortReport, StoreError, StoreHandle, WriteOp};
use darkleg_protocol::relay::{self, Limits};
use darkleg_protocol::upstream::hop;
use rumqttc::{AsyncClient, ConnectionError, Event, Packet, Publish, QoS};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Messages handed to the store and not yet acknowledged to the broker: enough to fold
/// many into one commit, few enough that a crash redelivers little.
const MAX_PENDING: usize = 64;

/// The largest packet MQTT can express (remaining length, §2.2.3). The relay accepts any
/// incoming packet up to it: with a smaller bound rumqttc drops the connection on a bigger
/// message before darkleg sees it, the persistent session redelivers it first, and the
/// relay is wedged behind it for good. Read in full, a message over `max_payload_kb` is
/// rejected, counted and acknowledged like any other junk. The price is memory: such a
/// message is buffered whole (briefly: its payload is dropped as soon as it is read), so
/// bound it on the site broker (Mosquitto's `message_size_limit`) where that matters.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// What the poll task hands the loop.
enum Polled {
    Event(Event),
    /// A publish over `max_payload_bytes` and its size: the payload is dropped in the poll
    /// task already, so a run of them is never held in memory.
    TooBig(Publish, usize),
}

type Durable = oneshot::Receiver<Result<u64, StoreError>>;

/// Takes `relay`'s subscriptions until `stop` turns true.
pub async fn run(
    relay: Relay,
    gateway: Gateway,
    store: StoreHandle,
    mut stop: watch::Receiver<bool>,
) {
    let me = hop(&gateway.site, &gateway.id);
    let mut reconnect = Reconnect::new(
        Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
            crate::clock::now_ms(),
        ),
        Duration::from_secs(30),
    );
    let port = format!("relay:{}", relay.name);
    // Several site brokers (`urls`): a failed or lost connection moves on to the next.
    let mut failover = Failover::new(relay.link.brokers());
    loop {
        if *stop.borrow() {
            return;
        }
        let broker = relay.link.at(failover.current());
        let mut conn = Connection {
            relay: &relay,
            broker: &broker,
            store: &store,
            me: &me,
            port: &port,
            report: PortReport::default(),
            rejected: 0,
        };
        let delay = match conn.serve(&mut stop, &mut reconnect).await {
            Ok(()) => return,
            Err((why, how)) => {
                conn.report.connected = false;
                conn.flush_report().await;
                let delay = reconnect.lost(crate::clock::now_ms());
                let failures = reconnect.failures();
                let moved = failover.ended(how);
                if failures.is_power_of_two() || moved {
                    tracing::warn!(relay = %relay.name, broker = %broker.url(), failures,
                        "relay source unavailable: {why}; the broker keeps the session's messages{}",
                        if moved { format!("; trying {} next", relay.link.at(failover.current()).url()) } else { String::new() });
                }
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

struct Connection<'a> {
    relay: &'a Relay,
    /// Which of the relay's brokers this connection goes to.
    broker: &'a BrokerLink,
    store: &'a StoreHandle,
    me: &'a str,
    port: &'a str,
    /// Counters since the last report to the store.
    report: PortReport,
    /// Rejections on this connection, for the log's sampling.
    rejected: u64,
}

impl Connection<'_> {
    /// Ok: asked to stop. Err: the connection is gone (or the store refused), reconnect.
    async fn serve(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        reconnect: &mut Reconnect,
    ) -> Result<(), (String, failover::Ended)> {
        let broker_failed = |e: String| (e, failover::Ended::Failed);
        let local = |e: String| (e, failover::Ended::Local);
        let mut opts = crate::mqtt::options(self.broker, &format!("relay {}", self.relay.name))
            .map_err(local)?;
        opts.set_manual_acks(true);
        opts.set_max_packet_size(MQTT_MAX_PACKET, crate::mqtt::MAX_PACKET);
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        eventloop.set_network_options(crate::mqtt::network_options());
        // poll() runs in its own task, never cancelled mid-packet: dropping its future in a
        // select! (a report tick, a store reply) would abort a CONNECT handshake still in
        // progress, and on a slow link (over a second to CONNACK) the relay never connects.
        // The channel is small: the task waits on it while the store is behind, so the
        // broker is not read ahead (back-pressure, not memory).
        let max_bytes = self.relay.max_payload_bytes;
        let (tx, mut events) = mpsc::channel::<Result<Polled, ConnectionError>>(16);
        let _driver = AbortOnDrop(tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await.map(|ev| match ev {
                    Event::Incoming(Packet::Publish(mut p)) if p.payload.len() > max_bytes => {
                        let n = p.payload.len();
                        p.payload = Default::default();
                        Polled::TooBig(p, n)
                    }
                    ev => Polled::Event(ev),
                });
                let failed = ev.is_err();
                if tx.send(ev).await.is_err() || failed {
                    break;
                }
            }
        }));
        let mut pending: Pending = VecDeque::new();
        // PUBACKs due, in arrival order, handed to the client without waiting: an `ack().await`
        // on a full request channel would block the very loop that drains it.
        let mut acks: VecDeque<Publish> = VecDeque::new();
        let mut report_tick = tokio::time::interval(Duration::from_secs(1));
        let limits = Limits {
            max_bytes,
            max_hops: self.relay.max_hops,
            me: self.me,
        };
        loop {
            tokio::select! {
                // Only take events while there is room: the poll task then waits on its
                // channel, so the broker is not read ahead (back-pressure instead of memory).
                ev = events.recv(), if pending.len() < MAX_PENDING => match ev {
                    None => return Err(broker_failed("event loop ended".into())),
                    Some(Err(e)) => return Err(broker_failed(e.to_string())),
                    Some(Ok(Polled::TooBig(p, bytes))) => {
                        self.reject(&p.topic, &relay::RelayError::TooBig { bytes, max: max_bytes }.to_string());
                        ack_in_order(&mut pending, &mut acks, p);
                    }
                    Some(Ok(Polled::Event(Event::Incoming(Packet::ConnAck(_))))) => {
                        // Not a reset of the back-off yet: a store that refuses every
                        // batch would make that a 200 ms reconnect loop.
                        reconnect.connected(crate::clock::now_ms());
                        self.report.connected = true;
                        self.flush_report().await;
                        for t in &self.relay.topics {
                            client.subscribe(t, QoS::AtLeastOnce).await.map_err(|e| broker_failed(e.to_string()))?;
                        }
                        tracing::info!(relay = %self.relay.name, topics = ?self.relay.topics, "relay source connected");
                    }
                    Some(Ok(Polled::Event(Event::Incoming(Packet::Publish(mut p))))) => {
                        let parsed = relay::parse(&p.payload, limits);
                        // Only the packet id is needed from here on, for the PUBACK.
                        p.payload = Default::default();
                        match parsed {
                            Ok(scans) => {
                                let n = scans.len();
                                let durable = self.store.request(|reply| WriteOp::Relayed { port: self.port.to_string(), scans, reply }).await;
                                pending.push_back((durable, p, n));
                            }
                            Err(e) => {
                                // Our own publication coming back (this gateway's upstream is
                                // the broker it relays from) is expected, not an error.
                                match &e {
                                    relay::RelayError::Loop(trace) if trace.ends_with(self.me) => {
                                        tracing::debug!(relay = %self.relay.name, "own publication echoed back; skipped");
                                    }
                                    _ => self.reject(&p.topic, &e.to_string()),
                                }
                                ack_in_order(&mut pending, &mut acks, p);
                            }
                        }
                    }
                    Some(Ok(Polled::Event(_))) => {}
                },
                done = async { (&mut pending.front_mut().expect("guarded").0).await }, if !pending.is_empty() => {
                    let (_, p, n) = pending.pop_front().expect("guarded");
                    match done {
                        Ok(Ok(stored)) => {
                            // n = 0: a rejected message waiting for its turn to be acked.
                            if n > 0 {
                                self.report.frames += 1;
                            }
                            // New scans stored: the connection works. (Not a redelivered
                            // duplicate: its PUBACK may die with the connection again, and
                            // it would reset the delay on every attempt.)
                            if stored > 0 {
                                reconnect.progress();
                            }
                            if (stored as usize) < n {
                                tracing::debug!(relay = %self.relay.name, held = n - stored as usize, "relayed scans already held (duplicates; conflicts are logged by the store)");
                            }
                            acks.push_back(p);
                        }
                        // Not durable (disk full, store stopping): no PUBACK, and reconnect
                        // — to the same broker, whose session holds it — so the broker
                        // delivers it (and what followed) again.
                        Ok(Err(e)) => return Err(local(format!("storing relayed scans: {e}"))),
                        Err(_) => return Err(local("store writer stopped".into())),
                    }
                }
                _ = report_tick.tick() => self.flush_report().await,
                _ = stop.changed() => {
                    // Whatever is durable can still be acknowledged; the rest is redelivered.
                    while let Some((durable, p, _)) = pending.pop_front() {
                        match durable.await {
                            Ok(Ok(_)) => acks.push_back(p),
                            _ => break,
                        }
                    }
                    for p in &acks {
                        let _ = client.try_ack(p);
                    }
                    let _ = client.try_disconnect();
                    // Let the poll task write the acks and the disconnect.
                    let _ = tokio::time::timeout(Duration::from_millis(300), async {
                        while let Some(Ok(_)) = events.recv().await {}
                    }).await;
                    self.report.connected = false;
                    self.flush_report().await;
                    return Ok(());
                }
            }
            while let Some(p) = acks.front() {
                if client.try_ack(p).is_err() {
                    break; // the channel is full: the event loop drains it on its next polls
                }
                acks.pop_front();
            }
        }
    }

    fn reject(&mut self, topic: &str, why: &str) {
        self.report.rejected += 1;
        self.rejected += 1;
        let mut topic = topic.to_string();
        topic.truncate(128);
        let line = format!("{topic}: {why}");
        // The count is what matters; the journal gets the first few and then every 100th.
        if self.rejected <= 3 || self.rejected.is_multiple_of(100) {
            tracing::warn!(relay = %self.relay.name, "relayed message rejected: {line}");
        }
        self.report.last_reject = Some(line);
    }

    async fn flush_report(&mut self) {
        let report = PortReport {
            connected: self.report.connected,
            ..std::mem::take(&mut self.report)
        };
        self.report.connected = report.connected;
        let _ = self
            .store
            .send(WriteOp::Port {
                port: self.port.to_string(),
                protocol: "relay",
                report,
            })
            .await;
    }
}

type Pending = VecDeque<(Durable, Publish, usize)>;

/// A rejected message is acked, in arrival order (after what is still being stored):
/// redelivering it would not make it better.
fn ack_in_order(pending: &mut Pending, acks: &mut VecDeque<Publish>, p: Publish) {
    if pending.is_empty() {
        acks.push_back(p);
    } else {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(0));
        pending.push_back((rx, p, 0));
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
