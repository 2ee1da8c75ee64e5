//! The token parser and verifier: `auth::TokenVerifier` (HS256, as configured by default)
//! given hostile tokens.
//!
//! Input: a settings byte, then either a whole token (raw mode), or a JOSE header and a
//! claims payload separated by a newline, which the target signs with the configured secret
//! so the claims get past the signature and into the claim checks. Checked beyond "no panic":
//! - a raw token is never accepted unless it carries a valid signature;
//! - an accepted token's header names HS256 (no algorithm switching, no `none`);
//! - an accepted token is not expired and not yet-to-be-valid: any `exp` or `nbf` the payload
//!   holds as a number (RFC 7519 NumericDate: an integer or not) is honoured;
//! - with an audience or issuer configured, an accepted token carries it;
//! - `verify_connection` never accepts a token with a `channel`, `verify_subscription` never
//!   one without.

#![no_main]

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use switchboard::auth::{unix_now, TokenVerifier};
use switchboard::config::{Secret, TokenConfig};

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";

fn verifier(settings: u8) -> TokenVerifier {
    let config = TokenConfig {
        hmac_secret: Secret(SECRET.to_owned()),
        audience: (settings & 0x02 != 0).then(|| "switchboard".to_owned()),
        issuer: (settings & 0x04 != 0).then(|| "https://issuer.example".to_owned()),
        ..TokenConfig::default()
    };
    TokenVerifier::from_config(&config).expect("an HS256 secret needs no file")
}

/// A JSON object's members as written. Raw text, not `Value`: a claim the verifier skips
/// (an unknown one holding `1e400`, say) must not stop the checks.
type Members = HashMap<String, Box<RawValue>>;

/// A claim as a number of seconds, if it is a JSON number (`1e400` reads as infinity).
fn numeric(claims: &Members, name: &str) -> Option<f64> {
    let raw = claims.get(name)?.get();
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        .then(|| raw.parse().ok())
        .flatten()
}

fn holds(claims: &Members, name: &str, wanted: &str) -> bool {
    let value = claims
        .get(name)
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
    match value {
        Some(Value::String(one)) => one == wanted,
        Some(Value::Array(many)) => many.iter().any(|v| v.as_str() == Some(wanted)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let [settings, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let verifier = verifier(*settings);
    let before = unix_now();

    if settings & 0x01 == 0 {
        // Raw: whatever arrives in `?token=`, `Authorization` or a `connect` command.
        let result = verifier.verify(text);
        if result.is_ok() {
            let (signed, signature) = text.rsplit_once('.').expect("a JWT has dots");
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            let expected = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::HS256);
            assert_eq!(
                expected.ok().as_deref(),
                Some(signature),
                "forged token accepted"
            );
        }
        let _ = verifier.verify_connection(text);
        let _ = verifier.verify_subscription(text);
        return;
    }

    // Signed: the claims checks behind a valid signature.
    let (header, payload) = text
        .split_once('\n')
        .unwrap_or((r#"{"alg":"HS256"}"#, text));
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(signature) = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::HS256)
    else {
        return;
    };
    let token = format!("{signed}.{signature}");

    let accepted = verifier.verify(&token);
    if let Ok(claims) = &accepted {
        let header: Members = serde_json::from_str(header).expect("an accepted header is JSON");
        let alg = header
            .get("alg")
            .map(|raw| serde_json::from_str::<String>(raw.get()));
        assert_eq!(alg.and_then(Result::ok).as_deref(), Some("HS256"));
        // Keys the verifier read may still fail here (a lone surrogate escape, say): skip.
        let Ok(payload) = serde_json::from_str::<Members>(payload) else {
            return;
        };
        // Seconds are whole in `unix_now`; a fractional date counts from its whole part.
        if let Some(exp) = numeric(&payload, "exp") {
            assert!(
                exp.floor() >= before as f64,
                "expired token accepted: {payload:?}"
            );
        }
        if let Some(nbf) = numeric(&payload, "nbf") {
            assert!(
                nbf.floor() <= unix_now() as f64,
                "premature token accepted: {payload:?}"
            );
        }
        if settings & 0x02 != 0 {
            assert!(holds(&payload, "aud", "switchboard"), "{payload:?}");
        }
        if settings & 0x04 != 0 {
            assert!(
                holds(&payload, "iss", "https://issuer.example"),
                "{payload:?}"
            );
        }
        assert_eq!(claims.exp.map(|e| e as f64), numeric(&payload, "exp"));
    }
    if let Ok(claims) = verifier.verify_connection(&token) {
        assert!(claims.channel.is_none());
    }
    if let Ok(claims) = verifier.verify_subscription(&token) {
        assert!(claims.channel.is_some());
    }
});
