//! One keyboard-wedge scanner: open, grab, read events into an [`Intake`]. Thin on purpose;
//! not covered by tests (no /dev/uinput on the development machine to fake a device).

use super::intake::Intake;
use crate::config::HidScanner;
use crate::store::StoreHandle;
use nix::poll::{poll, PollFd, PollFlags};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct DeviceContext {
    pub path: String,
    /// The device id its scans go under (`{gateway}:{path}`).
    pub device: String,
    pub scanner: HidScanner,
    pub store: StoreHandle,
    pub stop: Arc<AtomicBool>,
}

/// How long a read waits before looking at `stop` and flushing counters.
const POLL_MS: i32 = 200;

/// Serves the device until it goes away or the agent stops; `Err` if it cannot be opened.
pub fn run(ctx: &DeviceContext) -> Result<(), String> {
    // Raw, not evdev's synced stream: that one hides the kernel's SYN_DROPPED (it resyncs
    // key state instead), and the characters before and after a drop would join into one
    // plausible code. Raw, the decoder sees the drop: counted, the cut scan discarded.
    let mut dev = evdev::raw_stream::RawDevice::open(&ctx.path).map_err(|e| {
        format!("cannot open: {e} (hint: the agent's user needs read access to input devices, e.g. group input or a udev rule; under systemd the unit also needs DeviceAllow=char-input r, as configs/darkleg.service has)")
    })?;
    // Exclusive: the scan goes to darkleg only, not also typed into a focused window.
    dev.grab().map_err(|e| {
        format!("cannot grab exclusively: {e} (hint: another program holds it; stop it)")
    })?;
    tracing::info!(device = %ctx.path, name = dev.name().unwrap_or("?"), layout = ?ctx.scanner.layout, "keyboard-wedge scanner opened");
    let mut intake = Intake::new(
        ctx.store.clone(),
        ctx.path.clone(),
        ctx.device.clone(),
        ctx.scanner.clone(),
    );
    intake.flush(true, true);
    let fd = dev.as_raw_fd();
    let why = loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break "agent stopping".to_string();
        }
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, POLL_MS) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                    break "unplugged".to_string();
                }
                match dev.fetch_events() {
                    Ok(events) => {
                        for ev in events {
                            intake.event(ev.event_type().0, ev.code(), ev.value());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => break format!("read failed: {e}"),
                }
            }
            Err(e) => break format!("poll failed: {e}"),
        }
        // Never wait for a commit here: while this thread waits, the kernel's buffer for
        // the device (64 events, ~10 characters) overflows on a slow disk.
        if let Err(e) = intake.reap() {
            break e;
        }
        intake.offer_again();
        intake.flush(true, false);
    };
    intake.close();
    if intake.settle().is_ok() {
        intake.drain(&ctx.stop);
    }
    intake.flush(false, true);
    tracing::info!(device = %ctx.path, "keyboard-wedge scanner closed: {why}");
    Ok(())
}
