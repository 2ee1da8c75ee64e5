//! One map channel's state: each key's latest publication, in key order, with when it
//! expires (a namespace's `map_key_ttl`).
//!
//! Pure data beside [`crate::history::ChannelHistory`]: the broker keeps one [`MapState`] with
//! each map channel's stream, behind the same lock, and applies a keyed publication to both
//! in one step. That is what makes a map subscriber's sync sound: a state page read at
//! stream position P holds every change up to P (and perhaps later ones), and the stream
//! from P holds every change after it, so replaying the stream over the pages, last write
//! per key winning, gives the state at the moment the subscriber goes live.
//!
//! Pages run in key order: a page ends with a cursor (its last key) and the next page starts
//! after it, so a key published between two pages is either on a later page or in the
//! stream catch-up, never lost.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::publication::Publication;

/// Longest map key, bytes.
pub const MAX_KEY_LEN: usize = 255;

struct Entry {
    publication: Arc<Publication>,
    /// When the key expires, on the broker's clock (`u64::MAX`: never).
    expires_ms: u64,
}

/// A map channel's keys and their latest publications.
#[derive(Default)]
pub struct MapState {
    entries: BTreeMap<Box<str>, Entry>,
}

/// One page of a map's state.
#[derive(Debug, Default)]
pub struct StatePage {
    /// The keys' latest publications, in key order.
    pub entries: Vec<Arc<Publication>>,
    /// Where the next page starts (`None`: this was the last).
    pub cursor: Option<Box<str>>,
}

/// Why a key cannot be used.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        Err("a map key must not be empty")
    } else if key.len() > MAX_KEY_LEN {
        Err("a map key is at most 255 bytes")
    } else {
        Ok(())
    }
}

impl MapState {
    /// Whether `key` is in the state now.
    pub fn contains(&self, key: &str, now_ms: u64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entry| entry.expires_ms > now_ms)
    }

    /// `key`'s latest publication, when it is in the state now.
    pub fn latest(&self, key: &str, now_ms: u64) -> Option<&Arc<Publication>> {
        self.entries
            .get(key)
            .filter(|entry| entry.expires_ms > now_ms)
            .map(|entry| &entry.publication)
    }

    /// Applies a keyed publication: sets its key (for `ttl_ms` from now; 0: for ever) or,
    /// a removal, takes it out. A publication with no key changes nothing.
    pub fn apply(&mut self, publication: &Arc<Publication>, ttl_ms: u64, now_ms: u64) {
        let Some(key) = publication.key.as_deref() else {
            return;
        };
        if publication.removed {
            self.entries.remove(key);
            return;
        }
        let expires_ms = if ttl_ms == 0 {
            u64::MAX
        } else {
            now_ms.saturating_add(ttl_ms)
        };
        self.entries.insert(
            key.into(),
            Entry {
                publication: Arc::clone(publication),
                expires_ms,
            },
        );
    }

    /// Up to `limit` (at least one) live keys after `after` (from the first with an empty
    /// `after`) that `keep` passes, and where the next page starts when more remain.
    pub fn page(
        &self,
        after: &str,
        limit: usize,
        now_ms: u64,
        keep: impl Fn(&Publication) -> bool,
    ) -> StatePage {
        let limit = limit.max(1);
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let mut found = self
            .entries
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(_, entry)| entry.expires_ms > now_ms && keep(&entry.publication))
            .take(limit.saturating_add(1));
        let mut page = StatePage::default();
        for (_, entry) in found.by_ref() {
            if page.entries.len() == limit {
                // One more than the page holds: the next page starts after this page's last.
                page.cursor = page.entries.last().and_then(|last| last.key.clone());
                break;
            }
            page.entries.push(Arc::clone(&entry.publication));
        }
        page
    }

    /// Takes out every key whose time is up, and returns them (in key order).
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<Box<str>> {
        let expired: Vec<Box<str>> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires_ms <= now_ms)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.entries.remove(key);
        }
        expired
    }

    /// Keys held (expired ones not yet taken out included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn set(key: &str, value: &str) -> Arc<Publication> {
        Arc::new(Publication::json(Bytes::from(format!("\"{value}\""))).keyed(key))
    }

    fn keys(page: &StatePage) -> Vec<&str> {
        page.entries
            .iter()
            .map(|p| p.key.as_deref().unwrap_or_default())
            .collect()
    }

    #[test]
    fn pages_walk_every_key_once_in_order_and_the_last_has_no_cursor() {
        let mut state = MapState::default();
        for key in ["c", "a", "e", "b", "d"] {
            state.apply(&set(key, key), 0, 0);
        }
        let first = state.page("", 2, 0, |_| true);
        assert_eq!(keys(&first), ["a", "b"]);
        assert_eq!(first.cursor.as_deref(), Some("b"));
        let second = state.page("b", 2, 0, |_| true);
        assert_eq!(keys(&second), ["c", "d"]);
        let last = state.page(second.cursor.as_deref().unwrap(), 2, 0, |_| true);
        assert_eq!(keys(&last), ["e"]);
        assert_eq!(last.cursor, None);
        // Exactly a page's worth left: no empty page after it.
        assert_eq!(state.page("c", 2, 0, |_| true).cursor, None);
    }

    #[test]
    fn a_later_publish_replaces_and_a_removal_takes_the_key_out() {
        let mut state = MapState::default();
        state.apply(&set("k", "1"), 0, 0);
        state.apply(&set("k", "2"), 0, 0);
        let page = state.page("", 10, 0, |_| true);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(&page.entries[0].data_json()[..], b"\"2\"");
        state.apply(&Arc::new(Publication::removal("k")), 0, 0);
        assert!(!state.contains("k", 0));
        assert!(state.latest("k", 0).is_none());
        assert!(state.page("", 10, 0, |_| true).entries.is_empty());
    }

    #[test]
    fn expired_keys_are_not_served_and_are_taken_out_once() {
        let mut state = MapState::default();
        state.apply(&set("short", "x"), 100, 0);
        state.apply(&set("long", "y"), 0, 0);
        assert!(state.contains("short", 99));
        assert!(!state.contains("short", 100));
        // An expired key is no delta base: a new subscriber's state never held it.
        assert!(state.latest("short", 99).is_some() && state.latest("short", 100).is_none());
        assert_eq!(keys(&state.page("", 10, 100, |_| true)), ["long"]);
        assert_eq!(state.take_expired(100), vec![Box::<str>::from("short")]);
        assert!(state.take_expired(1000).is_empty());
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn a_filtered_page_skips_what_the_filter_drops_without_ending_early() {
        let mut state = MapState::default();
        for key in ["a", "b", "c", "d"] {
            state.apply(&set(key, key), 0, 0);
        }
        let odd = |p: &Publication| matches!(p.key.as_deref(), Some("a" | "c"));
        let page = state.page("", 1, 0, odd);
        assert_eq!(keys(&page), ["a"]);
        let next = state.page(page.cursor.as_deref().unwrap(), 1, 0, odd);
        assert_eq!(keys(&next), ["c"]);
        assert_eq!(next.cursor, None);
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(256)).is_err());
        assert!(check_key("user:42").is_ok());
    }
}
