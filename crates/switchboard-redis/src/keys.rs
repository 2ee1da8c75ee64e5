//! The names the engine uses in Redis, and the bytes of its pub/sub messages.
//!
//! Every key of one channel carries the channel in a hash tag (`{channel}`), so all of them
//! fall in one cluster slot and a Lua script may touch them together. Pub/sub channels:
//! `<prefix>:p:<channel>` for publications, `<prefix>:j:<channel>` for join/leave,
//! `<prefix>:control` for control, `<prefix>:probe:<id>` per connection probe.
//!
//! On a Redis Cluster ([`Names::sharded`]) the pub/sub channels are sharded ones and carry
//! the same tag as the channel's keys (`<prefix>:p:{=<channel>}`, `<prefix>:j:{=<channel>}`,
//! control on `<prefix>:{control}`), so a channel's publications travel through the master
//! that holds its stream. The tag gets a leading `=` there: Redis ignores an empty tag, so a
//! channel starting with `}` would otherwise hash each name whole and scatter its keys over
//! slots. Without a cluster the names stay as they were (existing data keeps its keys).
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
    /// Sharded pub/sub on a Redis Cluster (see the module doc).
    sharded: bool,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            sharded: false,
        }
    }

    /// The names on a Redis Cluster: pub/sub channels tagged like the channel's keys.
    pub(crate) fn sharded(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            sharded: true,
        }
    }

    /// The command that publishes to one of these pub/sub channels.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// `channel`'s hash tag, braces included.
    fn tag(&self, channel: &str) -> String {
        if self.sharded {
            format!("{{={channel}}}")
        } else {
            format!("{{{channel}}}")
        }
    }

    /// The stream position hash (`e` epoch, `o` offset).
    pub(crate) fn meta(&self, channel: &str) -> String {
        format!("{}:meta:{}", self.prefix, self.tag(channel))
    }

    /// The kept publications (a Redis stream whose ids are `<offset>-0`).
    pub(crate) fn stream(&self, channel: &str) -> String {
        format!("{}:stream:{}", self.prefix, self.tag(channel))
    }

    /// A remembered idempotent publish's result.
    pub(crate) fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:idem:{}:{key}", self.prefix, self.tag(channel))
    }

    /// A map channel's values: key → `<offset> <codec bytes>` of its latest publication.
    pub(crate) fn map_values(&self, channel: &str) -> String {
        format!("{}:map:{}", self.prefix, self.tag(channel))
    }

    /// A map channel's keys, in a sorted set of equal scores (walked in bytewise order).
    pub(crate) fn map_keys(&self, channel: &str) -> String {
        format!("{}:map-keys:{}", self.prefix, self.tag(channel))
    }

    /// A map channel's keys set with a TTL, scored by when they expire (ms, Redis clock).
    pub(crate) fn map_expiry(&self, channel: &str) -> String {
        format!("{}:map-exp:{}", self.prefix, self.tag(channel))
    }

    /// The keys of `channel` every map-aware script names, in the order `scripts::map_lua`
    /// expects: meta, stream, map values, map keys, map expiry.
    pub(crate) fn stream_keys(&self, channel: &str) -> [String; 5] {
        [
            self.meta(channel),
            self.stream(channel),
            self.map_values(channel),
            self.map_keys(channel),
            self.map_expiry(channel),
        ]
    }

    /// Presence: client id → codec bytes.
    pub(crate) fn presence(&self, channel: &str) -> String {
        format!("{}:presence:{}", self.prefix, self.tag(channel))
    }

    /// Presence: client id scored by its expiry (ms, Redis clock).
    pub(crate) fn presence_expiry(&self, channel: &str) -> String {
        format!("{}:presence-exp:{}", self.prefix, self.tag(channel))
    }

    /// The pub/sub channel of `channel`'s publications.
    pub(crate) fn publications(&self, channel: &str) -> String {
        if self.sharded {
            format!("{}:p:{}", self.prefix, self.tag(channel))
        } else {
            format!("{}:p:{channel}", self.prefix)
        }
    }

    /// The pub/sub channel of `channel`'s join/leave.
    pub(crate) fn join_leave(&self, channel: &str) -> String {
        if self.sharded {
            format!("{}:j:{}", self.prefix, self.tag(channel))
        } else {
            format!("{}:j:{channel}", self.prefix)
        }
    }

    /// The pub/sub channel every node's control messages go through.
    pub(crate) fn control(&self) -> String {
        if self.sharded {
            format!("{}:{{control}}", self.prefix)
        } else {
            format!("{}:control", self.prefix)
        }
    }

    /// The probe channel of one pub/sub connection.
    pub(crate) fn probe(&self, id: &str) -> String {
        format!("{}:probe:{id}", self.prefix)
    }

    /// What a pub/sub channel name is about.
    pub(crate) fn classify<'a>(&self, name: &'a str) -> Option<Topic<'a>> {
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        let untag = |tagged: &'a str| {
            if self.sharded {
                tagged.strip_prefix("{=")?.strip_suffix('}')
            } else {
                Some(tagged)
            }
        };
        let control = if self.sharded { "{control}" } else { "control" };
        if let Some(channel) = rest.strip_prefix("p:") {
            untag(channel).map(Topic::Publications)
        } else if let Some(channel) = rest.strip_prefix("j:") {
            untag(channel).map(Topic::JoinLeave)
        } else if rest == control {
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
            names.map_values("a:b"),
            names.map_keys("a:b"),
            names.map_expiry("a:b"),
        ] {
            assert!(key.contains("{a:b}"), "{key}");
        }
    }

    /// Channels whose names play with braces, the `=` marker and separators.
    const AWKWARD: [&str; 10] = [
        "x:y", "}x", "}", "a}b", "{", "a{b}c", "{}", "=}", "{=a}", "p:j:",
    ];

    #[test]
    fn on_a_cluster_every_key_and_pubsub_channel_of_one_channel_is_in_one_slot() {
        let names = Names::sharded("sb");
        for channel in AWKWARD {
            // Every key a script names (the idempotency key too, whatever the caller's key),
            // and the pub/sub channels the publish script and subscribers use.
            let all = [
                names.meta(channel),
                names.stream(channel),
                names.idempotency(channel, ""),
                names.idempotency(channel, "}{k}"),
                names.presence(channel),
                names.presence_expiry(channel),
                names.map_values(channel),
                names.map_keys(channel),
                names.map_expiry(channel),
                names.publications(channel),
                names.join_leave(channel),
            ];
            let slot = crate::hash::slot(all[0].as_bytes());
            for name in &all {
                assert_eq!(
                    crate::hash::slot(name.as_bytes()),
                    slot,
                    "{channel:?}: {name}"
                );
            }
        }
        // Without the marker a channel starting with `}` would scatter (why it is there).
        let plain = Names::new("sb");
        assert_ne!(
            crate::hash::slot(plain.meta("}x").as_bytes()),
            crate::hash::slot(plain.stream("}x").as_bytes())
        );
    }

    #[test]
    fn sharded_names_are_classified_back_and_stay_distinct() {
        let names = Names::sharded("sb");
        let mut seen = std::collections::HashSet::new();
        for channel in AWKWARD {
            assert_eq!(
                names.classify(&names.publications(channel)),
                Some(Topic::Publications(channel))
            );
            assert_eq!(
                names.classify(&names.join_leave(channel)),
                Some(Topic::JoinLeave(channel))
            );
            assert!(seen.insert(names.meta(channel)), "{channel:?} shares a key");
            assert!(
                seen.insert(names.map_keys(channel)),
                "{channel:?} shares a key"
            );
        }
        assert_eq!(names.classify(&names.control()), Some(Topic::Control));
        assert_eq!(names.classify(&names.probe("{t-1}")), Some(Topic::Probe));
        assert_eq!(names.classify("sb:p:x"), None, "not a sharded name");
        assert_eq!(names.publish_command(), "SPUBLISH");
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
