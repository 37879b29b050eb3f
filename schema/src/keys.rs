//! Recognising JWT verification keys (PEM or JWK) well enough to check them against the
//! algorithms a policy lists.
//!
//! This does not verify anything: the node does that with a full JWT library. It only reads
//! which kind of key a file holds, so a mismatch (an EC key for RS256, a private key where a
//! public key belongs) is a `check` error instead of a 401 in production.

use base64::Engine;

use crate::policy::KeyKind;

const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];

/// Whether `name` can name a node secret: it becomes a node flag's `NAME=FILE` and an
/// environment variable's suffix, so 1 to 64 ASCII letters, digits, `-` and `_`, starting
/// with a letter or digit.
pub fn valid_secret_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Which kind of key `contents` holds, or why it is not a usable public key.
pub fn classify(contents: &[u8]) -> Result<KeyKind, String> {
    let text = std::str::from_utf8(contents).map_err(|_| "the file is not text".to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with("-----BEGIN") {
        classify_pem(trimmed)
    } else if trimmed.starts_with('{') {
        classify_jwk(trimmed)
    } else {
        Err("neither PEM nor JWK".into())
    }
}

fn classify_pem(text: &str) -> Result<KeyKind, String> {
    let first_line = text.lines().next().unwrap_or_default();
    let label = first_line
        .trim()
        .trim_start_matches("-----BEGIN ")
        .trim_end_matches("-----")
        .to_string();
    if label.contains("PRIVATE") {
        return Err("it holds a private key; give the policy only the public key".into());
    }
    let end_marker = format!("-----END {label}-----");
    let Some(end) = text.find(&end_marker) else {
        return Err(format!("missing `{end_marker}`"));
    };
    let body: String = text[first_line.len()..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the PEM body is not valid base64".to_string())?;
    match label.as_str() {
        "RSA PUBLIC KEY" => Ok(KeyKind::Rsa),
        "PUBLIC KEY" | "CERTIFICATE" => key_kind_of_der(&der)
            .ok_or_else(|| "unsupported key type (use RSA, EC P-256/P-384 or Ed25519)".to_string()),
        other => Err(format!("unexpected PEM block `{other}`")),
    }
}

fn key_kind_of_der(der: &[u8]) -> Option<KeyKind> {
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if has(OID_ED25519) {
        Some(KeyKind::Ed25519)
    } else if has(OID_EC) {
        if has(OID_P256) {
            Some(KeyKind::EcP256)
        } else if has(OID_P384) {
            Some(KeyKind::EcP384)
        } else {
            None
        }
    } else if has(OID_RSA) {
        Some(KeyKind::Rsa)
    } else {
        None
    }
}

fn classify_jwk(text: &str) -> Result<KeyKind, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON ({e})"))?;
    let keys: Vec<&serde_json::Value> = match value.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("`keys` is not an array".into()),
        None => vec![&value],
    };
    let mut kind = None;
    for key in keys {
        let this = jwk_kind(key)?;
        if kind.is_some_and(|k| k != this) {
            return Err("the JWK set mixes key types; use one file per kind".into());
        }
        kind = Some(this);
    }
    kind.ok_or_else(|| "the JWK set is empty".to_string())
}

fn jwk_kind(key: &serde_json::Value) -> Result<KeyKind, String> {
    let field = |name: &str| key.get(name).and_then(|v| v.as_str());
    let kty = field("kty").ok_or("a JWK needs `kty`")?;
    if kty != "oct" && key.get("d").is_some() {
        return Err("it holds a private key; give the policy only the public key".into());
    }
    match (kty, field("crv")) {
        ("RSA", _) if field("n").is_some() && field("e").is_some() => Ok(KeyKind::Rsa),
        ("EC", Some("P-256")) if field("x").is_some() && field("y").is_some() => {
            Ok(KeyKind::EcP256)
        }
        ("EC", Some("P-384")) if field("x").is_some() && field("y").is_some() => {
            Ok(KeyKind::EcP384)
        }
        ("OKP", Some("Ed25519")) if field("x").is_some() => Ok(KeyKind::Ed25519),
        ("oct", _) => {
            let k = field("k").ok_or("an `oct` JWK needs `k`")?;
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k.trim_end_matches('='))
                .map_err(|_| "`k` is not base64url".to_string())?;
            if secret.len() < 32 {
                return Err("the shared secret is shorter than 32 bytes".into());
            }
            Ok(KeyKind::Secret)
        }
        _ => Err(format!("unsupported or incomplete `{kty}` key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9
q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==
-----END PUBLIC KEY-----
";

    #[test]
    fn recognises_key_kinds() {
        assert_eq!(classify(EC_PUB.as_bytes()), Ok(KeyKind::EcP256));
        let jwk =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert_eq!(classify(jwk.as_bytes()), Ok(KeyKind::Ed25519));
        let secret = r#"{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0"}"#;
        assert_eq!(classify(secret.as_bytes()), Ok(KeyKind::Secret));
    }

    #[test]
    fn refuses_private_and_garbage() {
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(
            classify(private.as_bytes())
                .unwrap_err()
                .contains("private")
        );
        assert!(classify(b"hello").is_err());
        assert!(classify(&[0xff, 0xfe]).is_err());
        let short = r#"{"kty":"oct","k":"c2hvcnQ"}"#;
        assert!(classify(short.as_bytes()).is_err());
    }
}
