//! Bearer tokens for the intake: one per line of `tokens_file`, `#` comments and blank lines
//! ignored; read at start and again on SIGHUP (a failed re-read keeps the tokens in force).
//! Tokens are never logged, only how many there are; a presented token is compared with
//! every configured one in constant time, so timing says nothing about how much matched.

use axum::http::HeaderValue;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

pub struct Tokens {
    /// `None`: no authentication (loopback only, checked by the config).
    path: Option<PathBuf>,
    list: RwLock<Arc<Vec<Vec<u8>>>>,
    /// Registered at load, so a SIGHUP right after start re-reads rather than kills.
    hup: std::sync::Mutex<Option<tokio::signal::unix::Signal>>,
}

/// The tokens in `path`; at least one.
fn read(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "intake.tokens_file {}: {e} (hint: one bearer token per line; the agent's user must be able to read it)",
            path.display()
        )
    })?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(format!(
            "intake.tokens_file {}: no token in it (hint: one bearer token per line, e.g. from `openssl rand -hex 32`)",
            path.display()
        ));
    }
    Ok(tokens)
}

impl Tokens {
    pub fn load(path: Option<PathBuf>) -> Result<Tokens, String> {
        let list = match &path {
            Some(p) => read(p)?,
            None => Vec::new(),
        };
        if let Some(p) = &path {
            tracing::info!(tokens = list.len(), file = %p.display(), "intake tokens read");
        }
        use tokio::signal::unix::{signal, SignalKind};
        let hup = match (&path, tokio::runtime::Handle::try_current()) {
            (Some(_), Ok(_)) => {
                match signal(SignalKind::hangup()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!("intake: cannot watch SIGHUP ({e}): tokens are re-read only at a restart");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(Tokens {
            path,
            list: RwLock::new(Arc::new(list)),
            hup: std::sync::Mutex::new(hup),
        })
    }

    /// Re-reads the file; on failure the old tokens stay.
    pub fn reload(&self) {
        let Some(p) = &self.path else { return };
        match read(p) {
            Ok(list) => {
                tracing::info!(tokens = list.len(), file = %p.display(), "intake tokens re-read");
                *self.list.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
            }
            Err(e) => tracing::error!("{e}; the tokens read before stay in force"),
        }
    }

    /// Whether `authorization` (`Bearer TOKEN`) carries a configured token.
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        if self.path.is_none() {
            return true;
        }
        let Some(given) = authorization
            .map(HeaderValue::as_bytes)
            .and_then(|h| h.strip_prefix(b"Bearer "))
        else {
            return false;
        };
        let list = self.list.read().unwrap_or_else(|e| e.into_inner()).clone();
        // No early exit: every token is compared, whichever matched.
        list.iter()
            .fold(subtle::Choice::from(0), |ok, t| {
                ok | t.as_slice().ct_eq(given)
            })
            .into()
    }

    /// Re-reads the file on each SIGHUP, for as long as the agent runs.
    pub async fn reload_on_sighup(self: Arc<Self>) {
        let hup = self.hup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut hup) = hup {
            while hup.recv().await.is_some() {
                self.reload();
            }
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines_comments_and_bearer() {
        let dir = std::env::temp_dir().join(format!("darkleg-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, "# handhelds\n  alpha-1  \n\nbeta-2\n").unwrap();
        let t = Tokens::load(Some(f.clone())).unwrap();
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(t.allows(Some(&h("Bearer alpha-1"))));
        assert!(t.allows(Some(&h("Bearer beta-2"))));
        assert!(!t.allows(Some(&h("Bearer alpha-"))));
        assert!(!t.allows(Some(&h("Bearer # handhelds"))));
        assert!(!t.allows(Some(&h("alpha-1"))));
        assert!(!t.allows(None));
        std::fs::write(&f, "# none left\n").unwrap();
        t.reload();
        assert!(
            t.allows(Some(&h("Bearer alpha-1"))),
            "a bad re-read keeps the old tokens"
        );
        std::fs::write(&f, "gamma-3\n").unwrap();
        t.reload();
        assert!(!t.allows(Some(&h("Bearer alpha-1"))));
        assert!(t.allows(Some(&h("Bearer gamma-3"))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
