//! The brokers users scale out to, started privately like [`crate::Mosquitto`]: NATS
//! (single node, or a cluster with JetStream replicating MQTT sessions and messages) and
//! RabbitMQ's MQTT plugin. Each runs from a scratch directory on free 127.0.0.1 ports and is
//! stopped by PID (RabbitMQ by its process group, and its own epmd) — also on a panic.

use crate::scanner::{FramedConfig, FramedScanner, Pty};
use crate::workload::sscc_key;
use crate::{
    check_exactly_once, start_framed, status, two_merchant_orders, unique_ids, wait_until,
    write_config_with, Agent, Collector, Plans, ScannerEntry, Scratch, TWO_MERCHANTS,
};
use darkleg_agent::sim::broker::{free_port, terminate};
use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod nats_bin;
pub use nats_bin::{debian_nats_server, pinned_nats_server, PINNED_NATS};

/// `GET path` on a monitoring port: the body, or `None` if nothing answers within 2 s.
/// (NATS keeps an HTTP/1.1 connection open: the request asks it to close.)
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// Ports are picked free, then bound by the server: another test may take one in between.
/// A server that failed on that is started again on fresh ports in an emptied `dir` (twice
/// at most): a JetStream store must not remember the cluster of the failed attempt.
fn retry_port_clash<T>(
    dir: &Path,
    mut start: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let mut attempt = 0;
    loop {
        let _ = std::fs::remove_dir_all(dir);
        match start() {
            Err(e) if e.contains("address already in use") && attempt < 2 => attempt += 1,
            r => return r,
        }
    }
}

/// One nats-server process.
pub struct Nats {
    child: Option<Child>,
    pub name: String,
    pub mqtt_port: u16,
    /// Monitoring: `/healthz`, `/jsz`, `/connz`.
    pub http_port: u16,
    pub dir: PathBuf,
}

/// The ports one node listens on, chosen before any node starts (routes name each other).
struct NatsPorts {
    client: u16,
    http: u16,
    mqtt: u16,
    cluster: u16,
}

impl NatsPorts {
    fn pick() -> Result<NatsPorts, String> {
        let p = || free_port().map_err(|e| e.to_string());
        Ok(NatsPorts {
            client: p()?,
            http: p()?,
            mqtt: p()?,
            cluster: p()?,
        })
    }
}

impl Nats {
    /// A single node of `server` (see [`nats_bin`]) with JetStream (which NATS's MQTT
    /// needs) and an MQTT listener.
    pub fn start(server: &Path, dir: &Path) -> Result<Nats, String> {
        retry_port_clash(dir, || {
            let ports = NatsPorts::pick()?;
            let n = Nats::launch(server, dir, "n0", &ports, "")?;
            n.wait_healthy(Duration::from_secs(20))?;
            Ok(n)
        })
    }

    fn launch(
        server: &Path,
        dir: &Path,
        name: &str,
        p: &NatsPorts,
        extra: &str,
    ) -> Result<Nats, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let conf = dir.join("nats.conf");
        // stream_replicas only matters in a cluster; a single node keeps R1.
        let text = format!(
            "# written by darkleg for one test\n\
             server_name: {name}\n\
             listen: 127.0.0.1:{client}\n\
             http: 127.0.0.1:{http}\n\
             jetstream {{ store_dir: \"{dir}/js\" }}\n\
             {extra}\n\
             mqtt {{\n  listen: 127.0.0.1:{mqtt}\n{replicas}}}\n",
            client = p.client,
            http = p.http,
            mqtt = p.mqtt,
            dir = dir.display(),
            replicas = if extra.is_empty() {
                ""
            } else {
                "  stream_replicas: 3\n"
            },
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let log = dir.join("nats.log");
        let child = Command::new(server)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "spawning {} (Debian's is the package nats-server): {e}",
                    server.display()
                )
            })?;
        Ok(Nats {
            child: Some(child),
            name: name.to_string(),
            mqtt_port: p.mqtt,
            http_port: p.http,
            dir: dir.to_path_buf(),
        })
    }

    /// Waits until `/healthz` says ok (JetStream up, with a meta leader in a cluster) and the
    /// MQTT port takes connections.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let ok = wait_until(timeout, || {
            // A fatal error (a port taken meanwhile) ends the wait: the server has exited.
            self.log_tail(5).contains("[FTL]")
                || http_get(self.http_port, "/healthz").is_some_and(|r| r.contains("\"ok\""))
                    && TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_ok()
        });
        if ok && !self.log_tail(5).contains("[FTL]") {
            Ok(())
        } else {
            Err(format!(
                "nats {} not healthy after {timeout:?}: {:?}; log tail:\n{}",
                self.name,
                http_get(self.http_port, "/healthz"),
                self.log_tail(20)
            ))
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether an MQTT client with this id is connected to this node right now (`/connz`
    /// lists MQTT connections with their client id).
    pub fn has_client(&self, client_id: &str) -> bool {
        http_get(self.http_port, "/connz?limit=1024")
            .is_some_and(|r| r.contains(&format!("\"mqtt_client\": \"{client_id}\"")))
    }

    /// SIGKILL, for good: no goodbye to the cluster.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(3));
        }
    }
}

/// Three (or `n`) nats-server nodes routed to each other, JetStream on each, MQTT on each
/// with `stream_replicas: 3` so sessions and QoS 1 messages survive a node.
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    pub fn start(server: &Path, dir: &Path, n: usize) -> Result<NatsCluster, String> {
        retry_port_clash(dir, || NatsCluster::try_start(server, dir, n))
    }

    fn try_start(server: &Path, dir: &Path, n: usize) -> Result<NatsCluster, String> {
        let ports: Vec<NatsPorts> = (0..n)
            .map(|_| NatsPorts::pick())
            .collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| format!("nats-route://127.0.0.1:{}", o.cluster))
                .collect();
            let cluster = format!(
                "cluster {{\n  name: darkleg-e2e\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}",
                p.cluster,
                routes.join(", ")
            );
            nodes.push(Nats::launch(
                server,
                &dir.join(format!("n{i}")),
                &format!("n{i}"),
                p,
                &cluster,
            )?);
        }
        let c = NatsCluster { nodes };
        for node in &c.nodes {
            node.wait_healthy(Duration::from_secs(30))?;
        }
        // Healthy nodes, and one meta leader they agree on: JetStream can place streams.
        let leader = |n: &Nats| {
            http_get(n.http_port, "/jsz").and_then(|body| {
                let j: serde_json::Value = serde_json::from_str(&body).ok()?;
                j["meta_cluster"]["leader"].as_str().map(str::to_string)
            })
        };
        let agreed = wait_until(Duration::from_secs(30), || {
            let ls: Vec<Option<String>> = c.nodes.iter().map(leader).collect();
            ls[0].is_some() && ls.iter().all(|l| l == &ls[0])
        });
        if !agreed {
            return Err(format!(
                "no agreed JetStream meta leader after 30 s: {:?}",
                c.nodes.iter().map(leader).collect::<Vec<_>>()
            ));
        }
        Ok(c)
    }

    /// `urls = [...]` for an upstream listing every node.
    pub fn urls_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("urls = [{}]", urls.join(", "))
    }
}

/// A private RabbitMQ node with only the MQTT plugin, and an epmd of its own on a private
/// port (the system's RabbitMQ holds the default one, 4369).
pub struct Rabbit {
    server: Option<Child>,
    epmd: Option<Child>,
    pub mqtt_port: u16,
    pub dir: PathBuf,
}

impl Rabbit {
    pub fn start(dir: &Path) -> Result<Rabbit, String> {
        std::fs::create_dir_all(dir.join("home")).map_err(|e| e.to_string())?;
        let p = || free_port().map_err(|e| e.to_string());
        let (amqp, dist, epmd_port, mqtt) = (p()?, p()?, p()?, p()?);
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning epmd (Debian package erlang-base): {e}"))?;
        let mut r = Rabbit {
            server: None,
            epmd: Some(epmd),
            mqtt_port: mqtt,
            dir: dir.to_path_buf(),
        };
        if !wait_until(Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", epmd_port)).is_ok()
        }) {
            return Err("epmd did not listen".into());
        }
        let conf = dir.join("rabbitmq.conf");
        std::fs::write(
            &conf,
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 mqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\n\
                 mqtt.allow_anonymous = true\n\
                 loopback_users = none\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n")
            .map_err(|e| e.to_string())?;
        // An empty env file: the system's rabbitmq-env.conf names the system node.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").map_err(|e| e.to_string())?;
        let node = format!("darkleg-e2e-{}-{mqtt}@localhost", std::process::id());
        let server = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .current_dir(dir)
            // Its own Erlang cookie, in its own HOME.
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
            .env_remove("ERL_FLAGS")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.log")).map_err(|e| e.to_string())?)
            .stderr(Stdio::null())
            // Its own process group: the script's beam.smp and helpers are stopped with it.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                format!("spawning rabbitmq-server (Debian package rabbitmq-server): {e}")
            })?;
        r.server = Some(server);
        if !wait_until(Duration::from_secs(50), || {
            TcpStream::connect(("127.0.0.1", mqtt)).is_ok()
        }) {
            let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
            return Err(format!(
                "rabbitmq's MQTT listener not up after 50 s:\n{out}"
            ));
        }
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            // SIGTERM to the group (beam.smp stops cleanly), SIGKILL to it if it lingers.
            let group = format!("-{}", s.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            // The script ends once beam.smp has; reaped, the group is empty.
            let gone = wait_until(Duration::from_secs(10), || {
                s.try_wait().is_ok_and(|st| st.is_some())
                    && !Command::new("kill")
                        .args(["-0", "--", &group])
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|st| st.success())
            });
            if !gone {
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            }
            let _ = s.wait();
        }
        if let Some(mut e) = self.epmd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

/// The capture path through any broker: an agent whose one upstream (`central`) has the
/// keys `upstream_keys` (its `url` or `urls`, `mqtt_version`…), two framed scanners at pick
/// and pack scanning `orders` orders of two merchants — the order at pick, the order and
/// the parcel's SSCC at pack: three scans an order, `pace` apart at pack (twice that at
/// pick, so both finish together) — and checks of what subscribers got.
pub struct Capture {
    pub config: PathBuf,
    pub log: PathBuf,
    pub agent: Agent,
    pub plans: Plans,
    scanners: Vec<(FramedScanner, usize)>,
    orders: u64,
    pub dir: Scratch,
}

impl Capture {
    pub fn start(name: &str, upstream_keys: &str, orders: u64, pace: Duration) -> Capture {
        let dir = Scratch::new(name);
        let ptys = [Pty::open().expect("pty"), Pty::open().expect("pty")];
        let entries: Vec<ScannerEntry<'_>> = ptys
            .iter()
            .zip(["pick", "pack"])
            .map(|(p, station)| ScannerEntry {
                port: &p.slave_path,
                protocol: "framed",
                station: Some(station),
            })
            .collect();
        let extra = format!(
            "{TWO_MERCHANTS}\n[[upstream]]\nname = \"central\"\nkeep_alive_secs = 5\n{upstream_keys}\n"
        );
        let config = write_config_with(&dir.0, &entries, None, &extra);
        let log = dir.0.join("agent.log");
        let agent = Agent::start(&config, &log);
        assert!(
            wait_until(Duration::from_secs(20), || {
                status(&config)["ports"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["connected"] == true))
            }),
            "agent opened both ports"
        );
        let (picks, packs) = two_merchant_orders(orders);
        let mut plans = Plans::new();
        let mut scanners = Vec::new();
        let [pick, pack] = ptys;
        for (pty, plan, device, interval, seed) in [
            (pick, picks, "pick-1", pace * 2, 1),
            (pack, packs, "pack-1", pace, 2),
        ] {
            let cfg = FramedConfig {
                scan_interval: interval,
                ..FramedConfig::new(device, seed)
            };
            scanners.push(start_framed(pty, cfg, plan, &mut plans));
        }
        Capture {
            config,
            log,
            agent,
            plans,
            scanners,
            orders,
            dir,
        }
    }

    /// Scans made so far (acked by the agent: stored), over both scanners.
    pub fn acked(&self) -> u64 {
        self.scanners.iter().map(|(s, _)| s.stats().acked).sum()
    }

    pub fn expected(&self) -> usize {
        self.plans.values().map(Vec::len).sum()
    }

    /// Waits until every scan is acked and has arrived at `events` (a subscriber on
    /// `darkleg/v1/+/+/events`), then checks each arrived once by event id, in device
    /// order, nothing else from the device ([`check_exactly_once`]). Returns the duplicate deliveries.
    pub fn wait_delivered(&self, events: &Collector, timeout: Duration) -> usize {
        let expected = self.expected();
        let all = wait_until(timeout, || {
            self.scanners.iter().all(|(s, n)| s.done(*n))
                && unique_ids(&events.messages()) >= expected
        });
        let arrivals = events.messages();
        assert!(
            all,
            "{} of {expected} scans arrived ({} acked by the agent); agent log tail:\n{}",
            unique_ids(&arrivals),
            self.acked(),
            self.log_tail(40)
        );
        // Per device: an order's code is scanned at pick and again at pack, under two ids.
        self.plans
            .iter()
            .map(|(device, plan)| {
                let own: Vec<_> = arrivals
                    .iter()
                    .filter(|a| a.json["device"] == device.as_str())
                    .cloned()
                    .collect();
                check_exactly_once(&own, &Plans::from([(device.clone(), plan.clone())]))
            })
            .sum()
    }

    /// Waits until `milestones` (a subscriber on `darkleg/v1/merchants/#`) has `packed` for
    /// every order's parcel, under its merchant, and nothing else; returns the duplicates.
    pub fn wait_milestones(&self, milestones: &Collector, timeout: Duration) -> usize {
        let want: HashMap<(String, String), &str> = (0..self.orders)
            .flat_map(|i| {
                let (merchant, prefix) = match i % 2 {
                    0 => ("acme", "8712345"),
                    _ => ("globex", "8799999"),
                };
                // An order scanned at pick with no item after it is not a pick: packing it
                // under an SSCC is what makes a milestone.
                [((sscc_key(prefix, i), "packed".to_string()), merchant)]
            })
            .collect();
        let got = || -> Vec<((String, String), serde_json::Value)> {
            milestones
                .messages()
                .into_iter()
                .filter(|a| a.json["schema"] == "darkleg.milestone.v1")
                .map(|a| {
                    let key = (
                        a.json["parcel"].as_str().unwrap_or("").to_string(),
                        a.json["milestone"].as_str().unwrap_or("").to_string(),
                    );
                    (key, a.json)
                })
                .collect()
        };
        let complete = |g: &[((String, String), serde_json::Value)]| {
            let seen: HashSet<&(String, String)> = g.iter().map(|(k, _)| k).collect();
            want.keys().filter(|k| seen.contains(k)).count()
        };
        let all = wait_until(timeout, || complete(&got()) == want.len());
        let g = got();
        assert!(all, "{} of {} milestones arrived", complete(&g), want.len());
        let mut seen = HashSet::new();
        let mut duplicates = 0;
        for (key, j) in &g {
            let merchant = want
                .get(key)
                .unwrap_or_else(|| panic!("a milestone nobody made: {j}"));
            assert_eq!(j["merchant"], *merchant, "{j}");
            if !seen.insert(key.clone()) {
                duplicates += 1;
            }
        }
        duplicates
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
