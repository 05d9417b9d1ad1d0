//! The thin loop: reads the outbox, hands rows to rumqttc, feeds its notifications to the
//! [`Dispatcher`], and sends delivery marks to the store writer. One connection per
//! attempt — a fresh `EventLoop` each time, so nothing rumqttc remembered from the last
//! connection is replayed behind our back; the outbox is the only memory.

use super::dispatcher::Dispatcher;
use super::options::mqtt_options;
use crate::config::{Gateway, Upstream};
use crate::mqtt::backoff::Backoff;
use crate::store::Item;
use crate::store::Provenance;
use crate::store::{Reader, StoreHandle, WriteOp};
use darkleg_protocol::upstream::{batch_json, hop, scan_json, Origin};
use darkleg_protocol::ScanEvent;
use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Outbox rows read at a time.
const MAX_ROWS_PER_READ: usize = 8192;

enum Ended {
    Stop,
    Lost(String),
}

/// Delivers `upstream`'s outbox until `stop` turns true.
pub async fn run(
    upstream: Upstream,
    gateway: Gateway,
    store: StoreHandle,
    mut stop: watch::Receiver<bool>,
) {
    let reader = match Reader::open(&store.path) {
        Ok(r) => Arc::new(Mutex::new(r)),
        Err(e) => {
            tracing::error!(upstream = %upstream.name, "{e}");
            return;
        }
    };
    let seed = crate::now_ms()
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
    };
    loop {
        if *stop.borrow() {
            return;
        }
        match session.connection(&mut dispatcher, &mut stop).await {
            Ended::Stop => return,
            Ended::Lost(why) => {
                session.failures += 1;
                let n = session.failures;
                // A broker down for hours should not write a warning every 30 s: log the
                // first failure, then the 2nd, 4th, 8th… (debug in between).
                if n.is_power_of_two() {
                    tracing::warn!(upstream = %upstream.name, broker = %upstream.link.url(),
                        failures = n, "upstream unavailable: {why}; capture continues, the outbox keeps the backlog");
                } else {
                    tracing::debug!(upstream = %upstream.name, failures = n, "upstream unavailable: {why}");
                }
            }
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
    reader: Arc<Mutex<Reader>>,
    backoff: Backoff,
    /// Connection attempts failed in a row.
    failures: u32,
}

impl Session<'_> {
    async fn connection(&mut self, d: &mut Dispatcher, stop: &mut watch::Receiver<bool>) -> Ended {
        let opts = match mqtt_options(self.upstream) {
            Ok(o) => o,
            Err(e) => return Ended::Lost(e),
        };
        let (client, mut eventloop) = AsyncClient::new(opts, self.upstream.window + 16);
        // poll() runs in its own task and is never cancelled mid-packet; we select on its
        // channel instead.
        let (ev_tx, mut events) = mpsc::channel::<Result<Event, ConnectionError>>(1024);
        let driver = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let failed = ev.is_err();
                if ev_tx.send(ev).await.is_err() || failed {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(driver);

        let connack = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while let Some(ev) = events.recv().await {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => return Ok(c),
                    Ok(_) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err("event loop ended".to_string())
        });
        let connack = tokio::select! {
            r = connack => r,
            _ = stop.changed() => return Ended::Stop,
        };
        match connack {
            Ok(Ok(c)) => {
                tracing::info!(upstream = %self.upstream.name, session_present = c.session_present, "upstream connected");
            }
            Ok(Err(e)) => return Ended::Lost(e),
            Err(_) => return Ended::Lost(format!("no CONNACK within {CONNECT_TIMEOUT:?}")),
        }
        self.backoff.reset();
        self.failures = 0;
        d.reset();

        let topic = self.upstream.events_topic(self.gateway);
        let mut committed = self.store.committed.clone();
        let mut more = true;
        let mut delivered: Vec<i64> = Vec::new();
        let mut batches: std::collections::HashMap<i64, Vec<i64>> = Default::default();
        // Refill the window in chunks, not one row per PUBACK: one outbox read per quarter
        // window keeps the read cost per event small while the window stays mostly full.
        let refill_at = (self.upstream.window / 4).max(1);
        let ended = loop {
            while more && (d.room() >= refill_at || d.in_flight() == 0) {
                let room = d.room();
                // Bounded per read: a wide window of large batches must not pull a whole
                // backlog into memory at once.
                let want = (room * self.upstream.batch).min(MAX_ROWS_PER_READ);
                let rows = match self.fetch(d.cursor(), want).await {
                    Ok(rows) => rows,
                    Err(e) => return Ended::Lost(e),
                };
                more = rows.len() == want;
                for publish in self.publishes(rows, &topic) {
                    let last = *publish.rows.last().expect("a publish carries rows");
                    let qos = QoS::AtLeastOnce;
                    if let Err(e) = client.try_publish(publish.topic, qos, false, publish.payload) {
                        return Ended::Lost(format!("handing a publish to the client: {e}"));
                    }
                    // The dispatcher tracks a publish by its last row; a batch's rows wait here.
                    if publish.rows.len() > 1 {
                        batches.insert(last, publish.rows);
                    }
                    d.handed(last);
                }
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    None => break Ended::Lost("event loop ended".into()),
                    Some(Err(e)) => break Ended::Lost(e.to_string()),
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Err(e) = d.on_outgoing_publish(pkid) {
                            break Ended::Lost(e.to_string());
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        if let Some(row) = d.on_puback(ack.pkid) {
                            match batches.remove(&row) {
                                Some(rows) => delivered.extend(rows),
                                None => delivered.push(row),
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                },
                changed = committed.changed() => {
                    if changed.is_err() {
                        break Ended::Stop; // the store is gone: shutting down
                    }
                    more = true;
                }
                _ = stop.changed() => {
                    let _ = client.try_disconnect();
                    break Ended::Stop;
                }
                // Safety net: look at the outbox now and then even without a notification.
                _ = tokio::time::sleep(Duration::from_secs(2)) => more = true,
            }
            // Fold a burst of PUBACKs into one delivery mark (one commit).
            if !delivered.is_empty() && (delivered.len() >= 512 || events.is_empty()) {
                self.mark(&mut delivered).await;
            }
        };
        // Whatever was PUBACKed before the connection ended is delivered: record it, so a
        // reconnect resends only what the broker never confirmed.
        self.mark(&mut delivered).await;
        ended
    }

    /// Turns outbox rows into publishes: derived messages one each; runs of scans one each
    /// (`darkleg.scan.v1`) or up to `batch` per message (`darkleg.batch.v1`).
    fn publishes(&self, rows: Vec<crate::store::Pending>, events_topic: &str) -> Vec<Publish> {
        let mut out = Vec::new();
        let mut run: Vec<(i64, ScanEvent, Option<Box<Provenance>>)> = Vec::new();
        let (site, gw) = (&self.gateway.site, &self.gateway.id);
        let me = hop(site, gw);
        let here = [me.clone()];
        let mut bytes = 0usize;
        let flush = |run: &mut Vec<(i64, ScanEvent, Option<Box<Provenance>>)>,
                     out: &mut Vec<Publish>| {
            if run.is_empty() {
                return;
            }
            // A relayed scan goes on with this gateway appended to its trace.
            let traces: Vec<Option<Vec<String>>> = run
                .iter()
                .map(|(_, _, p)| {
                    p.as_ref()
                        .map(|p| p.hops.iter().cloned().chain([me.clone()]).collect())
                })
                .collect();
            let origins = run.iter().zip(&traces).map(|((_, e, p), trace)| {
                let origin = match (p, trace) {
                    (Some(p), Some(t)) => Origin {
                        site: &p.site,
                        gateway: &p.gateway,
                        hops: t,
                    },
                    _ => Origin {
                        site,
                        gateway: gw,
                        hops: &here,
                    },
                };
                (e, origin)
            });
            let payload = if self.upstream.batch == 1 {
                let (e, origin) = origins.into_iter().next().expect("a run is not empty");
                scan_json(e, origin)
            } else {
                batch_json(origins)
            };
            out.push(Publish {
                topic: events_topic.to_string(),
                payload,
                rows: run.drain(..).map(|(r, _, _)| r).collect(),
            });
        };
        for p in rows {
            match p.item {
                Item::Event(ev, origin) => {
                    // Keep a batch under the smallest broker packet limit we target.
                    bytes += ev.code.len() + 320 + origin.as_ref().map_or(0, |o| 64 * o.hops.len());
                    run.push((p.row, ev, origin));
                    if run.len() == self.upstream.batch || bytes >= super::options::MAX_BATCH_BYTES
                    {
                        flush(&mut run, &mut out);
                        bytes = 0;
                    }
                }
                Item::Message { topic, payload } => {
                    flush(&mut run, &mut out);
                    out.push(Publish {
                        topic: format!("{}/{topic}", self.upstream.topic_prefix),
                        payload,
                        rows: vec![p.row],
                    });
                }
            }
        }
        flush(&mut run, &mut out);
        out
    }

    async fn fetch(&self, after: i64, limit: usize) -> Result<Vec<crate::store::Pending>, String> {
        let reader = self.reader.clone();
        let name = self.upstream.name.clone();
        tokio::task::spawn_blocking(move || {
            let r = reader.lock().unwrap_or_else(|e| e.into_inner());
            r.pending(&name, after, limit).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn mark(&self, delivered: &mut Vec<i64>) {
        if delivered.is_empty() {
            return;
        }
        let rows = std::mem::take(delivered);
        let op = WriteOp::Delivered {
            upstream: self.upstream.name.clone(),
            rows,
            at_ms: crate::now_ms(),
        };
        if self.store.send(op).await.is_err() {
            tracing::warn!(upstream = %self.upstream.name, "store writer gone; delivered rows will be resent");
        }
    }
}

struct Publish {
    topic: String,
    payload: String,
    /// Outbox rows it carries, in order.
    rows: Vec<i64>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
