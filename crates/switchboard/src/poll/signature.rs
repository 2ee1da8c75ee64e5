//! Track signatures: the application's backend vouches that a user may track some keys of a
//! shared-poll channel until an expiry. The signature is `issued:expiry:hmac`, where `hmac`
//! is the lowercase hex HMAC-SHA256, under `[shared_poll] hmac_secret`, of the NUL-joined
//! `issued`, `expiry`, user id, channel, and the hex SHA-256 of the NUL-joined keys in the
//! order the client sends them (docs/protocol.md). NUL separators keep a `:` in a user id or
//! channel from shifting bytes between fields.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How long after its expiry a signature is still accepted: clocks of the backend and the
/// gateway differ a little, and the SDK refreshes shortly before expiry, not exactly at it.
pub const EXPIRY_GRACE_SECS: u64 = 5;

/// Why a track signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not `issued:expiry:hmac`, or the HMAC does not match (error 103).
    #[error("bad track signature")]
    Invalid,
    /// Valid, but past its expiry and the grace (error 109: the SDK asks for a new one).
    #[error("track signature expired")]
    Expired,
}

/// What a checked signature says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
}

/// Checks `signature` for `user` tracking `keys` of `channel` at `now` (Unix seconds).
///
/// # Errors
/// [`SignatureError::Invalid`] for a malformed signature or a wrong HMAC (wrong secret, user,
/// channel or keys); [`SignatureError::Expired`] when `now` is past the expiry and the grace.
pub fn verify<'k>(
    secret: &[u8],
    signature: &str,
    user: &str,
    channel: &str,
    keys: impl IntoIterator<Item = &'k str>,
    now: u64,
) -> Result<Signed, SignatureError> {
    let mut parts = signature.splitn(3, ':');
    let (Some(issued), Some(expiry), Some(given)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SignatureError::Invalid);
    };
    let expires_at: u64 = expiry.parse().map_err(|_| SignatureError::Invalid)?;
    issued.parse::<u64>().map_err(|_| SignatureError::Invalid)?;
    let given = hex::decode(given).map_err(|_| SignatureError::Invalid)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::Invalid)?;
    mac.update(issued.as_bytes());
    mac.update(b"\0");
    mac.update(expiry.as_bytes());
    mac.update(b"\0");
    mac.update(user.as_bytes());
    mac.update(b"\0");
    mac.update(channel.as_bytes());
    mac.update(b"\0");
    mac.update(keys_hash(keys).as_bytes());
    // Constant time: a forger learns nothing from how long a refusal took.
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Invalid)?;
    if now > expires_at.saturating_add(EXPIRY_GRACE_SECS) {
        return Err(SignatureError::Expired);
    }
    Ok(Signed { expires_at })
}

/// The hex SHA-256 of the keys joined with NUL.
fn keys_hash<'k>(keys: impl IntoIterator<Item = &'k str>) -> String {
    let mut hasher = Sha256::new();
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            hasher.update(b"\0");
        }
        hasher.update(key.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the application's backend does (written from the description in
    /// docs/protocol.md, independently of `verify`).
    fn sign(
        secret: &str,
        issued: u64,
        expiry: u64,
        user: &str,
        channel: &str,
        keys: &[&str],
    ) -> String {
        let keys_hex = hex::encode(Sha256::digest(keys.join("\0").as_bytes()));
        let payload = format!("{issued}\0{expiry}\0{user}\0{channel}\0{keys_hex}");
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(payload.as_bytes());
        format!(
            "{issued}:{expiry}:{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_signature_made_as_documented_is_accepted() {
        let sig = sign("s3cret", NOW, NOW + 60, "u1", "poll:a", &["k1", "k2"]);
        let signed = verify(b"s3cret", &sig, "u1", "poll:a", ["k1", "k2"], NOW).unwrap();
        assert_eq!(signed.expires_at, NOW + 60);
    }

    #[test]
    fn anything_else_signed_is_invalid() {
        let sig = sign("s3cret", NOW, NOW + 60, "u1", "poll:a", &["k1", "k2"]);
        let bad = [
            verify(b"other", &sig, "u1", "poll:a", ["k1", "k2"], NOW),
            verify(b"s3cret", &sig, "u2", "poll:a", ["k1", "k2"], NOW),
            verify(b"s3cret", &sig, "u1", "poll:b", ["k1", "k2"], NOW),
            verify(b"s3cret", &sig, "u1", "poll:a", ["k2", "k1"], NOW),
            verify(b"s3cret", &sig, "u1", "poll:a", ["k1"], NOW),
            verify(b"s3cret", &sig, "u1", "poll:a", ["k1", "k2", "k3"], NOW),
        ];
        for result in bad {
            assert_eq!(result, Err(SignatureError::Invalid));
        }
    }

    #[test]
    fn fields_cannot_shift_between_user_and_channel() {
        let sig = sign("s", NOW, NOW + 60, "a", "b:c", &["k"]);
        assert_eq!(
            verify(b"s", &sig, "a:b", "c", ["k"], NOW),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn malformed_signatures_are_invalid() {
        for sig in [
            "",
            "invalid-signature",
            "1:2",
            "x:2:00",
            "1:y:00",
            "1:2:zz",
            "1:2:",
        ] {
            assert_eq!(
                verify(b"s", sig, "", "poll:a", ["k"], NOW),
                Err(SignatureError::Invalid),
                "{sig:?}"
            );
        }
    }

    #[test]
    fn expiry_is_enforced_after_the_grace() {
        let sig = sign("s", NOW - 120, NOW - 60, "", "poll:a", &["k"]);
        assert_eq!(
            verify(b"s", &sig, "", "poll:a", ["k"], NOW),
            Err(SignatureError::Expired)
        );
        let sig = sign(
            "s",
            NOW - 120,
            NOW - EXPIRY_GRACE_SECS,
            "",
            "poll:a",
            &["k"],
        );
        assert!(verify(b"s", &sig, "", "poll:a", ["k"], NOW).is_ok());
    }

    #[test]
    fn a_forged_expiry_breaks_the_hmac() {
        let sig = sign("s", NOW - 120, NOW - 60, "", "poll:a", &["k"]);
        let mut parts: Vec<&str> = sig.split(':').collect();
        let later = (NOW + 3600).to_string();
        parts[1] = &later;
        assert_eq!(
            verify(b"s", &parts.join(":"), "", "poll:a", ["k"], NOW),
            Err(SignatureError::Invalid)
        );
    }
}
