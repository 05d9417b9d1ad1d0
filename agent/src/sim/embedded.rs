//! An MQTT broker inside this process (rumqttd), for the demo on a machine without
//! Mosquitto, and a [`Gate`] in front of it that can cut the gateway's link, since an
//! in-process broker cannot be stopped and started again like a Mosquitto process.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// rumqttd listening on 127.0.0.1, MQTT 3.1.1 and 5 on two ports. Its threads live until
/// the process ends (rumqttd has no shutdown): start it only in a one-shot process.
pub struct EmbeddedBroker {
    /// MQTT 3.1.1.
    pub port_v4: u16,
    /// MQTT 5.
    pub port_v5: u16,
}

impl EmbeddedBroker {
    pub fn start() -> Result<EmbeddedBroker, String> {
        let mut last = String::new();
        // A free port may be taken before the broker binds it: try a few.
        for _ in 0..5 {
            let (v4, v5) = (free_port()?, free_port()?);
            match launch(v4, v5) {
                Ok(()) => {
                    return Ok(EmbeddedBroker {
                        port_v4: v4,
                        port_v5: v5,
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(format!("embedded broker did not start: {last}"))
    }
}

fn free_port() -> Result<u16, String> {
    super::broker::free_port().map_err(|e| format!("finding a free port: {e}"))
}

fn launch(v4: u16, v5: u16) -> Result<(), String> {
    let server = |name: &str, port: u16| rumqttd::ServerSettings {
        name: name.to_string(),
        listen: ([127, 0, 0, 1], port).into(),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            // darkleg.batch.v1 messages run to hundreds of KiB.
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server("v4", v4))])),
        v5: Some(HashMap::from([("v5".to_string(), server("v5", v5))])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| format!("spawning the broker thread: {e}"))?;
    // The listeners bind in threads of their own; a failed bind is only logged there, so
    // readiness is seen from outside.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if [v4, v5]
            .iter()
            .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "not listening on 127.0.0.1:{v4} and :{v5} after 5 s"
    ))
}

/// A TCP relay from its own port to a broker's. [`cut`](Gate::cut) drops every relayed
/// connection and refuses new ones until [`restore`](Gate::restore): to the client it is
/// exactly a broker that went away.
pub struct Gate {
    pub port: u16,
    open: Arc<AtomicBool>,
    /// Bumped by every cut; a relay of an older generation ends itself.
    generation: Arc<AtomicU64>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    pub fn start(target_port: u16) -> Result<Gate, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding the gate: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, g, l) = (open.clone(), generation.clone(), live.clone());
        std::thread::Builder::new()
            .name("broker-gate".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    if !o.load(Ordering::Relaxed) {
                        // Refused: closed at once, as a dead port would be for a client.
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    if let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) {
                        let mut live = l.lock().unwrap_or_else(|e| e.into_inner());
                        live.push(c);
                        live.push(u);
                    }
                    relay(client, upstream, g.load(Ordering::Relaxed), &g);
                }
            })
            .map_err(|e| format!("spawning the gate: {e}"))?;
        Ok(Gate {
            port,
            open,
            generation,
            live,
        })
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Drops every connection through the gate and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        for s in self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways in two threads until either side closes or the gate is cut.
fn relay(a: TcpStream, b: TcpStream, generation: u64, current: &Arc<AtomicU64>) {
    for (mut from, mut to) in [
        (a.try_clone(), b.try_clone()),
        (b.try_clone(), a.try_clone()),
    ]
    .into_iter()
    .filter_map(|(f, t)| Some((f.ok()?, t.ok()?)))
    {
        let current = current.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if current.load(Ordering::Relaxed) != generation
                            || to.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}
