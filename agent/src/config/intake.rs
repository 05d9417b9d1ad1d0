//! `[intake]`: the HTTP scan intake (`POST /v1/scans`) on the `[http]` listener.

use super::{ConfigError, Validator};
use darkleg_protocol::Step;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct Intake {
    /// One bearer token per line, `#` comments; read at start and on SIGHUP. `None` only
    /// with `allow_unauthenticated` on a loopback listener.
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain and key: the whole `[http]` listener speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The step a scan without `step` means, by its `station`.
    pub stations: BTreeMap<String, Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntake {
    tokens_file: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    allow_unauthenticated: Option<Spanned<bool>>,
    #[serde(default)]
    stations: BTreeMap<String, Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn intake(
        &self,
        raw: Option<Spanned<RawIntake>>,
        http: Option<SocketAddr>,
    ) -> Result<Option<Intake>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let Some(listen) = http else {
            return Err(self.err(
                &raw,
                "intake".into(),
                "needs an [http] listener".into(),
                "the intake is served on [http] listen: add [http] listen = \"0.0.0.0:9187\"",
            ));
        };
        let (at, raw) = (raw.span(), raw.into_inner());
        let open = match &raw.allow_unauthenticated {
            Some(v) if *v.get_ref() => {
                if !listen.ip().is_loopback() {
                    return Err(self.err(
                        v,
                        "intake.allow_unauthenticated".into(),
                        format!("is true but [http] listens on {listen}, not a loopback address"),
                        "anyone on the network could post scans: give a tokens_file, or listen on 127.0.0.1 (a local forwarder)",
                    ));
                }
                if let Some(t) = &raw.tokens_file {
                    return Err(self.err(
                        t,
                        "intake.tokens_file".into(),
                        "is set together with allow_unauthenticated = true".into(),
                        "pick one: tokens, or no authentication on a loopback listener",
                    ));
                }
                true
            }
            _ => false,
        };
        let path = |v: &Spanned<String>, key: &str| {
            if v.get_ref().trim().is_empty() {
                Err(self.err(v, key.into(), "is empty".into(), "a file path"))
            } else {
                Ok(PathBuf::from(v.get_ref()))
            }
        };
        let tokens_file = match &raw.tokens_file {
            Some(t) => Some(path(t, "intake.tokens_file")?),
            None if open => None,
            None => {
                return Err(ConfigError {
                    file: self.file.to_string(),
                    line: Some(super::line_of(self.text, at.start)),
                    key: "intake.tokens_file".into(),
                    message: "is missing".into(),
                    hint: "a file with one bearer token per line (# comments); without one, only allow_unauthenticated = true on a loopback [http] listener",
                })
            }
        };
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((path(c, "intake.tls_cert")?, path(k, "intake.tls_key")?)),
            (Some(c), None) => {
                return Err(self.err(
                    c,
                    "intake.tls_key".into(),
                    "is missing".into(),
                    "tls_cert needs its PEM private key in tls_key",
                ))
            }
            (None, Some(k)) => {
                return Err(self.err(
                    k,
                    "intake.tls_cert".into(),
                    "is missing".into(),
                    "tls_key needs its PEM certificate chain in tls_cert",
                ))
            }
        };
        let mut stations = BTreeMap::new();
        for (name, step) in raw.stations {
            let s = step.get_ref().parse::<Step>().map_err(|e| {
                self.err(
                    &step,
                    format!("intake.stations.{name}"),
                    format!("{:?}: {e}", step.get_ref()),
                    "the step a scan from this station means",
                )
            })?;
            stations.insert(name, s);
        }
        Ok(Some(Intake {
            tokens_file,
            tls,
            stations,
        }))
    }
}
