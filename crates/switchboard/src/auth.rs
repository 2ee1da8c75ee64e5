//! Token verification at the handshake (and minting, for development).
//!
//! Tokens are JWTs. The accepted algorithm is pinned by configuration: a token whose header
//! names any other algorithm (including `none`) is refused, so there is no algorithm switching.
//! `exp` and `nbf` are honoured when present (no leeway) and must be whole numbers of seconds;
//! `aud` and `iss` are checked when configured; `sub` is the user id (empty = anonymous user
//! with a valid token). A subscription token (one with a `channel` claim) is not a connection
//! token, and the reverse. The token itself is never logged.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{TokenAlgorithm, TokenConfig};

/// The claims Switchboard reads from a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Client protocol: channels the server subscribes the connection to at connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Client protocol: any JSON shown to others as the connection's (or, in a subscription
    /// token, the subscription's) info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Subscription tokens: the one channel the token grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// What a token whose header or claims do not decode as expected is refused with.
const NOT_THE_EXPECTED_JSON: &str = "the token's header or claims are not the expected JSON \
     (a string `sub`; `exp` and `nbf` whole numbers of seconds)";

/// What [`TokenVerifier::verify`] decodes: the claims, and `nbf` read once more as a whole
/// number. jsonwebtoken skips an `nbf` it cannot read as one (`1.9e9`, `1e400`, a string)
/// instead of refusing the token, which would let a token meant for later be used at once;
/// reading it here too makes such a token malformed, as the same `exp` already is.
#[derive(Deserialize)]
struct Decoded {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default, rename = "nbf")]
    _nbf: Option<u64>,
}

/// Why a token was refused. The text is safe to show the client and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else: bad signature, wrong algorithm, malformed, no key configured.
    #[error("{0}")]
    Invalid(String),
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key file could not be read.
    #[error("cannot read token.public_key_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM did not hold a key of the configured kind.
    #[error("token.public_key_file {path} is not a {algorithm} public key in PEM: {message}")]
    Pem {
        /// The file.
        path: String,
        /// The configured algorithm.
        algorithm: &'static str,
        /// The parser's message.
        message: String,
    },
}

/// Verifies tokens with the one configured algorithm and key.
#[derive(Clone)]
pub struct TokenVerifier {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

fn algorithm(config: TokenAlgorithm) -> Algorithm {
    match config {
        TokenAlgorithm::HS256 => Algorithm::HS256,
        TokenAlgorithm::RS256 => Algorithm::RS256,
        TokenAlgorithm::ES256 => Algorithm::ES256,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenVerifier {
    /// Builds the verifier from configuration. With no secret and no key file, every token is
    /// refused (and anonymous access is all that can work).
    ///
    /// # Errors
    /// [`KeyError`] when the public key file cannot be read or parsed.
    pub fn from_config(config: &TokenConfig) -> Result<Self, KeyError> {
        let alg = algorithm(config.algorithm);
        let key = match (config.algorithm, &config.public_key_file) {
            (TokenAlgorithm::HS256, _) if config.hmac_secret.is_empty() => None,
            (TokenAlgorithm::HS256, _) => {
                Some(DecodingKey::from_secret(config.hmac_secret.0.as_bytes()))
            }
            (_, None) => None,
            (kind, Some(path)) => {
                let shown = path.display().to_string();
                let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: shown.clone(),
                    source,
                })?;
                let parsed = match kind {
                    TokenAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    _ => DecodingKey::from_ec_pem(&pem),
                };
                Some(parsed.map_err(|e| KeyError::Pem {
                    path: shown,
                    algorithm: if kind == TokenAlgorithm::RS256 {
                        "RS256"
                    } else {
                        "ES256"
                    },
                    message: e.to_string(),
                })?)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        Ok(TokenVerifier { key, validation })
    }

    /// Whether any token can be verified at all.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Verifies a token and returns its claims.
    ///
    /// # Errors
    /// A short reason (safe to show the client and to log): bad signature, wrong algorithm,
    /// expired, malformed, or no key configured.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let Some(key) = &self.key else {
            return Err(TokenError::Invalid(
                "no token key is configured on this server".to_owned(),
            ));
        };
        jsonwebtoken::decode::<Decoded>(token, key, &self.validation)
            .map(|data| data.claims.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    TokenError::Invalid("bad signature".to_owned())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    TokenError::Invalid("algorithm not allowed".to_owned())
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    TokenError::Invalid("token not valid yet (nbf)".to_owned())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    TokenError::Invalid("wrong audience".to_owned())
                }
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    TokenError::Invalid("wrong issuer".to_owned())
                }
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::Invalid(format!("missing claim {claim}"))
                }
                jsonwebtoken::errors::ErrorKind::Json(_) => {
                    TokenError::Invalid(NOT_THE_EXPECTED_JSON.to_owned())
                }
                // Every other kind means the text is not a JWT at all; the kind's own name
                // (`InvalidToken`, `Base64`, ...) is the library's, not the user's.
                _ => TokenError::Invalid(
                    "not a JSON Web Token (expected three base64url parts: \
                     header.payload.signature)"
                        .to_owned(),
                ),
            })
    }

    /// Verifies a connection token: a subscription token (with a `channel`) is refused.
    ///
    /// # Errors
    /// As [`TokenVerifier::verify`].
    pub fn verify_connection(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.verify(token)?;
        if claims.channel.is_some() {
            return Err(TokenError::Invalid(
                "a subscription token is not a connection token".to_owned(),
            ));
        }
        Ok(claims)
    }

    /// Verifies a subscription token: it must name a `channel`.
    ///
    /// # Errors
    /// As [`TokenVerifier::verify`].
    pub fn verify_subscription(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.verify(token)?;
        if claims.channel.is_none() {
            return Err(TokenError::Invalid(
                "a connection token is not a subscription token".to_owned(),
            ));
        }
        Ok(claims)
    }
}

/// Mints an HS256 token for `user`, valid for `ttl_secs` (0 = no expiry). For development and
/// tests; production tokens come from the application's backend.
///
/// # Errors
/// When the secret is empty or encoding fails.
pub fn mint_hs256(secret: &str, user: &str, ttl_secs: u64) -> Result<String, String> {
    let claims = Claims {
        sub: user.to_owned(),
        exp: (ttl_secs > 0).then(|| unix_now() + ttl_secs),
        ..Claims::default()
    };
    mint_claims_hs256(secret, &claims)
}

/// Mints an HS256 token holding `claims` (channels, info, a subscription token's channel).
/// For development and tests.
///
/// # Errors
/// When the secret is empty or encoding fails.
pub fn mint_claims_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    if secret.is_empty() {
        return Err("token.hmac_secret is not set".to_owned());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn hs_config(secret: &str) -> TokenConfig {
        TokenConfig {
            hmac_secret: Secret(secret.into()),
            ..TokenConfig::default()
        }
    }

    #[test]
    fn minted_token_verifies_with_the_same_secret_only() {
        let token = mint_hs256("s3cret-s3cret-s3cret", "42", 60).unwrap();
        let verifier = TokenVerifier::from_config(&hs_config("s3cret-s3cret-s3cret")).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().sub, "42");
        let other = TokenVerifier::from_config(&hs_config("another-secret")).unwrap();
        assert_eq!(
            other.verify(&token),
            Err(TokenError::Invalid("bad signature".into()))
        );
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret-s3cret-s3cret"),
        )
        .unwrap()
    }

    #[test]
    fn a_token_used_before_its_nbf_is_refused() {
        let verifier = TokenVerifier::from_config(&hs_config("s3cret-s3cret-s3cret")).unwrap();
        let later = signed(serde_json::json!({ "sub": "1", "nbf": unix_now() + 600 }));
        assert_eq!(
            verifier.verify(&later),
            Err(TokenError::Invalid("token not valid yet (nbf)".into()))
        );
        let now = signed(serde_json::json!({ "sub": "1", "nbf": unix_now() - 1 }));
        assert_eq!(verifier.verify(&now).unwrap().sub, "1");
    }

    /// Found by the `token` fuzz target (fuzz/corpus/token/nbf-exponent): jsonwebtoken skipped
    /// an `nbf` that is not a whole number, so the token was accepted at once.
    #[test]
    fn a_token_whose_nbf_is_not_a_whole_number_is_refused() {
        let verifier = TokenVerifier::from_config(&hs_config("s3cret-s3cret-s3cret")).unwrap();
        let later = (unix_now() + 600) as f64 + 0.5;
        for nbf in [
            serde_json::json!(1699e99),
            serde_json::json!(later),
            serde_json::json!("0"),
        ] {
            let token = signed(serde_json::json!({ "sub": "1", "nbf": nbf }));
            assert_eq!(
                verifier.verify(&token),
                Err(TokenError::Invalid(NOT_THE_EXPECTED_JSON.into())),
                "nbf {nbf}"
            );
        }
        let whole = signed(serde_json::json!({ "sub": "1", "nbf": unix_now() - 1 }));
        assert_eq!(
            verifier.verify(&whole).unwrap().sub,
            "1",
            "a whole nbf still works"
        );
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let config = TokenConfig {
            audience: Some("switchboard".into()),
            issuer: Some("https://auth.example".into()),
            ..hs_config("s3cret-s3cret-s3cret")
        };
        let verifier = TokenVerifier::from_config(&config).unwrap();
        let good = signed(serde_json::json!({
            "sub": "1", "aud": ["other", "switchboard"], "iss": "https://auth.example"
        }));
        assert_eq!(verifier.verify(&good).unwrap().sub, "1");
        let wrong_aud = signed(
            serde_json::json!({ "sub": "1", "aud": "other", "iss": "https://auth.example" }),
        );
        assert!(verifier.verify(&wrong_aud).is_err());
        let no_iss = signed(serde_json::json!({ "sub": "1", "aud": "switchboard" }));
        assert!(verifier.verify(&no_iss).is_err());
        let unchecked = TokenVerifier::from_config(&hs_config("s3cret-s3cret-s3cret")).unwrap();
        assert!(
            unchecked.verify(&wrong_aud).is_ok(),
            "not configured: not checked"
        );
    }

    #[test]
    fn subscription_and_connection_tokens_are_not_interchangeable() {
        let verifier = TokenVerifier::from_config(&hs_config("s3cret-s3cret-s3cret")).unwrap();
        let subscription = signed(serde_json::json!({ "sub": "1", "channel": "news" }));
        let connection = signed(serde_json::json!({ "sub": "1" }));
        assert!(verifier.verify_connection(&subscription).is_err());
        assert!(verifier.verify_subscription(&connection).is_err());
        assert!(verifier.verify_connection(&connection).is_ok());
        assert!(verifier.verify_subscription(&subscription).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let claims = Claims {
            sub: "1".into(),
            exp: Some(unix_now() - 10),
            ..Claims::default()
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let verifier = TokenVerifier::from_config(&hs_config("k")).unwrap();
        assert_eq!(verifier.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn another_algorithm_is_refused_even_with_the_right_secret() {
        let claims = Claims {
            sub: "1".into(),
            exp: None,
            ..Claims::default()
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let verifier = TokenVerifier::from_config(&hs_config("k")).unwrap();
        assert_eq!(
            verifier.verify(&token),
            Err(TokenError::Invalid("algorithm not allowed".into()))
        );
    }

    #[test]
    fn alg_none_is_refused() {
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"1"}, empty signature
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIn0.";
        let verifier = TokenVerifier::from_config(&hs_config("k")).unwrap();
        assert!(verifier.verify(token).is_err());
    }

    #[test]
    fn no_key_refuses_everything() {
        let verifier = TokenVerifier::from_config(&TokenConfig::default()).unwrap();
        let token = mint_hs256("k", "1", 0).unwrap();
        assert!(verifier.verify(&token).is_err());
    }
}
