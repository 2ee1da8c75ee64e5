//! What a kept publication carries beside its bytes: its offset and epoch, when it expires,
//! how long its channel's position lives, and the history size it was published with, as
//! headers of the stored (and republished) NATS message.
//!
//! The payload stays exactly what `switchboard::broker::codec` makes, so the headers are the
//! only thing this engine adds. Every kept message carries the position, so a channel's
//! position is the one of its last stored message and nothing else needs to be kept in step
//! with it. Times are Unix milliseconds on the publishing node's clock: nodes are expected to
//! agree on the time to well within the TTLs they use (NTP), because JetStream 2.9 has no
//! per-message TTL to lean on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;

const OFFSET: &str = "Sb-Offset";
const EPOCH: &str = "Sb-Epoch";
const EXPIRES: &str = "Sb-Expires";
const KEEP: &str = "Sb-Keep";
const SIZE: &str = "Sb-Size";
const REMOVED: &str = "Sb-Removed";

/// A message whose headers are not ours (a foreign publisher on our subjects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored message without a valid {0} header")]
pub struct BadMeta(pub &'static str);

/// The headers of one kept message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The publication's offset (for a removal marker: the offset it was placed at).
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: Box<str>,
    /// When the publication stops being served.
    pub expires_ms: u64,
    /// Until when the channel's position lives (if nothing is published after it).
    pub keep_ms: u64,
    /// How many publications the channel keeps, as of this one.
    pub size: u64,
    /// A marker (left by `remove_history`, or starting a stream for `stream_position`): no
    /// publication, and every earlier one is gone.
    pub removed: bool,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// `duration` in whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A fresh epoch: random, so a stream that was lost and started again never repeats one.
pub fn new_epoch() -> Box<str> {
    format!("{:016x}", fastrand::u64(..)).into()
}

fn number(headers: &HeaderMap, name: &'static str) -> Result<u64, BadMeta> {
    headers
        .get(name)
        .and_then(|value| value.as_str().parse().ok())
        .ok_or(BadMeta(name))
}

impl Meta {
    /// Whether the channel's position still stands at `now_ms`.
    pub fn alive(&self, now_ms: u64) -> bool {
        now_ms < self.keep_ms
    }

    /// Writes the headers into `headers`.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(OFFSET, self.offset.to_string());
        headers.insert(EPOCH, &*self.epoch);
        headers.insert(EXPIRES, self.expires_ms.to_string());
        headers.insert(KEEP, self.keep_ms.to_string());
        headers.insert(SIZE, self.size.to_string());
        if self.removed {
            headers.insert(REMOVED, "1");
        }
    }

    /// The headers in `headers`.
    ///
    /// # Errors
    /// [`BadMeta`] naming the first header missing or not a number.
    pub fn read(headers: &HeaderMap) -> Result<Meta, BadMeta> {
        let epoch = headers
            .get(EPOCH)
            .map(|value| value.as_str())
            .filter(|epoch| !epoch.is_empty())
            .ok_or(BadMeta(EPOCH))?;
        Ok(Meta {
            offset: number(headers, OFFSET)?,
            epoch: epoch.into(),
            expires_ms: number(headers, EXPIRES)?,
            keep_ms: number(headers, KEEP)?,
            size: number(headers, SIZE)?,
            removed: headers.get(REMOVED).is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for removed in [false, true] {
            let meta = Meta {
                offset: 7,
                epoch: new_epoch(),
                expires_ms: 10,
                keep_ms: 20,
                size: 3,
                removed,
            };
            let mut headers = HeaderMap::new();
            meta.write(&mut headers);
            assert_eq!(Meta::read(&headers), Ok(meta));
        }
    }

    #[test]
    fn a_foreign_message_is_an_error() {
        assert_eq!(Meta::read(&HeaderMap::new()), Err(BadMeta(EPOCH)));
        let mut headers = HeaderMap::new();
        headers.insert(EPOCH, "e");
        headers.insert(OFFSET, "x");
        assert_eq!(Meta::read(&headers), Err(BadMeta(OFFSET)));
    }
}
