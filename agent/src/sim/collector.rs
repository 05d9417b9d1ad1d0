//! An upstream consumer: subscribes with QoS 1 and a persistent session, and keeps every
//! message that arrives (duplicates included, so tests can count them).

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message as it arrived upstream.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub topic: String,
    pub json: Value,
    pub at_ms: u64,
}

pub struct Collector {
    messages: Arc<Mutex<Vec<Arrival>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    client: Client,
}

impl Collector {
    /// Connects to `127.0.0.1:port`, subscribes to `filter`, and collects in the background.
    pub fn start(port: u16, filter: &str, client_id: &str) -> Collector {
        Collector::start_as(port, filter, client_id, None)
    }

    /// [`start`](Self::start) logged in as `(username, password)`.
    pub fn start_as(
        port: u16,
        filter: &str,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Collector {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        // darkleg.batch.v1 messages are larger than rumqttc's 10 KiB default.
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(o, 1024);
        let messages: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st, c, f) = (
            messages.clone(),
            subscribed.clone(),
            stop.clone(),
            client.clone(),
            filter.to_string(),
        );
        std::thread::spawn(move || {
            for ev in connection.iter() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        // A broker that kept no session forgot the subscription too.
                        if !ack.session_present {
                            let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => s.store(true, Ordering::Relaxed),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let a = Arrival {
                            topic: p.topic.clone(),
                            json,
                            at_ms: crate::clock::now_ms(),
                        };
                        m.lock().unwrap_or_else(|e| e.into_inner()).push(a);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Collector {
            messages,
            subscribed,
            stop,
            client,
        }
    }

    /// Waits until the subscription is in place (so nothing published after this is missed).
    pub fn wait_subscribed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.subscribed.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Every message so far, in arrival order.
    pub fn messages(&self) -> Vec<Arrival> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn len(&self) -> usize {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}
