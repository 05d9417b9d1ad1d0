//! The thin loop: reads the outbox, turns rows into publishes ([`plan`]), hands them to the
//! [`Link`], feeds its events to the [`Dispatcher`], and sends delivery marks to the store
//! writer. One connection per attempt — fresh packet ids and an empty window each time, so
//! nothing from the last connection is replayed behind our back; the outbox is the only
//! memory. A refused publication (MQTT 5 reason code ≥ 0x80) is never marked delivered.

use super::batcher::{plan, Shape};
use super::dispatcher::Dispatcher;
use super::link::{Granted, Link, LinkEvent};
use crate::config::{Gateway, MqttVersion, Upstream};
use crate::mqtt::backoff::Backoff;
use crate::mqtt::failover::{self, Failover};
use crate::store::{Reader, StoreHandle, WriteOp};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Past the link's own two timeouts (the dial, then the CONNACK: each
/// [`crate::mqtt::HANDSHAKE_SECS`]), which fire first.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// Outbox rows read at a time.
const MAX_ROWS_PER_READ: usize = 8192;

enum Ended {
    Stop,
    /// Failed or lost: the next broker of `urls` is tried.
    Lost(String),
    /// Ended with the broker in good standing: the same one is tried again.
    Retry(String, failover::Ended),
}

/// Delivers `upstream`'s outbox until `stop` turns true.
pub async fn run(
    upstream: Upstream,
    gateway: Gateway,
    store: StoreHandle,
    mut stop: watch::Receiver<bool>,
) {
    let reader = match Reader::open(&store.path) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(upstream = %upstream.name, "{e}");
            return;
        }
    };
    let seed = crate::clock::now_ms()
        ^ upstream
            .link
            .client_id
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ b as u64);
    let mut dispatcher = Dispatcher::new(upstream.window);
    let mut session = Session {
        upstream: &upstream,
        gateway: &gateway,
        store: &store,
        reader,
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30), seed),
        failures: 0,
        try_v5: true,
        failover: Failover::new(upstream.link.brokers()),
        parked: HashMap::new(),
        suspect: None,
    };
    if !upstream.link.tls && upstream.link.password.is_some() {
        tracing::warn!(upstream = %upstream.name, broker = %upstream.link.url(),
            "a password is sent over plain mqtt:// — anyone on the network path can read it; use mqtts://");
    }
    loop {
        if *stop.borrow() {
            return;
        }
        let broker = session.broker().url();
        let (why, how) = match session.connection(&mut dispatcher, &mut stop).await {
            Ended::Stop => return,
            Ended::Lost(why) => (why, failover::Ended::Failed),
            Ended::Retry(why, how) => (why, how),
        };
        session.failures += 1;
        let n = session.failures;
        let moved = session.failover.ended(how);
        let next = if moved {
            format!("; trying {} next", session.broker().url())
        } else {
            String::new()
        };
        // A broker down for hours should not write a warning every 30 s: log the first
        // failure, then the 2nd, 4th, 8th… (debug in between) — and every move to another.
        if n.is_power_of_two() || moved {
            tracing::warn!(upstream = %upstream.name, broker = %broker,
                failures = n, "upstream unavailable: {why}{next}; capture continues, the outbox keeps the backlog");
        } else {
            tracing::debug!(upstream = %upstream.name, broker = %broker, failures = n, "upstream unavailable: {why}{next}");
        }
        let delay = session.backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

struct Session<'a> {
    upstream: &'a Upstream,
    gateway: &'a Gateway,
    store: &'a StoreHandle,
    reader: Reader,
    backoff: Backoff,
    /// Connection attempts failed in a row.
    failures: u32,
    /// With `mqtt_version = "auto"`: try MQTT 5 on the next attempt.
    try_v5: bool,
    /// Which of the upstream's brokers (`urls`) the next attempt goes to.
    failover: Failover,
    /// Rows the broker refused, held back until the instant given: the rest of the backlog
    /// flows past them (one row a broker never takes must not stop an upstream).
    parked: HashMap<i64, (Instant, u32)>,
    /// The oldest unacked row when a connection last closed on a publish, and how many times
    /// in a row it was that one: a row a broker answers by closing (Mosquitto 2.0 and an ACL)
    /// would otherwise stop the upstream at its head for ever.
    suspect: Option<(i64, u32)>,
}

/// How long a refused row first waits before it is offered to the broker again; each new
/// refusal of the same row doubles it, up to [`PARK_MAX`].
const PARK: Duration = Duration::from_secs(10);
const PARK_MAX: Duration = Duration::from_secs(300);

/// A 3.1.1 broker that will not take a publication (Mosquitto and an ACL) acks it and closes
/// the connection. Acks received this close to a connection loss are not trusted: the rows
/// stay owed and are resent (a duplicate at worst) rather than counted delivered and lost.
const ACK_GRACE_311: Duration = Duration::from_secs(1);
/// How often acknowledged rows are marked delivered while acks keep coming.
const MARK_EVERY: Duration = Duration::from_millis(50);
/// A connection this old counts as healthy: reconnect back-off starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

impl Session<'_> {
    async fn connection(&mut self, d: &mut Dispatcher, stop: &mut watch::Receiver<bool>) -> Ended {
        let v5 = match self.upstream.mqtt_version {
            MqttVersion::V5 => true,
            MqttVersion::V311 => false,
            MqttVersion::Auto => self.try_v5,
        };
        let broker = self.broker();
        let mut link = match Link::open(self.upstream, &broker, v5) {
            Ok(l) => l,
            // A certificate or password file we cannot read: not the broker's fault.
            Err(e) => return Ended::Retry(e, failover::Ended::Local),
        };
        let connack = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while let Some(ev) = link.recv().await {
                match ev {
                    Ok(LinkEvent::Connected(granted)) => return Ok(granted),
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err("event loop ended".to_string())
        });
        let connack = tokio::select! {
            r = connack => r,
            _ = stop.changed() => return Ended::Stop,
        };
        let version = if v5 { "5" } else { "3.1.1" };
        let broker_max_packet;
        match connack {
            Ok(Ok(granted)) => {
                let session_present = granted.session_present;
                broker_max_packet = granted.max_packet;
                let window = connection_window(self.upstream.window, &granted);
                if window < self.upstream.window {
                    tracing::info!(upstream = %self.upstream.name, window = self.upstream.window, receive_maximum = window,
                        "the broker takes fewer publishes in flight than the window: keeping to its receive maximum");
                }
                d.set_window(window);
                tracing::info!(upstream = %self.upstream.name, broker = %broker.url(), session_present, mqtt = version, "upstream connected");
                if self.upstream.mqtt_version == MqttVersion::Auto && !v5 {
                    tracing::info!(upstream = %self.upstream.name,
                        "the broker did not take an MQTT 5 connect: speaking 3.1.1, where a refused publication is acked and dropped — darkleg trusts no ack followed by a close (set mqtt_version = \"3.1.1\" to skip the v5 attempt)");
                }
                // The next attempt starts with v5 again: a 3.1.1 success may have been luck
                // of timing against a broker that was just starting.
                self.try_v5 = true;
            }
            Ok(Err(e)) => {
                // Try the other version only when a broker was there and turned the CONNECT
                // down; a broker that is simply down says nothing about its MQTT.
                let why = format!("MQTT {version} connect: {e}");
                if self.upstream.mqtt_version == MqttVersion::Auto && !unreachable(&e) {
                    self.try_v5 = !v5;
                    // The broker was there and turned MQTT 5 down: ask it in 3.1.1 before
                    // moving on (one that refuses both is in trouble: the next one, then).
                    if v5 {
                        return Ended::Retry(why, failover::Ended::RetryOtherVersion);
                    }
                }
                return Ended::Lost(why);
            }
            Err(_) => return Ended::Lost(format!("no CONNACK within {CONNECT_TIMEOUT:?}")),
        }
        d.reset();
        let mut c = Conn {
            delivered: Vec::new(),
            held: VecDeque::new(),
            batches: HashMap::new(),
            trust_acks_at_once: link.is_v5(),
            last_sent: None,
            last_mark: Instant::now(),
            max_packet: broker_max_packet,
            named_refusal: false,
        };
        let ended = self.deliver(&mut link, d, &mut c, stop).await;
        // Even when we close it, an ack younger than the grace may be a refusing broker's last
        // word: it is resent (a duplicate at worst) rather than trusted. Judged by when the
        // close was read, however late this thread got to it.
        c.release(ACK_GRACE_311, link.ended_at().unwrap_or_else(Instant::now));
        if !matches!(ended, Ended::Stop) && !c.named_refusal {
            let doubted: usize = c.held.iter().map(|(_, rows)| rows.len()).sum();
            // A broker that will not take a publication may ack and close, or just close
            // (Mosquitto 2.0 does, in 3.1.1 and — its 0x87 PUBACK often lost to the reset —
            // in 5 too): either way the close follows our publish closely. Say so — the row
            // stays owed either way, but "connection reset" alone explains nothing.
            let closed_on_publish = c.last_sent.is_some_and(|t| t.elapsed() < ACK_GRACE_311);
            if doubted > 0 || closed_on_publish {
                let rows = doubted.max(d.in_flight()).max(1);
                tracing::warn!(upstream = %self.upstream.name, rows,
                    "the broker closed the connection right after receiving publications; that is how some brokers refuse one (an ACL on the topic?): they stay in the outbox and are resent");
                self.refused(rows, "connection was closed on receiving a publication (no reason given: an ACL on the topic?)".into()).await;
                self.suspect(d.oldest_unacked());
            }
        }
        // Whatever was PUBACKed before the connection ended is delivered: record it, so a
        // reconnect resends only what the broker never confirmed.
        self.mark(&mut c.delivered).await;
        ended
    }

    /// The connected loop: keeps the window full from the outbox and retires acked rows.
    async fn deliver(
        &mut self,
        link: &mut Link,
        d: &mut Dispatcher,
        c: &mut Conn,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let events_topic = self.upstream.events_topic(self.gateway);
        let shape = Shape {
            batch: self.upstream.batch,
            // A batch must also fit the packet size an MQTT 5 broker announced.
            max_bytes: match c.max_packet {
                Some(max) => (max as usize)
                    .saturating_sub(events_topic.len() + 16)
                    .min(self.upstream.max_message_bytes),
                None => self.upstream.max_message_bytes,
            },
            events_topic: &events_topic,
            topic_prefix: &self.upstream.topic_prefix,
            site: &self.gateway.site,
            gateway: &self.gateway.id,
        };
        let mut committed = self.store.committed.clone();
        let mut more = true;
        let connected_at = Instant::now();
        let mut healthy = false;
        // Refill the window in chunks, not one row per PUBACK: one outbox read per quarter
        // window keeps the read cost per event small while the window stays mostly full.
        // (Of this connection's window: a broker's receive maximum may have narrowed it.)
        let refill_at = (d.window() / 4).max(1);
        loop {
            while more && (d.room() >= refill_at || d.in_flight() == 0) {
                let room = d.room();
                // Bounded per read: a wide window of large batches must not pull a whole
                // backlog into memory at once.
                let want = (room * self.upstream.batch).clamp(1, MAX_ROWS_PER_READ);
                let durable = *committed.borrow();
                let rows = match self.fetch(d.cursor(), durable, want) {
                    Ok(rows) => rows,
                    Err(e) => return Ended::Retry(e, failover::Ended::Local),
                };
                let fetched = rows.len();
                let last_fetched = rows.last().map(|p| p.row);
                let now = Instant::now();
                let rows: Vec<_> = rows
                    .into_iter()
                    .filter(|p| {
                        self.parked
                            .get(&p.row)
                            .is_none_or(|(until, _)| *until <= now)
                    })
                    .collect();
                let offered = rows.len();
                let publishes = plan(rows, room, &shape);
                let consumed: usize = publishes.iter().map(|p| p.rows.len()).sum();
                // Rows past the room are read again next time, after the cursor.
                more = fetched == want || consumed < offered;
                if publishes.is_empty() {
                    // All parked: read on past them.
                    if let Some(last) = last_fetched.filter(|_| offered == 0) {
                        d.skip_to(last);
                        continue;
                    }
                    break;
                }
                for publish in publishes {
                    let last = publish.last_row();
                    let pkid = match link.publish(&publish.topic, publish.payload) {
                        Ok(pkid) => pkid,
                        Err(e) => return Ended::Lost(e),
                    };
                    // The dispatcher tracks a publish by its last row; a batch's rows wait here.
                    if publish.rows.len() > 1 {
                        c.batches.insert(last, publish.rows);
                    }
                    d.handed(last);
                    if let Err(e) = d.on_outgoing_publish(pkid) {
                        return Ended::Retry(e.to_string(), failover::Ended::Local);
                    }
                    c.last_sent = Some(Instant::now());
                }
            }
            // A held-back row whose time came is below this connection's cursor: a fresh
            // connection reads the outbox from its first owed row again.
            let now = Instant::now();
            if self
                .parked
                .values()
                .any(|(until, _)| *until > connected_at && *until <= now)
            {
                return Ended::Retry(
                    "offering held-back rows again".into(),
                    failover::Ended::Deliberate,
                );
            }
            let until_release = c.next_release(ACK_GRACE_311);
            // Acked rows not yet marked are marked when their interval is up.
            let until_mark =
                (!c.delivered.is_empty()).then(|| MARK_EVERY.saturating_sub(c.last_mark.elapsed()));
            let wait = until_release
                .into_iter()
                .chain(until_mark)
                .min()
                .unwrap_or(Duration::from_secs(2));
            let ended = tokio::select! {
                ev = link.recv() => {
                    // Everything that arrived with it is handled in the same turn.
                    let mut ended = self.on_event(ev, link.read_at(), d, c, &mut healthy).await;
                    while ended.is_none() {
                        let Some(ev) = link.try_recv() else { break };
                        ended = self.on_event(Some(ev), link.read_at(), d, c, &mut healthy).await;
                    }
                    ended
                }
                changed = committed.changed() => {
                    if changed.is_err() {
                        Some(Ended::Stop) // the store is gone: shutting down
                    } else {
                        more = true;
                        None
                    }
                }
                _ = stop.changed() => {
                    self.let_acks_mature(link, d, c, &mut healthy).await;
                    for (ev, at) in link.disconnect().await {
                        // Acks and refusals alike, as on a live connection.
                        let _ = self.on_event(Some(Ok(ev)), at, d, c, &mut healthy).await;
                    }
                    Some(Ended::Stop)
                }
                // Safety net: look at the outbox now and then even without a notification.
                _ = tokio::time::sleep(wait) => {
                    more = true;
                    None
                }
            };
            if let Some(ended) = ended {
                return ended;
            }
            // Released acks are trusted ones (release runs every turn, so none is left behind).
            // Only with nothing unread from the link: a close waiting there would make the
            // acks before it untrusted, and it must be seen first.
            if (link.is_idle() && c.release(ACK_GRACE_311, Instant::now()))
                || connected_at.elapsed() >= HEALTHY_AFTER
            {
                self.proved_healthy(&mut healthy);
            }
            // Fold PUBACKs into one delivery mark (one commit, one fsync) per interval: a
            // mark late by that much costs at most a resend after a crash, never a loss.
            if !c.delivered.is_empty()
                && (c.delivered.len() >= 512
                    || (link.is_idle() && c.last_mark.elapsed() >= MARK_EVERY))
            {
                self.mark(&mut c.delivered).await;
                c.last_mark = Instant::now();
            }
        }
    }

    /// One event of the connection; `Some` when it ends the connection.
    async fn on_event(
        &mut self,
        ev: Option<Result<LinkEvent, String>>,
        link_read_at: Instant,
        d: &mut Dispatcher,
        c: &mut Conn,
        healthy: &mut bool,
    ) -> Option<Ended> {
        match ev {
            None => Some(Ended::Lost("connection task ended".into())),
            Some(Err(e)) => Some(Ended::Lost(e)),
            Some(Ok(LinkEvent::Acked(pkid))) => {
                if let Some(row) = d.on_puback(pkid) {
                    c.acked(row, link_read_at);
                    // A 3.1.1 ack proves nothing until it outlived the grace.
                    if c.trust_acks_at_once {
                        self.proved_healthy(healthy);
                    }
                }
                None
            }
            Some(Ok(LinkEvent::Refused { pkid, reason })) => {
                let rows = d.on_puback(pkid).map(|row| c.rows(row)).unwrap_or_default();
                tracing::error!(upstream = %self.upstream.name, broker = %self.broker().url(), rows = rows.len(),
                    "the broker refused a publication: {reason}; it stays in the outbox and is offered again later (10 s, doubling up to 5 min), the rest of the backlog goes on");
                self.refused(rows.len(), reason.clone()).await;
                c.named_refusal = true;
                for r in rows {
                    self.park(r);
                }
                None
            }
            Some(Ok(LinkEvent::Connected(_))) => None,
        }
    }

    /// The broker the next (or current) connection goes to.
    fn broker(&self) -> crate::config::BrokerLink {
        self.upstream.link.at(self.failover.current())
    }

    /// Before a close of our own (shutdown): 3.1.1 acks younger than the grace would not be
    /// trusted, and publishes not yet acked would not be known delivered; both rows would be
    /// sent again after the restart. Keep the connection up until the acks are in and old
    /// enough (at most twice the grace); a close by the broker meanwhile ends the wait, and
    /// those acks stay untrusted, as on any close.
    async fn let_acks_mature(
        &mut self,
        link: &mut Link,
        d: &mut Dispatcher,
        c: &mut Conn,
        healthy: &mut bool,
    ) {
        let deadline = tokio::time::Instant::now() + 2 * ACK_GRACE_311;
        // Publishes still unacked are waited for too: a broker that persists before it
        // acks (JetStream, RabbitMQ) may close on our DISCONNECT without the PUBACKs it
        // owed, and each of those rows would be sent again at the next start.
        loop {
            let held = c.next_release(ACK_GRACE_311);
            if held.is_none() && d.in_flight() == 0 {
                return;
            }
            let wait = held.unwrap_or(ACK_GRACE_311);
            tokio::select! {
                ev = link.recv() => {
                    // A refusal leaves the window too (logged, counted, parked), or the
                    // wait would run its full length for a publish that is never acked.
                    if self.on_event(ev, link.read_at(), d, c, healthy).await.is_some() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait), if held.is_some() && link.is_idle() => {
                    c.release(ACK_GRACE_311, Instant::now());
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// The connection has proved itself (a trusted ack, or long enough up): back-off starts
    /// over, once per connection.
    fn proved_healthy(&mut self, healthy: &mut bool) {
        if !*healthy {
            *healthy = true;
            self.backoff.reset();
            self.failures = 0;
        }
    }

    /// Counts one more close on `row`; the second in a row parks it so the rest flows.
    fn suspect(&mut self, row: Option<i64>) {
        let Some(row) = row else { return };
        let n = match self.suspect {
            Some((r, n)) if r == row => n + 1,
            _ => 1,
        };
        self.suspect = Some((row, n));
        if n >= 2 {
            let wait = self.park(row);
            tracing::error!(upstream = %self.upstream.name, row,
                "the broker closed the connection {n} times in a row on this row: held back {wait:?} so the rest of the backlog flows (it stays owed)");
            // The back-off goes on growing: it resets only once the rows behind it are taken,
            // so a broker that refuses everything is not asked ever faster.
            self.suspect = None;
        }
    }

    /// Holds `row` back; returns for how long.
    fn park(&mut self, row: i64) -> Duration {
        let now = Instant::now();
        // Forget rows parked long ago (delivered since, most likely).
        if self.parked.len() > 4096 {
            self.parked.retain(|_, (until, _)| *until + PARK_MAX > now);
        }
        let times = self.parked.get(&row).map_or(0, |(_, n)| n + 1);
        let wait = PARK.saturating_mul(1 << times.min(5)).min(PARK_MAX);
        self.parked.insert(row, (now + wait, times));
        wait
    }

    /// Reads owed rows. Synchronously: the sink has a thread of its own
    /// ([`crate::supervise::Health::spawn_on_thread`]), and a read of a few hundred rows is
    /// shorter than a hop to the blocking pool and back.
    fn fetch(
        &self,
        after: i64,
        durable: i64,
        limit: usize,
    ) -> Result<Vec<crate::store::Pending>, String> {
        self.reader
            .pending_durable(&self.upstream.name, after, durable, limit)
            .map_err(|e| e.to_string())
    }

    async fn mark(&self, delivered: &mut Vec<i64>) {
        if delivered.is_empty() {
            return;
        }
        let rows = std::mem::take(delivered);
        let op = WriteOp::Delivered {
            upstream: self.upstream.name.clone(),
            rows,
            at_ms: crate::clock::now_ms(),
        };
        if self.store.send(op).await.is_err() {
            tracing::warn!(upstream = %self.upstream.name, "store writer gone; delivered rows will be resent");
        }
    }

    async fn refused(&self, rows: usize, reason: String) {
        let op = WriteOp::Refused {
            upstream: self.upstream.name.clone(),
            rows,
            reason,
            at_ms: crate::clock::now_ms(),
        };
        let _ = self.store.send(op).await;
    }
}

/// One connection's acknowledged rows on their way to a delivery mark.
struct Conn {
    /// Acked and trusted: marked delivered at the next commit.
    delivered: Vec<i64>,
    /// Acked by a 3.1.1 broker (with when the ack was read), trusted once the connection
    /// outlived it by [`ACK_GRACE_311`].
    held: VecDeque<(Instant, Vec<i64>)>,
    /// A batch's rows, by the last row the dispatcher tracks it under.
    batches: HashMap<i64, Vec<i64>>,
    trust_acks_at_once: bool,
    /// When the client last wrote a publish.
    last_sent: Option<Instant>,
    /// When acked rows were last marked delivered.
    last_mark: Instant,
    /// The largest packet the broker takes (MQTT 5 CONNACK).
    max_packet: Option<u32>,
    /// The broker named a refusal on this connection (MQTT 5): no guessing at its close.
    named_refusal: bool,
}

/// The window on a connection: the configured one, or an MQTT 5 broker's receive maximum
/// if that is smaller (a broker may close the connection on the first publish past it).
fn connection_window(configured: usize, granted: &Granted) -> usize {
    match granted.receive_maximum {
        Some(max) => configured.min(max.max(1) as usize),
        None => configured,
    }
}

/// A connect error that means no broker answered (down, unreachable, refused at TCP).
fn unreachable(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    [
        "connection refused",
        "timed out",
        "timeout",
        "no route",
        "unreachable",
        "dns",
        "failed to lookup",
    ]
    .iter()
    .any(|k| e.contains(k))
}

impl Conn {
    fn rows(&mut self, row: i64) -> Vec<i64> {
        self.batches.remove(&row).unwrap_or_else(|| vec![row])
    }

    /// `row` was acked by a PUBACK read at `at`.
    fn acked(&mut self, row: i64, at: Instant) {
        let rows = self.rows(row);
        if self.trust_acks_at_once {
            self.delivered.extend(rows);
        } else {
            self.held.push_back((at, rows));
        }
    }

    /// Trusts the acks the connection outlived by `grace`: it was still up at `alive_at`
    /// (now, with nothing unread; or when its close was read). True if any was trusted.
    fn release(&mut self, grace: Duration, alive_at: Instant) -> bool {
        let mut any = false;
        while let Some((at, _)) = self.held.front() {
            if alive_at.saturating_duration_since(*at) < grace {
                break;
            }
            let (_, rows) = self.held.pop_front().expect("front exists");
            self.delivered.extend(rows);
            any = true;
        }
        any
    }

    fn next_release(&self, grace: Duration) -> Option<Duration> {
        self.held
            .front()
            .map(|(at, _)| grace.saturating_sub(at.elapsed()) + Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_receive_maximum_narrows_the_window_never_widens_it() {
        let granted = |receive_maximum| Granted {
            session_present: false,
            receive_maximum,
            max_packet: None,
            server_keep_alive: None,
        };
        assert_eq!(connection_window(256, &granted(None)), 256);
        assert_eq!(connection_window(256, &granted(Some(20))), 20);
        assert_eq!(connection_window(8, &granted(Some(20))), 8);
        // 0 is a protocol error on the broker's side; one at a time still delivers.
        assert_eq!(connection_window(256, &granted(Some(0))), 1);
    }

    fn conn_311() -> Conn {
        Conn {
            delivered: Vec::new(),
            held: VecDeque::new(),
            batches: HashMap::new(),
            trust_acks_at_once: false,
            last_sent: None,
            last_mark: Instant::now(),
            max_packet: None,
            named_refusal: false,
        }
    }

    #[test]
    fn a_311_ack_is_judged_by_when_the_close_was_read_not_when_it_was_handled() {
        let t0 = Instant::now();
        let mut c = conn_311();
        c.acked(7, t0);
        c.acked(8, t0 + Duration::from_millis(400));
        // The broker closed 5 ms after its ack; this thread only got to it 2 s later (a full
        // store queue): the ack is a refusing broker's last word, not trusted.
        let closed = t0 + Duration::from_millis(5);
        assert!(!c.release(ACK_GRACE_311, closed));
        assert!(c.delivered.is_empty());
        // Up a grace past the first ack, not yet past the second.
        assert!(c.release(ACK_GRACE_311, t0 + Duration::from_millis(1200)));
        assert_eq!(c.delivered, vec![7]);
        assert!(c.release(ACK_GRACE_311, t0 + Duration::from_millis(1400)));
        assert_eq!(c.delivered, vec![7, 8]);
    }
}
