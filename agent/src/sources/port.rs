//! One serial port: open it, read bytes, turn them into store writes, and (framed) answer
//! the scanner once its scans are durable. Runs on its own thread because serial I/O is
//! blocking; returns when the port goes away or the agent stops.

use super::ascii_device;
use crate::config::{Scanner, ScannerProtocol};
use crate::store::{
    AsciiScan, FramedOutcome, FramedScan, PortReport, StoreError, StoreHandle, WriteOp,
};
use darkleg_protocol::ascii::{LineDecoded, LineDecoder};
use darkleg_protocol::frame::MAX_FRAME;
use darkleg_protocol::{check_code, Decoded, Frame, FrameDecoder, NackReason};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct PortContext {
    pub path: String,
    pub scanner: Scanner,
    pub gateway_id: String,
    pub store: StoreHandle,
    pub stop: Arc<AtomicBool>,
}

const READ_TIMEOUT: Duration = Duration::from_millis(50);
const REPORT_EVERY: Duration = Duration::from_secs(1);
const TIME_SYNC_EVERY: Duration = Duration::from_secs(600);
/// Scans read ahead of an answer at most (a window is at most 255).
const BURST_MAX: usize = 256;

/// Counters reported to the store about once a second, so status shows them without
/// costing an fsync per rejected byte.
struct Counters {
    pending: PortReport,
    last_sent: Instant,
}

impl Counters {
    fn reject(&mut self, why: impl ToString) {
        self.pending.rejected += 1;
        self.pending.last_reject = Some(why.to_string());
    }

    fn flush(&mut self, ctx: &PortContext, force: bool) {
        let idle = self.pending.frames == 0 && self.pending.rejected == 0;
        if !force && (idle || self.last_sent.elapsed() < REPORT_EVERY) {
            return;
        }
        let connected = self.pending.connected;
        let report = std::mem::replace(
            &mut self.pending,
            PortReport {
                connected,
                ..PortReport::default()
            },
        );
        self.last_sent = Instant::now();
        let protocol = match ctx.scanner.protocol {
            ScannerProtocol::Ascii => "ascii",
            ScannerProtocol::Framed => "framed",
        };
        let _ = ctx.store.send_blocking(WriteOp::Port {
            port: ctx.path.clone(),
            protocol,
            report,
        });
    }
}

/// Serves the port until it goes away or the agent stops; `Err` only if it cannot be
/// opened (what happens after that is logged here).
///
/// A panic while serving is caught here: logged as an error naming the port, the port shown
/// disconnected, and `Ok` returned like a port that went away — so the supervisor forgets
/// it and opens it again on its next scan. The scanner resends whatever was not acked.
pub fn run(ctx: &PortContext) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(ctx))) {
        Ok(r) => r,
        Err(p) => {
            let why = crate::supervise::panic_message(p.as_ref());
            tracing::error!(port = %ctx.path, component = "port", "port thread panicked: {why}; the port is reopened, the scanner resends what was not acked");
            let mut counters = Counters {
                pending: PortReport::default(),
                last_sent: Instant::now(),
            };
            counters.flush(ctx, true);
            Ok(())
        }
    }
}

fn serve(ctx: &PortContext) -> Result<(), String> {
    let mut port = serialport::new(&ctx.path, ctx.scanner.baud)
        .timeout(READ_TIMEOUT)
        .open_native()
        .map_err(|e| format!("cannot open: {e} (hint: check the device exists and the agent may use it, e.g. group dialout)"))?;
    tracing::info!(port = %ctx.path, protocol = ?ctx.scanner.protocol, "scanner port opened");
    let mut counters = Counters {
        pending: PortReport {
            connected: true,
            ..PortReport::default()
        },
        last_sent: Instant::now(),
    };
    counters.flush(ctx, true);
    let result = match ctx.scanner.protocol {
        ScannerProtocol::Ascii => ascii_loop(ctx, &mut port, &mut counters),
        ScannerProtocol::Framed => framed_loop(ctx, &mut port, &mut counters),
    };
    counters.pending.connected = false;
    counters.flush(ctx, true);
    match result {
        Ok(()) => tracing::info!(port = %ctx.path, "scanner port closed"),
        Err(e) => tracing::warn!(port = %ctx.path, "scanner port lost: {e}"),
    }
    Ok(())
}

/// Reads what is there; `Ok(None)` on a quiet line, `Err` when the port is gone.
fn read_some(port: &mut impl Read, buf: &mut [u8]) -> Result<Option<usize>, String> {
    match port.read(buf) {
        Ok(0) => Err("end of stream".into()),
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn ascii_loop(
    ctx: &PortContext,
    port: &mut impl Read,
    counters: &mut Counters,
) -> Result<(), String> {
    let device = ascii_device(&ctx.gateway_id, &ctx.path);
    let step = ctx
        .scanner
        .step
        .ok_or("ascii scanner without a station step")?;
    let mut dec = LineDecoder::new();
    let mut buf = [0u8; 4096];
    let mut replies: Vec<(String, oneshot::Receiver<Result<u64, StoreError>>)> = Vec::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let Some(n) = read_some(port, &mut buf)? else {
            counters.flush(ctx, false);
            continue;
        };
        for &b in &buf[..n] {
            match dec.push(b) {
                LineDecoded::Pending => {}
                LineDecoded::Rejected(e) => {
                    tracing::debug!(port = %ctx.path, "line rejected: {e}");
                    counters.reject(e);
                }
                LineDecoded::Scan(s) => {
                    counters.pending.frames += 1;
                    let scan = AsciiScan {
                        step,
                        code: s.code.to_string(),
                        symbology: s.symbology.map(str::to_string),
                        station: ctx.scanner.station_name.clone(),
                        received_at_ms: crate::clock::now_ms(),
                    };
                    let code = scan.code.clone();
                    let rx = ctx.store.request_blocking(|reply| WriteOp::Ascii {
                        device: device.clone(),
                        port: ctx.path.clone(),
                        scan,
                        reply,
                    });
                    replies.push((code, rx));
                }
            }
        }
        // A plain scanner cannot be told to retry, so a store failure is logged loudly with
        // the code, for someone to rescan.
        for (code, rx) in replies.drain(..) {
            match rx.blocking_recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(port = %ctx.path, code = %code, "scan NOT stored, rescan it: {e}")
                }
                Err(_) => return Err("store writer stopped".into()),
            }
        }
        counters.flush(ctx, false);
    }
    Ok(())
}

fn write_frame(port: &mut impl Write, frame: &Frame<'_>) -> Result<(), String> {
    let mut out = [0u8; MAX_FRAME];
    let n = frame.encode(&mut out).map_err(|e| e.to_string())?;
    port.write_all(&out[..n])
        .map_err(|e| format!("writing to scanner: {e}"))
}

/// A scan handed to the store: its seq, when it arrived, the store's answer.
type FramedReply = (
    u64,
    Instant,
    oneshot::Receiver<Result<FramedOutcome, StoreError>>,
);

fn framed_loop<P: Read + Write + serialport::SerialPort>(
    ctx: &PortContext,
    port: &mut P,
    counters: &mut Counters,
) -> Result<(), String> {
    let mut dec = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    let mut device: Option<String> = None;
    // Scanners without an RTC drift; re-sync a live link now and then, not only on Hello.
    let mut last_time_sync = Instant::now();
    let mut clock_epoch = crate::clock::EPOCH.load(std::sync::atomic::Ordering::Relaxed);
    let mut pending: Vec<FramedReply> = Vec::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let Some(n) = read_some(port, &mut buf)? else {
            counters.flush(ctx, false);
            continue;
        };
        for &b in &buf[..n] {
            let frame = match dec.push(b) {
                Decoded::Pending => continue,
                Decoded::Rejected(e) => {
                    tracing::debug!(port = %ctx.path, "frame rejected: {e}");
                    counters.reject(e);
                    continue;
                }
                Decoded::Frame(f) => f,
            };
            counters.pending.frames += 1;
            match frame {
                Frame::Hello {
                    device: dev,
                    firmware,
                    last_acked,
                } => {
                    // Device ids name events forever: printable, bounded, or not at all.
                    if dev.is_empty() || dev.len() > 64 || dev.chars().any(char::is_control) {
                        counters.reject(format!("hello with an unusable device id {dev:?}"));
                        continue;
                    }
                    // SQLite keeps sequences as i64; a larger ack is a firmware bug.
                    if last_acked > i64::MAX as u64 {
                        counters.reject(format!(
                            "hello from {dev} with an impossible ack {last_acked}"
                        ));
                        continue;
                    }
                    // Answer what came before under the old identity first.
                    answer(ctx, port, &mut pending)?;
                    let rx = ctx.store.request_blocking(|reply| WriteOp::Hello {
                        device: dev.to_string(),
                        firmware: firmware.to_string(),
                        port: ctx.path.clone(),
                        last_acked,
                        reply,
                    });
                    let acked = match rx.blocking_recv() {
                        Ok(Ok(acked)) => acked,
                        Ok(Err(e)) => {
                            tracing::error!(port = %ctx.path, "hello not stored: {e}");
                            counters.reject(format!("hello from {dev} not stored: {e}"));
                            continue;
                        }
                        Err(_) => return Err("store writer stopped".into()),
                    };
                    tracing::info!(port = %ctx.path, device = dev, firmware, acked, "scanner said hello");
                    device = Some(dev.to_string());
                    write_frame(port, &Frame::Ack { up_to: acked })?;
                    send_time(port, &mut last_time_sync)?;
                    if let Some(step) = ctx.scanner.step {
                        write_frame(port, &Frame::SetStep { step })?;
                    }
                }
                Frame::Event(ev) => {
                    // Test-only (DARKLEG_TEST_PANIC=port): the port thread dies once.
                    crate::supervise::fault_point("port");
                    let Some(dev) = &device else {
                        write_frame(
                            port,
                            &Frame::Nack {
                                seq: ev.seq,
                                reason: NackReason::NoHello,
                            },
                        )?;
                        continue;
                    };
                    // As for a hello's ack: SQLite keeps sequences as i64 (the frame
                    // protocol document tells vendors to stay below 2^63).
                    if ev.seq > i64::MAX as u64 {
                        counters
                            .reject(format!("scan from {dev} with an impossible seq {}", ev.seq));
                        continue;
                    }
                    let received_at_ms = crate::clock::now_ms();
                    let mut scan = FramedScan {
                        seq: ev.seq,
                        step: ev.step,
                        code: ev.code.to_string(),
                        symbology: ev.symbology.map(str::to_string),
                        operator: ev.operator.map(str::to_string),
                        // 0: taken before the scanner had our time and rebooted since.
                        captured_at_ms: match ev.captured_at_ms {
                            0 => received_at_ms,
                            t => t,
                        },
                        station: ctx.scanner.station_name.clone(),
                        received_at_ms,
                        refused: false,
                        client: crate::store::SeqClient::Firmware,
                    };
                    if let Err(e) = check_code(ev.code) {
                        tracing::warn!(port = %ctx.path, device = %dev, seq = ev.seq, "scan refused: {e}");
                        scan.refused = true;
                    }
                    pending.push((
                        ev.seq,
                        Instant::now(),
                        ctx.store
                            .framed_blocking(dev.clone(), ctx.path.clone(), scan),
                    ));
                }
                other => {
                    // Gateway-bound frames only; a scanner sending Ack is confused or echoing.
                    counters.reject(format!("unexpected frame from scanner: {other:?}"));
                }
            }
        }
        // A scanner sends its window in one burst, which may span reads: take all of it into
        // this commit rather than leave the rest for the one after (a second fsync's wait).
        if pending.len() < BURST_MAX && port.bytes_to_read().is_ok_and(|n| n > 0) {
            continue;
        }
        answer(ctx, port, &mut pending)?;
        // Every 10 minutes, and at once after the gateway's clock stepped.
        let epoch = crate::clock::EPOCH.load(std::sync::atomic::Ordering::Relaxed);
        if device.is_some() && (last_time_sync.elapsed() >= TIME_SYNC_EVERY || epoch != clock_epoch)
        {
            clock_epoch = epoch;
            send_time(port, &mut last_time_sync)?;
        }
        counters.flush(ctx, false);
    }
    Ok(())
}

fn send_time(port: &mut impl Write, last: &mut Instant) -> Result<(), String> {
    *last = Instant::now();
    write_frame(
        port,
        &Frame::TimeSync {
            unix_ms: crate::clock::now_ms(),
        },
    )
}

/// Waits until every submitted scan is durable (or refused), then tells the scanner with
/// one cumulative Ack and at most one Nack.
fn answer(
    ctx: &PortContext,
    port: &mut impl Write,
    pending: &mut Vec<FramedReply>,
) -> Result<(), String> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut acked = None;
    let mut nack = None;
    let mut arrived = Vec::with_capacity(pending.len());
    for (seq, at, rx) in pending.drain(..) {
        arrived.push(at);
        match rx.blocking_recv() {
            Ok(Ok(outcome)) => {
                acked = Some(outcome.acked());
                let reason = match outcome {
                    // (Conflict is an app's answer, never a scanner's; kept, not retired.)
                    FramedOutcome::OutOfOrder { .. } | FramedOutcome::Conflict { .. } => {
                        Some(NackReason::OutOfOrder)
                    }
                    FramedOutcome::Refused { .. } => Some(NackReason::Rejected),
                    _ => None,
                };
                if let (Some(reason), None) = (reason, nack) {
                    nack = Some((seq, reason));
                }
            }
            Ok(Err(e)) => {
                tracing::error!(port = %ctx.path, seq, "scan not stored, scanner keeps it: {e}");
                if nack.is_none() {
                    nack = Some((seq, NackReason::Storage));
                }
            }
            Err(_) => return Err("store writer stopped".into()),
        }
    }
    if let Some((seq, reason)) = nack {
        write_frame(port, &Frame::Nack { seq, reason })?;
    }
    if let Some(up_to) = acked {
        write_frame(port, &Frame::Ack { up_to })?;
        for at in arrived {
            crate::observe::latency::ACK_LATENCY.observe(at.elapsed());
        }
    }
    Ok(())
}
