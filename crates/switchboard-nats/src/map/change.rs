//! What a map change carries beside its position: the headers of a keyed change (its key's
//! expiry, whether its map has expiring keys, the TTLs it was published with) and of its copy
//! in the index (the channel message it copies, when it was copied), and [`Change`], one
//! keyed change read back from either place.

use async_nats::HeaderMap;
use bytes::Bytes;
use switchboard::broker::codec::decode_publication;
use switchboard::broker::BrokerError;
use switchboard::publication::Publication;

use crate::error::protocol;
use crate::history::Top;
use crate::meta::{BadMeta, Meta};

pub(super) const KEY_EXPIRES: &str = "Sb-Key-Expires";
pub(super) const EXPIRING: &str = "Sb-Expiring";
pub(super) const HISTORY_TTL: &str = "Sb-History-Ttl";
pub(super) const META_TTL: &str = "Sb-Meta-Ttl";
pub(super) const SOURCE: &str = "Sb-Source";
/// When an index copy was stored (ms): copies older than half the stream's `max_age` are
/// stored again, so a key nobody touches outlives `max_age` as long as its map lives.
pub(super) const COPIED: &str = "Sb-Copied";
/// The most maps whose last pass a node remembers before it forgets them all (and passes
/// again once per map: harmless).
pub(super) const REMEMBERED_PASSES: usize = 4096;
/// On a removal marker (`remove_history`) of a map that has had keys with a TTL: position
/// checks still sweep it.
pub(super) const MAP: &str = "Sb-Map";

/// Marks a removal marker as one of a map that has had keys with a TTL.
pub(crate) fn mark_map(headers: &mut HeaderMap) {
    headers.insert(MAP, "1");
}

/// What a keyed change carries beside its [`Meta`]: when its key expires (0: never), whether
/// the map has had a key set with a TTL in this epoch (passed on from each change to the
/// next, so a position check reads the index of such maps only), and the history TTL and
/// meta TTL it was published with (a removal made by expiry is kept so).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Lifetimes {
    pub(super) key_expires_ms: u64,
    pub(super) expiring: bool,
    pub(super) history_ttl_ms: u64,
    pub(super) meta_ttl_ms: u64,
}

pub(super) fn number(headers: &HeaderMap, name: &'static str) -> Result<u64, BadMeta> {
    headers
        .get(name)
        .and_then(|value| value.as_str().parse().ok())
        .ok_or(BadMeta(name))
}

impl Lifetimes {
    pub(super) fn write(&self, headers: &mut HeaderMap) {
        headers.insert(KEY_EXPIRES, self.key_expires_ms.to_string());
        headers.insert(EXPIRING, if self.expiring { "1" } else { "0" });
        headers.insert(HISTORY_TTL, self.history_ttl_ms.to_string());
        headers.insert(META_TTL, self.meta_ttl_ms.to_string());
    }

    pub(super) fn read(headers: &HeaderMap) -> Result<Lifetimes, BadMeta> {
        Ok(Lifetimes {
            key_expires_ms: number(headers, KEY_EXPIRES)?,
            expiring: number(headers, EXPIRING)? != 0,
            history_ttl_ms: number(headers, HISTORY_TTL)?,
            meta_ttl_ms: number(headers, META_TTL)?,
        })
    }
}

/// One keyed change: a map channel's stored message, or its copy in the index.
pub(super) struct Change {
    /// The channel message's stream sequence (the copy's `Sb-Source`).
    pub(super) source: u64,
    /// For a copy in the index: its own sequence, and when it was stored.
    pub(super) copy: Option<(u64, u64)>,
    pub(super) meta: Meta,
    pub(super) lifetimes: Lifetimes,
    /// Decoded, its offset set.
    pub(super) publication: Publication,
    pub(super) payload: Bytes,
}

impl Change {
    /// The change a stored message is, if it is a keyed one; `sequence` is its own stream
    /// sequence, standing for the source when it carries none (a channel message).
    pub(super) fn of(
        what: &str,
        sequence: u64,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<Option<Change>, BrokerError> {
        let meta = Meta::read(headers).map_err(|e| protocol(what, e))?;
        if meta.removed {
            return Ok(None);
        }
        let mut publication = decode_publication(payload).map_err(|e| protocol(what, e))?;
        if publication.key.is_none() {
            return Ok(None);
        }
        publication.offset = meta.offset;
        let (source, copy) = match headers.get(SOURCE) {
            Some(_) => (
                number(headers, SOURCE).map_err(|e| protocol(what, e))?,
                // A copy without the time is as old as can be: stored again at the next pass.
                Some((sequence, number(headers, COPIED).unwrap_or(0))),
            ),
            None => (sequence, None),
        };
        Ok(Some(Change {
            source,
            copy,
            meta,
            lifetimes: Lifetimes::read(headers).map_err(|e| protocol(what, e))?,
            publication,
            payload: payload.clone(),
        }))
    }

    pub(super) fn key(&self) -> &str {
        self.publication.key.as_deref().unwrap_or_default()
    }

    /// Whether this sets a key whose time is up at `now`.
    pub(super) fn expired(&self, now: u64) -> bool {
        !self.publication.removed
            && self.lifetimes.key_expires_ms != 0
            && self.lifetimes.key_expires_ms <= now
    }
}

/// Whether `top` is a map channel's last message (a keyed change, or a marker on a map with
/// expiring keys).
pub(crate) fn is_map_top(top: &Top) -> bool {
    top.headers.get(EXPIRING).is_some() || top.headers.get(MAP).is_some()
}
