//! Liveness. Every long-lived part of the agent — the store writer, the deriver, each sink
//! and relay, the port supervisor, the status server and the small timers — is started
//! through a [`Health`], which watches it.
//!
//! A part that panics, or ends while the agent is not stopping, is *dead*: logged as an
//! error naming it, named by `/healthz` (503), and the agent shuts down and exits with
//! [`EXIT_DIED`] (70, EX_SOFTWARE) for systemd to restart it. Exiting is safe: the store is
//! durable, and a scanner keeps every scan the gateway has not acked. A part that promised
//! a heartbeat (the deriver) and misses it for too long is *stalled*: `/healthz` says so with
//! a 503; nothing exits (it may be waiting on a slow disk).
//!
//! Serial port threads are the exception: one that panics is logged, its port marked
//! closed, and the port scanner opens it again (see `sources::port`).
//!
//! Test-only: [`fault_point`] panics a named part once when `DARKLEG_TEST_PANIC` names it.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The exit code after a part of the agent died (sysexits' EX_SOFTWARE).
pub const EXIT_DIED: u8 = 70;

/// Test-only fault injection, for the end-to-end liveness tests: the part this variable
/// names panics once at its fault point. Never set it in production.
pub const TEST_PANIC_VAR: &str = "DARKLEG_TEST_PANIC";

/// Panics, once per process, when [`TEST_PANIC_VAR`] names `part`. Test-only.
pub fn fault_point(part: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let wanted = WANTED.get_or_init(|| std::env::var(TEST_PANIC_VAR).ok());
    if wanted.as_deref() == Some(part) && !FIRED.swap(true, Relaxed) {
        panic!("{TEST_PANIC_VAR}={part}: test-only fault injected");
    }
}

/// The parts of one running agent and whether each is alive. Cheap to clone.
#[derive(Clone)]
pub struct Health(Arc<Inner>);

struct Inner {
    parts: Mutex<BTreeMap<String, Part>>,
    stopping: AtomicBool,
    /// The first death: what the agent exits for.
    died: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct Part {
    dead: Option<String>,
    /// Last heartbeat, and how long without one counts as stalled.
    beat: Option<(Instant, Duration)>,
}

/// A part's heartbeat; [`Beat::beat`] at least once per `stall_after`.
pub struct Beat {
    health: Health,
    name: String,
}

impl Beat {
    pub fn beat(&self) {
        if let Some(p) = self.health.lock().get_mut(&self.name) {
            if let Some((at, _)) = &mut p.beat {
                *at = Instant::now();
            }
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health(Arc::new(Inner {
            parts: Mutex::default(),
            stopping: AtomicBool::new(false),
            died: watch::channel(None).0,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Part>> {
        self.0.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, name: &str) {
        self.lock().entry(name.to_string()).or_default();
    }

    /// A heartbeat for `name`, which counts as stalled after `stall_after` without a beat.
    pub fn heartbeat(&self, name: &str, stall_after: Duration) -> Beat {
        self.lock().entry(name.to_string()).or_default().beat = Some((Instant::now(), stall_after));
        Beat {
            health: self.clone(),
            name: name.to_string(),
        }
    }

    /// The agent is shutting down: parts ending from now on are not dead.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Relaxed);
    }

    /// Every part watched, alive or not.
    pub fn parts(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Dead and stalled parts, one line each; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let stopping = self.0.stopping.load(Relaxed);
        let mut out = Vec::new();
        for (name, p) in self.lock().iter() {
            if let Some(why) = &p.dead {
                out.push(format!("{name}: dead ({why})"));
            } else if let Some((at, limit)) = p.beat {
                if !stopping && at.elapsed() > limit {
                    out.push(format!(
                        "{name}: stalled (no heartbeat for {}s)",
                        at.elapsed().as_secs()
                    ));
                }
            }
        }
        if stopping && out.is_empty() {
            out.push("agent: shutting down".into());
        }
        out
    }

    /// Waits for the first part to die; what died and how.
    pub async fn died(&self) -> String {
        let mut rx = self.0.died.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            // The sender lives in `self`: this never errs while we wait.
            let _ = rx.changed().await;
        }
    }

    /// A part ended: `panic` holds its panic's message if it panicked.
    fn ended(&self, name: &str, panic: Option<String>) {
        let why = match panic {
            Some(m) => format!("panicked: {m}"),
            None if self.0.stopping.load(Relaxed) => {
                if let Some(p) = self.lock().get_mut(name) {
                    p.beat = None;
                }
                return;
            }
            None => "stopped while the agent was running".to_string(),
        };
        self.dead(name, why);
    }

    /// `name` found the agent cannot go on (the start-up check found the database damaged):
    /// the agent stops as when a part died.
    pub fn fail(&self, name: &str, why: String) {
        self.register(name);
        self.dead(name, why);
    }

    fn dead(&self, name: &str, why: String) {
        tracing::error!(
            component = name,
            "{name} {why}: the agent stops and exits with code {EXIT_DIED} for its supervisor (systemd) to restart it; scans not acked stay on their scanners"
        );
        self.lock().entry(name.to_string()).or_default().dead = Some(why.clone());
        self.0.died.send_if_modified(|d| {
            let first = d.is_none();
            if first {
                *d = Some(format!("{name} {why}"));
            }
            first
        });
    }

    /// Spawns a task watched as `name`. Aborting the returned handle aborts the task.
    pub fn spawn<F>(&self, name: impl Into<String>, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        self.register(&name);
        let health = self.clone();
        let inner = AbortOnDrop(tokio::spawn(fut));
        tokio::spawn(async move {
            let mut inner = inner;
            match (&mut inner.0).await {
                Ok(()) => health.ended(&name, None),
                Err(e) if e.is_panic() => {
                    health.ended(&name, Some(panic_message(e.into_panic().as_ref())))
                }
                Err(_) => {} // cancelled: the agent is stopping
            }
        })
    }

    /// Like [`spawn`](Self::spawn), but the future runs on a thread of its own with a
    /// single-threaded runtime: an upstream's loop and its connection task then wake each
    /// other without crossing threads (on the shared runtime every PUBACK burst was a
    /// cross-thread wake-up and a context switch). A panic there is reported as one here.
    pub fn spawn_on_thread<F, Fut>(
        &self,
        name: impl Into<String>,
        make: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let name = name.into();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the thread");
                    rt.block_on(make())
                }));
                let _ = tx.send(r);
            });
        self.spawn(name, async move {
            if let Err(e) = thread {
                panic!("could not start its thread: {e}");
            }
            if let Ok(Err(panic)) = rx.await {
                std::panic::resume_unwind(panic);
            }
        })
    }

    /// Spawns a thread watched as `name`.
    pub fn spawn_thread<F>(
        &self,
        name: impl Into<String>,
        f: F,
    ) -> std::io::Result<std::thread::JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let name = name.into();
        self.register(&name);
        let health = self.clone();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                health.ended(&name, r.err().map(|p| panic_message(p.as_ref())));
            })
    }

    /// Watches a thread started elsewhere (the store writer) as `name`; the returned task
    /// ends when the thread has.
    pub fn watch_thread(
        &self,
        name: impl Into<String>,
        thread: std::thread::JoinHandle<()>,
    ) -> tokio::task::JoinHandle<()> {
        let name = name.into();
        self.register(&name);
        let health = self.clone();
        tokio::spawn(async move {
            while !thread.is_finished() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let r = thread.join();
            health.ended(&name, r.err().map(|p| panic_message(p.as_ref())));
        })
    }
}

/// Aborts the task when dropped (its watcher was aborted or dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A panic's message, when it has one.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_dead_and_named() {
        let h = Health::new();
        let _ok = h.spawn("calm", std::future::pending());
        h.spawn("sink x", async { panic!("boom") });
        let why = tokio::time::timeout(Duration::from_secs(5), h.died())
            .await
            .unwrap();
        assert!(why.starts_with("sink x panicked: boom"), "{why}");
        assert_eq!(h.problems(), vec!["sink x: dead (panicked: boom)"]);
        assert_eq!(h.parts(), vec!["calm", "sink x"]);
    }

    #[tokio::test]
    async fn a_task_ending_early_is_dead_one_ending_at_shutdown_is_not() {
        let h = Health::new();
        h.spawn("early", async {}).await.unwrap();
        assert_eq!(
            h.problems(),
            vec!["early: dead (stopped while the agent was running)"]
        );
        let h = Health::new();
        h.stopping();
        h.spawn("late", async {}).await.unwrap();
        assert_eq!(h.problems(), vec!["agent: shutting down"]);
    }

    #[tokio::test]
    async fn a_panicking_thread_and_a_watched_one_are_dead() {
        let h = Health::new();
        h.spawn_thread("deriver", || panic!("thread boom"))
            .unwrap()
            .join()
            .unwrap();
        let why = h.died().await;
        assert!(why.contains("deriver panicked: thread boom"), "{why}");
        let t = std::thread::spawn(|| panic!("writer boom"));
        h.watch_thread("store writer", t).await.unwrap();
        assert!(h
            .problems()
            .contains(&"store writer: dead (panicked: writer boom)".to_string()));
    }

    #[test]
    fn a_part_missing_its_heartbeat_is_stalled() {
        let h = Health::new();
        let beat = h.heartbeat("deriver", Duration::from_millis(50));
        assert!(h.problems().is_empty());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(h.problems().len(), 1);
        assert!(h.problems()[0].starts_with("deriver: stalled"));
        beat.beat();
        assert!(h.problems().is_empty());
    }
}
