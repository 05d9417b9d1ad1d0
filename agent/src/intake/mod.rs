//! The HTTP scan intake: `POST /v1/scans` on the `[http]` listener, for apps on Android
//! handhelds and intent forwarders. A posted scan is sequenced exactly like a framed
//! scanner's (`WriteOp::Framed`, the same devices table) and answered only once the writer
//! says its commit is durable. See docs/intake-openapi.yaml for the wire contract.

pub mod metrics;
pub mod parse;
pub mod tls;
pub mod tokens;

use crate::config::Config;
use crate::store::{Conflict, FramedOutcome, FramedScan, StoreError, StoreHandle, WriteOp};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use darkleg_protocol::Step;
use parse::{BodyError, PostedScan};
use serde::Serialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// The time a client has to send its body once the head is in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The time the store may take to make a request's scans durable before a 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// What `Retry-After` says while the outbox is full or the store is failing.
const RETRY_AFTER_S: &str = "10";
/// The `port` (source) recorded for devices that post here.
pub const PORT: &str = crate::store::APP_PORT;
/// The firmware shown for a device first seen here (as a framed scanner's Hello sets it).
const FIRMWARE: &str = "http";

/// Everything a request needs; built once at start.
pub struct Intake {
    pub store: StoreHandle,
    pub tokens: Arc<tokens::Tokens>,
    stations: BTreeMap<String, Step>,
    /// Devices registered (a Hello) since the agent started.
    registered: Mutex<HashSet<String>>,
    /// Devices warned about for an SSCC without its AIM identifier.
    bare_sscc_warned: Mutex<HashSet<String>>,
}

/// The intake's routes, the TLS acceptor for the whole listener and what SIGHUP re-reads.
pub type Served = (Router, Option<TlsAcceptor>, Reread);

/// What a SIGHUP re-reads: the tokens file and, with TLS, the certificate and key.
pub struct Reread {
    pub tokens: Arc<tokens::Tokens>,
    pub certificate: Option<Arc<tls::Certificate>>,
}

impl Reread {
    /// Each part on its own: a certificate that does not load leaves the new tokens in force.
    pub fn reload(&self) {
        self.tokens.reload();
        if let Some(c) = &self.certificate {
            match c.reload() {
                Ok(()) => tracing::info!("intake TLS certificate re-read"),
                Err(e) => tracing::error!("{e}; the certificate read before is still served"),
            }
        }
    }
}

/// The intake's routes and the TLS acceptor for the whole listener, from `config`;
/// `None` without `[intake]`. Reads the tokens file (and TLS files) now: a missing one is a
/// start-up error.
pub fn build(config: &Config, store: StoreHandle) -> Result<Option<Served>, String> {
    let Some(c) = &config.intake else {
        return Ok(None);
    };
    if let Some(w) = loopback_warning(config) {
        tracing::warn!("{w}");
    }
    let tokens = Arc::new(tokens::Tokens::load(c.tokens_file.clone())?);
    let (tls, certificate) = match &c.tls {
        Some((cert, key)) => {
            let (acceptor, certificate) = tls::acceptor(cert, key)?;
            (Some(acceptor), Some(certificate))
        }
        None => (None, None),
    };
    let intake = Arc::new(Intake {
        store,
        tokens: tokens.clone(),
        stations: c.stations.clone(),
        registered: Mutex::default(),
        bare_sscc_warned: Mutex::default(),
    });
    let router = Router::new()
        .route("/v1/scans", post(scans))
        .with_state(intake);
    Ok(Some((
        router,
        tls,
        Reread {
            tokens,
            certificate,
        },
    )))
}

/// Tokens are for handhelds on the network; a loopback `[http]` listener cannot be reached
/// by them (a valid setup only behind a local forwarder), so say so at start.
fn loopback_warning(config: &Config) -> Option<String> {
    let addr = config.http?;
    let with_tokens = config.intake.as_ref()?.tokens_file.is_some();
    (with_tokens && addr.ip().is_loopback()).then(|| {
        format!("[intake] has tokens but [http] listens on {addr}, a loopback address: handhelds on the network cannot reach POST /v1/scans (listen on 0.0.0.0 or the floor network's address, unless a local forwarder posts for them)")
    })
}

/// A JSON answer, counted by its status.
fn reply(code: StatusCode, body: Value) -> Response {
    finish(code, Json(body).into_response())
}

/// `r` with status `code`, counted, with the headers every intake answer carries.
fn finish(code: StatusCode, mut r: Response) -> Response {
    metrics::request(code.as_u16());
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if matches!(code.as_u16(), 503 | 507) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    }
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn error(code: StatusCode, message: String, field: Option<String>) -> Response {
    let mut body = json!({ "error": message });
    if let Some(f) = field {
        body["field"] = Value::String(f);
    }
    reply(code, body)
}

async fn scans(State(intake): State<Arc<Intake>>, req: Request) -> Response {
    let received = Instant::now();
    // Authentication before the body is read: a stranger costs a head, not a megabyte.
    if !intake
        .tokens
        .allows(req.headers().get(header::AUTHORIZATION))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown bearer token (hint: Authorization: Bearer TOKEN, a line of [intake] tokens_file)".into(),
            None,
        );
    }
    // A declared length over the limit is refused unread.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let posted = match parse::parse(&body) {
        Ok(p) => p,
        Err(BodyError::TooMany(n)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{n} scans; at most {} a request (hint: split the batch)",
                    parse::MAX_SCANS
                ),
                Some("scans".into()),
            )
        }
        Err(BodyError::Bad { field, message }) => {
            return error(
                StatusCode::BAD_REQUEST,
                if field.is_empty() {
                    message
                } else {
                    format!("{field}: {message}")
                },
                Some(field),
            )
        }
    };
    let mut scans = Vec::with_capacity(posted.len());
    for (i, p) in posted.into_iter().enumerate() {
        match intake.framed(p) {
            Ok(s) => scans.push(s),
            Err(why) => {
                let field = if body_is_batch(&body) {
                    format!("scans[{i}].step")
                } else {
                    "step".into()
                };
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{field}: {why}"),
                    Some(field),
                );
            }
        }
    }
    let mut kept = Vec::with_capacity(scans.len());
    let outcomes = match tokio::time::timeout(STORE_TIMEOUT, intake.submit(scans, &mut kept)).await {
        Ok(o) => o,
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store did not answer within {STORE_TIMEOUT:?}; resend: what was stored comes back as duplicate"),
                None,
            )
        }
    };
    let r = answer(&kept, outcomes);
    // The app's wait for the durable answer, beside the framed scanners' acks on /metrics.
    crate::observe::latency::HTTP_ACK_LATENCY.observe(received.elapsed());
    r
}

fn body_is_batch(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("scans").is_some())
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over {MAX_BODY} bytes (hint: fewer scans a request)"),
        None,
    )
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        // to_bytes says only "length limit exceeded" in its error's source chain.
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
            None,
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("body not received within {BODY_TIMEOUT:?}"),
            None,
        )),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// A scan, its code's refusal (if any), and the store's answer.
struct Submitted {
    scan: FramedScan,
    device: String,
    rejected: Option<String>,
}

/// What the answer says of a scan once the scan itself went to the writer.
struct Kept {
    seq: u64,
    device: String,
    rejected: Option<String>,
}

impl Intake {
    /// The posted scan as the writer takes it: its step resolved, its code checked.
    fn framed(&self, p: PostedScan) -> Result<Submitted, String> {
        let step = match (p.step, &p.station) {
            (Some(s), _) => s,
            (None, Some(st)) => *self.stations.get(st).ok_or_else(|| {
                format!("is missing, and station {st:?} has no step in [intake.stations]")
            })?,
            (None, None) => return Err("is missing (and no station to take it from)".into()),
        };
        let received_at_ms = crate::clock::now_ms();
        if crate::sources::bare_sscc(&p.code, p.symbology.as_deref()) {
            self.warn_bare_sscc(&p.device, &p.code);
        }
        let rejected = darkleg_protocol::check_code(&p.code)
            .err()
            .map(|e| e.to_string())
            .or_else(|| {
                (p.code.len() > darkleg_protocol::relay::MAX_CODE).then(|| {
                    format!(
                        "code is {} bytes; at most {}",
                        p.code.len(),
                        darkleg_protocol::relay::MAX_CODE
                    )
                })
            });
        Ok(Submitted {
            scan: FramedScan {
                seq: p.seq,
                step,
                code: p.code,
                symbology: p.symbology,
                operator: p.operator,
                captured_at_ms: p.captured_at_ms.unwrap_or(received_at_ms),
                station: p.station,
                received_at_ms,
                refused: rejected.is_some(),
                client: crate::store::SeqClient::App,
            },
            device: p.device,
            rejected,
        })
    }

    /// Once per device (the set bounded whatever names clients invent, as `registered`).
    fn warn_bare_sscc(&self, device: &str, code: &str) {
        let mut warned = self
            .bare_sscc_warned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if warned.len() >= 10_000 {
            warned.clear();
        }
        if warned.insert(device.to_string()) {
            crate::sources::warn_bare_sscc(PORT, device, code, "send its AIM identifier in \"symbology\" (\"]C1\" for a GS1-128 label), or have the scanner prefix it (DataWedge: Code ID Type = AIM); said once per device");
        }
    }

    /// Every scan to the writer at once, in one run of the queue (one group commit for a
    /// batch), then every answer. A device first seen since start says hello first, as a
    /// framed scanner would — in the same run, not a commit of its own ahead of the scans:
    /// the devices table names it with its source and firmware, its sequence state
    /// untouched. The scans move into the ops; what the answer needs stays in `keep`.
    async fn submit(
        &self,
        scans: Vec<Submitted>,
        keep: &mut Vec<Kept>,
    ) -> Vec<Result<FramedOutcome, StoreError>> {
        let new: Vec<String> = {
            let mut seen = self.registered.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded memory whatever names clients invent; a re-hello is harmless.
            if seen.len() > 100_000 {
                seen.clear();
            }
            let mut new = Vec::new();
            for s in &scans {
                // A batch is mostly one device: look before cloning its name.
                if !seen.contains(&s.device) {
                    seen.insert(s.device.clone());
                    new.push(s.device.clone());
                }
            }
            new
        };
        let mut ops = Vec::with_capacity(new.len() + scans.len());
        let mut hellos = Vec::with_capacity(new.len());
        for device in new {
            let (reply, rx) = oneshot::channel();
            ops.push(WriteOp::Hello {
                device: device.clone(),
                firmware: FIRMWARE.into(),
                port: PORT.into(),
                last_acked: 0,
                reply,
            });
            hellos.push((device, rx));
        }
        let mut pending = Vec::with_capacity(scans.len());
        for s in scans {
            keep.push(Kept {
                seq: s.scan.seq,
                device: s.device.clone(),
                rejected: s.rejected,
            });
            let (reply, rx) = oneshot::channel();
            ops.push(WriteOp::Framed {
                device: s.device,
                port: PORT.into(),
                scan: s.scan,
                reply,
            });
            pending.push(rx);
        }
        self.store.send_many(ops).await;
        for (device, rx) in hellos {
            if !matches!(rx.await, Ok(Ok(_))) {
                // Try again with the next request; the scans go on regardless.
                self.registered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&device);
            }
        }
        let mut out = Vec::with_capacity(pending.len());
        for rx in pending {
            out.push(
                rx.await
                    .unwrap_or_else(|_| Err(StoreError::new("writer", "stopped"))),
            );
        }
        out
    }
}

/// One scan's line in an answer.
#[derive(Serialize)]
struct ScanResult<'a> {
    device: &'a str,
    seq: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_seq: Option<u64>,
}

/// An answer's body, serialized straight from borrows (no `Value` per scan).
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_seq: Option<u64>,
    results: Vec<ScanResult<'a>>,
}

/// The answer for one request: 200 with every scan's result, unless a scan hit a store
/// failure (507 while full, else 503) or broke its device's sequence (409).
fn answer(scans: &[Kept], outcomes: Vec<Result<FramedOutcome, StoreError>>) -> Response {
    let mut results = Vec::with_capacity(scans.len());
    let (mut full, mut failed) = (false, None::<String>);
    let mut first_409: Option<(String, Option<u64>)> = None;
    for (s, outcome) in scans.iter().zip(outcomes) {
        let (seq, device) = (s.seq, s.device.as_str());
        let mut r = ScanResult {
            device,
            seq,
            status: "",
            reason: None,
            expected_seq: None,
        };
        r.status = match outcome {
            Ok(FramedOutcome::Stored { .. }) => "stored",
            // A resend of a scan whose code was refused is refused again, not "duplicate".
            Ok(FramedOutcome::Duplicate { .. } | FramedOutcome::Refused { .. })
                if s.rejected.is_some() =>
            {
                r.reason = s.rejected.as_deref().map(Cow::Borrowed);
                "rejected"
            }
            // Not refused by us: the seq names a different stored scan (counted as a
            // conflict on the device, as for a framed scanner that reused a seq).
            Ok(FramedOutcome::Refused { acked }) => {
                let why = format!("device {device}: seq {seq} already names a different scan (stored up to {acked}); not stored — number new scans after {acked}");
                first_409.get_or_insert_with(|| (why.clone(), None));
                r.reason = Some(why.into());
                "conflict"
            }
            Ok(FramedOutcome::Conflict { acked, why }) => {
                let why = match why {
                    Conflict::Unheld => format!("device {device}: seq {seq} is at or below its last ({acked}) and no stored scan is left to compare it with (was the app reinstalled?); not stored — number new scans after {acked}"),
                    Conflict::OtherSource => format!("device {device} is a scanner on another source of this gateway; not stored — give the app a device name of its own"),
                };
                first_409.get_or_insert_with(|| (why.clone(), None));
                r.reason = Some(why.into());
                "conflict"
            }
            Ok(FramedOutcome::Duplicate { .. }) => "duplicate",
            Ok(FramedOutcome::OutOfOrder { acked }) => {
                let expected = acked + 1;
                let why = format!("device {device}: seq {seq} is not the next; expected {expected} (resend from {expected})");
                first_409.get_or_insert_with(|| (why.clone(), Some(expected)));
                r.reason = Some(why.into());
                r.expected_seq = Some(expected);
                "gap"
            }
            Err(e) => {
                full |= e.full;
                let why = e.to_string();
                failed.get_or_insert_with(|| why.clone());
                r.reason = Some(why.into());
                "not_stored"
            }
        };
        metrics::scan(r.status);
        results.push(r);
    }
    let (code, error, expected_seq) = if let Some(why) = failed {
        if full {
            (
                StatusCode::INSUFFICIENT_STORAGE,
                Some(format!("the gateway's outbox is full; not stored: {why} (retry later; what was stored comes back as duplicate)")),
                None,
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(format!("not stored: {why} (retry later)")),
                None,
            )
        }
    } else if let Some((why, expected)) = first_409 {
        (StatusCode::CONFLICT, Some(why), expected)
    } else {
        (StatusCode::OK, None, None)
    };
    let body = Answer {
        error,
        expected_seq,
        results,
    };
    // Serializing borrowed strs and numbers into a Vec cannot fail.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    finish(
        code,
        ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, intake: &str) -> Config {
        let text = format!(
            "[gateway]\nsite = \"s\"\nid = \"gw-01\"\ndata_dir = \"/tmp/x\"\n\
             [http]\nlisten = \"{listen}\"\n{intake}\
             [[upstream]]\nname = \"a\"\nurl = \"mqtt://127.0.0.1:1\"\n"
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn tokens_on_a_loopback_listener_are_warned_about() {
        let tokens = "[intake]\ntokens_file = \"/etc/t\"\n";
        let w = loopback_warning(&config("127.0.0.1:9187", tokens));
        assert!(w.is_some_and(|w| w.contains("cannot reach")));
        assert_eq!(loopback_warning(&config("0.0.0.0:9187", tokens)), None);
        // A local forwarder without tokens on loopback is the intended setup.
        let open = "[intake]\nallow_unauthenticated = true\n";
        assert_eq!(loopback_warning(&config("127.0.0.1:9187", open)), None);
        assert_eq!(loopback_warning(&config("127.0.0.1:9187", "")), None);
    }
}
