//! JWT verification for `VerifyJwt` effects, with the keys the bundle carries.
//!
//! A token's own `alg` is never trusted: only the algorithms the policy lists are accepted,
//! each key is typed (RSA, EC, Ed25519 or a shared secret) and used only by algorithms of
//! its family, so `alg: none` and HS/RS confusion fail. `exp` is required; `nbf`, `iss` and
//! `aud` are checked with the policy's leeway (at most five minutes).

use std::collections::BTreeMap;

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

/// The verified claims of a token.
pub type Claims = BTreeMap<String, Value>;

impl JwtVerifier {
    /// Builds the verifier from the plan and the bundle's files.
    pub fn new(plan: &JwtPlan, files: &BTreeMap<String, Vec<u8>>) -> Result<JwtVerifier, String> {
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
        if keys.is_empty() {
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
