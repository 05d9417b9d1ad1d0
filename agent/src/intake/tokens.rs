//! Bearer tokens for the intake: one per line of `tokens_file`, `#` comments and blank lines
//! ignored, a token line with whitespace in it refused; read at start and again on SIGHUP (a
//! failed re-read keeps the tokens in force; a file emptied of tokens denies every request).
//! Tokens are never logged, only how many there are. Only SHA-256 digests are kept, and a
//! presented token's digest is compared with every configured one in constant time: timing
//! says nothing about how much of a token matched, nor how long the tokens are.

use axum::http::HeaderValue;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

pub struct Tokens {
    /// `None`: no authentication (loopback only, checked by the config).
    path: Option<PathBuf>,
    list: RwLock<Arc<Vec<Digest>>>,
}

type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The tokens in `path` (their digests); none if the file has none. A line with whitespace
/// inside is refused, naming the line: `abc  # tablets` would otherwise be one token with
/// the comment in it, and no device would ever match it.
fn read(path: &Path) -> Result<Vec<Digest>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "intake.tokens_file {}: {e} (hint: one bearer token per line; the agent's user must be able to read it)",
            path.display()
        )
    })?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.contains(char::is_whitespace) {
            return Err(format!(
                "intake.tokens_file {} line {}: a token with whitespace in it (hint: one token per line, alone; comments go on lines of their own, starting with #)",
                path.display(),
                i + 1
            ));
        }
        tokens.push(digest(l.as_bytes()));
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
            if list.is_empty() {
                return Err(format!(
                    "intake.tokens_file {}: no token in it (hint: one bearer token per line, e.g. from `openssl rand -hex 32`)",
                    p.display()
                ));
            }
            tracing::info!(tokens = list.len(), file = %p.display(), "intake tokens read");
        }
        Ok(Tokens {
            path,
            list: RwLock::new(Arc::new(list)),
        })
    }

    /// Re-reads the file. A file that cannot be read or has a bad line leaves the old
    /// tokens; one readable with no token in it revokes them all (emptying the file is how
    /// an operator locks every device out).
    pub fn reload(&self) {
        let Some(p) = &self.path else { return };
        match read(p) {
            Ok(list) => {
                if list.is_empty() {
                    tracing::warn!(file = %p.display(), "intake tokens re-read: the file has no token, so every POST /v1/scans is now answered 401 until tokens are added and the agent gets SIGHUP again");
                } else {
                    tracing::info!(tokens = list.len(), file = %p.display(), "intake tokens re-read");
                }
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
        let Some(given) = authorization.and_then(|h| bearer(h.as_bytes())) else {
            return false;
        };
        let given = digest(given);
        let list = self.list.read().unwrap_or_else(|e| e.into_inner()).clone();
        // No early exit: every token is compared, whichever matched.
        list.iter()
            .fold(subtle::Choice::from(0), |ok, t| ok | t.ct_eq(&given))
            .into()
    }
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 9110 11.1), spaces around the token are not part of it.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
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
        // The scheme is case-insensitive; the token is not.
        assert!(t.allows(Some(&h("bearer alpha-1"))));
        assert!(t.allows(Some(&h("BEARER  alpha-1"))));
        assert!(!t.allows(Some(&h("Bearer ALPHA-1"))));
        assert!(!t.allows(Some(&h("Bearer"))));
        assert!(!t.allows(Some(&h("Bearer "))));
        assert!(!t.allows(Some(&h("Beareralpha-1"))));
        assert!(!t.allows(Some(&h("Basic alpha-1"))));
        // An inline comment is refused with its line, at start and on a re-read (which keeps
        // the old tokens).
        std::fs::write(&f, "# handhelds\nalpha-1  # tablets\n").unwrap();
        let e = Tokens::load(Some(f.clone())).err().unwrap();
        assert!(e.contains("line 2") && !e.contains("alpha"), "{e}");
        t.reload();
        assert!(t.allows(Some(&h("Bearer alpha-1"))));
        assert!(!t.allows(Some(&h("Bearer alpha-1  # tablets"))));
        std::fs::write(&f, "gamma-3\n").unwrap();
        t.reload();
        assert!(!t.allows(Some(&h("Bearer alpha-1"))));
        assert!(t.allows(Some(&h("Bearer gamma-3"))));
        // A file emptied of tokens denies every request (at start it is an error).
        std::fs::write(&f, "# none left\n").unwrap();
        t.reload();
        assert!(!t.allows(Some(&h("Bearer gamma-3"))));
        assert!(Tokens::load(Some(f.clone())).is_err());
        // A file that cannot be read keeps what is in force.
        std::fs::write(&f, "delta-4\n").unwrap();
        t.reload();
        std::fs::remove_file(&f).unwrap();
        t.reload();
        assert!(t.allows(Some(&h("Bearer delta-4"))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
