//! Standard Webhooks 1.0 signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//! the key being the base64 after `whsec_`. Several keys (one per line of the secret) give
//! several space-separated signatures, so a receiver can rotate keys without a gap.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::hmac;

/// The signing keys. `Debug` shows how many, never what they are.
pub struct Keys(Vec<hmac::Key>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} key(s))", self.0.len())
    }
}

impl Keys {
    /// One `whsec_…` per line; blank lines and `#` comments are skipped. Errors name the
    /// line, never its content.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(b64) = line.strip_prefix("whsec_") else {
                return Err(format!(
                    "line {}: does not start with whsec_ (a Standard Webhooks secret is whsec_ + base64)",
                    i + 1
                ));
            };
            let raw = B64
                .decode(b64)
                .map_err(|_| format!("line {}: the part after whsec_ is not base64", i + 1))?;
            if raw.len() < 16 {
                return Err(format!(
                    "line {}: the key is {} bytes; use at least 16 (24-64 is usual)",
                    i + 1,
                    raw.len()
                ));
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &raw));
        }
        if keys.is_empty() {
            return Err("no whsec_ secret in it".into());
        }
        Ok(Keys(keys))
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.to_string().as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        self.0
            .iter()
            .map(|k| format!("v1,{}", B64.encode(hmac::sign(k, &signed).as_ref())))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    /// The Standard Webhooks reference libraries' own test vector.
    #[test]
    fn matches_the_reference_vector() {
        let k = Keys::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        assert_eq!(
            k.signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_keys_sign_with_each_and_bad_lines_are_named_not_shown() {
        let k = Keys::parse(
            "# current\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_c2Vjb25kLWtleS0xMjM0NTY3OA==\n",
        )
        .unwrap();
        let sig = k.signature("msg_1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        let e = Keys::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nhunter2-not-a-secret\n")
            .unwrap_err();
        assert!(e.starts_with("line 2") && !e.contains("hunter2"), "{e}");
        assert!(Keys::parse("whsec_!!!!")
            .unwrap_err()
            .contains("not base64"));
        assert!(Keys::parse("\n# nothing\n").is_err());
        assert!(!format!("{k:?}").contains("MfKQ"));
    }
}
