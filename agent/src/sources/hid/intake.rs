//! From decoded key events to store writes: the part of a keyboard-wedge scanner's loop that
//! does not touch the device, so it runs in tests against the real store writer.

use super::keymap::{Decoder, Output};
use crate::config::HidScanner;
use crate::store::{AsciiScan, PortReport, StoreError, StoreHandle, WriteOp};
use darkleg_protocol::ascii::parse_line;
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
    pending: Vec<(String, oneshot::Receiver<Result<u64, StoreError>>)>,
    counters: PortReport,
    last_sent: Instant,
}

impl Intake {
    pub fn new(store: StoreHandle, port: String, device: String, scanner: HidScanner) -> Self {
        Intake {
            decoder: Decoder::new(scanner.layout, scanner.max_line),
            store,
            port,
            device,
            scanner,
            pending: Vec::new(),
            counters: PortReport::default(),
            last_sent: Instant::now(),
        }
    }

    fn reject(&mut self, why: String) {
        tracing::debug!(port = %self.port, "scan rejected: {why}");
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
        self.counters.frames += 1;
        let code = scan.code.clone();
        let rx = self.store.request_blocking(|reply| WriteOp::Ascii {
            device: self.device.clone(),
            port: self.port.clone(),
            scan,
            reply,
        });
        self.pending.push((code, rx));
    }

    /// Waits until every scan handed over is durable; `Err` once the writer is gone. A
    /// keyboard scanner cannot retransmit: a scan the store refused is logged with its code
    /// and counted on the port (its status row names it), for someone to rescan.
    pub fn settle(&mut self) -> Result<(), String> {
        let pending = std::mem::take(&mut self.pending);
        for (code, rx) in pending {
            match rx.blocking_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(port = %self.port, code = %code, "scan NOT stored, rescan it: {e}");
                    self.reject(format!("scan {code} NOT stored, rescan it: {e}"));
                }
                Err(_) => return Err("store writer stopped".into()),
            }
        }
        Ok(())
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
                    let (code, _) = self.pending.swap_remove(i);
                    if let Err(e) = answer {
                        tracing::error!(port = %self.port, code = %code, "scan NOT stored, rescan it: {e}");
                        self.reject(format!("scan {code} NOT stored, rescan it: {e}"));
                    }
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
            self.reject(format!("scan cut off before its Enter: {partial:?}"));
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
        let keys: Vec<(bool, u16)> = "]C1"
            .chars()
            .chain(code.chars())
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

    #[test]
    fn recorded_key_streams_become_stored_scans_and_garbage_is_counted() {
        let dir = std::env::temp_dir().join(format!("darkleg-hid-intake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "[gateway]\nsite = \"s\"\nid = \"gw-01\"\ndata_dir = \"{}\"\n\
             [[hid_scanner]]\ndevice = \"/dev/input/by-id/usb-X-event-kbd\"\nstation = \"pack\"\n\
             [[upstream]]\nname = \"a\"\nurl = \"mqtt://127.0.0.1:1\"\n",
            dir.display()
        );
        let config = Config::parse(&text, "t.toml").unwrap();
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
        drop(intake);
        drop(store);
        writer.join().unwrap();

        let reader = crate::store::Reader::open(&config.db_path()).unwrap();
        let rows = reader.pending("a", 0, 100).unwrap();
        let scans: Vec<_> = rows
            .iter()
            .filter_map(|p| match &p.item {
                crate::store::Item::Event(e, _) => Some(e),
                _ => None,
            })
            .collect();
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
        let status = reader.status().unwrap();
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
