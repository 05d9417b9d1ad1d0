//! Port patterns: a path, or a path whose last component holds `*` / `?` wildcards
//! (`/dev/ttyACM*`, `/dev/serial/by-id/usb-Zebra*`). Enough for device directories, without
//! a glob crate.

use std::path::Path;

/// Paths that currently match `pattern`, sorted. A plain path matches itself if it exists.
pub fn expand(pattern: &str) -> Vec<String> {
    let path = Path::new(pattern);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return if path.exists() {
            vec![pattern.to_string()]
        } else {
            Vec::new()
        };
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| matches(name.as_bytes(), n.as_bytes()))
        .map(|n| dir.join(n).to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// `*` matches any run, `?` any one byte; iterative with one backtrack point.
fn matches(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches(b"ttyACM*", b"ttyACM0"));
        assert!(matches(b"ttyACM*", b"ttyACM"));
        assert!(matches(b"tty?SB*", b"ttyUSB12"));
        assert!(matches(b"*Zebra*", b"usb-Zebra_DS2208-if00"));
        assert!(!matches(b"ttyACM*", b"ttyUSB0"));
        assert!(!matches(b"tty?", b"tty"));
    }

    #[test]
    fn expands_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("darkleg-glob-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["ttyACM1", "ttyACM0", "ttyUSB0"] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let got = expand(&format!("{}/ttyACM*", dir.display()));
        assert_eq!(
            got,
            vec![
                format!("{}/ttyACM0", dir.display()),
                format!("{}/ttyACM1", dir.display())
            ]
        );
        assert_eq!(expand(&format!("{}/ttyUSB0", dir.display())).len(), 1);
        assert!(expand(&format!("{}/nope", dir.display())).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
