//! One channel's history: its last publications with increasing offsets under an epoch, and
//! the two questions asked of it, recovery ("what did I miss after offset N?") and the
//! history call ("the last N publications").
//!
//! Pure data, no locks and no clock of its own: the broker holds one [`ChannelHistory`] per
//! channel behind its lock and passes the time in. Publications are kept for `history_ttl`
//! each and at most `history_size` of them; the stream position (epoch and last offset)
//! outlives them, so a client that missed nothing recovers even after they expired. A gap
//! that cannot be filled is reported, never skipped.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::publication::Publication;

/// A channel's stream position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The offset of the last publication (0 before the first).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: Box<str>,
}

/// Why a range of the stream cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unrecoverable position")]
pub struct Unrecoverable;

/// What a history call asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Most publications returned (`None`: all kept).
    pub limit: Option<usize>,
    /// Only publications after this position (before it, with `reverse`).
    pub since: Option<(u64, String)>,
    /// Newest first.
    pub reverse: bool,
}

struct Entry {
    expires_ms: u64,
    publication: Arc<Publication>,
}

/// The kept publications of one channel.
pub struct ChannelHistory {
    epoch: Box<str>,
    top: u64,
    entries: VecDeque<Entry>,
    last_publish_ms: u64,
}

/// A fresh random epoch.
fn new_epoch() -> Box<str> {
    format!("{:08x}", fastrand::u32(..)).into()
}

impl ChannelHistory {
    /// An empty stream with a new epoch.
    pub fn new(now_ms: u64) -> Self {
        ChannelHistory {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            last_publish_ms: now_ms,
        }
    }

    /// The stream position.
    pub fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    /// The offset the next publication gets.
    pub fn next_offset(&self) -> u64 {
        self.top + 1
    }

    /// Keeps `publication` (whose offset must be [`next_offset`](Self::next_offset)) for
    /// `ttl_ms`, dropping the oldest past `size`.
    pub fn append(&mut self, publication: Arc<Publication>, size: usize, ttl_ms: u64, now_ms: u64) {
        debug_assert_eq!(publication.offset, self.top + 1);
        self.top = publication.offset;
        self.last_publish_ms = now_ms;
        self.entries.push_back(Entry {
            expires_ms: now_ms.saturating_add(ttl_ms),
            publication,
        });
        while self.entries.len() > size {
            self.entries.pop_front();
        }
        self.prune(now_ms);
    }

    /// Drops expired publications.
    pub fn prune(&mut self, now_ms: u64) {
        while self
            .entries
            .front()
            .is_some_and(|entry| entry.expires_ms <= now_ms)
        {
            self.entries.pop_front();
        }
    }

    /// Whether the whole stream (position included) may be forgotten: nothing kept and no
    /// publication for `meta_ttl_ms`.
    pub fn is_stale(&self, now_ms: u64, meta_ttl_ms: u64) -> bool {
        self.entries.is_empty() && now_ms.saturating_sub(self.last_publish_ms) >= meta_ttl_ms
    }

    /// Publications kept right now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every kept publication (the position stays, so recovery across it fails).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Every publication after `offset` in `epoch` (an empty epoch matches any), or
    /// [`Unrecoverable`] when some of them are no longer kept or the epoch differs.
    pub fn recover(
        &self,
        offset: u64,
        epoch: &str,
    ) -> Result<Vec<Arc<Publication>>, Unrecoverable> {
        if (!epoch.is_empty() && epoch != &*self.epoch) || offset > self.top {
            return Err(Unrecoverable);
        }
        if offset == self.top {
            return Ok(Vec::new());
        }
        let first_kept = self
            .entries
            .front()
            .map(|e| e.publication.offset)
            .ok_or(Unrecoverable)?;
        if first_kept > offset + 1 {
            return Err(Unrecoverable);
        }
        Ok(self
            .entries
            .iter()
            .filter(|e| e.publication.offset > offset)
            .map(|e| Arc::clone(&e.publication))
            .collect())
    }

    /// Answers a history call.
    ///
    /// # Errors
    /// [`Unrecoverable`] when `since` names another epoch.
    pub fn query(&self, query: &HistoryQuery) -> Result<Vec<Arc<Publication>>, Unrecoverable> {
        let limit = query.limit.unwrap_or(usize::MAX);
        let since = match &query.since {
            Some((offset, epoch)) => {
                if !epoch.is_empty() && epoch.as_str() != &*self.epoch {
                    return Err(Unrecoverable);
                }
                Some(*offset)
            }
            None => None,
        };
        let all = self.entries.iter().map(|e| &e.publication);
        let picked: Vec<Arc<Publication>> = match (since, query.reverse) {
            (None, false) => all.take(limit).cloned().collect(),
            (Some(after), false) => all
                .filter(|p| p.offset > after)
                .take(limit)
                .cloned()
                .collect(),
            (None, true) => all.rev().take(limit).cloned().collect(),
            (Some(before), true) => all
                .rev()
                .filter(|p| p.offset < before)
                .take(limit)
                .cloned()
                .collect(),
        };
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn history_with(count: u64, size: usize) -> ChannelHistory {
        let mut history = ChannelHistory::new(0);
        for _ in 0..count {
            let publication =
                Publication::json(Bytes::from_static(b"1")).positioned(history.next_offset(), None);
            history.append(Arc::new(publication), size, 1000, 0);
        }
        history
    }

    fn offsets(publications: &[Arc<Publication>]) -> Vec<u64> {
        publications.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn offsets_increase_from_one() {
        let history = history_with(3, 10);
        assert_eq!(history.position().offset, 3);
        assert_eq!(
            offsets(&history.query(&HistoryQuery::default()).unwrap()),
            [1, 2, 3]
        );
    }

    #[test]
    fn recovery_returns_exactly_what_was_missed() {
        let history = history_with(5, 10);
        let epoch = history.position().epoch.to_string();
        assert_eq!(offsets(&history.recover(2, &epoch).unwrap()), [3, 4, 5]);
        assert_eq!(
            offsets(&history.recover(5, &epoch).unwrap()),
            [] as [u64; 0]
        );
        assert_eq!(offsets(&history.recover(0, "").unwrap()), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_gap_or_another_epoch_is_unrecoverable() {
        let history = history_with(5, 2);
        let epoch = history.position().epoch.to_string();
        assert_eq!(offsets(&history.recover(3, &epoch).unwrap()), [4, 5]);
        assert!(matches!(history.recover(2, &epoch), Err(Unrecoverable)));
        assert!(matches!(history.recover(4, "other"), Err(Unrecoverable)));
        assert!(matches!(history.recover(9, &epoch), Err(Unrecoverable)));
    }

    #[test]
    fn expired_publications_leave_the_position() {
        let mut history = history_with(3, 10);
        history.prune(1000);
        assert!(history.is_empty());
        let epoch = history.position().epoch.to_string();
        assert_eq!(history.position().offset, 3);
        assert!(history.recover(3, &epoch).unwrap().is_empty());
        assert!(matches!(history.recover(2, &epoch), Err(Unrecoverable)));
        assert!(!history.is_stale(1000, 5000));
        assert!(history.is_stale(5000, 5000));
    }

    #[test]
    fn history_calls_honour_limit_since_and_reverse() {
        let history = history_with(5, 10);
        let query = |limit, since: Option<u64>, reverse| HistoryQuery {
            limit,
            since: since.map(|o| (o, String::new())),
            reverse,
        };
        assert_eq!(
            offsets(&history.query(&query(Some(2), None, false)).unwrap()),
            [1, 2]
        );
        assert_eq!(
            offsets(&history.query(&query(Some(2), None, true)).unwrap()),
            [5, 4]
        );
        assert_eq!(
            offsets(&history.query(&query(None, Some(3), false)).unwrap()),
            [4, 5]
        );
        assert_eq!(
            offsets(&history.query(&query(Some(1), Some(3), true)).unwrap()),
            [2]
        );
        let other_epoch = HistoryQuery {
            since: Some((1, "nope".into())),
            ..HistoryQuery::default()
        };
        assert!(matches!(history.query(&other_epoch), Err(Unrecoverable)));
    }
}
