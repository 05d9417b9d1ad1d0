//! Certificates for TLS tests, made with the openssl CLI: a CA, a `localhost` server
//! certificate, client certificates for mTLS.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for `localhost` signed by it.
pub fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=darkleg test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    sign(
        dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost",
    );
}

/// `{name}.key` and `{name}.pem` signed by the test CA, with `ext` as its extensions (which
/// also make it an X.509 v3 certificate: rustls refuses v1).
pub fn sign(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), format!("{ext}\n")).unwrap();
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ],
    );
}

/// Everything a gateway `ams1-dock-1` needs against a broker demanding mTLS and passwords,
/// under `dir`: `certs/` (CA, `localhost` server, `client` certificate for ams1-dock-1), a
/// Mosquitto password file `passwd` and the gateway's own password file `pw`
/// (with [`crate::test_password`]). Returns (certs dir, passwd, pw).
pub fn gateway_credentials(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    sign(
        &certs,
        "client",
        "/CN=ams1-dock-1",
        "extendedKeyUsage=clientAuth",
    );
    let passwd = dir.join("passwd");
    crate::mosquitto_passwd(&passwd, &["ams1-dock-1"]);
    let pw = dir.join("pw");
    std::fs::write(&pw, format!("{}\n", crate::test_password("ams1-dock-1"))).unwrap();
    (certs, passwd, pw)
}
