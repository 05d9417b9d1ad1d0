//! A private Mosquitto for one test or demo: its own config, data directory and free
//! 127.0.0.1 port, stopped by PID. Never touches a broker someone else started.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    binary: PathBuf,
    /// Extra config lines (a TLS listener, say).
    extra: String,
    /// A whole config instead of the generated one, `{port}` and `{dir}` filled in.
    custom: Option<String>,
}

/// The mosquitto binary on PATH (or Debian's /usr/sbin, often not on a user's PATH).
pub fn find_mosquitto() -> Option<PathBuf> {
    // DARKLEG_MOSQUITTO names the binary (a path that is not a file: "none installed", which
    // is how the demo's fallback to its embedded broker is tested on a machine that has one).
    if let Some(p) = std::env::var_os("DARKLEG_MOSQUITTO") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A port nobody listens on right now. There is a window before the broker binds it; the
/// caller retries on a clash.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Mosquitto {
    /// Starts a broker with persistence in `dir` on a free port.
    pub fn start(dir: &Path) -> Result<Mosquitto, String> {
        Mosquitto::start_with(dir, "")
    }

    /// [`start`](Self::start) with extra lines appended to the generated config.
    pub fn start_with(dir: &Path, extra: &str) -> Result<Mosquitto, String> {
        Mosquitto::launch_new(dir, extra, None)
    }

    /// Starts one on a whole config of the caller's (a shipped one, adapted): `{port}` and
    /// `{dir}` in it become the free port and the data directory. It must listen on
    /// 127.0.0.1:{port} first, which is how readiness is checked.
    pub fn start_config(dir: &Path, template: &str) -> Result<Mosquitto, String> {
        Mosquitto::launch_new(dir, "", Some(template.to_string()))
    }

    fn launch_new(dir: &Path, extra: &str, custom: Option<String>) -> Result<Mosquitto, String> {
        let binary = find_mosquitto()
            .ok_or("mosquitto not found on PATH (Debian: apt-get install mosquitto)")?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| e.to_string())?;
            let mut m = Mosquitto {
                child: None,
                port,
                dir: dir.to_path_buf(),
                binary: binary.clone(),
                extra: extra.to_string(),
                custom: custom.clone(),
            };
            match m.launch() {
                Ok(()) => return Ok(m),
                Err(e) => last = e,
            }
        }
        Err(format!("mosquitto did not start: {last}"))
    }

    /// Starts it again on the same port, with the same persistence (after [`stop`](Self::stop)).
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let conf = self.dir.join("mosquitto.conf");
        let text = format!(
            "# written by darkleg for one test or demo run\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             # run as whoever started us, so the data dir stays writable\n\
             user {user}\n\
             set_tcp_nodelay true\n\
             max_queued_messages 0\n\
             max_inflight_messages 100\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             {extra}\n",
            port = self.port,
            dir = self.dir.display(),
            extra = self.extra,
            user = std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "root".into()),
        );
        let text = match &self.custom {
            Some(t) => t
                .replace("{port}", &self.port.to_string())
                .replace("{dir}", &self.dir.display().to_string()),
            None => text,
        };
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
                return Err(format!(
                    "exited with {status}: {}",
                    log.lines().last().unwrap_or("")
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("not listening after 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it by PID with SIGTERM (so it saves its persistence), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// SIGHUP: Mosquitto reads its ACL and password files again, keeping every connection.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILL: no chance to save what it holds in memory.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's process id while it runs (to freeze it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// SIGTERM to `child`, then SIGKILL if it has not exited within `grace`; its exit status.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
