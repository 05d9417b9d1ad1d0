//! From decoded key events to store writes: the part of a keyboard-wedge scanner's loop that
//! does not touch the device, so it runs in tests against the real store writer.

use super::keymap::{Decoder, Output};
use crate::config::HidScanner;
use crate::sources::retry::RetryQueue;
use crate::store::{AsciiScan, PortReport, StoreError, StoreHandle, WriteOp};
use darkleg_protocol::ascii::parse_line;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const REPORT_EVERY: Duration = Duration::from_secs(1);

pub struct Intake {
    store: StoreHandle,
    /// The device path: its row in the ports table.
    port: String,
    device: String,
    scanner: HidScanner,
    decoder: Decoder,
    pending: Vec<(AsciiScan, oneshot::Receiver<Result<u64, StoreError>>)>,
    /// Scans the store refused for now, offered again with backoff (never waited on here:
    /// the kernel's buffer for the device is small).
    retry: RetryQueue,
    counters: PortReport,
    last_sent: Instant,
    /// Rejects are said at WARN at most once a minute: a wrong layout makes every scan one.
    reject_warned: crate::sources::Throttle,
    bare_sscc_warned: bool,
}

impl Intake {
    pub fn new(store: StoreHandle, port: String, device: String, scanner: HidScanner) -> Self {
        Intake {
            retry: RetryQueue::new(&port),
            decoder: Decoder::new(scanner.layout, scanner.max_line),
            store,
            port,
            device,
            scanner,
            pending: Vec::new(),
            counters: PortReport::default(),
            last_sent: Instant::now(),
            reject_warned: Default::default(),
            bare_sscc_warned: false,
        }
    }

    /// A scan that was typed but is not one: counted, and said.
    fn reject(&mut self, why: String) {
        if self.reject_warned.due(Duration::from_secs(60)) {
            tracing::warn!(port = %self.port, layout = ?self.scanner.layout, "keyboard-wedge scan rejected (counted, not stored): {why}. If good labels are rejected, set this [[hid_scanner]]'s layout to match the scanner's keyboard layout; said at most once a minute per device");
        } else {
            tracing::debug!(port = %self.port, "scan rejected: {why}");
        }
        self.count_reject(why);
    }

    fn count_reject(&mut self, why: String) {
        self.counters.rejected += 1;
        self.counters.last_reject = Some(why);
    }

    /// One evdev event; a finished scan goes to the writer (waiting for room in its queue).
    pub fn event(&mut self, ty: u16, code: u16, value: i32) {
        let line = match self.decoder.push(ty, code, value) {
            None => return,
            Some(Output::Garbage(why)) => return self.reject(why),
            Some(Output::Scan(line)) => line,
        };
        let scan = match parse_line(line.as_bytes()) {
            Ok(s) => AsciiScan {
                step: self.scanner.step,
                code: s.code.to_string(),
                symbology: s.symbology.map(str::to_string),
                station: Some(self.scanner.station_name.clone()),
                received_at_ms: crate::clock::now_ms(),
            },
            Err(e) => return self.reject(e.to_string()),
        };
        if !self.bare_sscc_warned
            && crate::sources::bare_sscc(&scan.code, scan.symbology.as_deref())
        {
            self.bare_sscc_warned = true;
            crate::sources::warn_bare_sscc(&self.port, &self.device, &scan.code, "turn on the scanner's AIM ID prefix (AIM symbology identifier transmission, set by a configuration barcode in its manual); said once per device until it is plugged again");
        }
        self.counters.frames += 1;
        self.send(scan);
    }

    fn send(&mut self, scan: AsciiScan) {
        let kept = scan.clone();
        let rx = self.store.request_blocking(|reply| WriteOp::Ascii {
            device: self.device.clone(),
            port: self.port.clone(),
            scan,
            reply,
        });
        self.pending.push((kept, rx));
    }

    /// The writer's answer for `scan`. A keyboard scanner cannot retransmit: a scan refused
    /// for now is held to be offered again; one refused for good (or past the queue's
    /// bound) is logged with its code and counted on the port, for someone to rescan.
    fn answered(&mut self, scan: AsciiScan, answer: Result<u64, StoreError>) {
        match answer {
            Ok(_) => self.retry.stored(),
            Err(e) if !e.permanent => {
                let code = scan.code.clone();
                if !self.retry.keep(self.device.clone(), scan, &e) {
                    self.count_reject(format!(
                        "scan {code} NOT stored (retry queue full), rescan it: {e}"
                    ));
                }
            }
            Err(e) => {
                let code = scan.code;
                tracing::error!(port = %self.port, code = %code, "scan NOT stored, rescan it: {e}");
                self.count_reject(format!("scan {code} NOT stored, rescan it: {e}"));
            }
        }
    }

    /// Waits until every scan handed over has its answer; `Err` once the writer is gone.
    pub fn settle(&mut self) -> Result<(), String> {
        let pending = std::mem::take(&mut self.pending);
        for (scan, rx) in pending {
            match rx.blocking_recv() {
                Ok(answer) => self.answered(scan, answer),
                Err(_) => return Err("store writer stopped".into()),
            }
        }
        Ok(())
    }

    /// Hands the held scans to the writer again once their backoff is over (no wait).
    pub fn offer_again(&mut self) {
        for (_, scan) in self.retry.take_due() {
            self.send(scan);
        }
    }

    /// How many refused scans are held.
    pub fn held(&self) -> usize {
        self.retry.len()
    }

    /// The device is gone but refused scans are held: offers them until stored, or until
    /// the agent stops (then they are logged with their count, and counted).
    pub fn drain(&mut self, stop: &AtomicBool) {
        if self.retry.is_empty() {
            return;
        }
        tracing::warn!(port = %self.port, held = self.held(), "the device closed with scans the store refused held: offering them until stored");
        while let Some(due) = self.retry.due() {
            if stop.load(Relaxed) {
                break;
            }
            let wait = due.saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(Duration::from_millis(200)));
            self.offer_again();
            if self.settle().is_err() {
                break;
            }
        }
        let n = self.retry.give_up("agent stopping");
        if n > 0 {
            self.counters.rejected += n as u64;
            self.counters.last_reject = Some(format!(
                "{n} scans the store refused were NOT stored by the stop"
            ));
        }
    }

    /// Takes in the writer's answers that have come, without waiting for the others; `Err`
    /// once the writer is gone.
    pub fn reap(&mut self) -> Result<(), String> {
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].1.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => i += 1,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err("store writer stopped".into())
                }
                Ok(answer) => {
                    // In order: a refused scan is held behind those refused before it.
                    let (scan, _) = self.pending.remove(i);
                    self.answered(scan, answer);
                }
            }
        }
        Ok(())
    }

    /// The device is going away: a scan typed half-way (unplugged mid-scan) is counted and
    /// logged, not silently dropped.
    pub fn close(&mut self) {
        if let Some(partial) = self.decoder.abandon() {
            tracing::warn!(port = %self.port, typed = %partial, "a scan was cut off before its Enter (unplugged mid-scan?); not stored, rescan it");
            self.count_reject(format!("scan cut off before its Enter: {partial:?}"));
        }
    }

    /// Reports counters about once a second (always when `force`), with the device's state.
    pub fn flush(&mut self, connected: bool, force: bool) {
        let idle = self.counters.frames == 0 && self.counters.rejected == 0;
        if !force && (idle || self.last_sent.elapsed() < REPORT_EVERY) {
            return;
        }
        let mut report = std::mem::take(&mut self.counters);
        report.connected = connected;
        self.last_sent = Instant::now();
        let _ = self.store.send_blocking(WriteOp::Port {
            port: self.port.clone(),
            protocol: "hid",
            report,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sources::hid::keymap::{EV_KEY, EV_SYN};

    /// A US-layout scanner typing "]C1" + code + Enter, as evdev reports it.
    fn typed(code: &str, out: &mut Vec<(u16, u16, i32)>) {
        typed_raw(&format!("]C1{code}"), out)
    }

    /// `text` (digits, ']' and 'C') + Enter, as a US-layout scanner types it.
    fn typed_raw(text: &str, out: &mut Vec<(u16, u16, i32)>) {
        let keys: Vec<(bool, u16)> = text
            .chars()
            .map(|c| match c {
                ']' => (false, 27),
                'C' => (true, 46),
                '0' => (false, 11),
                d => (false, d.to_digit(10).unwrap() as u16 + 1),
            })
            .collect();
        for (shift, k) in keys {
            if shift {
                out.push((EV_KEY, 42, 1));
            }
            out.extend([
                (EV_KEY, k, 1),
                (EV_SYN, 0, 0),
                (EV_KEY, k, 0),
                (EV_SYN, 0, 0),
            ]);
            if shift {
                out.push((EV_KEY, 42, 0));
            }
        }
        out.extend([(EV_KEY, 28, 1), (EV_KEY, 28, 0)]);
    }

    /// A config with one keyboard-wedge scanner, its data dir fresh.
    fn config(name: &str) -> (Config, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("darkleg-hid-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "[gateway]\nsite = \"s\"\nid = \"gw-01\"\ndata_dir = \"{}\"\n\
             [[hid_scanner]]\ndevice = \"/dev/input/by-id/usb-X-event-kbd\"\nstation = \"pack\"\n\
             [[upstream]]\nname = \"a\"\nurl = \"mqtt://127.0.0.1:1\"\n",
            dir.display()
        );
        (Config::parse(&text, "t.toml").unwrap(), dir)
    }

    /// Log lines written while `f` runs on this thread.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = buf.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn rejects_warn_once_a_minute_with_the_layout_hint_and_a_bare_sscc_once() {
        let (config, dir) = config("warn");
        let (store, writer) = StoreHandle::open(&config).unwrap();
        let mut intake = Intake::new(
            store.clone(),
            "/dev/input/by-id/usb-X-event-kbd".into(),
            "gw-01:hid-w".into(),
            config.hid_scanners[0].clone(),
        );
        let mut events = Vec::new();
        // Two SSCC labels without "]C1" (AIM ID off), then two scans with F5 in them.
        typed_raw("00106141411234567897", &mut events);
        typed_raw("00106141411234567903", &mut events);
        for _ in 0..2 {
            events.extend([(EV_KEY, 63, 1), (EV_KEY, 63, 0), (EV_KEY, 28, 1)]);
        }
        let log = logged(|| {
            for (t, c, v) in events {
                intake.event(t, c, v);
            }
            intake.settle().unwrap();
        });
        assert_eq!(
            log.matches("without its AIM identifier").count(),
            1,
            "{log}"
        );
        assert!(log.contains("AIM ID prefix"), "{log}");
        assert_eq!(
            log.matches("keyboard-wedge scan rejected").count(),
            1,
            "{log}"
        );
        assert!(
            log.contains("WARN") && log.contains("set this [[hid_scanner]]'s layout"),
            "{log}"
        );
        assert_eq!(intake.counters.rejected, 2);
        close(intake, store, writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_scan_the_store_refuses_for_a_while_is_held_and_stored_once_it_accepts() {
        let (config, dir) = config("retry");
        let (store, writer) = StoreHandle::open(&config).unwrap();
        let device = "gw-01:hid-retry";
        // Both scans refused four times: offered again after 100, 200, 400 and 800 ms.
        crate::store::refuse_ascii::next(device, 8);
        let mut intake = Intake::new(
            store.clone(),
            "/dev/input/by-id/usb-R-event-kbd".into(),
            device.into(),
            config.hid_scanners[0].clone(),
        );
        let mut events = Vec::new();
        typed("00340434161094042557", &mut events);
        typed("00340434161094042564", &mut events);
        let before = crate::clock::now_ms();
        for (t, c, v) in events {
            intake.event(t, c, v);
        }
        let t = Instant::now();
        // The device loop: reap and offer again, never waiting on a commit.
        while (intake.held() > 0 || !intake.pending.is_empty())
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
            intake.reap().unwrap();
            intake.offer_again();
        }
        let took = t.elapsed();
        assert_eq!(intake.held(), 0, "stored within 10 s");
        assert!(took >= Duration::from_millis(1400), "backoff: {took:?}");
        assert_eq!(intake.counters.rejected, 0, "nothing dropped");
        close(intake, store, writer);
        let scans = stored_scans(&config);
        let codes: Vec<&str> = scans.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["00340434161094042557", "00340434161094042564"]);
        // Their original receive time, not the time they were finally stored.
        let received = |e: &darkleg_protocol::ScanEvent| e.received_at_ms;
        assert!(
            scans
                .iter()
                .map(received)
                .all(|r| r >= before && r < before + 1000),
            "{scans:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Stops the intake and the store (the writer commits what it was given).
    fn close(intake: Intake, store: StoreHandle, writer: std::thread::JoinHandle<()>) {
        drop(intake);
        drop(store);
        writer.join().unwrap();
    }

    /// The scans the store holds for upstream `a`, in outbox order.
    fn stored_scans(config: &Config) -> Vec<darkleg_protocol::ScanEvent> {
        let reader = crate::store::Reader::open(&config.db_path()).unwrap();
        let rows = reader.pending("a", 0, 100).unwrap();
        rows.into_iter()
            .filter_map(|p| match p.item {
                crate::store::Item::Event(e, _) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn recorded_key_streams_become_stored_scans_and_garbage_is_counted() {
        let (config, dir) = config("intake");
        let (store, writer) = StoreHandle::open(&config).unwrap();
        let port = "/dev/input/by-id/usb-X-event-kbd".to_string();
        let mut intake = Intake::new(
            store.clone(),
            port.clone(),
            "gw-01:hid-x".into(),
            config.hid_scanners[0].clone(),
        );
        let mut events = Vec::new();
        typed("00340434161094042557", &mut events);
        // Garbage: F5 in the middle of a scan, then Enter alone.
        events.extend([
            (EV_KEY, 2, 1),
            (EV_KEY, 2, 0),
            (EV_KEY, 63, 1),
            (EV_KEY, 63, 0),
        ]);
        events.extend([
            (EV_KEY, 28, 1),
            (EV_KEY, 28, 0),
            (EV_KEY, 28, 1),
            (EV_KEY, 28, 0),
        ]);
        typed("00340434161094042564", &mut events);
        // Then unplugged half-way through a third: "00" typed, no Enter.
        events.extend([
            (EV_KEY, 11, 1),
            (EV_KEY, 11, 0),
            (EV_KEY, 11, 1),
            (EV_KEY, 11, 0),
        ]);
        for (t, c, v) in events {
            intake.event(t, c, v);
        }
        intake.close();
        intake.settle().unwrap();
        intake.flush(true, true);
        close(intake, store, writer);
        let scans = stored_scans(&config);
        let codes: Vec<&str> = scans.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["00340434161094042557", "00340434161094042564"]);
        assert!(scans.iter().all(|e| e.device == "gw-01:hid-x"
            && e.step == darkleg_protocol::Step::Pack
            && e.symbology.as_deref() == Some("]C1")));
        assert_eq!(
            scans[1].seq,
            scans[0].seq + 1,
            "the gateway numbers them in turn"
        );
        let status = crate::store::Reader::open(&config.db_path())
            .unwrap()
            .status()
            .unwrap();
        let p = status.ports.iter().find(|p| p.port == port).unwrap();
        assert_eq!((p.frames, p.rejected, p.protocol.as_str()), (2, 3, "hid"));
        assert!(
            p.last_reject
                .as_deref()
                .is_some_and(|r| r.contains("cut off")),
            "{:?}",
            p.last_reject
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
