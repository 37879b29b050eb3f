//! JWT verification for `VerifyJwt` effects, with the keys the bundle carries.
//!
//! A token's own `alg` is never trusted: only the algorithms the policy lists are accepted,
//! each key is typed (RSA, EC, Ed25519 or a shared secret) and used only by algorithms of
//! its family, so `alg: none` and HS/RS confusion fail. `exp` is required; `nbf`, `iss` and
//! `aud` are checked with the policy's leeway (at most five minutes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgepack_bundles::plan::JwtPlan;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;

/// The most clock skew a policy may allow.
const MAX_LEEWAY_S: u64 = 300;

/// A verification key with the id it may be selected by.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// One `jwt` provider of the plan, ready to verify tokens.
#[derive(Clone)]
pub struct JwtVerifier {
    name: String,
    algorithms: Vec<Algorithm>,
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway_s: u64,
    require: Vec<String>,
}

/// Why a token was refused (sent to the client in `WWW-Authenticate`, so kept vague).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("no key verifies the token")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer or audience is not accepted")]
    Claims,
    #[error("the token lacks the claim `{0}`")]
    MissingClaim(String),
}

/// The fewest bytes a shared secret may have (RFC 7518 3.2: at least the hash's size).
const MIN_SECRET_BYTES: usize = 32;

/// The most bytes a shared secret may have: HMAC keys are tens of bytes; a file far larger
/// is the wrong one, and is not read whole.
const MAX_SECRET_BYTES: usize = 4096;

/// Reads at most two bytes more than a secret may have: room for a trailing CRLF, and
/// enough to tell a larger file.
fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_BYTES as u64 + 2)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The HS shared secrets this node holds, by the names policies give them (`secret "NAME"`):
/// `--jwt-secret NAME=FILE`, else the environment variable `EDGEPACK_JWT_SECRET_<NAME>` (upper
/// case, `-` as `_`). Read each time a bundle is activated, so a replaced file counts from
/// the next bundle on.
#[derive(Clone, Debug, Default)]
pub struct NodeSecrets {
    files: BTreeMap<String, PathBuf>,
    /// Where a secret is missing, verify without it instead of refusing the bundle: for
    /// `edgepack test`, which runs a policy's tests without the nodes' secrets.
    missing_ok: bool,
}

impl NodeSecrets {
    pub fn new(files: impl IntoIterator<Item = (String, PathBuf)>) -> NodeSecrets {
        NodeSecrets {
            files: files.into_iter().collect(),
            missing_ok: false,
        }
    }

    /// These secrets, with the ones missing left out rather than refusing a bundle.
    pub fn missing_ok(mut self) -> NodeSecrets {
        self.missing_ok = true;
        self
    }

    /// The environment variable a secret may be given in.
    pub fn env_name(name: &str) -> String {
        let suffix: String = name
            .chars()
            .map(|c| match c {
                '-' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect();
        format!("EDGEPACK_JWT_SECRET_{suffix}")
    }

    /// The secret's bytes (a file's trailing newline left out); `None` when the node lacks it
    /// and may.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let env = NodeSecrets::env_name(name);
        let mut bytes = match self.files.get(name) {
            Some(path) => read_secret_file(path)
                .map_err(|e| format!("--jwt-secret {name}={}: {e}", path.display()))?,
            None => match std::env::var_os(&env) {
                Some(value) => value.into_encoded_bytes(),
                None if self.missing_ok => return Ok(None),
                None => {
                    // A name given in another spelling is the likely mistake: say which the
                    // node has.
                    let given = if self.files.is_empty() {
                        String::new()
                    } else {
                        let names: Vec<&str> = self.files.keys().map(String::as_str).collect();
                        format!("; it was given {}", names.join(", "))
                    };
                    return Err(format!(
                        "this node has no secret `{name}` (give it with --jwt-secret {name}=FILE or in {env}){given}"
                    ));
                }
            },
        };
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the secret `{name}` has more than {MAX_SECRET_BYTES} bytes: is it the right file?"
            ));
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret `{name}` has {} bytes; an HS secret needs at least {MIN_SECRET_BYTES}",
                bytes.len()
            ));
        }
        Ok(Some(bytes))
    }
}

/// The verified claims of a token.
pub type Claims = BTreeMap<String, Value>;

impl JwtVerifier {
    /// Builds the verifier from the plan, the bundle's files and the node's secrets.
    pub fn new(
        plan: &JwtPlan,
        files: &BTreeMap<String, Vec<u8>>,
        secrets: &NodeSecrets,
    ) -> Result<JwtVerifier, String> {
        let algorithms = plan
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|_| format!("jwt {}: unknown algorithm {a}", plan.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = Vec::new();
        for path in &plan.keys {
            let bytes = files.get(path).ok_or_else(|| {
                format!("jwt {}: the bundle lacks the key file {path}", plan.name)
            })?;
            keys.extend(
                parse_keys(bytes, &algorithms)
                    .map_err(|e| format!("jwt {}: key {path}: {e}", plan.name))?,
            );
        }
        for name in &plan.secrets {
            if let Some(secret) = secrets
                .read(name)
                .map_err(|e| format!("jwt {}: {e}", plan.name))?
            {
                keys.push(Key {
                    kid: None,
                    family: AlgorithmFamily::Hmac,
                    key: DecodingKey::from_secret(&secret),
                });
            }
        }
        // A provider left without keys by secrets allowed to be missing refuses every token.
        let left_without_secrets = secrets.missing_ok && !plan.secrets.is_empty();
        if keys.is_empty() && !left_without_secrets {
            return Err(format!("jwt {}: no usable key", plan.name));
        }
        Ok(JwtVerifier {
            name: plan.name.clone(),
            algorithms,
            keys,
            issuer: plan.issuer.clone(),
            audience: plan.audience.clone(),
            leeway_s: (plan.leeway_ms / 1000).min(MAX_LEEWAY_S),
            require: plan.require.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a bearer token; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let family = header.alg.family();
        let mut last = TokenError::Signature;
        for key in self.keys.iter().filter(|k| k.family == family) {
            if let (Some(wanted), Some(kid)) = (&header.kid, &key.kid)
                && wanted != kid
            {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    if let Some(missing) =
                        self.require.iter().find(|c| !data.claims.contains_key(*c))
                    {
                        return Err(TokenError::MissingClaim(missing.clone()));
                    }
                    return Ok(data.claims);
                }
                Err(error) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match error.kind() {
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                            return Err(TokenError::Claims);
                        }
                        ErrorKind::MissingRequiredClaim(claim) => {
                            return Err(TokenError::MissingClaim(claim.clone()));
                        }
                        ErrorKind::InvalidToken
                        | ErrorKind::Base64(_)
                        | ErrorKind::Json(_)
                        | ErrorKind::Utf8(_) => TokenError::Malformed,
                        _ => TokenError::Signature,
                    };
                }
            }
        }
        Err(last)
    }
}

/// The keys in one key file: a PEM public key or certificate, a JWK or a JWK Set.
fn parse_keys(bytes: &[u8], algorithms: &[Algorithm]) -> Result<Vec<Key>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let jwks: Vec<Jwk> = match serde_json::from_str::<JwkSet>(trimmed) {
            Ok(set) => set.keys,
            Err(_) => {
                vec![serde_json::from_str::<Jwk>(trimmed).map_err(|e| format!("not a JWK: {e}"))?]
            }
        };
        return jwks
            .iter()
            .map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWK: {e}"))?;
                Ok(Key {
                    kid: jwk.common.key_id.clone(),
                    family: key.family(),
                    key,
                })
            })
            .collect();
    }
    // A PEM key: try the families the policy's algorithms need.
    let mut families: Vec<AlgorithmFamily> = algorithms.iter().map(|a| a.family()).collect();
    families.dedup();
    for family in families {
        let key = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(bytes),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(bytes),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(bytes),
            AlgorithmFamily::Hmac => continue,
        };
        if let Ok(key) = key {
            return Ok(vec![Key {
                kid: None,
                family,
                key,
            }]);
        }
    }
    Err("not a public key any listed algorithm can use".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(secrets: &[&str]) -> JwtPlan {
        JwtPlan {
            id: 0,
            name: "partners".into(),
            algorithms: vec!["HS256".into()],
            keys: Vec::new(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            issuer: None,
            audience: Vec::new(),
            leeway_ms: 0,
            require: Vec::new(),
            source: edgepack_bundles::plan::Source {
                file: "edgepack.kdl".into(),
                line: 1,
                column: 1,
            },
        }
    }

    #[test]
    fn node_secrets_are_named_for_flags_and_the_environment() {
        assert_eq!(
            NodeSecrets::env_name("partner-hmac_2"),
            "EDGEPACK_JWT_SECRET_PARTNER_HMAC_2"
        );
    }

    #[test]
    fn a_short_or_missing_node_secret_refuses_the_provider() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        std::fs::write(&short, "too short\n").expect("write");
        let secrets = NodeSecrets::new([("short".to_string(), short)]);
        let files = BTreeMap::new();
        let error = JwtVerifier::new(&plan(&["short"]), &files, &secrets)
            .err()
            .expect("refused");
        assert!(error.contains("has 9 bytes"), "{error}");
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'x'; 1 << 20]).expect("write");
        let error = JwtVerifier::new(
            &plan(&["huge"]),
            &files,
            &NodeSecrets::new([("huge".to_string(), huge)]),
        )
        .err()
        .expect("refused");
        assert!(error.contains("more than 4096 bytes"), "{error}");
        let error = JwtVerifier::new(&plan(&["edgepack-test-absent"]), &files, &secrets)
            .err()
            .expect("refused");
        assert!(
            error.contains("EDGEPACK_JWT_SECRET_EDGEPACK_TEST_ABSENT"),
            "{error}"
        );
        assert!(error.ends_with("; it was given short"), "{error}");
        // Where missing secrets are allowed, the provider refuses every token instead.
        let lenient = secrets.missing_ok();
        let verifier = JwtVerifier::new(&plan(&["edgepack-test-absent"]), &files, &lenient)
            .expect("a verifier without keys");
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({ "sub": "acme", "exp": 4_000_000_000u64 }),
            &jsonwebtoken::EncodingKey::from_secret(b"any secret at all, of 32 bytes or more"),
        )
        .expect("an HS256 token");
        assert_eq!(verifier.verify(&token), Err(TokenError::Signature));
    }
}
