//! Names on the NATS server: how a channel name becomes one subject token, and every subject,
//! stream and bucket this engine uses under the configured prefix.
//!
//! A channel name may hold characters NATS gives a meaning to (`.` separates tokens, `*` and
//! `>` are wildcards, white space ends a subject) and KV keys allow even fewer
//! (`[-/_=.a-zA-Z0-9]`), so every name becomes a single token of ASCII letters, digits, `-`
//! and `_`: letters, digits and `-` stay as they are and every other byte is written `_XX`
//! (two upper-case hex digits). `_` itself is escaped, so the mapping is reversible, and the
//! empty name is written `_`, which no other name gives. The same token is valid in a subject
//! and in a KV key.

use std::fmt::Write as _;

/// A token that [`escape`] did not produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an escaped token: {0:?}")]
pub struct BadToken(pub Box<str>);

/// `name` as one subject token (and KV key token).
pub fn escape(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    let mut token = String::with_capacity(name.len());
    for &byte in name.as_bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(token, "_{byte:02X}");
        }
    }
    token
}

/// The name [`escape`] turned into `token`.
///
/// # Errors
/// [`BadToken`] when `token` is not something [`escape`] returns.
pub fn unescape(token: &str) -> Result<String, BadToken> {
    let bad = || BadToken(token.into());
    if token == "_" {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut name = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'_' => {
                let hex = token.get(at + 1..at + 3).ok_or_else(bad)?;
                // Only upper-case hex, so each name has exactly one token.
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return Err(bad());
                }
                let byte = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                if byte.is_ascii_alphanumeric() || byte == b'-' {
                    return Err(bad());
                }
                name.push(byte);
                at += 3;
            }
            byte if byte.is_ascii_alphanumeric() || byte == b'-' => {
                name.push(byte);
                at += 1;
            }
            _ => return Err(bad()),
        }
    }
    String::from_utf8(name).map_err(|_| bad())
}

/// What a message on a channel's delivery subject is; the last token of the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A publication (with offset headers when it was kept).
    Publication,
    /// A join.
    Join,
    /// A leave.
    Leave,
}

impl Delivery {
    fn token(self) -> &'static str {
        match self {
            Delivery::Publication => "p",
            Delivery::Join => "j",
            Delivery::Leave => "l",
        }
    }

    /// The kind named by a delivery subject's last token.
    pub fn from_subject(subject: &str) -> Option<Delivery> {
        match subject.rsplit('.').next()? {
            "p" => Some(Delivery::Publication),
            "j" => Some(Delivery::Join),
            "l" => Some(Delivery::Leave),
            _ => None,
        }
    }
}

/// Every name this engine uses on the server, derived from the configured prefix.
///
/// - `{prefix}.ch.{channel}.{p|j|l}`: what nodes receive for a channel; a node subscribes
///   `{prefix}.ch.{channel}.*` while it has local subscribers.
/// - `{prefix}.st.{channel}`: kept publications, captured by the history stream, which
///   republishes each stored one to `{prefix}.ch.{channel}.p`; nodes never subscribe these.
/// - `{prefix}.mk.{channel}.{key}`: a map channel's index, each key's latest change, in the
///   history stream too (not republished).
/// - `{prefix}.control`: control messages, which every node subscribes.
/// - Stream `{PREFIX}_history`, buckets `{PREFIX}_presence` and `{PREFIX}_idempotency`, where
///   `PREFIX` is the prefix with every character a stream name may not hold replaced by `_`.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    resource: String,
}

impl Names {
    /// The names under `prefix` (a subject prefix, one or more tokens).
    pub fn new(prefix: &str) -> Self {
        let resource = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Names {
            prefix: prefix.to_owned(),
            resource,
        }
    }

    /// Where `kind` messages of `channel` are delivered.
    pub fn delivery(&self, channel: &str, kind: Delivery) -> String {
        format!("{}.ch.{}.{}", self.prefix, escape(channel), kind.token())
    }

    /// What a node subscribes for `channel`: every delivery kind.
    pub fn deliveries(&self, channel: &str) -> String {
        format!("{}.ch.{}.*", self.prefix, escape(channel))
    }

    /// Where `channel`'s kept publications are stored.
    pub fn stored(&self, channel: &str) -> String {
        format!("{}.st.{}", self.prefix, escape(channel))
    }

    /// The stream's subjects.
    pub fn stored_all(&self) -> String {
        format!("{}.st.*", self.prefix)
    }

    /// Where map channel `channel`'s index keeps key `key`'s latest change (see
    /// [`crate::map`]); in the history stream, never republished.
    pub fn map_key(&self, channel: &str, key: &str) -> String {
        format!("{}.mk.{}.{}", self.prefix, escape(channel), escape(key))
    }

    /// Every key of map channel `channel`'s index.
    pub fn map_keys(&self, channel: &str) -> String {
        format!("{}.mk.{}.*", self.prefix, escape(channel))
    }

    /// The stream's map index subjects.
    pub fn map_all(&self) -> String {
        format!("{}.mk.*.*", self.prefix)
    }

    /// Where the stream republishes what it stored (a subject transform of [`Self::stored_all`]).
    pub fn republished(&self) -> String {
        format!("{}.ch.{{{{wildcard(1)}}}}.p", self.prefix)
    }

    /// The control subject.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The history stream.
    pub fn stream(&self) -> String {
        format!("{}_history", self.resource)
    }

    /// The presence bucket.
    pub fn presence_bucket(&self) -> String {
        format!("{}_presence", self.resource)
    }

    /// The idempotency bucket.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_idempotency", self.resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_awkward_name_round_trips_through_one_plain_token() {
        for name in [
            "",
            "_",
            "chat",
            "news:sport",
            "a.b.c",
            "*",
            ">",
            "with space",
            "#user,1",
            "__5F",
            "ünïcödé",
            "tab\there",
            "A-Z_09",
        ] {
            let token = escape(name);
            assert!(!token.is_empty());
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token:?} is a plain token"
            );
            assert_eq!(unescape(&token).as_deref(), Ok(name), "{name:?}");
        }
    }

    #[test]
    fn different_names_give_different_tokens() {
        assert_ne!(escape("a_2E"), escape("a.b"));
        assert_ne!(escape("_"), escape(""));
        assert_ne!(escape("a.b"), escape("a_b"));
    }

    #[test]
    fn tokens_not_made_by_escape_are_refused() {
        for token in ["a.b", "_2e", "_41", "_", "_Z9", "a_", "a_4", "x y"] {
            if token == "_" {
                continue;
            }
            assert!(unescape(token).is_err(), "{token:?}");
        }
    }

    #[test]
    fn subjects_keep_the_channel_in_one_token() {
        let names = Names::new("sb.test");
        assert_eq!(names.delivery("a.b", Delivery::Join), "sb.test.ch.a_2Eb.j");
        assert_eq!(names.deliveries("x"), "sb.test.ch.x.*");
        assert_eq!(names.stored("*"), "sb.test.st._2A");
        assert_eq!(names.stream(), "sb_test_history");
        assert_eq!(
            Delivery::from_subject(&names.delivery("c", Delivery::Leave)),
            Some(Delivery::Leave)
        );
    }
}
