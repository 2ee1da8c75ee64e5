//! The names the engine uses in Redis, and the bytes of its pub/sub messages.
//!
//! Every key of one channel carries the channel in a hash tag (`{channel}`), so all of them
//! fall in one cluster slot and a Lua script may touch them together (a cluster mode stays
//! possible). Pub/sub channels: `<prefix>:p:<channel>` for publications, `<prefix>:j:<channel>`
//! for join/leave, `<prefix>:control` for control, `<prefix>:probe:<id>` per connection probe.
//!
//! A publication message is `<offset> <epoch>\n` then [`switchboard::broker::codec`] bytes
//! (offset 0 and an empty epoch without history); a join/leave message is `j` or `l` then the
//! client info's codec bytes; a control message is the caller's bytes as they are.

use std::sync::Arc;

use bytes::Bytes;
use switchboard::broker::codec;
use switchboard::publication::{ClientInfo, Publication};

/// The names of one engine's keys and channels.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream position hash (`e` epoch, `o` offset).
    pub(crate) fn meta(&self, channel: &str) -> String {
        format!("{}:meta:{{{channel}}}", self.prefix)
    }

    /// The kept publications (a Redis stream whose ids are `<offset>-0`).
    pub(crate) fn stream(&self, channel: &str) -> String {
        format!("{}:stream:{{{channel}}}", self.prefix)
    }

    /// A remembered idempotent publish's result.
    pub(crate) fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:idem:{{{channel}}}:{key}", self.prefix)
    }

    /// Presence: client id → codec bytes.
    pub(crate) fn presence(&self, channel: &str) -> String {
        format!("{}:presence:{{{channel}}}", self.prefix)
    }

    /// Presence: client id scored by its expiry (ms, Redis clock).
    pub(crate) fn presence_expiry(&self, channel: &str) -> String {
        format!("{}:presence-exp:{{{channel}}}", self.prefix)
    }

    /// The pub/sub channel of `channel`'s publications.
    pub(crate) fn publications(&self, channel: &str) -> String {
        format!("{}:p:{channel}", self.prefix)
    }

    /// The pub/sub channel of `channel`'s join/leave.
    pub(crate) fn join_leave(&self, channel: &str) -> String {
        format!("{}:j:{channel}", self.prefix)
    }

    /// The pub/sub channel every node's control messages go through.
    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The probe channel of one pub/sub connection.
    pub(crate) fn probe(&self, id: &str) -> String {
        format!("{}:probe:{id}", self.prefix)
    }

    /// What a pub/sub channel name is about.
    pub(crate) fn classify<'a>(&self, name: &'a str) -> Option<Topic<'a>> {
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        if let Some(channel) = rest.strip_prefix("p:") {
            Some(Topic::Publications(channel))
        } else if let Some(channel) = rest.strip_prefix("j:") {
            Some(Topic::JoinLeave(channel))
        } else if rest == "control" {
            Some(Topic::Control)
        } else if rest.starts_with("probe:") {
            Some(Topic::Probe)
        } else {
            None
        }
    }
}

/// What a pub/sub message is about.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Topic<'a> {
    Publications(&'a str),
    JoinLeave(&'a str),
    Control,
    Probe,
}

/// A pub/sub message that is not one of ours.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum MessageError {
    /// No `<offset> <epoch>\n` header.
    #[error("publication message without a header")]
    Header,
    /// The payload is not a codec message.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// Neither a join nor a leave.
    #[error("join/leave message of kind {0}")]
    Kind(u8),
}

/// A publication as it travels without history (offset 0, empty epoch).
pub(crate) fn publication_message(publication: &Publication) -> Bytes {
    let body = codec::encode_publication(publication);
    let mut message = Vec::with_capacity(body.len() + 3);
    message.extend_from_slice(b"0 \n");
    message.extend_from_slice(&body);
    Bytes::from(message)
}

/// The publication in a publication message, with its offset set, and its epoch.
pub(crate) fn read_publication(message: &[u8]) -> Result<(Arc<Publication>, String), MessageError> {
    let newline = message
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(MessageError::Header)?;
    let header = std::str::from_utf8(&message[..newline]).map_err(|_| MessageError::Header)?;
    let (offset, epoch) = header.split_once(' ').ok_or(MessageError::Header)?;
    let offset: u64 = offset.parse().map_err(|_| MessageError::Header)?;
    let mut publication = codec::decode_publication(&message[newline + 1..])?;
    publication.offset = offset;
    Ok((Arc::new(publication), epoch.to_owned()))
}

/// Whether a join/leave message is a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Join,
    Leave,
}

/// A join or leave message.
pub(crate) fn join_leave_message(kind: Presence, info: &ClientInfo) -> Bytes {
    let body = codec::encode_client_info(info);
    let mut message = Vec::with_capacity(body.len() + 1);
    message.push(match kind {
        Presence::Join => b'j',
        Presence::Leave => b'l',
    });
    message.extend_from_slice(&body);
    Bytes::from(message)
}

/// The kind and client of a join/leave message.
pub(crate) fn read_join_leave(message: &[u8]) -> Result<(Presence, Arc<ClientInfo>), MessageError> {
    let (&kind, body) = message.split_first().ok_or(MessageError::Kind(0))?;
    let kind = match kind {
        b'j' => Presence::Join,
        b'l' => Presence::Leave,
        other => return Err(MessageError::Kind(other)),
    };
    Ok((kind, Arc::new(codec::decode_client_info(body)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard::publication::PayloadKind;

    #[test]
    fn one_channels_keys_share_one_hash_tag() {
        let names = Names::new("sb");
        for key in [
            names.meta("a:b"),
            names.stream("a:b"),
            names.idempotency("a:b", "k"),
            names.presence("a:b"),
            names.presence_expiry("a:b"),
        ] {
            assert!(key.contains("{a:b}"), "{key}");
        }
    }

    #[test]
    fn channel_names_are_classified_back() {
        let names = Names::new("sb");
        assert_eq!(
            names.classify(&names.publications("x:y")),
            Some(Topic::Publications("x:y"))
        );
        assert_eq!(
            names.classify(&names.join_leave("x")),
            Some(Topic::JoinLeave("x"))
        );
        assert_eq!(names.classify(&names.control()), Some(Topic::Control));
        assert_eq!(names.classify(&names.probe("n1-0")), Some(Topic::Probe));
        assert_eq!(names.classify("other:p:x"), None);
    }

    #[test]
    fn messages_survive_the_trip_and_foreign_ones_are_errors() {
        let publication = Publication::from_payload(PayloadKind::Text, Bytes::from_static(b"hi"));
        let (back, epoch) = read_publication(&publication_message(&publication)).expect("ours");
        assert_eq!((back.offset, epoch.as_str()), (0, ""));
        assert_eq!(back.payload().1, &Bytes::from_static(b"hi"));
        let mut positioned = b"7 abc\n".to_vec();
        positioned.extend_from_slice(&codec::encode_publication(&publication));
        let (back, epoch) = read_publication(&positioned).expect("ours");
        assert_eq!((back.offset, epoch.as_str()), (7, "abc"));
        assert!(read_publication(b"no header").is_err());
        assert!(read_publication(b"x y\n").is_err());

        let info = ClientInfo::from_parts("c", "u", Bytes::new(), Bytes::new());
        let (kind, back) =
            read_join_leave(&join_leave_message(Presence::Leave, &info)).expect("ours");
        assert_eq!((kind, &*back), (Presence::Leave, &info));
        assert!(read_join_leave(b"").is_err());
        assert!(read_join_leave(b"x").is_err());
    }
}
