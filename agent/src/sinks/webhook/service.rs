//! The webhook loop: reads the outbox after a cursor, queues each message under its key
//! (order, else parcel), and keeps up to `max_in_flight` keys sending at once — one request
//! at a time per key, so a parcel's messages arrive in outbox order while different parcels
//! go side by side. A message is marked delivered only on a 2xx; 408/425/429, 5xx and no
//! answer at all retry it (back-off with jitter, Retry-After honoured); 410 disables the
//! endpoint (rows kept); any other answer dead-letters it (kept, counted, replayable).

use super::client::{Answer, Client};
use super::message::{self, Outgoing};
use super::sign::Keys;
use crate::config::Webhook;
use crate::mqtt::backoff::Backoff;
use crate::store::{Item, Reader, StoreHandle, WebhookMark, WriteOp};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often the loop looks at the store unprompted: a replay, or rows it was not told of.
const POLL: Duration = Duration::from_secs(1);
/// A secret that cannot be read is tried again this often.
const SECRET_RETRY: Duration = Duration::from_secs(5);

/// How one message ended.
enum Fate {
    Delivered,
    Dead(u16),
    Gone,
}

/// What the workers of one endpoint share.
struct Shared {
    hook: Webhook,
    client: Client,
    keys: Keys,
    /// No request before this (a 429's Retry-After holds back the whole endpoint).
    not_before: Mutex<Instant>,
    /// Attempts without an answer, or with a retryable one, in a row (for quieter logs).
    failures: AtomicU32,
    /// Path only: a query string may carry a token.
    shown_url: String,
}

/// Delivers `hook`'s outbox until `stop` turns true.
pub async fn run(hook: Webhook, store: StoreHandle, mut stop: watch::Receiver<bool>) {
    let name = hook.name.clone();
    let reader = match Reader::open(&store.path) {
        Ok(r) => Arc::new(Mutex::new(r)),
        Err(e) => {
            tracing::error!(webhook = %name, "{e}");
            return;
        }
    };
    let client = match Client::new(&hook) {
        Ok(c) => c,
        Err(e) => {
            // A bad ca_file is a config problem the operator must fix; say so and idle.
            tracing::error!(webhook = %name, "{e}; nothing is sent until it is fixed (the outbox keeps the backlog)");
            let _ = stop.changed().await;
            return;
        }
    };
    let keys = loop {
        match hook.secret.reveal().and_then(|t| Keys::parse(&t)) {
            Ok(k) => break k,
            Err(e) => {
                tracing::error!(webhook = %name, secret = %hook.secret, "signing secret unusable: {e}; nothing is sent until it is (retrying every {SECRET_RETRY:?})");
                tokio::select! {
                    _ = tokio::time::sleep(SECRET_RETRY) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let shown_url = format!(
        "{}://{}:{}{}",
        if hook.tls { "https" } else { "http" },
        hook.host,
        hook.port,
        hook.path.split('?').next().unwrap_or("/")
    );
    let shared = Arc::new(Shared {
        client,
        keys,
        not_before: Mutex::new(Instant::now()),
        failures: AtomicU32::new(0),
        shown_url,
        hook,
    });
    let mut l = Loop {
        shared,
        store,
        reader,
        cursor: 0,
        known: HashSet::new(),
        queues: HashMap::new(),
        ready: VecDeque::new(),
        active: 0,
        delivered: Vec::new(),
        workers: JoinSet::new(),
        generation: 0,
    };
    l.serve(&mut stop).await;
    l.workers.abort_all();
    l.mark().await;
}

struct Loop {
    shared: Arc<Shared>,
    store: StoreHandle,
    reader: Arc<Mutex<Reader>>,
    /// Highest outbox row read.
    cursor: i64,
    /// Rows read and not yet settled (queued or in flight): not read twice.
    known: HashSet<i64>,
    /// Per key, its messages in outbox order; the front one is in flight when the key is
    /// active.
    queues: HashMap<String, VecDeque<Outgoing>>,
    /// Keys with messages and no request in flight, oldest first.
    ready: VecDeque<String>,
    active: usize,
    delivered: Vec<i64>,
    workers: JoinSet<(String, i64, Fate)>,
    /// The replay generation seen last.
    generation: i64,
}

impl Loop {
    fn name(&self) -> &str {
        &self.shared.hook.name
    }

    /// Most rows held in memory (queued or in flight) at once.
    fn buffer(&self) -> usize {
        (self.shared.hook.max_in_flight * 64).max(512)
    }

    async fn serve(&mut self, stop: &mut watch::Receiver<bool>) {
        let mut committed = self.store.committed.clone();
        match self.state().await {
            Ok((generation, disabled)) => {
                self.generation = generation;
                if let Some(why) = disabled {
                    if !self.disabled(&why, stop).await {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(webhook = %self.name(), "{e}"),
        }
        let mut more = true;
        let mut next_poll = Instant::now() + POLL;
        loop {
            // Refill in chunks (half the buffer), not one outbox read per answer.
            if more && (self.known.len() <= self.buffer() / 2 || self.known.is_empty()) {
                match self.read().await {
                    Ok(m) => more = m,
                    Err(e) => {
                        tracing::warn!(webhook = %self.name(), "{e}; retrying");
                        more = false;
                    }
                }
            }
            self.dispatch();
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + POLL;
                more = true;
                match self.state().await {
                    Ok((generation, disabled)) if generation != self.generation => {
                        tracing::info!(webhook = %self.name(), "replayed: reading the outbox again from its start");
                        self.generation = generation;
                        self.cursor = 0;
                        if let Some(why) = disabled {
                            if !self.disabled(&why, stop).await {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(webhook = %self.name(), "{e}"),
                }
            }
            let wait = next_poll.saturating_duration_since(Instant::now());
            tokio::select! {
                Some(done) = self.workers.join_next(), if !self.workers.is_empty() => {
                    let (key, row, fate) = match done {
                        Ok(d) => d,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => return, // aborted: stopping
                    };
                    if !self.settle(key, row, fate).await {
                        // 410: disabled until a replay.
                        let why = format!("the endpoint answered 410 Gone at {}", self.shared.shown_url);
                        if !self.disabled(&why, stop).await {
                            return;
                        }
                        more = true;
                    }
                    // Fold a burst of answers into one delivery mark.
                    if self.delivered.len() >= 256 || self.active == 0 || self.workers.is_empty() {
                        self.mark().await;
                    }
                }
                changed = committed.changed() => {
                    if changed.is_err() {
                        return; // the store is gone: shutting down
                    }
                    more = true;
                }
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {
                    self.mark().await;
                }
            }
        }
    }

    /// Reads owed rows after the cursor into their keys' queues; true if there may be more.
    async fn read(&mut self) -> Result<bool, String> {
        let want = self.buffer() - self.known.len();
        let reader = self.reader.clone();
        let (name, after) = (self.name().to_string(), self.cursor);
        let durable = *self.store.committed.borrow();
        let rows = tokio::task::spawn_blocking(move || {
            let r = reader.lock().unwrap_or_else(|e| e.into_inner());
            r.pending_durable(&name, after, durable, want)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let fetched = rows.len();
        for p in rows {
            self.cursor = self.cursor.max(p.row);
            if !self.known.insert(p.row) {
                continue;
            }
            let out = match &p.item {
                Item::Message { payload, .. } => message::build(p.row, payload),
                Item::Event(..) => Err("a raw scan".into()),
            };
            // Who gets a row was decided when it was written; a merchant's endpoint checks
            // again before it sends (the config may have changed since): another merchant's
            // parcel is dead-lettered, never POSTed.
            let foreign = |o: &message::Outgoing| {
                let want = self.shared.hook.merchant.as_deref();
                want.is_some() && o.merchant.as_deref() != want
            };
            if let Some(o) = out.as_ref().ok().filter(|o| foreign(o)) {
                tracing::error!(webhook = %self.name(), row = p.row, merchant = ?o.merchant,
                    "a message for another merchant is owed to this merchant's webhook (the config changed since it was written?): dead-lettered, not sent");
                let op = WriteOp::Webhook(WebhookMark::DeadLetter {
                    webhook: self.name().to_string(),
                    row: p.row,
                    status: 0,
                    reason: format!("another merchant's message ({:?})", o.merchant),
                    at_ms: crate::clock::now_ms(),
                });
                let _ = self.store.send(op).await;
                self.known.remove(&p.row);
                continue;
            }
            match out {
                Ok(out) => {
                    let key = out.key.clone();
                    let q = self.queues.entry(key.clone()).or_default();
                    q.push_back(out);
                    if q.len() == 1 {
                        self.ready.push_back(key);
                    }
                }
                Err(why) => {
                    // Not something to POST (a row left from when this name was an MQTT
                    // upstream, say): settled so it does not wait for ever.
                    tracing::warn!(webhook = %self.name(), row = p.row, "not sent ({why}); marked done");
                    self.known.remove(&p.row);
                    self.delivered.push(p.row);
                }
            }
        }
        Ok(fetched == want)
    }

    /// Starts a request for each ready key while there is room.
    fn dispatch(&mut self) {
        while self.active < self.shared.hook.max_in_flight {
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(msg) = self.queues.get(&key).and_then(|q| q.front()).cloned() else {
                continue;
            };
            self.active += 1;
            let shared = self.shared.clone();
            self.workers.spawn(async move {
                let fate = send(&shared, &msg).await;
                (key, msg.row, fate)
            });
        }
    }

    /// Records how a message ended and readies its key's next; false on a 410.
    async fn settle(&mut self, key: String, row: i64, fate: Fate) -> bool {
        self.active -= 1;
        let status = match fate {
            Fate::Gone => return false,
            Fate::Delivered => {
                self.delivered.push(row);
                None
            }
            Fate::Dead(status) => Some(status),
        };
        if let Some(status) = status {
            tracing::error!(webhook = %self.name(), url = %self.shared.shown_url, row, status,
                "the endpoint refused a message with {status}: dead-lettered (kept; `darkleg webhooks replay {}` sends it again)", self.name());
            let op = WriteOp::Webhook(WebhookMark::DeadLetter {
                webhook: self.name().to_string(),
                row,
                status,
                reason: format!("HTTP {status}"),
                at_ms: crate::clock::now_ms(),
            });
            let _ = self.store.send(op).await;
        }
        self.known.remove(&row);
        if let Some(q) = self.queues.get_mut(&key) {
            q.pop_front();
            if q.is_empty() {
                self.queues.remove(&key);
            } else {
                self.ready.push_back(key);
            }
        }
        true
    }

    /// The endpoint is gone (410): every request stops, nothing is lost — the rows stay
    /// owed — until `darkleg webhooks replay` lifts it. False if the agent stops meanwhile.
    async fn disabled(&mut self, why: &str, stop: &mut watch::Receiver<bool>) -> bool {
        tracing::error!(webhook = %self.name(), url = %self.shared.shown_url,
            "WEBHOOK DISABLED: {why}; its messages are kept in the outbox — fix the endpoint, then `darkleg webhooks replay {}`", self.name());
        self.workers.abort_all();
        while self.workers.join_next().await.is_some() {}
        self.mark().await;
        let op = WriteOp::Webhook(WebhookMark::Disabled {
            webhook: self.name().to_string(),
            reason: why.to_string(),
            at_ms: crate::clock::now_ms(),
        });
        let _ = self.store.send(op).await;
        self.known.clear();
        self.queues.clear();
        self.ready.clear();
        self.active = 0;
        self.cursor = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return false,
            }
            match self.state().await {
                Ok((generation, None)) if generation != self.generation => {
                    self.generation = generation;
                    tracing::info!(webhook = %self.name(), "re-enabled by a replay");
                    return true;
                }
                Ok((generation, _)) => self.generation = generation,
                Err(e) => tracing::warn!(webhook = %self.name(), "{e}"),
            }
        }
    }

    async fn state(&self) -> Result<(i64, Option<String>), String> {
        let reader = self.reader.clone();
        let name = self.name().to_string();
        tokio::task::spawn_blocking(move || {
            let r = reader.lock().unwrap_or_else(|e| e.into_inner());
            r.webhook_state(&name).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn mark(&mut self) {
        if self.delivered.is_empty() {
            return;
        }
        let op = WriteOp::Delivered {
            upstream: self.name().to_string(),
            rows: std::mem::take(&mut self.delivered),
            at_ms: crate::clock::now_ms(),
        };
        if self.store.send(op).await.is_err() {
            tracing::warn!(webhook = %self.name(), "store writer gone; delivered messages will be sent again");
        }
    }
}

/// One message until it is settled: retried for as long as it takes.
async fn send(s: &Shared, msg: &Outgoing) -> Fate {
    let seed = crate::clock::now_ms() ^ (msg.row as u64).rotate_left(17);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30), seed);
    loop {
        let gate = *s.not_before.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::sleep_until(gate.into()).await;
        let ts = crate::clock::now_ms() / 1000;
        let sig = s.keys.signature(&msg.id, ts, &msg.body);
        let (why, retry_after) = match s.client.post(&msg.id, ts, &sig, msg.body.clone()).await {
            Answer::Status(200..=299, _) => {
                if s.failures.swap(0, Relaxed) > 0 {
                    tracing::info!(webhook = %s.hook.name, "the endpoint takes messages again");
                }
                return Fate::Delivered;
            }
            Answer::Status(410, _) => return Fate::Gone,
            Answer::Status(c @ (408 | 425 | 429 | 500..), ra) => (format!("HTTP {c}"), ra),
            Answer::Status(c, _) => return Fate::Dead(c),
            Answer::Failed(e) => (e, None),
        };
        let delay = backoff.next_delay().max(retry_after.unwrap_or_default());
        if let Some(ra) = retry_after {
            // The endpoint asked everyone to wait, not just this parcel.
            let mut nb = s.not_before.lock().unwrap_or_else(|e| e.into_inner());
            *nb = (*nb).max(Instant::now() + ra);
        }
        let n = s.failures.fetch_add(1, Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(webhook = %s.hook.name, url = %s.shown_url, failures = n,
                "webhook not delivered: {why}; retrying in {delay:?} (the outbox keeps the backlog)");
        } else {
            tracing::debug!(webhook = %s.hook.name, failures = n, "webhook not delivered: {why}");
        }
        tokio::time::sleep(delay).await;
    }
}
